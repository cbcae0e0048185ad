"""The classical normalizers against hand computations: WhiteStripe and Nyúl's training."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from segrenorm.errors import ConfigError, InputError
from segrenorm.evaluate.baselines import NyulStandardizer, WhiteStripe

N_CSF, N_GM, N_WM = 2000, 3000, 5000


def t1_values(wm_mean: float = 0.8, wm_sd: float = 0.05) -> np.ndarray:
    """Deterministic T1-like foreground: flat CSF and GM ranges, a Gaussian WM peak."""
    csf = np.linspace(0.1, 0.3, N_CSF)
    gm = np.linspace(0.4, 0.6, N_GM)
    wm = wm_mean + wm_sd * norm.ppf((np.arange(N_WM) + 0.5) / N_WM)  # exact normal quantiles
    return np.concatenate([csf, gm, wm])


def test_whitestripe_finds_the_white_matter_peak_and_its_stripe() -> None:
    values = t1_values()
    # By hand, for the mode 0.8: it sits at quantile (2000 + 3000 + 2500) / 10000 = 0.75,
    # so the stripe is quantiles 0.70..0.80: white-matter ranks 2000..2999 of 5000, the
    # central 20% of N(0.8, 0.05) (within ±a = ±Φ⁻¹(0.6) sd): mean 0.8 by symmetry, and the
    # truncated normal's std.
    a = norm.ppf(0.6)
    truncated_sd = 0.05 * np.sqrt(1 - 2 * a * norm.pdf(a) / (2 * norm.cdf(a) - 1))
    given = WhiteStripe().stripe(values, mode=0.8)
    assert given.n_voxels == 1000
    assert given.mean == pytest.approx(0.8, abs=1e-12)
    assert given.std == pytest.approx(float(np.sort(values)[7000:8000].std()), rel=1e-12)
    assert given.std == pytest.approx(truncated_sd, rel=1e-3)
    assert (given.lower, given.upper) == pytest.approx((0.8 - a * 0.05, 0.8 + a * 0.05), abs=1e-4)
    # Found from the smoothed histogram, the mode is within 10% of a WM sd of the true peak
    # (the upper-tail cut at the 96th percentile pulls the smoothed peak slightly left).
    found = WhiteStripe().stripe(values)
    assert found.mode == pytest.approx(0.8, abs=0.005)
    assert found.mean == pytest.approx(0.8, abs=0.005)
    assert found.std == pytest.approx(truncated_sd, rel=0.05)


def test_whitestripe_z_scores_the_stripe_to_mean_0_std_1() -> None:
    volume = t1_values().reshape(10, 20, 50)
    mask = np.ones(volume.shape, bool)
    mask[0, 0, :5] = False  # background: transformed too, but not part of the stripe
    found = WhiteStripe().stripe(volume[mask])
    z = WhiteStripe().standardize(volume, mask)
    stripe = mask & (volume >= found.lower) & (volume <= found.upper)
    assert int(stripe.sum()) == found.n_voxels
    assert float(z[stripe].mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(z[stripe].std()) == pytest.approx(1.0, abs=1e-5)
    assert z.dtype == np.float32


def test_whitestripe_maps_onto_the_reference_white_matter() -> None:
    references = [t1_values(0.8, 0.05), t1_values(0.7, 0.03)]
    stripes = [WhiteStripe().stripe(v) for v in references]
    ws = WhiteStripe().fit(references)
    assert ws.reference == pytest.approx(
        (np.mean([s.mean for s in stripes]), np.mean([s.std for s in stripes]))
    )
    source = (3.0 * t1_values(0.5, 0.08) + 10.0).reshape(100, 100)
    mask = np.ones(source.shape, bool)
    mask[:, :2] = False
    out = ws.apply(source, mask)
    own = WhiteStripe().stripe(source[mask])
    stripe = mask & (source >= own.lower) & (source <= own.upper)
    mean, std = ws.reference
    assert float(out[stripe].mean()) == pytest.approx(mean, abs=1e-5)
    assert float(out[stripe].std()) == pytest.approx(std, rel=1e-4)
    np.testing.assert_array_equal(out[~mask], source[~mask].astype(np.float32))


def test_whitestripe_ignores_small_bright_peaks_and_the_upper_tail() -> None:
    # A narrow bump of 2% at 1.2, above white matter (e.g. fat or vessels); smoothed, its
    # peak is about 6% of the white-matter peak's height.
    values = np.concatenate([t1_values(), 1.2 + 0.01 * norm.ppf((np.arange(200) + 0.5) / 200)])
    # Without the tail cut and the peak-height floor, the bump is the last peak.
    assert WhiteStripe(tail=100.0, min_peak=0.0).mode(values) == pytest.approx(1.2, abs=0.01)
    # The 10% peak-height floor leaves it out; so does the 96th-percentile tail cut.
    assert WhiteStripe(tail=100.0).mode(values) == pytest.approx(0.8, abs=0.005)
    assert WhiteStripe(min_peak=0.0).mode(values) == pytest.approx(0.8, abs=0.005)
    # Mass piled on the brightest value leaves no interior peak: the maximum is the mode.
    piled = np.r_[np.linspace(0.0, 0.9, 50), np.ones(1000)]
    assert WhiteStripe(tail=100.0).mode(piled) == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"width": 0.0}, "width 0.0 must be a quantile in \\(0, 0.5\\)"),
        ({"width": 0.5}, "width 0.5 must be a quantile"),
        ({"tail": 50.0}, "tail 50.0 must be a percentile in \\(50, 100\\]"),
        ({"min_peak": 1.0}, "min_peak 1.0 must be in \\[0, 1\\)"),
    ],
)
def test_whitestripe_refuses_bad_settings(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        WhiteStripe(**kwargs)


def test_whitestripe_refuses_unusable_volumes() -> None:
    ws = WhiteStripe()
    with pytest.raises(InputError, match="foreground of 2 or more voxels, got 1"):
        ws.stripe(np.array([1.0]))
    with pytest.raises(InputError, match="foreground intensities are constant"):
        ws.stripe(np.full(100, 3.0))
    with pytest.raises(InputError, match="has constant intensity"):
        # Quantiles 0..0.05 of the mode 1: all ones.
        ws.stripe(np.r_[np.ones(9900), np.full(100, 2.0)], mode=1.0)
    x = t1_values().reshape(100, 100)
    with pytest.raises(InputError, match="must match the volume \\(100, 100\\)"):
        ws.standardize(x, np.ones((10, 10), bool))
    with pytest.raises(InputError, match="hold at least one voxel"):
        ws.standardize(x, np.zeros(x.shape, bool))
    with pytest.raises(RuntimeError, match="before fit"):
        ws.apply(x, np.ones(x.shape, bool))
    with pytest.raises(InputError, match="no reference volumes"):
        ws.fit([])


def test_nyul_training_maps_each_reference_onto_the_standard_range() -> None:
    base = np.linspace(0.0, 100.0, 100_001)  # percentile p is exactly p
    pcts = np.array([1.0, *range(10, 100, 10), 99.0])
    # Two affine copies: their unit landmarks coincide, (p - 1) / 98.
    nyul = NyulStandardizer().fit([base, 2 * base + 50])
    s1, s2 = (1 + 52) / 2, (99 + 248) / 2
    np.testing.assert_allclose(nyul.standard, s1 + (s2 - s1) * (pcts - 1) / 98, atol=1e-6)
    # A non-affine copy: the unit landmarks are averaged, not the raw ones.
    squared = base**2 / 100  # percentile p is p² / 100
    nyul = NyulStandardizer().fit([base, squared], standard_range=(0.0, 1.0))
    unit_sq = (pcts**2 / 100 - 0.01) / (99**2 / 100 - 0.01)
    np.testing.assert_allclose(nyul.standard, ((pcts - 1) / 98 + unit_sq) / 2, atol=1e-6)
    with pytest.raises(ValueError, match="reference volume 1 has equal pc1 and pc2"):
        NyulStandardizer().fit([base, np.ones(100)])
