"""OCT vendors: files, validation, exact partial volume, shadows, speckle and noise statistics."""

from __future__ import annotations

import dataclasses
import json
import math
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import yaml

from segrenorm.errors import ConfigError
from segrenorm.simulate import oct_render
from segrenorm.simulate.oct_render import compress, linear_intensity, render_oct
from segrenorm.simulate.oct_vendors import OctVendor, load_vendor, vendor_names
from segrenorm.simulate.retina import LAYER_NAMES, RetinaVolume

N_REGIONS = len(LAYER_NAMES)
REFL = tuple(0.1 * (k + 1) for k in range(N_REGIONS))  # 0.1, 0.2, ..., 1.2: all distinct


def _vendor(**changes: object) -> OctVendor:
    """A small, linear-looking device: no blur, no roll-off, no speckle, no noise."""
    base = OctVendor(
        name="Tiny", shape=(12, 40, 6), spacing=(0.01, 0.01, 0.05), reflectivity=REFL,
        fluid=(0.01, 0.02, 0.03), rolloff_mm=1e6, psf_axial_um=0.0, psf_lateral_um=0.0,
        speckle_looks=0, noise_floor=0.0, compression="power", power=1.0, levels=30000,
    )  # fmt: skip
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _flat(vendor: OctVendor, depths: list[float]) -> RetinaVolume:
    """Flat layers with boundaries at ``depths`` (mm), no fluid, no vessels."""
    n_x, n_y, n_z = vendor.shape
    bounds = np.broadcast_to(np.asarray(depths, np.float32)[:, None, None], (len(depths), n_x, n_z))
    zeros = np.zeros((n_x, n_y, n_z), np.uint8)
    return RetinaVolume(
        boundaries=np.array(bounds),
        fluid_fraction=np.zeros((n_x, n_y, n_z), np.float32),
        fluid_class=zeros,
        vessel_depth=np.full((n_x, n_z), np.inf, np.float32),
        vessel_transmission=np.ones((n_x, n_z), np.float32),
        labels=zeros.copy(),
    )


# Boundary k at depth 0.05 + 0.02 k mm: region k + 1 spans two 0.01 mm voxels from 0.05 + 0.02 k.
EVEN = [0.05 + 0.02 * k for k in range(N_REGIONS - 1)]


# --- files and validation ------------------------------------------------------------------------


def test_packaged_vendors_follow_table_ii_and_round_trip(tmp_path: Path) -> None:
    assert vendor_names() == ["Cirrus", "Spectralis"]
    cirrus, spectralis = load_vendor("Cirrus"), load_vendor("Spectralis")
    assert (cirrus.shape, spectralis.shape) == ((512, 1024, 128), (256, 496, 49))  # Table II
    # One field of view, the 6 x 1.984 x 6 mm macular cube, so that paired renders of one eye
    # sit on the same voxels once the source is resampled to the target's voxel size.
    for vendor in (cirrus, spectralis):
        fov = [n * s for n, s in zip(vendor.shape, vendor.spacing, strict=True)]
        assert fov == pytest.approx([6.0, 1.984, 6.0], abs=1e-6)
    assert spectralis.spacing[1] == 0.004  # Table II's depth sampling, as written
    assert (cirrus.psf_axial_um, cirrus.psf_lateral_um) == (5.0, 20.0)
    assert (spectralis.psf_axial_um, spectralis.psf_lateral_um) == (7.0, 14.0)
    assert (cirrus.speckle_looks, spectralis.speckle_looks) == (1, 8)
    assert (cirrus.levels, cirrus.compression, spectralis.compression) == (255, "log", "power")
    for vendor in (cirrus, spectralis):
        refl = dict(zip(LAYER_NAMES, vendor.reflectivity, strict=True))
        assert max(refl, key=refl.__getitem__) == "RPE"  # the brightest band
        assert refl["OS"] > refl["RNFL"] > refl["IPL"] > refl["GCL"] > refl["INL"] > refl["ONL"]
        assert refl["OPL"] > refl["INL"] and refl["vitreous"] < min(vendor.fluid)
        assert OctVendor.from_dict(vendor.to_dict()) == vendor
        path = tmp_path / f"{vendor.name}-copy.yaml"
        path.write_text(yaml.safe_dump(vendor.to_dict()), encoding="utf-8")
        assert load_vendor(path) == vendor
        with resources.as_file(
            resources.files("segrenorm.simulate").joinpath("oct_profiles", f"{vendor.name}.yaml")
        ) as packaged:
            assert load_vendor(packaged) == vendor
    data = {k: v for k, v in cirrus.to_dict().items() if k != "name"}
    nameless = tmp_path / "MyCirrus.json"
    nameless.write_text(json.dumps(data), encoding="utf-8")
    assert load_vendor(nameless) == dataclasses.replace(cirrus, name="MyCirrus")


