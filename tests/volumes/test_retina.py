"""Tests of segrenorm.volumes.retina: the retina of an OCT volume found without labels.

:func:`oct_phantom` is the layered, speckled retina the OCT tests of prepare, slicing and
harmonize also use (``from tests.volumes.test_retina import oct_phantom``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest

from segrenorm.errors import ConfigError, InputError
from segrenorm.volumes import retina
from segrenorm.volumes.retina import retina_mask

#: Thickness (depth units) and reflectivity of RNFL, GCL, IPL, INL, OPL, ONL, IS, OS, RPE and
#: the choroid; the ONL is dark, the RPE the brightest, as in a real B-scan.
LAYERS = ((3, 40.0), (3, 25.0), (3, 30.0), (3, 15.0), (3, 25.0), (5, 6.0), (3, 20.0),
          (3, 20.0), (3, 60.0), (6, 35.0))  # fmt: skip
VITREOUS, BELOW, FLUID = 2.0, 4.0, 2.0


class OctPhantom(NamedTuple):
    """A phantom B-scan volume (X, Y, Z), depth along Y, and its truth."""

    data: np.ndarray  # float32 speckled intensities
    retina: np.ndarray  # bool: ILM down to the bottom of the choroid
    cyst: np.ndarray  # bool: a dark intraretinal pocket
    ped: np.ndarray  # bool: a dark dome under the RPE
    ilm: np.ndarray  # (X,) depth of the inner limiting membrane, in voxels


def oct_phantom(
    seed: int = 0, shape: tuple[int, int, int] = (48, 64, 4), *, depth: int = 1, looks: float = 1.0
) -> OctPhantom:
    """A retina with a foveal pit, ten layers, a cyst, a PED and gamma speckle of ``looks``.

    ``depth`` voxels per depth unit: ``depth=2`` is the same eye at half the depth spacing
    (``shape[1]`` is then doubled), as two vendors would see it.
    """
    rng = np.random.default_rng(seed)
    n_x, n_y, n_z = shape[0], shape[1] * depth, shape[2]
    x = np.arange(n_x)
    ilm = depth * (14 + 6 * np.exp(-(((x - n_x / 2) / 10.0) ** 2)))  # the pit: deeper centre
    y = np.arange(n_y)[None, :, None].astype(np.float64)
    data = np.full((n_x, n_y, n_z), VITREOUS)
    edge = ilm[:, None, None] + 0 * y
    for thickness, reflectivity in LAYERS:
        data = np.where((y >= edge) & (y < edge + depth * thickness), reflectivity, data)
        edge = edge + depth * thickness
    data = np.where(y >= edge, BELOW, data)
    truth = np.broadcast_to((y >= ilm[:, None, None]) & (y < edge), data.shape)
    cyst = np.zeros(data.shape, bool)
    near = slice(n_x // 6, n_x // 3)  # 8:16 of 48 A-scans
    cyst[near] = np.abs(y - (ilm[near, None, None] + 15 * depth)) < 3 * depth
    ped = np.zeros(data.shape, bool)
    rpe_bottom = ilm + depth * sum(t for t, _ in LAYERS[:9])
    centre, half = 3 * n_x / 4, n_x / 8  # 30:42 of 48 A-scans
    for i in range(n_x):
        height = depth * int(4 * np.sqrt(max(0.0, 1 - ((i - centre) / half) ** 2)))
        ped[i, int(rpe_bottom[i]) - height : int(rpe_bottom[i])] = True
    data[cyst] = FLUID
    data[ped] = FLUID + 1.0
    speckle = rng.gamma(looks, 1 / looks, size=data.shape)
    data = data * speckle + rng.normal(0, 0.5, data.shape).clip(0)
    return OctPhantom(data.astype(np.float32), truth.copy(), cyst, ped, ilm)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.mark.parametrize(("seed", "looks"), [(0, 1.0), (1, 1.0), (2, 4.0)])
def test_mask_finds_the_retina_under_speckle(seed: int, looks: float) -> None:
    phantom = oct_phantom(seed, looks=looks)
    mask = retina_mask(phantom.data)
    assert mask.shape == phantom.data.shape and mask.dtype == bool
    assert _dice(mask, phantom.retina) > 0.9
    # The vitreous (beyond the 2-voxel blur of the boundary) and the dark depths are excluded.
    depth = np.arange(mask.shape[1])[None, :, None]
    assert not (mask & (depth < phantom.ilm[:, None, None] - 2)).any()
    bottom = np.max(np.where(phantom.retina, depth, 0), axis=1, keepdims=True)
    assert not (mask & (depth > bottom + 4)).any()
    # Dark pockets inside the band are retina: the cyst and the PED are wholly inside.
    assert mask[phantom.cyst].all() and mask[phantom.ped].all()


def test_a_vessel_shadow_does_not_cut_the_band() -> None:
    phantom = oct_phantom(3)
    data = phantom.data.copy()
    below = np.arange(data.shape[1])[None, :] > phantom.ilm[20:23, None] + 4
    data[20:23][below] *= 0.3  # three A-scans under a vessel that lets 30% of the light pass
    mask = retina_mask(data)
    assert mask[20:23][phantom.retina[20:23]].mean() > 0.9  # bridged by its neighbours


def test_depth_axis_and_single_b_scans() -> None:
    phantom = oct_phantom(4, (32, 64, 2))
    mask = retina_mask(phantom.data)
    moved = retina_mask(np.moveaxis(phantom.data, 1, 0), depth_axis=0)
    np.testing.assert_array_equal(np.moveaxis(moved, 0, 1), mask)
    # One B-scan (X, Y) alone: the same mask as inside the volume when the threshold agrees.
    single = retina_mask(phantom.data[:, :, 0])
    assert single.shape == (32, 64)
    assert _dice(single, phantom.retina[:, :, 0]) > 0.9


def test_bad_inputs_name_the_volume_and_the_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    volume = oct_phantom(5, (16, 40, 2)).data
    with pytest.raises(InputError, match=r"scan\.mhd: retina_mask needs a 2D or 3D array"):
        retina_mask(np.zeros(5), where="scan.mhd")
    with pytest.raises(InputError, match=r"scan\.mhd: the OCT intensities are constant \(7\)"):
        retina_mask(np.full((8, 8, 2), 7.0), where="scan.mhd")
    bad = volume.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="the OCT intensities hold NaN or infinite values"):
        retina_mask(bad)
    with pytest.raises(ConfigError, match="depth_axis 3 is not an axis of a 3D volume"):
        retina_mask(volume, depth_axis=3)
    with pytest.raises(ConfigError, match=r"sigma \(1.0, -1.0\) must be two non-negative"):
        retina_mask(volume, sigma=(1.0, -1.0))
    with pytest.raises(ConfigError, match="window 4 must be a positive odd number of A-scans"):
        retina_mask(volume, window=4)
    # A threshold above every value (no band at all) is an error, not an empty mask.
    monkeypatch.setattr(retina, "_threshold", lambda smoothed: (float(smoothed.max()) + 1.0, 0.0))
    with pytest.raises(InputError, match=r"scan\.mhd: no retina found .* depth along axis 1"):
        retina_mask(volume, where="scan.mhd")


@pytest.mark.parametrize("vendor_name", ["Cirrus", "Spectralis"])
def test_the_band_does_not_reach_down_under_a_fluid_dome(vendor_name: str) -> None:
    # A simulated eye with a large PED: under the lifted RPE the A-scan's brightest depth is
    # dimmer, and a per-A-scan bottom rule let the sclera pass as band, down to the bottom of
    # the B-scan. The choroid's bottom does not move with a PED: the mask must stop near it.
    from segrenorm.simulate.oct_render import render_oct
    from segrenorm.simulate.oct_vendors import load_vendor
    from segrenorm.simulate.retina import (
        LAYER_NAMES,
        FluidSettings,
        OctGrid,
        rasterise,
        sample_retina,
    )

    settings = FluidSettings(irf_probability=0.0, srf_probability=0.0, ped_probability=1.0,
                             ped_count=(1, 1), ped_radius_mm=(0.6, 0.7),
                             ped_height_mm=(0.2, 0.25))  # fmt: skip
    vendor = load_vendor(vendor_name).scaled(0.25)
    eye = sample_retina(np.random.default_rng(3), settings)
    volume = rasterise(eye, OctGrid(vendor.shape, vendor.spacing), settings)
    image = render_oct(volume, vendor, np.random.default_rng(4))
    mask = retina_mask(image)
    sy = vendor.spacing[1]
    choroid_bottom = volume.boundaries[LAYER_NAMES.index("choroid")] / sy  # (X, Z) voxels
    lowest = mask.shape[1] - 1 - np.argmax(mask[:, ::-1, :], axis=1)  # (X, Z)
    under = (volume.labels == 3).any(axis=1)  # A-scans under the dome
    assert under.sum() > 20
    # Under the dome the band ends as near the choroid's bottom as beside it (a few voxels).
    error = np.abs(lowest - choroid_bottom)
    assert np.median(error[under]) <= np.median(error[~under]) + 3
    assert lowest[under].max() < mask.shape[1] - 1 - 5  # never down to the B-scan's bottom
