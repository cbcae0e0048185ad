from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segrenorm.errors import ConfigError, InputError
from segrenorm.evaluate.features import (
    AutoencoderConfig,
    MultitaskAutoencoder,
    extract_features,
    train_autoencoder,
)

TINY: dict[str, Any] = {
    "width": 4,
    "depth": 2,
    "feature_dim": 8,
    "iterations": 30,
    "decay_iterations": 10,
    "batch_size": 16,
    "crop_size": None,
}


def _discs(n: int, brightness: float, seed: int, size: int = 16) -> np.ndarray:
    """Noisy discs of random radius on a -1 background, (n, size, size) float32."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] - (size - 1) / 2
    radius = np.hypot(yy, xx)[None]
    r = rng.uniform(0.25, 0.45, (n, 1, 1)) * size
    image = np.where(radius < r, brightness, -1.0) + rng.normal(0, 0.1, (n, size, size))
    return image.clip(-1, 1).astype(np.float32)


@pytest.fixture(scope="module")
def domains() -> tuple[np.ndarray, np.ndarray]:
    return _discs(40, 0.8, seed=0), _discs(40, -0.3, seed=1)


@pytest.fixture(scope="module")
def trained(domains: tuple[np.ndarray, np.ndarray]) -> MultitaskAutoencoder:
    return train_autoencoder(*domains, AutoencoderConfig(**TINY))


def _losses(model: MultitaskAutoencoder, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    x = torch.from_numpy(np.concatenate([a, b])).unsqueeze(1)
    labels = torch.cat([torch.zeros(len(a)), torch.ones(len(b))])
    with torch.inference_mode():
        recon, logit = model(x)
        return (
            float(F.l1_loss(recon, x)),
            float(F.binary_cross_entropy_with_logits(logit, labels)),
        )


@pytest.mark.parametrize(
    ("kwargs", "shape", "feature_dim"),
    [
        ({"width": 4, "depth": 2, "feature_dim": 8}, (16, 16), 8),
        ({"width": 4, "depth": 2, "feature_dim": 8}, (8, 24), 8),
        ({"width": 2, "depth": 3, "feature_dim": 6}, (32, 16), 6),
        ({"width": 8, "depth": 1, "feature_dim": 5}, (6, 10), 5),
    ],
)
def test_shapes(kwargs: dict[str, int], shape: tuple[int, int], feature_dim: int) -> None:
    net = MultitaskAutoencoder(**kwargs)
    x = torch.rand(3, 1, *shape) * 2 - 1
    recon, logit = net(x)
    assert recon.shape == x.shape
    assert logit.shape == (3,)
    assert net.features(x).shape == (3, feature_dim)
    assert recon.abs().max() <= 1.0


def test_bad_input_shapes_are_refused() -> None:
    net = MultitaskAutoencoder(width=4, depth=2, feature_dim=8)
    with pytest.raises(InputError, match=r"divisible by its stride 4, got 16x18"):
        net(torch.zeros(2, 1, 16, 18))
    with pytest.raises(InputError, match=r"\(B, 1, H, W\), got \(2, 3, 16, 16\)"):
        net.features(torch.zeros(2, 3, 16, 16))


def test_training_lowers_both_losses(
    domains: tuple[np.ndarray, np.ndarray], trained: MultitaskAutoencoder
) -> None:
    untrained = train_autoencoder(
        *domains, AutoencoderConfig(**{**TINY, "iterations": 0, "decay_iterations": 0})
    )
    l1_before, bce_before = _losses(untrained, *domains)
    l1_after, bce_after = _losses(trained, *domains)
    assert l1_after < 0.8 * l1_before
    assert bce_after < 0.5 * bce_before
    assert not trained.training


def test_domain_head_separates_obvious_domains(trained: MultitaskAutoencoder) -> None:
    a, b = _discs(30, 0.8, seed=10), _discs(30, -0.3, seed=11)  # unseen slices
    with torch.inference_mode():
        logit = trained(torch.from_numpy(np.concatenate([a, b])).unsqueeze(1))[1]
    predicted = (logit > 0).numpy()
    truth = np.r_[np.zeros(len(a)), np.ones(len(b))].astype(bool)
    assert (predicted == truth).mean() > 0.9


def test_training_is_deterministic_and_leaves_the_global_rng(
    domains: tuple[np.ndarray, np.ndarray], trained: MultitaskAutoencoder
) -> None:
    state = torch.get_rng_state()
    steps: list[tuple[int, int]] = []
    again = train_autoencoder(
        *domains, AutoencoderConfig(**TINY), progress=lambda i, n, loss: steps.append((i, n))
    )
    assert torch.equal(torch.get_rng_state(), state)
    assert steps == [(i, 40) for i in range(1, 41)]
    a = domains[0]
    np.testing.assert_array_equal(extract_features(again, a), extract_features(trained, a))
    other = train_autoencoder(*domains, AutoencoderConfig(**{**TINY, "seed": 1}))
    assert not np.array_equal(extract_features(other, a), extract_features(trained, a))


def test_crops_train_a_network_for_whole_slices(domains: tuple[np.ndarray, np.ndarray]) -> None:
    config = AutoencoderConfig(**{**TINY, "crop_size": 8, "iterations": 5, "decay_iterations": 0})
    model = train_autoencoder(*domains, config)
    features = extract_features(model, domains[1])
    assert features.shape == (40, 8)


def test_extract_features_is_float64_and_independent_of_batching(
    domains: tuple[np.ndarray, np.ndarray], trained: MultitaskAutoencoder
) -> None:
    slices = domains[0][:10]
    features = extract_features(trained, slices)
    assert features.dtype == np.float64 and features.shape == (10, 8)
    np.testing.assert_allclose(
        extract_features(trained, slices, batch_size=3), features, rtol=1e-5, atol=1e-6
    )
    with torch.inference_mode():
        direct = trained.features(torch.from_numpy(slices).unsqueeze(1)).double().numpy()
    np.testing.assert_allclose(features, direct, rtol=1e-5, atol=1e-6)


def test_bad_slices_are_refused(
    domains: tuple[np.ndarray, np.ndarray], trained: MultitaskAutoencoder
) -> None:
    a, b = domains
    config = AutoencoderConfig(**TINY)
    with pytest.raises(InputError, match=r"\(N, H, W\), got \(16, 16\)"):
        train_autoencoder(a[0], b, config)
    with pytest.raises(InputError, match=r"slice size 16x18 .*multiple of 2\*\*depth = 4"):
        train_autoencoder(np.zeros((2, 16, 18), np.float32), b, config)
    with pytest.raises(InputError, match=r"sizes differ, a \(40, 16, 16\) vs b \(3, 8, 8\)"):
        train_autoencoder(a, np.zeros((3, 8, 8), np.float32), config)
    with pytest.raises(InputError, match=r"intensities span \[0, 255\].*\[-1, 1\]"):
        train_autoencoder(a, 255.0 * (a[:3] > 0).astype(np.float32), config)
    bad = a.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match=r"extract_features: the slices \(40, 16, 16\) hold NaN"):
        extract_features(trained, bad)
    with pytest.raises(InputError, match=r"multiple of 2\*\*depth = 4"):
        extract_features(trained, np.zeros((2, 12, 10), np.float32))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"width": 0}, r"width=0 must be an integer >= 1"),
        ({"depth": 2.0}, r"depth=2.0 must be an integer >= 1"),
        ({"depth": 9}, r"depth=9 is out of range"),
        ({"iterations": -1}, r"iterations=-1 must be an integer >= 0"),
        ({"batch_size": 7}, r"batch_size=7 must be even"),
        ({"batch_size": 0}, r"batch_size=0 must be an integer >= 2"),
        ({"crop_size": 0}, r"crop_size=0 must be an integer >= 1"),
        ({"lr": 0.0}, r"lr=0.0 must be a finite number > 0"),
        ({"domain_weight": float("nan")}, r"domain_weight=nan must be finite and >= 0"),
        ({"crop_size": 20}, r"crop_size=20 must be a multiple of 2\*\*depth = 8"),
        ({"seed": -3}, r"seed=-3 must be an integer >= 0"),
    ],
)
def test_bad_config_values_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AutoencoderConfig(**changes)


def test_default_config_describes_the_cpu_budget() -> None:
    config = AutoencoderConfig()
    assert config.stride == 8 and config.crop_size is not None
    assert config.crop_size % config.stride == 0
    assert config.total_iterations == config.iterations + config.decay_iterations
