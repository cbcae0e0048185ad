"""One physical grid per cache: prepare resamples every volume to the target site's median
voxel size (or ``--spacing``), records the grid, and refuses to guess a target among N > 2 sites.

Reference resamplings are computed with SimpleITK, independently of segrenorm's SciPy path.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

import segrenorm.data.prepare as prepare_module
from segrenorm.cli import main
from segrenorm.data.facts import inference_facts
from segrenorm.data.grid import GridChoice, canonical_spacing, choose_grid, on_grid
from segrenorm.data.listing import SubjectRecord
from segrenorm.data.manifest import open_manifest, summarize
from segrenorm.data.prepare import prepare_cache
from segrenorm.errors import ConfigError, InputError
from segrenorm.volumes.bias import BiasCorrection
from segrenorm.volumes.intensity import IntensityScaling
from segrenorm.volumes.readwrite import load_image

FOV = (24.0, 24.0, 16.0)  # mm: every test volume covers the same box
NO_BIAS = BiasCorrection(method="none")
QUICK = {"bias_correction": NO_BIAS, "test_fraction": 0.0, "val_fraction": 0.0,
         "pad_multiple": 8, "min_foreground": 0.0, "progress": False}  # fmt: skip


def world_phantom(spacing: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Image and labels of one ball-shaped head sampled at ``spacing`` over :data:`FOV`."""
    shape = tuple(round(f / s) for f, s in zip(FOV, spacing, strict=True))
    axes = [(np.arange(n) + 0.5) * s - f / 2 for n, s, f in zip(shape, spacing, FOV, strict=True)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    radius = np.sqrt(x**2 + y**2 + (1.4 * z) ** 2)
    labels = (radius < 10).astype(np.uint8) + (radius < 6).astype(np.uint8)
    image = 40.0 + 300.0 * labels + 20.0 * np.sin(x / 3.0) * (labels > 0)
    return image.astype(np.float32), labels


def write_subject(
    folder: Path, name: str, spacing: tuple[float, float, float], *, permute: bool = False
) -> tuple[Path, Path]:
    """``name.nii.gz`` and ``name_dseg.nii.gz`` at ``spacing`` (RAS, or axes x/y swapped)."""
    image, labels = world_phantom(spacing)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-f / 2 + s / 2 for f, s in zip(FOV, spacing, strict=True)]
    if permute:  # stored as (A, R, S): voxel axis 0 runs along y
        image, labels = image.transpose(1, 0, 2), labels.transpose(1, 0, 2)
        affine = affine[:, [1, 0, 2, 3]]
        spacing = (spacing[1], spacing[0], spacing[2])
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / f"{name}.nii.gz", folder / f"{name}_dseg.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), str(paths[0]))
    nib.save(nib.Nifti1Image(labels, affine), str(paths[1]))
    return paths


def site(root: Path, name: str, spacings: list[tuple[float, float, float]]) -> list[SubjectRecord]:
    records = []
    for k, spacing in enumerate(spacings):
        image, label = write_subject(root / name, f"{name}{k}", spacing, permute=k == 2)
        records.append(SubjectRecord(f"{name}{k}", name, image, label))
    return records


def sitk_resample(
    volume: np.ndarray,
    spacing: float | tuple[float, float, float],
    new_spacing: float | tuple[float, float, float],
    shape: tuple[int, ...],
    *,
    linear: bool,
) -> np.ndarray:
    """``volume`` (RAS voxels) resampled so the grids' outer corners coincide, by SimpleITK."""
    have = spacing if isinstance(spacing, tuple) else (spacing,) * 3
    want = new_spacing if isinstance(new_spacing, tuple) else (new_spacing,) * 3
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.transpose(2, 1, 0)))
    image.SetSpacing(have)
    image.SetOrigin(tuple(s / 2 for s in have))  # voxel 0's centre, so the corner sits at 0
    out = sitk.Resample(
        image,
        [int(shape[0]), int(shape[1]), int(shape[2])],
        sitk.Transform(),
        sitk.sitkLinear if linear else sitk.sitkNearestNeighbor,
        tuple(s / 2 for s in want),
        want,
        (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0),
        0.0,
        image.GetPixelID(),
    )
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0)


def subject_rows(cache: Path, manifest: dict, subject: str) -> tuple[dict, dict[str, np.ndarray]]:
    entry = next(s for s in manifest["subjects"] if s["subject"] == subject)
    rows = slice(entry["first_row"], entry["first_row"] + entry["n_slices"])
    arrays = {n: np.load(cache / entry["site"] / f"{n}.npy")[rows] for n in ("images", "labels",
              "masks", "slices")}  # fmt: skip
    return entry, arrays


