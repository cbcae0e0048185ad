"""Robustness curves: F(G(x) + n) against x for growing noise on G(x)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segrenorm.errors import ConfigError, InputError
from segrenorm.evaluate.robustness import curve_auc, noise_sensitivity
from segrenorm.models.checkpoint import load_translator


def _slices(n: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:24, :24]
    disc = np.hypot(yy - 11.5, xx - 11.5) < 9
    images = np.where(disc, 0.3 + 0.1 * rng.standard_normal((n, 24, 24)), -1.0)
    return np.clip(images, -1, 1).astype(np.float32), np.broadcast_to(disc, (n, 24, 24)).copy()


def test_curve_auc_is_the_mean_height() -> None:
    assert curve_auc([0.0, 0.5], [1.0, 0.0]) == pytest.approx(0.5)
    assert curve_auc([0.0, 0.1, 0.5], [0.8, 0.8, 0.8]) == pytest.approx(0.8)
    with pytest.raises(InputError, match="at least two increasing sigmas"):
        curve_auc([0.0], [1.0])
    with pytest.raises(InputError, match="at least two increasing sigmas"):
        curve_auc([0.2, 0.1], [1.0, 1.0])


def test_identity_cycle_degrades_with_noise(tiny_checkpoints: dict[str, Path]) -> None:
    model, _ = load_translator(tiny_checkpoints["identity"])
    images, masks = _slices()
    curves = noise_sensitivity(model, images, masks, sigmas=(0.0, 0.2, 0.5), batch_size=2)
    assert curves["sigma"] == [0.0, 0.2, 0.5]
    # An identity-started translator reconstructs x exactly without noise...
    assert curves["mse"][0] < 1e-5 and curves["ssim"][0] > 0.999
    # ...and passes the noise through, so the error grows like sigma^2.
    assert curves["mse"][1] == pytest.approx(0.04, rel=0.25)
    assert curves["mse"][2] > curves["mse"][1] and curves["ssim"][2] < curves["ssim"][1] < 1
    assert curves["ssim_auc"] == pytest.approx(curve_auc(curves["sigma"], curves["ssim"]))
    again = noise_sensitivity(model, images, masks, sigmas=(0.0, 0.2, 0.5), batch_size=5)
    np.testing.assert_allclose(again["mse"][0], curves["mse"][0], atol=1e-7)


def test_bad_arguments_are_named(tiny_checkpoints: dict[str, Path]) -> None:
    model, _ = load_translator(tiny_checkpoints["identity"])
    images, masks = _slices()
    with pytest.raises(ConfigError, match="direction 'AC' is unknown"):
        noise_sensitivity(model, images, masks, direction="AC")
    with pytest.raises(ConfigError, match="must be >= 0"):
        noise_sensitivity(model, images, masks, sigmas=(0.0, -0.1))
    with pytest.raises(InputError, match="one shape"):
        noise_sensitivity(model, images, masks[:2])
    with pytest.raises(InputError, match="masks are empty"):
        noise_sensitivity(model, images, np.zeros_like(masks))
