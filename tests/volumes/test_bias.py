"""Tests of segrenorm.volumes.bias: N4 bias-field correction and its stored settings."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from segrenorm.errors import ConfigError, InputError
from segrenorm.volumes.bias import (
    DEFAULT_BIAS_CORRECTION,
    NO_BIAS_CORRECTION,
    BiasCorrection,
    shrink_factors,
)

SHAPE = (24, 24, 24)
SPACING = (2.0, 2.0, 2.0)


def _phantom() -> dict[str, np.ndarray]:
    """A two-tissue ball (core 800, shell 500) under a known smooth multiplicative field."""
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
    radius = np.sqrt(sum(g**2 for g in grid))
    truth = np.where(radius < 0.9, np.where(radius < 0.5, 800.0, 500.0), 0.0)
    field = np.exp(0.3 * grid[0] + 0.2 * grid[1] - 0.15 * grid[2] ** 2)
    noise = 3.0 * np.random.default_rng(0).standard_normal(SHAPE)
    return {
        "truth": truth,
        "field": field,
        "biased": truth * field + noise,
        "mask": radius < 0.9,
        "core": radius < 0.45,
        "shell": (radius > 0.55) & (radius < 0.85),
    }


def _cv(values: np.ndarray) -> float:
    return float(values.std() / values.mean())


@pytest.mark.parametrize("shrink", [2, 4])
def test_n4_removes_a_known_smooth_field(shrink: int) -> None:
    p = _phantom()
    corrected = BiasCorrection(shrink=shrink).apply(p["biased"], SPACING, p["mask"])
    assert corrected.dtype == np.float32 and corrected.shape == SHAPE
    before, after = _cv(p["biased"][p["core"]]), _cv(corrected[p["core"]])
    assert before > 0.07 and after < before / 5  # the homogeneous core is flat again
    # The field divided out, over the true one: nearly constant (the true field varies 15%).
    estimated = p["biased"] / corrected
    assert _cv(p["field"][p["mask"]]) > 0.14
    assert _cv((estimated / p["field"])[p["mask"]]) < 0.03
    assert _cv((corrected / np.where(p["mask"], p["truth"], 1.0))[p["mask"]]) < 0.03
    # Scale fixed to a geometric mean of 1 inside the mask: the scanner's units are kept.
    assert np.exp(np.log(estimated[p["mask"]]).mean()) == pytest.approx(1.0, abs=1e-5)
    contrast = np.median(corrected[p["core"]]) / np.median(corrected[p["shell"]])
    assert contrast == pytest.approx(800 / 500, rel=0.03)  # tissue contrast survives


def test_n4_gives_the_same_bits_twice_and_fits_everywhere_without_a_mask() -> None:
    p = _phantom()
    first = DEFAULT_BIAS_CORRECTION.apply(p["biased"], SPACING, p["mask"])
    np.testing.assert_array_equal(
        first, DEFAULT_BIAS_CORRECTION.apply(p["biased"], SPACING, p["mask"])
    )
    bright = p["truth"] * p["field"] + 100.0  # no background: the whole box is fitted
    everywhere = BiasCorrection(shrink=2).apply(bright, SPACING, None)
    whole = BiasCorrection(shrink=2).apply(bright, SPACING, np.ones(SHAPE, bool))
    np.testing.assert_array_equal(everywhere, whole)
    assert _cv(everywhere[p["core"]]) < _cv(bright[p["core"]]) / 1.5


def test_none_is_an_exact_pass_through() -> None:
    data = _phantom()["biased"].astype(np.int16)
    out = NO_BIAS_CORRECTION.apply(data, SPACING, None)
    assert not NO_BIAS_CORRECTION.enabled and DEFAULT_BIAS_CORRECTION.enabled
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, data.astype(np.float32))
    floats = data.astype(np.float32)
    copy = NO_BIAS_CORRECTION.apply(floats, SPACING, None)
    assert copy is not floats and np.array_equal(copy, floats)
    constant = np.full(SHAPE, 7.0, np.float32)  # no contrast: nothing to fit, nothing changed
    np.testing.assert_array_equal(DEFAULT_BIAS_CORRECTION.apply(constant, SPACING, None), constant)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"method": "n3"}, "bias correction 'n3' is unknown: use one of n4, none"),
        ({"shrink": 0}, "bias-correction shrink=0 must be 1 to 8"),
        ({"shrink": 9}, "bias-correction shrink=9 must be 1 to 8"),
        ({"shrink": 2.5}, r"holds a non-numeric value \(2.5 is not a whole number\)"),
        ({"shrink": True}, "True is not a whole number"),
        ({"shrink": "x"}, "holds a non-numeric value"),
        ({"iterations": ()}, r"iterations=\[\] must be one positive count per fitting level"),
        ({"iterations": (50, 0)}, r"iterations=\[50, 0\] must be one positive count"),
        ({"control_points": 3}, r"control_points=3 must be >= 4 \(spline order 3 \+ 1\)"),
        ({"convergence": 0.0}, "convergence=0.0 must be > 0"),
        ({"convergence": float("nan")}, "convergence=nan must be > 0"),
        ({"threads": 0}, "threads=0 must be >= 1 or None"),
    ],
)
def test_invalid_settings_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        BiasCorrection(**changes)


def test_settings_round_trip_through_json_and_old_files_mean_none() -> None:
    custom = BiasCorrection(shrink=2, iterations=(20, 10), control_points=6, threads=None)
    stored = json.loads(json.dumps(custom.to_dict()))
    assert stored == {
        "method": "n4", "shrink": 2, "iterations": [20, 10], "control_points": 6,
        "convergence": 0.001, "threads": None,
    }  # fmt: skip
    assert BiasCorrection.from_dict(stored) == custom
    assert BiasCorrection.from_dict(None) == NO_BIAS_CORRECTION
    assert BiasCorrection.from_dict({"method": "n4"}) == DEFAULT_BIAS_CORRECTION
    widened = BiasCorrection.from_dict({"shrink": 2.0, "convergence": 1})  # JSON numbers
    assert type(widened.shrink) is int and type(widened.convergence) is float
    with pytest.raises(ConfigError, match=r"unknown key\(s\) shrinkage; known: control_points"):
        BiasCorrection.from_dict({"shrinkage": 2})
    with pytest.raises(ConfigError, match="must be a mapping of its settings, got 'n4'"):
        BiasCorrection.from_dict("n4")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="iterations=50 must be a list of counts"):
        BiasCorrection.from_dict({"iterations": 50})


def test_bad_volumes_and_masks_are_refused() -> None:
    p = _phantom()
    n4 = DEFAULT_BIAS_CORRECTION
    with pytest.raises(InputError, match=r"needs a 3D volume .* got shape \(24, 24\)"):
        n4.apply(p["biased"][..., 0], (2.0, 2.0), None)
    with pytest.raises(InputError, match=r"at least 2 voxels .* \(24, 24, 1\); use bias corr"):
        n4.apply(p["biased"][..., :1], SPACING, None)
    with pytest.raises(InputError, match=r"spacing \(2.0, 0.0, 2.0\) must be three positive"):
        n4.apply(p["biased"], (2.0, 0.0, 2.0), None)
    with pytest.raises(InputError, match=r"spacing \(2.0, 2.0\) must be three positive mm"):
        n4.apply(p["biased"], (2.0, 2.0), None)
    with pytest.raises(InputError, match=r"mask \(24, 24, 23\) must match the volume"):
        n4.apply(p["biased"], SPACING, p["mask"][..., 1:])
    with pytest.raises(InputError, match="and hold at least one voxel"):
        n4.apply(p["biased"], SPACING, np.zeros(SHAPE, bool))
    lonely = np.zeros(SHAPE, bool)
    lonely[:2, :2, :2] = True  # shrinking by 4 keeps voxels 2, 6, ...: none of these
    with pytest.raises(InputError, match=r"shrunk by \[4, 4, 4\]; lower the shrink factor"):
        n4.apply(p["biased"], SPACING, lonely)
    broken = p["biased"].copy()
    broken[12, 12, 12] = np.nan
    with pytest.raises(InputError, match="NaN or infinite intensities inside the mask"):
        n4.apply(broken, SPACING, p["mask"])


def test_shrink_factors_keep_four_voxels_per_axis() -> None:
    assert shrink_factors((24, 24, 24), 4) == (4, 4, 4)
    assert shrink_factors((24, 24, 6), 4) == (4, 4, 1)
    assert shrink_factors((9, 100, 3), 8) == (2, 8, 1)
    assert shrink_factors((24, 24, 24), 1) == (1, 1, 1)
    thin = _phantom()["biased"][:, :, 10:14]  # 4 slices: fitted at full resolution along z
    assert BiasCorrection().apply(thin, SPACING, None).shape == thin.shape
