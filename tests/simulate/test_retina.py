"""The retina model: anatomy, grid independence, fluid partial volume, labels, errors."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from scipy import ndimage

from segrenorm.errors import ConfigError, InputError
from segrenorm.simulate.retina import (
    LAYER_NAMES,
    FluidSettings,
    OctGrid,
    RetinaParams,
    RetinaVolume,
    Vessel,
    rasterise,
    sample_retina,
)
from segrenorm.simulate.retina_fluid import IRF, PED, SRF, FluidPocket, PocketPart

NO_FLUID = FluidSettings(irf_probability=0.0, srf_probability=0.0, ped_probability=0.0)
ALL_FLUID = FluidSettings(irf_probability=1.0, srf_probability=1.0, ped_probability=1.0)
# Odd lateral counts put an A-scan centre on the fovea; 2.05 x 1.2 x 4.1 mm.
GRID = OctGrid((41, 240, 41), (0.05, 0.005, 0.1))


def _eye(seed: int = 0, settings: FluidSettings = NO_FLUID) -> RetinaParams:
    return sample_retina(np.random.default_rng(seed), settings)


def _with(params: RetinaParams, *pockets: FluidPocket, vessels: tuple = ()) -> RetinaParams:
    return dataclasses.replace(params, pockets=pockets, vessels=vessels)


def test_boundaries_are_ordered_and_the_fluid_consistent() -> None:
    for seed in range(4):
        volume = rasterise(_eye(seed, ALL_FLUID), OctGrid((32, 120, 12), (0.08, 0.01, 0.4)))
        assert volume.boundaries.shape == (len(LAYER_NAMES) - 1, 32, 12)
        assert (np.diff(volume.boundaries, axis=0) >= 0).all()
        fraction = volume.fluid_fraction
        assert fraction.min() >= 0 and fraction.max() <= 1
        assert ((volume.fluid_class > 0) == (fraction > 0)).all()
        labelled = volume.labels > 0
        assert (volume.labels[labelled] == volume.fluid_class[labelled]).all()


def test_foveal_pit_and_parafoveal_thickness() -> None:
    for seed in range(6):
        b = rasterise(_eye(seed), GRID).boundaries
        total = b[9] - b[0]  # ILM to Bruch's membrane
        inner = b[5] - b[0]  # RNFL .. OPL
        centre = total[20, 20]
        ring = [total[0, 20], total[40, 20], total[20, 10], total[20, 30]]  # 1 mm away
        assert 0.17 <= centre <= 0.25
        assert all(0.25 <= t <= 0.33 for t in ring)
        assert inner[20, 20] < 0.25 * inner[0, 20]  # the inner layers thin in the pit
        assert (b[6] - b[5])[20, 20] > (b[6] - b[5])[0, 20]  # the ONL thickens there


def test_boundaries_do_not_depend_on_the_grid() -> None:
    eye = _eye(3)
    coarse = rasterise(eye, OctGrid((20, 120, 10), (0.1, 0.01, 0.4)))
    fine = rasterise(eye, OctGrid((40, 240, 20), (0.05, 0.005, 0.2)))
    # Each coarse A-scan centre lies midway between four fine ones.
    b = fine.boundaries
    mean = 0.25 * (b[:, 0::2, 0::2] + b[:, 1::2, 0::2] + b[:, 0::2, 1::2] + b[:, 1::2, 1::2])
    # Same depth window centre, but its top is 0.6 mm above it on both grids.
    assert np.abs(mean - coarse.boundaries).max() < 0.005


def test_irf_cyst_volume_matches_the_ellipsoid_on_two_grids() -> None:
    eye = _eye(1)
    a, c, b = 0.2, 0.35, 0.03
    part = PocketPart(0.6, -0.5, a, c, 0.4, b)
    from segrenorm.simulate.retina import _surfaces

    band = _surfaces(eye, np.array(0.6), np.array(-0.5), [])
    depth = float(0.5 * (band[3] + band[6]))
    exact = 4.0 / 3.0 * math.pi * a * b * c
    cyst = _with(eye, FluidPocket(IRF, (part,), depth, exact))
    for grid in (
        OctGrid((30, 150, 12), (0.08, 0.008, 0.4)),
        OctGrid((96, 600, 48), (0.025, 0.002, 0.1)),
    ):
        volume = rasterise(cyst, grid)
        measured = volume.fluid_fraction.sum(dtype=np.float64) * np.prod(grid.spacing)
        assert measured == pytest.approx(exact, rel=0.03)
        assert set(np.unique(volume.fluid_class)) == {0, IRF}
        assert ndimage.label(volume.labels > 0, np.ones((3, 3, 3)))[1] == 1


@pytest.mark.parametrize(("cls", "lifted", "kept"), [(SRF, 8, 9), (PED, 9, 10)])
def test_srf_and_ped_lift_the_layers_above_by_the_pocket_height(
    cls: int, lifted: int, kept: int
) -> None:
    eye = _eye(2)
    height, a = 0.1, 0.4
    pocket = FluidPocket(cls, (PocketPart(0.0, 0.0, a, a, 0.0, height),), None, 0.0)
    base = rasterise(eye, GRID).boundaries
    lift = rasterise(_with(eye, pocket), GRID)
    shift = base - lift.boundaries
    # At the centre and at rho = 0.5 (x = 0.2 mm): a lens H (1 - rho^2), a dome H sqrt(.).
    edge = height * (0.75 if cls == SRF else math.sqrt(0.75))
    np.testing.assert_allclose(shift[: lifted + 1, 20, 20], height, atol=1e-6)
    np.testing.assert_allclose(shift[: lifted + 1, 24, 20], edge, atol=1e-6)
    np.testing.assert_allclose(shift[kept:, :, :], 0.0, atol=1e-6)
    np.testing.assert_allclose(shift[:, 0, 0], 0.0, atol=1e-6)  # outside the footprint
    # The central A-scan holds the pocket height of fluid, between the moved boundaries.
    column = lift.fluid_fraction[20, :, 20].sum() * GRID.spacing[1]
    assert column == pytest.approx(height, abs=1e-4)
    top = lift.boundaries[lifted, 20, 20]
    j = int((top + 0.5 * height) / GRID.spacing[1])
    assert lift.fluid_fraction[20, j, 20] == 1.0 and lift.labels[20, j, 20] == cls


def test_label_components_are_the_recorded_pockets() -> None:
    # Voxels at most a third of the default gaps (0.12, 0.05, 1.2 mm), covering the field.
    grid = OctGrid((64, 100, 14), (0.04, 0.01, 0.4))
    seen = set()
    for seed in range(3):
        eye = _eye(seed, ALL_FLUID)
        volume = rasterise(eye, grid)
        summary = eye.pockets_summary()
        for cls, name in ((IRF, "IRF"), (SRF, "SRF"), (PED, "PED")):
            found = ndimage.label(volume.labels == cls, np.ones((3, 3, 3)))[1]
            assert found == summary[name]["count"]
            seen.add(cls) if found else None
        # Any class against any other: no two pockets touch.
        assert ndimage.label(volume.labels > 0, np.ones((3, 3, 3)))[1] == len(eye.pockets)
    assert seen == {IRF, SRF, PED}


def test_pocket_volumes_and_the_record() -> None:
    eye = _eye(4, ALL_FLUID)
    record = json.loads(json.dumps(eye.to_dict()))
    assert len(record["pockets"]) == len(eye.pockets)
    for pocket, saved in zip(eye.pockets, record["pockets"], strict=True):
        p = pocket.parts[0]
        factor = {SRF: 1 / 2, PED: 2 / 3}.get(pocket.fluid_class, 4 / 3)
        if len(pocket.parts) == 1:
            assert pocket.volume_mm3 == pytest.approx(factor * math.pi * p.a * p.c * p.height)
        assert saved["volume_mm3"] == pytest.approx(pocket.volume_mm3)
    grid = OctGrid((100, 200, 32), (0.04, 0.005, 0.2))  # every pocket fits in 4 x 6.4 mm
    fraction = rasterise(eye, grid).fluid_fraction
    measured = fraction.sum(dtype=np.float64) * np.prod(grid.spacing)
    assert measured == pytest.approx(sum(p.volume_mm3 for p in eye.pockets), rel=0.05)


def test_vessel_shadow_follows_beer_lambert() -> None:
    eye = _eye(5)
    # angle pi/2: u = z, v = -x, so the curve v = 0.5 is the line x = -0.5 mm (A-scan 10).
    radius = 0.045
    vessel = Vessel(math.pi / 2, 0.5, 0.0, radius, 0.4, 0.5)
    volume = rasterise(_with(eye, vessels=(vessel,)), GRID)
    b = volume.boundaries
    t = volume.vessel_transmission
    np.testing.assert_allclose(t[10], 0.4, atol=1e-6)  # the full diameter, every B-scan
    # The neighbouring A-scans lie 0.05 mm away, beyond the radius: no shadow.
    assert (t[9] == 1.0).all() and (t[11] == 1.0).all() and np.isinf(volume.vessel_depth[9]).all()
    centre = b[0, 10, 5] + 0.5 * (b[2, 10, 5] - b[0, 10, 5])
    assert volume.vessel_depth[10, 5] == pytest.approx(centre + radius, abs=1e-5)
    # 0.025 mm off the axis the chord is sqrt(1 - (0.025 / r)^2) of the diameter.
    moved = _with(eye, vessels=(dataclasses.replace(vessel, offset=0.525),))
    off = rasterise(moved, GRID)
    share = math.sqrt(1 - (0.025 / radius) ** 2)
    assert off.vessel_transmission[10, 5] == pytest.approx(0.4**share, abs=1e-5)
    assert off.vessel_depth[10, 5] == pytest.approx(centre + share * radius, abs=1e-5)


def test_retina_mask_holds_fluid_and_not_the_vitreous() -> None:
    volume = rasterise(_eye(0, ALL_FLUID), OctGrid((32, 120, 12), (0.08, 0.01, 0.4)))
    mask = volume.retina_mask()
    assert mask[volume.fluid_fraction > 0].all()
    depth = (np.arange(120) + 0.5) * 0.01
    vitreous = depth[None, :, None] < volume.boundaries[0][:, None, :]
    assert not mask[vitreous & (volume.fluid_fraction == 0)].any()
    choroid = depth[None, :, None] > volume.boundaries[9][:, None, :] + 0.01
    assert not mask[choroid & (volume.fluid_class != PED)].any()
    centre = 0.5 * (volume.boundaries[0] + volume.boundaries[9])
    j = (centre / 0.01).astype(int)
    assert mask[np.arange(32)[:, None], j, np.arange(12)[None, :]].all()


def test_seeded_determinism() -> None:
    grid = OctGrid((32, 120, 12), (0.08, 0.01, 0.4))
    one, two = _eye(7, ALL_FLUID), _eye(7, ALL_FLUID)
    assert one.to_dict() == two.to_dict()
    np.testing.assert_array_equal(rasterise(one, grid).labels, rasterise(two, grid).labels)
    assert _eye(8, ALL_FLUID).to_dict() != one.to_dict()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("irf_probability", 1.5, "irf_probability=1.5 must be a probability in [0, 1]"),
        ("ped_probability", -0.1, "ped_probability=-0.1 must be a probability"),
        ("srf_radius_mm", (-0.1, 0.5), "srf_radius_mm=(-0.1, 0.5) must hold positive sizes"),
        ("irf_height_mm", (0.05, 0.01), "irf_height_mm=(0.05, 0.01) must be a range"),
        ("ped_count", (3, 1), "ped_count=(3, 1) must be a range"),
        ("min_gap_mm", (0.1, 0.0, 1.0), "min_gap_mm=(0.1, 0.0, 1.0) must hold positive"),
        ("max_lateral_samples", 0, "max_lateral_samples=0 must be at least 1"),
    ],
)
def test_bad_settings_name_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=r"^fluid: ") as info:
        FluidSettings(**{field: value})
    assert message in str(info.value)


def test_bad_grid_and_missing_grid() -> None:
    with pytest.raises(InputError, match=r"shape=\(0, 4, 4\) must be three positive counts"):
        OctGrid((0, 4, 4), (0.1, 0.1, 0.1))
    with pytest.raises(InputError, match=r"spacing=\(0.1, -1.0, 0.1\) must be three sizes"):
        OctGrid((4, 4, 4), (0.1, -1.0, 0.1))
    volume = rasterise(_eye(), OctGrid((4, 8, 2), (0.1, 0.1, 0.1)))
    bare = dataclasses.replace(volume, grid=None)
    assert isinstance(bare, RetinaVolume)
    with pytest.raises(InputError, match="has no grid"):
        bare.retina_mask()


def test_a_cyst_thinner_than_a_bscan_is_one_component() -> None:
    # Centred on the border of B-scans 20 and 21 (z = 0.05 mm), 0.1 mm across (one B-scan):
    # each B-scan holds half of it, so half-filled plateaus sit exactly at the threshold.
    eye = _eye(1)
    from segrenorm.simulate.retina import _surfaces

    band = _surfaces(eye, np.array(0.3), np.array(0.05), [])
    depth = float(0.5 * (band[3] + band[6]))
    part = PocketPart(0.3, 0.05, 0.12, 0.05, 0.0, 0.03)
    volume = rasterise(_with(eye, FluidPocket(IRF, (part,), depth, 0.0)), GRID)
    assert ndimage.label(volume.labels > 0, np.ones((3, 3, 3)))[1] == 1
    assert set(np.nonzero(volume.labels)[2]) == {20, 21}