def test_clean_and_scaled() -> None:
    cirrus = load_vendor("Cirrus")
    clean = cirrus.clean()
    assert (clean.speckle_looks, clean.noise_floor) == (0, 0.0)
    assert dataclasses.replace(clean, speckle_looks=1, noise_floor=cirrus.noise_floor) == cirrus
    small = cirrus.scaled(0.25)
    assert small.shape == (128, 256, 32)
    assert small.spacing == pytest.approx((6.0 / 128, 1.984 / 256, 6.0 / 32))
    tiny = cirrus.scaled(0.01)  # at least 8 voxels per axis, field of view kept
    assert tiny.shape == (8, 10, 8)
    assert tiny.shape[0] * tiny.spacing[0] == pytest.approx(6.0)
    with pytest.raises(ConfigError, match=r"scale=-1 must be a positive number"):
        cirrus.scaled(-1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"compression": "sqrt"}, r"'compression' = 'sqrt' is unknown; use 'log' or 'power'"),
        ({"levels": 65535}, r"'levels' = 65535 is outside \[1, 32767\]"),
        ({"shape": [512, 1024]}, r"'shape' must hold 3 numbers"),
        ({"shape": [0, 1024, 128]}, r"'shape' = 0 is outside \[1"),
        ({"speckle_looks": 1.5}, r"'speckle_looks' must be an integer, got 1.5"),
        ({"name": "a/b"}, r"'name' must be a non-empty folder-safe name"),
        ({"colour": 1}, r"unknown field\(s\) 'colour'; known fields are name, shape"),
    ],
)
def test_bad_vendor_fields_are_named(change: dict[str, object], message: str) -> None:
    data = {**load_vendor("Cirrus").to_dict(), **change}
    with pytest.raises(ConfigError, match=message):
        OctVendor.from_dict(data, source="my.yaml")


def test_bad_region_names_and_unknown_vendor(tmp_path: Path) -> None:
    data = load_vendor("Cirrus").to_dict()
    data["reflectivity"] = {**data["reflectivity"], "ELM": 0.2}
    del data["reflectivity"]["IS"]
    with pytest.raises(ConfigError, match=r"my.yaml: field 'reflectivity' must give exactly "
                       r"vitreous, .*unknown \['ELM'\], missing \['IS'\]"):  # fmt: skip
        OctVendor.from_dict(data, source="my.yaml")
    with pytest.raises(ConfigError, match=r"my.yaml: missing required field\(s\) fluid"):
        OctVendor.from_dict({"name": "x", "shape": [8] * 3, "spacing": [1] * 3,
                             "reflectivity": REFL}, source="my.yaml")  # fmt: skip
    with pytest.raises(ConfigError, match=r"unknown OCT vendor 'Topcon': use one of Cirrus, "
                       r"Spectralis or the path"):  # fmt: skip
        load_vendor("Topcon")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"broken.yaml: cannot read OCT vendor"):
        load_vendor(broken)


def test_a_volume_off_the_vendor_grid_is_refused() -> None:
    vendor = _vendor()
    volume = _flat(dataclasses.replace(vendor, shape=(12, 40, 7)), EVEN)
    with pytest.raises(ConfigError, match=r"retina volume is \(12, 40, 7\) with 11 boundaries, "
                       r"the vendor's grid is \(12, 40, 6\)"):  # fmt: skip
        render_oct(volume, vendor, np.random.default_rng(0))


# --- the noise-free image ------------------------------------------------------------------------


