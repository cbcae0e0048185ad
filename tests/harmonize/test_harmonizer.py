"""Tests for the harmonization API: intensity mapping, geometry, policies and bad input."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from segrenorm.data.facts import TrainingFacts, inference_facts
from segrenorm.errors import CacheError, CheckpointError, ConfigError, InputError
from segrenorm.harmonize.fusion import interslice_jump, parse_views, translate_view
from segrenorm.harmonize.harmonizer import HarmonizeOptions, Harmonizer, HarmonizeWarning
from segrenorm.models.checkpoint import load_checkpoint
from segrenorm.training.state import save_checkpoint
from segrenorm.volumes.intensity import IntensityScaling, fit_scaling, foreground_mask
from segrenorm.volumes.readwrite import load_image, save_image
from segrenorm.volumes.spatial import to_canonical

Phantom = Callable[..., Path]


def expected_identity(path: Path, kit: SimpleNamespace) -> tuple[np.ndarray, np.ndarray]:
    """What an identity translator must produce: the input's scaled values on B's scale."""
    image = load_image(path)
    mask = foreground_mask(image.data)
    scaled = fit_scaling(image.data, mask).apply(image.data, mask)
    target = IntensityScaling.from_dict(
        {k: v for k, v in kit.scaling["B"].items() if k != "n_subjects"}
    )
    return np.where(mask, target.invert(scaled), 0.0), mask


def test_identity_model_maps_to_target_scale_and_keeps_geometry(
    tiny_checkpoints: dict[str, Path], write_phantom: Phantom, tiny_kit: SimpleNamespace
) -> None:
    path = write_phantom()
    harmonizer = Harmonizer.load(tiny_checkpoints["identity"], batch_size=5)
    assert harmonizer.views == ("axial",) and harmonizer.target_name == "3T"
    out = harmonizer.harmonize(path)
    want, mask = expected_identity(path, tiny_kit)
    assert out.data.dtype == np.float32 and out.geometry.dtype == "float32"
    assert out.geometry.shape == (20, 24, 16)
    np.testing.assert_allclose(out.geometry.affine, nib.load(path).affine, atol=1e-6)
    assert np.abs(out.data - want)[mask].max() < 2.0  # 1e-3 of B's 1600-wide range
    assert np.all(out.data[~mask] == 0.0)
    assert out.data[mask].min() > 190 and out.data.max() < 1801
    header = out.geometry.header
    assert header is not None and b"harmonized to 3T" in header["descrip"].tobytes()


def test_orientation_is_undone_exactly(
    tiny_checkpoints: dict[str, Path], write_phantom: Phantom, tmp_path: Path
) -> None:
    ras = write_phantom("ras.nii.gz")
    image = load_image(ras)
    # The same voxels stored as L-P-S with axes permuted (y, x, z): every world point keeps
    # its value, so the harmonized volumes must agree after reordering.
    flipped = np.ascontiguousarray(np.transpose(image.data, (1, 0, 2))[::-1, ::-1, :])
    affine = image.geometry.affine.copy()
    perm = np.zeros((4, 4))
    perm[0, 1] = perm[1, 0] = perm[2, 2] = perm[3, 3] = 1.0
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3], flip[1, 3] = flipped.shape[0] - 1, flipped.shape[1] - 1
    lps = tmp_path / "in" / "lps.nii.gz"
    nib.save(nib.Nifti1Image(flipped.astype(np.int16), affine @ perm @ flip), str(lps))
    assert load_image(lps).geometry.axcodes != ("R", "A", "S")
    harmonizer = Harmonizer.load(tiny_checkpoints["random"])
    a = harmonizer.harmonize(ras).data
    b = harmonizer.harmonize(lps).data
    np.testing.assert_allclose(np.transpose(b[::-1, ::-1, :], (1, 0, 2)), a, atol=1e-3)


def test_dtype_policies_and_background(
    tiny_checkpoints: dict[str, Path], write_phantom: Phantom, tmp_path: Path
) -> None:
    path = write_phantom()
    kept = Harmonizer.load(tiny_checkpoints["identity"], dtype="input", background="low")
    out = kept.harmonize(path)
    assert out.geometry.dtype == "int16" and np.all(out.data == np.rint(out.data))
    mask = foreground_mask(load_image(path).data)
    assert np.all(out.data[~mask] == 200.0)  # B's low intensity
    written = save_image(out.data, tmp_path / "o.nii.gz", geometry=out.geometry)
    assert nib.load(written).get_data_dtype() == np.int16
    small = write_phantom("u8.nii.gz", dtype="uint8", shape=(20, 24, 16))
    with pytest.warns(HarmonizeWarning, match=r"outside the uint8 range 0\.\.255.*clipped"):
        clipped = kept.harmonize(small)
    assert clipped.data.max() == 255


def test_spacing_off_training_is_resampled_with_a_warning(
    tiny_checkpoints: dict[str, Path], write_phantom: Phantom, tiny_kit: SimpleNamespace
) -> None:
    fine = write_phantom("fine.nii.gz", spacing=1.0, shape=(40, 48, 16))
    harmonizer = Harmonizer.load(tiny_checkpoints["identity"])
    with pytest.warns(HarmonizeWarning, match=r"voxel size 1x1x1 mm differs.*2x2x2 mm.*resampled"):
        out = harmonizer.harmonize(fine)
    assert out.data.shape == (40, 48, 16)
    want, _ = expected_identity(fine, tiny_kit)
    # Thin shells blur at 2 mm; the white-matter core survives the linear there-and-back.
    core = ndimage.binary_erosion(load_image(fine).data > 650, iterations=2)
    assert core.sum() > 100
    assert np.median(np.abs(out.data - want)[core]) < 80  # 5% of B's range
    # The through-plane spacing counts for an axial 2D model too (prepare's rule): resampled.
    thick = write_phantom("thick.nii.gz", spacing=(2.0, 2.0, 5.0))
    (note,) = harmonizer.run(thick).notes
    assert "(along S); resampled to 2x2x2 mm" in note


def test_spacing_far_from_training_is_refused(
    tiny_checkpoints: dict[str, Path], write_phantom: Phantom
) -> None:
    tiny = write_phantom("metres.nii.gz", spacing=0.002)
    harmonizer = Harmonizer.load(tiny_checkpoints["identity"])
    with pytest.raises(InputError, match=r"metres\.nii\.gz: voxel size 0\.002.*too far.*unit"):
        harmonizer.harmonize(tiny)


def test_oblique_volume_warns(tiny_checkpoints: dict[str, Path], write_phantom: Phantom) -> None:
    angle = np.radians(30)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    path = write_phantom("oblique.nii.gz", affine=rotation @ np.diag([2.0, 2.0, 2.0, 1.0]))
    harmonizer = Harmonizer.load(tiny_checkpoints["identity"])
    with pytest.warns(HarmonizeWarning, match=r"oblique\.nii\.gz: the voxel axes are 30 degrees"):
        out = harmonizer.harmonize(path)
    assert out.data.shape == (20, 24, 16)


def test_2d_and_4d_inputs_are_refused(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    harmonizer = Harmonizer.load(tiny_checkpoints["identity"])
    flat = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8), np.int16), np.eye(4)), str(flat))
    with pytest.raises(InputError, match=r"slice\.nii\.gz: the image is 2D.*one 3D volume"):
        harmonizer.harmonize(flat)
    series = tmp_path / "series.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8, 3), np.int16), np.eye(4)), str(series))
    with pytest.raises(InputError, match=r"series\.nii\.gz: the image is 4D.*Split 4D"):
        harmonizer.harmonize(series)


def test_bad_checkpoints_are_reported(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, tiny_kit: SimpleNamespace
) -> None:
    payload = load_checkpoint(tiny_checkpoints["identity"])
    old = tmp_path / "old.pt"
    save_checkpoint({**payload, "format_version": 0}, old)
    with pytest.raises(CheckpointError, match=r"old\.pt has checkpoint format_version 0"):
        Harmonizer.load(old)
    data = tiny_checkpoints["identity"].read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt is truncated or corrupt"):
        Harmonizer.load(cut)
    damaged = tmp_path / "damaged.pt"  # zip directory overwritten
    damaged.write_bytes(data[:-300] + bytes(64) + data[-236:])
    with pytest.raises(CheckpointError, match=r"damaged\.pt is truncated or corrupt"):
        Harmonizer.load(damaged)
    noise = tmp_path / "noise.pt"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match=r"noise\.pt holds Python objects.*not written by"):
        Harmonizer.load(noise)
    bare = tmp_path / "bare.pt"
    info = {k: v for k, v in payload["cache_info"].items() if k != "inference"}
    save_checkpoint({**payload, "cache_info": info}, bare)
    with pytest.raises(CheckpointError, match=r"bare\.pt: it does not record.*no-such-cache"):
        Harmonizer.load(bare)
    with pytest.raises(InputError, match=r"checkpoint .*missing\.pt does not exist"):
        Harmonizer.load(tmp_path / "missing.pt")


def test_views_fuse_and_reduce_flicker(
    tiny_checkpoints: dict[str, Path], write_phantom: Phantom
) -> None:
    path = write_phantom()
    single = Harmonizer.load(tiny_checkpoints["random"]).run(path)
    fused = Harmonizer.load(tiny_checkpoints["random"], views="axial,coronal,sagittal").run(path)
    assert fused.views == ("axial", "coronal", "sagittal")
    assert fused.n_slices == 20 + 24 + 16 and single.n_slices == 16
    assert not np.allclose(single.image.data, fused.image.data)
    mask = foreground_mask(load_image(path).data)
    assert interslice_jump(fused.image.data, "axial", mask) < interslice_jump(
        single.image.data, "axial", mask
    )
    same = Harmonizer.load(tiny_checkpoints["identity"], views=["coronal", "sagittal"])
    base = Harmonizer.load(tiny_checkpoints["identity"]).harmonize(path)
    np.testing.assert_allclose(same.harmonize(path).data, base.data, atol=2.0)


def test_per_view_models_must_be_prepared_alike(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, tiny_kit: SimpleNamespace
) -> None:
    other = tiny_kit.save_checkpoint(tmp_path / "other.pt", percentiles=[1.0, 99.0])
    with pytest.raises(ConfigError, match=r"other\.pt \(coronal\) scaled .*\(1\.0, 99\.0\)"):
        Harmonizer.load_per_view({"axial": tiny_checkpoints["identity"], "coronal": other})
    pair = Harmonizer.load_per_view(
        {"axial": tiny_checkpoints["identity"], "coronal": tiny_checkpoints["random"]}
    )
    assert pair.views == ("axial", "coronal")


def test_translate_view_bounds_the_batch_and_skips_empty_slices() -> None:
    seen: list[tuple[int, ...]] = []

    def spy(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape))
        return -x

    volume = np.full((6, 10, 7), -1.0, dtype=np.float32)
    volume[1:5, 2:8, 1:6] = 0.5
    mask = volume > -1
    out = translate_view(spy, volume, "axial", stride=4, batch_size=2, foreground=mask)
    assert seen == [(2, 1, 8, 12), (2, 1, 8, 12), (1, 1, 8, 12)]  # 5 of 7 slices, padded
    np.testing.assert_array_equal(out[mask], -0.5)
    assert np.all(out[:, :, [0, 6]] == -1.0)  # untouched empty slices stay background
    seen.clear()
    fixed = translate_view(spy, volume, "axial", stride=4, batch_size=2, fixed_batch=True)
    assert seen == [(2, 1, 8, 12)] * 4 and np.array_equal(fixed[mask], out[mask])
    with pytest.raises(ConfigError, match="batch size 0 must be at least 1"):
        translate_view(spy, volume, "axial", stride=4, batch_size=0)
    with pytest.raises(InputError, match=r"sagittal slices of this volume are 10x1 voxels"):
        translate_view(spy, volume[:, :, :1], "sagittal", stride=4)


def test_interslice_jump_and_views_parsing() -> None:
    ramp = np.broadcast_to(np.arange(5.0)[None, None, :] * 3, (4, 4, 5))
    assert interslice_jump(ramp, "axial") == pytest.approx(3.0)
    assert interslice_jump(ramp, "coronal") == 0.0
    with pytest.raises(InputError, match="needs at least 2 slices"):
        interslice_jump(ramp[:, :, :1], "axial")
    with pytest.raises(InputError, match="no pair of adjacent voxels"):
        interslice_jump(ramp, "axial", np.zeros(ramp.shape, bool))
    assert parse_views(None, "coronal") == ("coronal",)
    assert parse_views("axial, sagittal,axial", "axial") == ("axial", "sagittal")
    with pytest.raises(ConfigError, match=r"unknown view\(s\) 'transverse'"):
        parse_views("axial,transverse", "axial")


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="direction 'XY' is unknown"):
        HarmonizeOptions(direction="XY")
    with pytest.raises(ConfigError, match="output dtype 'float16' is unknown"):
        HarmonizeOptions(dtype="float16")
    with pytest.raises(ConfigError, match="background 'air' is unknown"):
        HarmonizeOptions(background="air")
    with pytest.raises(ConfigError, match="batch size 0"):
        HarmonizeOptions(batch_size=0)
    with pytest.raises(ConfigError, match="seg_batch 0 must be at least 1"):
        HarmonizeOptions(seg_batch=0)
    with pytest.raises(ConfigError, match=r"spacing_tolerance 1\.5"):
        HarmonizeOptions(spacing_tolerance=1.5)


def test_training_facts_from_a_manifest(tmp_path: Path) -> None:
    subjects = [
        {"site": s, "split": sp, "scaling": {"low": lo, "high": hi}, "spacing": [1.0, 1.0, sz]}
        for s, sp, lo, hi, sz in [
            ("A", "train", 10, 100, 1.0), ("A", "train", 20, 300, 3.0), ("A", "test", 0, 9, 9.0),
            ("B", "train", 5, 50, 1.0),
        ]
    ]  # fmt: skip
    manifest = {"subjects": subjects, "slice_axis": "coronal", "sites": {"A": "x", "B": "y"},
                "spacing": None, "percentiles": [1.0, 99.0]}  # fmt: skip
    facts = TrainingFacts.from_dict(inference_facts(manifest), train_direction="BA")
    assert facts.spacing == (1.0, 1.0, 2.0) and facts.slice_axis == "coronal"  # all subjects
    assert facts.scaling["A"].low == 15 and facts.scaling["A"].high == 200  # train medians
    assert facts.target_site("AB") == "A" and facts.target_name("BA") == "y"
    no_b = {**manifest, "subjects": subjects[:3]}
    with pytest.raises(CacheError, match=r"no intensity scale for site B \(y\)"):
        TrainingFacts.from_dict(inference_facts(no_b)).target_scaling("AB")
    with pytest.raises(CacheError, match=r"malformed inference facts.*slice_axis"):
        TrainingFacts.from_dict({"spacing": [1, 1, 1]})
    (tmp_path / "bad.json").write_text(json.dumps({"slice_axis": "oblique"}))
    with pytest.raises(CacheError, match="unknown slice axis 'oblique'"):
        TrainingFacts.from_dict(json.loads((tmp_path / "bad.json").read_text()))


def test_harmonize_accepts_a_loaded_image(
    tiny_checkpoints: dict[str, Path], write_phantom: Phantom
) -> None:
    image = to_canonical(load_image(write_phantom()))
    out = Harmonizer.load(tiny_checkpoints["identity"]).harmonize(image)
    assert out.data.shape == image.data.shape and out.path is None