def test_mixed_voxel_sizes_are_cut_on_the_target_grid(tmp_path: Path) -> None:
    one, two = (1.0, 1.0, 1.0), (2.0, 2.0, 2.0)
    near = (1.0005, 1.0005, 1.0005)  # within the grid's 1e-3: cut as stored
    records = site(tmp_path, "src", [one, two, one, near]) + site(tmp_path, "tgt", [one] * 3)
    cache = prepare_cache(records, tmp_path / "cache", **QUICK)
    manifest = open_manifest(cache)
    assert manifest["spacing"] == [1.0, 1.0, 1.0]
    assert manifest["grid"] == {"spacing": [1.0, 1.0, 1.0], "from": "target-median",
                                "target": "tgt"}  # fmt: skip
    for entry in manifest["subjects"]:
        assert entry["spacing"] == pytest.approx([1.0, 1.0, 1.0], rel=1e-3)
        assert entry["shape"] == [24, 24, 16]
    originals = {s["subject"]: s["original_spacing"] for s in manifest["subjects"]}
    assert originals["src1"] == [2.0, 2.0, 2.0] and originals["src0"] == [1.0, 1.0, 1.0]
    assert manifest["slice_shape"] == [24, 24]
    # The 2 mm subject against SimpleITK's resampling of its volume to 1 mm.
    entry, arrays = subject_rows(cache, manifest, "src1")
    image, labels = world_phantom(two)
    linear = sitk_resample(image, 2.0, 1.0, (24, 24, 16), linear=True)
    nearest = sitk_resample(labels, 2.0, 1.0, (24, 24, 16), linear=False)
    scaled = IntensityScaling.from_dict(entry["scaling"]).apply(linear)
    z = arrays["slices"][:, 1]
    inside = arrays["masks"].astype(bool)
    assert inside.sum() > 1000
    got, want = arrays["images"][inside], np.moveaxis(scaled, 2, 0)[z][inside]
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.array_equal(arrays["labels"], np.moveaxis(nearest, 2, 0)[z])
    assert set(np.unique(arrays["labels"])) <= {0, 1, 2}
    # A subject already on the grid is cut from its stored voxels, not resampled.
    for name, spacing in (("src0", one), ("src3", near)):
        entry, arrays = subject_rows(cache, manifest, name)
        assert entry["spacing"] == pytest.approx(spacing, abs=1e-6)
        image, _ = world_phantom(spacing)
        scaled = IntensityScaling.from_dict(entry["scaling"]).apply(image)
        inside = arrays["masks"].astype(bool)
        want = np.moveaxis(scaled, 2, 0)[arrays["slices"][:, 1]][inside]
        assert np.array_equal(arrays["images"][inside], want)
    first = summarize(manifest, "c").splitlines()[0]
    assert first.endswith(", grid 1x1x1 mm (median voxel size of target site tgt)")


def test_a_thick_slice_volume_is_resampled_along_all_three_axes(tmp_path: Path) -> None:
    """A 1x1x2 mm source volume is held on the target's 1 mm grid along R, A *and* S (the
    rule harmonize follows too), equal to SimpleITK's linear resampling of it."""
    thick = (1.0, 1.0, 2.0)
    records = site(tmp_path, "src", [thick, (1.0,) * 3]) + site(tmp_path, "tgt", [(1.0,) * 3] * 2)
    cache = prepare_cache(records, tmp_path / "cache", **QUICK)
    manifest = open_manifest(cache)
    assert manifest["spacing"] == [1.0, 1.0, 1.0]
    entry, arrays = subject_rows(cache, manifest, "src0")
    assert entry["original_spacing"] == [1.0, 1.0, 2.0]
    assert entry["spacing"] == [1.0, 1.0, 1.0] and entry["shape"] == [24, 24, 16]
    image, _ = world_phantom(thick)
    assert image.shape == (24, 24, 8)
    linear = sitk_resample(image, thick, (1.0, 1.0, 1.0), (24, 24, 16), linear=True)
    scaled = IntensityScaling.from_dict(entry["scaling"]).apply(linear)
    assert sorted(arrays["slices"][:, 1]) == list(range(16))  # 16 axial slices of 1 mm
    inside = arrays["masks"].astype(bool)
    assert inside.sum() > 1000
    want = np.moveaxis(scaled, 2, 0)[arrays["slices"][:, 1]][inside]
    np.testing.assert_allclose(arrays["images"][inside], want, atol=1e-5)
    assert inference_facts(manifest)["resampled"] is True


