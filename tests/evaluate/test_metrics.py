from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from segrenorm.evaluate.baselines import HistogramMatcher, zscore
from segrenorm.evaluate.metrics import mae, psnr, ssim, ssim_map


def _pair(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:48, 0:40]
    x = np.sin(xx / 5.0) * np.cos(yy / 7.0)
    y = 0.8 * x + 0.1 + rng.normal(0, 0.1, x.shape)
    return x.clip(-1, 1), y.clip(-1, 1)


def test_ssim_map_matches_scikit_image_in_the_interior() -> None:
    x, y = _pair()
    _, ref = structural_similarity(
        x, y, data_range=2.0, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, full=True,
    )  # fmt: skip
    ours = ssim_map(x, y, data_range=2.0)
    inner = (slice(5, -5), slice(5, -5))
    np.testing.assert_allclose(ours[inner], ref[inner], atol=1e-10)


def test_ssim_stack_equals_per_slice() -> None:
    x, y = _pair()
    stack = ssim_map(np.stack([x, y]), np.stack([y, x]), data_range=2.0)
    np.testing.assert_allclose(stack[0], ssim_map(x, y, data_range=2.0))


def test_masked_metrics() -> None:
    x, y = _pair(1)
    mask = np.zeros_like(x, bool)
    mask[10:30, 10:30] = True
    assert ssim(x, x, mask=mask) == pytest.approx(1.0)
    assert ssim(x, y, mask=mask) < 0.95
    assert mae(x, y, mask=mask) == pytest.approx(np.abs(x - y)[mask].mean())
    assert psnr(x, y, data_range=2.0) == pytest.approx(
        peak_signal_noise_ratio(x, y, data_range=2.0)
    )
    assert psnr(x, x) == float("inf")
    with pytest.raises(ValueError, match="mask is empty"):
        mae(x, y, mask=np.zeros_like(mask))
    with pytest.raises(ValueError, match="shapes differ"):
        ssim_map(x, y[:-1], data_range=2.0)


def test_histogram_matching_recovers_a_monotone_distortion() -> None:
    rng = np.random.default_rng(3)
    target = rng.uniform(-1, 1, 20_000)
    source = np.tanh(1.5 * target) * 0.5 - 0.2  # monotone distortion of the same values
    matcher = HistogramMatcher().fit([target[:10_000], target[10_000:]])
    out = matcher.apply(source, np.ones_like(source, bool))
    assert np.abs(out - target).mean() < 0.02
    with pytest.raises(RuntimeError, match="before fit"):
        HistogramMatcher().apply(source, np.ones_like(source, bool))


def test_zscore_inside_mask() -> None:
    x = np.array([0.0, 1.0, 2.0, 3.0, 100.0])
    mask = np.array([True, True, True, True, False])
    z = zscore(x, mask)
    assert z[mask].mean() == pytest.approx(0.0, abs=1e-6)
    assert z[mask].std() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="constant"):
        zscore(np.ones(4), np.ones(4, bool))