def test_exact_depth_partial_volume() -> None:
    vendor = _vendor()
    depths = list(EVEN)
    depths[0] = 0.055  # half of voxel 5 is vitreous, half RNFL
    depths[1] = 0.0725  # a quarter of voxel 7 is RNFL, three quarters GCL
    image = linear_intensity(_flat(vendor, depths), vendor, np.random.default_rng(0))
    column = image[3, :, 2]
    assert column[4] == pytest.approx(REFL[0])
    assert column[5] == pytest.approx((REFL[0] + REFL[1]) / 2)
    assert column[6] == pytest.approx(REFL[1])
    assert column[7] == pytest.approx(0.25 * REFL[1] + 0.75 * REFL[2])
    assert column[-1] == pytest.approx(REFL[-1])  # the sclera reaches the bottom
    # Two boundaries in one voxel (a 0.004 mm GCL inside voxel 9): the three-way mean.
    depths = list(EVEN)
    depths[2], depths[3] = 0.093, 0.097
    image = linear_intensity(_flat(vendor, depths), vendor, np.random.default_rng(0))
    want = 0.3 * REFL[2] + 0.4 * REFL[3] + 0.3 * REFL[4]
    assert image[0, 9, 0] == pytest.approx(want) and image[0, 8, 0] == pytest.approx(REFL[2])
    assert image[0, 10, 0] == pytest.approx(REFL[4])
    # The column integral equals the integral of the reflectivity profile (no mass lost).
    assert image[0].sum(axis=0)[0] * 0.01 == pytest.approx(
        sum(r * w for r, w in zip(REFL, np.diff([0.0, *depths, 0.4]), strict=True)), rel=1e-5
    )


def test_fluid_mixing_rolloff_and_compression() -> None:
    vendor = _vendor(rolloff_mm=0.5)
    volume = _flat(vendor, EVEN)
    volume.fluid_fraction[2, 12, 1] = 0.25
    volume.fluid_class[2, 12, 1] = 1  # an IRF cyst inside region 4 (0.11-0.13 mm)
    image = linear_intensity(volume, vendor, np.random.default_rng(0))
    decay = math.exp(-0.125 / 0.5)  # voxel 12's centre is 0.125 mm deep
    assert image[2, 12, 1] == pytest.approx((0.75 * REFL[4] + 0.25 * 0.01) * decay)
    assert image[2, 12, 0] == pytest.approx(REFL[4] * decay)
    log = _vendor(compression="log", dynamic_range_db=40.0, gain=0.5, levels=255)
    stored = compress(np.array([1.0, 0.1, 0.001, 0.0, 3.0], np.float32), log)
    # levels * (1 + 10 log10(0.5 s) / 40), clipped, rounded: s = 0.1 gives -13.01 dB -> 172.
    assert stored.tolist() == [round(255 * (1 - 3.0103 / 40)), 172, round(255 * (1 - 33.0103 / 40)),
                               0, 255]  # fmt: skip
    power = compress(np.array([0.0625, 1.0], np.float32), _vendor(power=0.25, levels=1000))
    assert power.tolist() == [500.0, 1000.0]


@pytest.mark.parametrize(("fluid_class", "gap_region"), [(2, "RPE"), (3, "choroid")])
def test_a_pocket_replaces_the_band_its_gap_lies_in(fluid_class: int, gap_region: str) -> None:
    # The retina model lifts the layers above an SRF (PED) pocket, leaving its gap inside the
    # RPE (choroid) region. A voxel at the pocket's top edge, half the band above and half
    # gap, must read half that band and half fluid: none of the gap region's brightness.
    vendor = _vendor()
    k = LAYER_NAMES.index(gap_region)  # the gap region: between boundaries k - 1 and k
    depths = list(EVEN)
    depths[k - 1] += 0.005  # the band above ends half-way into voxel (0.05 + 0.02 (k-1)) / dy
    volume = _flat(vendor, depths)
    j = round((0.05 + 0.02 * (k - 1)) / 0.01)
    volume.fluid_fraction[3, j, 2] = 0.5  # the gap's half of that voxel is fluid
    volume.fluid_class[3, j, 2] = fluid_class
    image = linear_intensity(volume, vendor, np.random.default_rng(0))
    assert image[3, j, 2] == pytest.approx(0.5 * REFL[k - 1] + 0.5 * vendor.fluid[fluid_class - 1])
    assert image[3, j, 1] == pytest.approx(0.5 * REFL[k - 1] + 0.5 * REFL[k])  # no fluid: mean


def test_vessel_shadow_attenuates_only_below_the_vessel() -> None:
    vendor = _vendor()
    volume = _flat(vendor, EVEN)
    plain = linear_intensity(volume, vendor, np.random.default_rng(0))
    volume.vessel_depth[4, 3] = 0.0825  # a quarter into voxel 8
    volume.vessel_transmission[4, 3] = 0.4
    shadowed = linear_intensity(volume, vendor, np.random.default_rng(0))
    ratio = shadowed[4, :, 3] / plain[4, :, 3]
    np.testing.assert_allclose(ratio[:8], 1.0, rtol=1e-6)
    assert ratio[8] == pytest.approx(1 - 0.75 * 0.6)
    np.testing.assert_allclose(ratio[9:], 0.4, rtol=1e-6)
    mask = np.ones(vendor.shape, bool)
    mask[4, :, 3] = False  # every other A-scan is untouched
    np.testing.assert_array_equal(shadowed[mask], plain[mask])