def test_inference_facts_say_whether_any_volume_was_resampled(tmp_path: Path) -> None:
    on = site(tmp_path, "src", [(1.0,) * 3, (1.0005,) * 3]) + site(tmp_path, "tgt", [(1.0,) * 3])
    manifest = open_manifest(prepare_cache(on, tmp_path / "on", **QUICK))
    assert inference_facts(manifest)["resampled"] is False  # every volume cut as stored
    off = site(tmp_path / "o", "src", [(1.0,) * 3, (1.0, 1.0, 1.2)]) + on[2:]
    manifest = open_manifest(prepare_cache(off, tmp_path / "off", **QUICK))
    assert inference_facts(manifest)["resampled"] is True
    legacy = {**manifest, "subjects": [{k: v for k, v in s.items() if k != "original_spacing"}
                                       for s in manifest["subjects"]]}  # fmt: skip
    assert inference_facts(legacy)["resampled"] is True  # a grid, no record: as before
    assert inference_facts({**legacy, "spacing": None})["resampled"] is False


def test_default_grid_is_the_target_median_on_canonical_axes(tmp_path: Path) -> None:
    # tgt2 is stored with x and y swapped: pixdim (1.1, 0.8, 1.3) is (0.8, 1.1, 1.3) in RAS.
    target = site(tmp_path, "tgt", [(1.0, 1.0, 1.0), (1.2, 0.9, 1.5), (0.8, 1.1, 1.3)])
    assert canonical_spacing(load_image(target[2].image).geometry) == pytest.approx((0.8, 1.1, 1.3))
    assert nib.load(target[2].image).header.get_zooms() == pytest.approx((1.1, 0.8, 1.3))
    source = site(tmp_path, "src", [(2.0, 2.0, 2.0), (1.0, 1.0, 1.0)])
    records = source + target
    # Medians by hand: R of 1.0, 1.2, 0.8; A of 1.0, 0.9, 1.1; S of 1.0, 1.5, 1.3.
    grid = choose_grid(records, ("src", "tgt"))
    assert grid.spacing == pytest.approx((1.0, 1.0, 1.3)) and grid.target == "tgt"
    assert grid.source == "target-median"
    # Site order decides the default target; target= names it.
    assert choose_grid(records, ("tgt", "src")).spacing == pytest.approx((1.5, 1.5, 1.5))
    assert choose_grid(records, ("src", "tgt"), target="src").target == "src"
    cache = prepare_cache(records, tmp_path / "cache", **QUICK)
    manifest = open_manifest(cache)
    assert manifest["spacing"] == pytest.approx([1.0, 1.0, 1.3])
    assert manifest["grid"]["from"] == "target-median" and manifest["grid"]["target"] == "tgt"
    for entry in manifest["subjects"]:
        assert entry["spacing"] == manifest["spacing"]
    by_name = {s["subject"]: s for s in manifest["subjects"]}
    assert by_name["tgt2"]["original_spacing"] == pytest.approx([0.8, 1.1, 1.3])
    assert by_name["src0"]["original_spacing"] == [2.0, 2.0, 2.0]
    # 20 x 27 x 11 voxels of 1.2 x 0.9 x 1.5 mm: round(11 * 1.5 / 1.3) = 13 slices at 1.3 mm.
    assert by_name["tgt1"]["shape"] == [24, 24, 13]


def test_user_spacing_overrides_the_median(tmp_path: Path) -> None:
    records = site(tmp_path, "src", [(1.0, 1.0, 1.0)] * 2) + site(tmp_path, "tgt", [(1.0,) * 3] * 2)
    cache = prepare_cache(records, tmp_path / "cache", spacing=(2.0, 2.0, 4.0), **QUICK)
    manifest = open_manifest(cache)
    assert manifest["spacing"] == [2.0, 2.0, 4.0]
    assert manifest["grid"] == {"spacing": [2.0, 2.0, 4.0], "from": "user", "target": None}
    assert all(s["shape"] == [12, 12, 4] for s in manifest["subjects"])
    assert summarize(manifest, "c").splitlines()[0].endswith(", grid 2x2x4 mm (given)")
    named = choose_grid(records, ("src", "tgt"), spacing=(2.0, 2.0, 4.0), target="src")
    assert named == GridChoice((2.0, 2.0, 4.0), "user", "src")


def test_more_than_two_sites_need_a_target(tmp_path: Path) -> None:
    records = [
        *site(tmp_path, "alpha", [(1.0,) * 3] * 2),
        *site(tmp_path, "beta", [(2.0,) * 3] * 2),
        *site(tmp_path, "gamma", [(1.0, 1.0, 2.0)] * 2),
    ]
    out = tmp_path / "cache"
    message = r"3 sites \('alpha', 'beta', 'gamma'\).*--target NAME.*--spacing X Y Z"
    with pytest.raises(ConfigError, match=message):
        prepare_cache(records, out, **QUICK)
    assert not out.exists() and not list(tmp_path.glob(".cache*"))
    with pytest.raises(ConfigError) as info:
        prepare_cache(records, out, target="delta", **QUICK)
    # The one site lookup of data.target and train --to, with its one message.
    assert str(info.value) == (
        "target site 'delta' is not in the cache being prepared: its sites are alpha (A), "
        "beta (B), gamma (C); choose with --target NAME (target=)"
    )
    assert not out.exists() and not list(tmp_path.glob(".cache*"))
    manifest = open_manifest(prepare_cache(records, out, target="gamma", **QUICK))
    assert manifest["grid"] == {"spacing": [1.0, 1.0, 2.0], "from": "target-median",
                                "target": "gamma"}  # fmt: skip
    assert list(manifest["sites"]) == ["A", "B", "C"]
    assert {tuple(s["shape"]) for s in manifest["subjects"]} == {(24, 24, 8)}
    user = choose_grid(records, ("alpha", "beta", "gamma"), spacing=(3.0, 3.0, 3.0))
    assert user == GridChoice((3.0, 3.0, 3.0), "user", None)
    # A cache key names a site as data.target and train --to accept it; the grid records names.
    names = ("alpha", "beta", "gamma")
    assert choose_grid(records, names, target="C") == choose_grid(records, names, target="gamma")
    assert choose_grid(records, names, spacing=(3.0,) * 3, target="B").target == "beta"


def test_cli_prepare_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = [
        *site(tmp_path, "alpha", [(1.0,) * 3] * 2),
        *site(tmp_path, "beta", [(2.0,) * 3] * 2),
        *site(tmp_path, "gamma", [(2.0, 2.0, 1.0)] * 2),
    ]
    listing = tmp_path / "subjects.csv"
    with listing.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["subject", "site", "image", "label"])
        for r in records:
            assert r.label is not None
            files = [r.image.relative_to(tmp_path), r.label.relative_to(tmp_path)]
            writer.writerow([r.subject, r.site, *files])
    out = tmp_path / "cache"
    base = ["prepare", "--csv", str(listing), "--out", str(out), "--quiet",
            "--bias-correction", "none", "--test-fraction", "0", "--val-fraction", "0",
            "--pad-multiple", "8"]  # fmt: skip
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "segrenorm prepare: error: the listing has 3 sites ('alpha', 'beta', 'gamma')" in err
    assert "--target NAME" in err
    assert not out.exists() and not list(tmp_path.glob(".cache*"))
    assert main([*base, "--target", "beta"]) == 0
    assert ", grid 2x2x2 mm (median voxel size of target site beta)" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["grid"] == {"spacing": [2.0, 2.0, 2.0], "from": "target-median",
                                "target": "beta"}  # fmt: skip
    assert main([*base, "--overwrite", "--spacing", "1", "1", "1"]) == 0
    assert open_manifest(out)["grid"] == {"spacing": [1.0, 1.0, 1.0], "from": "user",
                                          "target": None}  # fmt: skip


def test_on_grid_tolerance() -> None:
    assert on_grid((1.0, 1.0, 1.0009), (1.0, 1.0, 1.0))
    assert not on_grid((1.0, 1.0, 1.002), (1.0, 1.0, 1.0))
    with pytest.raises(ConfigError, match=r"spacing \(1\.0, 0\.0, 1\.0\) must be three positive"):
        GridChoice((1.0, 0.0, 1.0), "user")
    with pytest.raises(ConfigError, match=r"grid source 'guess' is not one of"):
        GridChoice((1.0, 1.0, 1.0), "guess")


def test_an_unreadable_target_header_stops_prepare_before_any_subject(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_subject(*args: object, **kwargs: object) -> None:
        raise AssertionError("a subject was processed before the grid was known")

    monkeypatch.setattr(prepare_module, "_process_subject", no_subject)
    records = site(tmp_path, "src", [(1.0,) * 3] * 2) + site(tmp_path, "tgt", [(1.0,) * 3] * 2)
    broken = tmp_path / "tgt" / "tgt1.nii.gz"
    broken.write_bytes(broken.read_bytes()[:40])  # the header cut short
    out = tmp_path / "cache"
    with pytest.raises(InputError, match=r"tgt1\.nii\.gz"):
        prepare_cache(records, out, **QUICK)
    assert not out.exists() and not list(tmp_path.glob(".cache*"))