def test_chunked_blur_equals_the_whole_volume_blur(monkeypatch: pytest.MonkeyPatch) -> None:
    vendor = _vendor(psf_axial_um=30.0, psf_lateral_um=60.0, speckle_looks=2, noise_floor=0.01)
    volume = _flat(vendor, EVEN)
    volume.boundaries[:, :, 2] += 0.013  # structure across B-scans for the blur to carry
    whole = render_oct(volume, vendor, np.random.default_rng(5))
    monkeypatch.setattr(oct_render, "_CHUNK_VOXELS", 1)  # one B-scan per chunk, halos of 1
    np.testing.assert_array_equal(render_oct(volume, vendor, np.random.default_rng(5)), whole)
    assert not np.array_equal(render_oct(volume, vendor, np.random.default_rng(6)), whole)


# --- speckle and noise ---------------------------------------------------------------------------


def _one_region(vendor: OctVendor) -> RetinaVolume:
    """All voxels in the choroid (reflectivity 1.1): a flat volume."""
    return _flat(vendor, [0.0] * (N_REGIONS - 2) + [10.0])


def test_clean_render_has_no_speckle() -> None:
    vendor = _vendor(shape=(32, 64, 8), psf_axial_um=30.0, psf_lateral_um=30.0,
                     speckle_looks=4, noise_floor=0.01).clean()  # fmt: skip
    image = linear_intensity(_one_region(vendor), vendor, np.random.default_rng(0))
    assert float(image.std()) < 1e-6 and float(image.mean()) == pytest.approx(REFL[-2])


@pytest.mark.parametrize(("looks", "psf_um"), [(1, 0.0), (4, 0.0), (1, 40.0), (8, 40.0)])
def test_speckle_has_gamma_statistics(looks: int, psf_um: float) -> None:
    # Gamma(L, 1/L) has mean 1 and variance 1/L; correlated grains (a PSF) keep both.
    vendor = _vendor(shape=(64, 256, 8), psf_axial_um=psf_um, psf_lateral_um=psf_um,
                     speckle_looks=looks)  # fmt: skip
    image = linear_intensity(_one_region(vendor), vendor, np.random.default_rng(1))
    relative = image / REFL[-2]
    tolerance = 0.03 if psf_um == 0 else 0.12  # fewer independent grains with a PSF
    assert float(relative.mean()) == pytest.approx(1.0, abs=tolerance / 2)
    assert float(relative.var()) == pytest.approx(1.0 / looks, rel=tolerance)
    # Grains: neighbouring depth samples correlate only under a PSF.
    centred = relative - relative.mean()
    corr = float((centred[:, 1:] * centred[:, :-1]).mean() / centred.var())
    assert (corr > 0.5) if psf_um else (abs(corr) < 0.02)


def test_noise_floor_statistics_and_fixed_stripes() -> None:
    vendor = _vendor(shape=(64, 256, 16), reflectivity=(0.0,) * N_REGIONS, noise_floor=0.002,
                     speckle_looks=4, stripe=0.3)  # fmt: skip
    volume = _one_region(vendor)
    noise = linear_intensity(volume, vendor, np.random.default_rng(2))
    rows = noise.mean(axis=(0, 2))  # mean per depth row
    assert float(rows.mean()) == pytest.approx(0.002, rel=0.06)
    again = linear_intensity(volume, vendor, np.random.default_rng(3)).mean(axis=(0, 2))
    assert float(np.corrcoef(rows, again)[0, 1]) > 0.9  # the same lines on every scan
    assert float(rows.std() / rows.mean()) == pytest.approx(0.3, rel=0.4)
    flat = dataclasses.replace(vendor, stripe=0.0)
    noise = linear_intensity(volume, flat, np.random.default_rng(2))
    # Gamma(L, floor / L): variance floor^2 / L.
    assert float(noise.mean()) == pytest.approx(0.002, rel=0.02)
    assert float(noise.var()) == pytest.approx(0.002**2 / 4, rel=0.05)
