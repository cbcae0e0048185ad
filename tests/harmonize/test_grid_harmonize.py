"""Harmonize onto the model's grid and back: inputs at 1 mm, 1x1x1.2 mm, 1x1x2 mm and 2 mm given
to a model whose training cache is on a 1 mm grid. The rule is prepare's: any axis off the grid
(by more than the 5% tolerance) and all three are resampled, for 2D and 2.5-D models alike.

The model is a tiny random translator saved with the inference facts of a real 1 mm cache made
by ``prepare`` (no training steps: the grid policy does not depend on the weights).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from segrenorm.data.facts import inference_facts
from segrenorm.data.listing import SubjectRecord
from segrenorm.data.manifest import open_manifest
from segrenorm.data.prepare import prepare_cache
from segrenorm.errors import InputError
from segrenorm.harmonize.harmonizer import HarmonizeOptions, Harmonizer
from segrenorm.volumes.bias import BiasCorrection
from segrenorm.volumes.images import Geometry, ScalarImage
from segrenorm.volumes.intensity import foreground_mask
from segrenorm.volumes.readwrite import save_image

FOV = (24.0, 24.0, 16.0)  # mm


def head(spacing: tuple[float, float, float], seed: int = 0) -> np.ndarray:
    """A smooth ellipsoid head with a bright core, sampled at ``spacing`` over :data:`FOV`."""
    shape = tuple(round(f / s) for f, s in zip(FOV, spacing, strict=True))
    axes = [(np.arange(n) + 0.5) * s - f / 2 for n, s, f in zip(shape, spacing, FOV, strict=True)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    radius = np.sqrt(x**2 + (1.1 * y) ** 2 + (1.4 * z) ** 2)
    rng = np.random.default_rng(seed)
    inside = 250.0 + 450.0 / (1.0 + np.exp(radius - 5.0)) + 40.0 * np.sin(x / 2.5 + y / 4.0)
    data = np.where(radius < 10.5, inside, 5.0) + 4.0 * rng.random(shape)
    return data.astype(np.float32)


def write_input(
    folder: Path, name: str, spacing: tuple[float, float, float], *, flip_x: bool = False
) -> Path:
    """``head(spacing)`` as int16 NIfTI, RAS or stored with x running right-to-left (LAS)."""
    data = np.rint(head(spacing)).astype(np.int16)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [3.0 - f / 2 for f in FOV]
    if flip_x:
        data = data[::-1]
        affine = affine @ np.array([[-1, 0, 0, data.shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0],
                                    [0, 0, 0, 1]], dtype=float)  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, tiny_kit: SimpleNamespace) -> dict[int, Path]:
    """A 2D (k=1) and a 2.5-D (k=3) model whose facts come from a 1 mm cache."""
    root = tmp_path_factory.mktemp("grid-model")
    records = []
    for site, gain in (("old", 1.0), ("new", 2.5)):
        for k in range(2):
            path = root / site / f"{site}{k}.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            image = nib.Nifti1Image(gain * head((1.0, 1.0, 1.0), seed=k), np.eye(4))
            nib.save(image, str(path))
            records.append(SubjectRecord(f"{site}{k}", site, path, None))
    cache = prepare_cache(
        records, root / "cache", bias_correction=BiasCorrection(method="none"), pad_multiple=8,
        test_fraction=0.0, val_fraction=0.0, progress=False,
    )  # fmt: skip
    manifest = open_manifest(cache)
    assert manifest["grid"]["spacing"] == [1.0, 1.0, 1.0]
    facts = inference_facts(manifest)
    return {
        k: tiny_kit.save_checkpoint(root / f"k{k}.pt", identity=False, context_slices=k, **facts)
        for k in (1, 3)
    }


def same_grid_and_header(out: ScalarImage, path: Path, tmp_path: Path) -> None:
    """The harmonized volume sits on the input's voxel grid with the input's header fields."""
    source = nib.load(str(path))
    assert out.data.shape == source.shape and out.geometry.shape == source.shape
    np.testing.assert_allclose(out.geometry.affine, source.affine, atol=1e-6)
    written = nib.load(
        str(save_image(out.data, tmp_path / f"h-{path.name}", geometry=out.geometry))
    )
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-6)
    for field in ("dim", "pixdim", "qform_code", "sform_code", "xyzt_units"):
        np.testing.assert_array_equal(written.header[field], source.header[field])
    np.testing.assert_allclose(written.header.get_sform(), source.header.get_sform(), atol=1e-6)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize(
    ("name", "spacing", "off"),
    [("one.nii.gz", (1.0, 1.0, 1.0), None), ("thick.nii.gz", (1.0, 1.0, 1.2), "S"),
     ("slab.nii.gz", (1.0, 1.0, 2.0), "S"), ("two.nii.gz", (2.0, 2.0, 2.0), "R, A, S")],
)  # fmt: skip
def test_output_is_on_the_input_grid(
    models: dict[int, Path],
    tmp_path: Path,
    k: int,
    name: str,
    spacing: tuple[float, float, float],
    off: str | None,
) -> None:
    path = write_input(tmp_path / "in", name, spacing, flip_x=off is not None)
    result = Harmonizer.load(models[k]).run(path)
    same_grid_and_header(result.image, path, tmp_path)
    # 2D or 2.5-D: one axis off the grid and all three are resampled to 1 mm, as prepare does.
    if off is not None:
        (note,) = result.notes
        assert note.startswith(f"{path}: voxel size {'x'.join(f'{v:g}' for v in spacing)} mm "
                               "differs from the training data's 1x1x1 mm")  # fmt: skip
        assert f"more than 5% (along {off}); resampled to 1x1x1 mm" in note
    else:
        assert result.notes == ()
    assert result.n_slices == 16  # the axial slices of the 16 mm field of view at 1 mm
    assert np.all(np.isfinite(result.image.data)) and result.image.data.max() > 100


@pytest.mark.parametrize("k", [1, 3])
def test_a_spacing_far_off_along_any_axis_is_refused(
    models: dict[int, Path], tmp_path: Path, k: int
) -> None:
    # Beyond max_spacing_ratio along S only: refused for the 2D model too, naming the file.
    slab = write_input(tmp_path / "in", "slab.nii.gz", (1.0, 1.0, 8.0 * 1.01))
    with pytest.raises(InputError, match=r"slab\.nii\.gz: voxel size 1x1x8\.08 mm is too far.*S\)"):
        Harmonizer.load(models[k]).run(slab)


def test_the_default_tolerance_is_five_percent(models: dict[int, Path], tmp_path: Path) -> None:
    assert HarmonizeOptions().spacing_tolerance == 0.05
    harmonizer = Harmonizer.load(models[1])
    close = write_input(tmp_path / "in", "close.nii.gz", (1.04, 1.04, 1.04))
    assert harmonizer.run(close).notes == ()  # within 5% on every axis: translated as it is
    for name, spacing, along in (("off.nii.gz", (1.07, 1.0, 1.0), "R"),
                                 ("offs.nii.gz", (1.0, 1.0, 1.07), "S")):  # fmt: skip
        off = write_input(tmp_path / "in", name, spacing)
        (note,) = harmonizer.run(off).notes
        assert f"{name}: voxel size {'x'.join(f'{v:g}' for v in spacing)} mm" in note
        assert f"(along {along}); resampled to 1x1x1 mm" in note
        loose = Harmonizer.load(models[1], spacing_tolerance=0.1)
        assert loose.run(off).notes == ()


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("spacing", [(2.0, 2.0, 2.0), (1.0, 1.0, 2.0)])
def test_input_equals_translation_on_the_grid_and_back(
    models: dict[int, Path], tmp_path: Path, k: int, spacing: tuple[float, float, float]
) -> None:
    """Resample to the 1 mm grid along all three axes (SimpleITK; 2D and 2.5-D models alike),
    translate that volume as the model's own whole-volume path does, average each block of
    ``spacing`` voxels back (linear back-resampling onto 2 mm voxels, whose centres fall halfway
    between two 1 mm centres): the harmonizer's output, on the input's own grid."""
    path = write_input(tmp_path / "in", "coarse.nii.gz", spacing, flip_x=True)
    harmonizer = Harmonizer.load(models[k])
    result = harmonizer.run(path)
    assert result.n_slices == 16  # translated on 1 mm axial slices, not the input's 8
    same_grid_and_header(result.image, path, tmp_path)
    got = nib.as_closest_canonical(nib.Nifti1Image(result.image.data, nib.load(str(path)).affine))
    canonical = nib.as_closest_canonical(nib.load(str(path)))
    coarse = np.asarray(canonical.dataobj, dtype=np.float32)
    factor = [round(s) for s in spacing]  # 1 mm voxels per input voxel, per axis
    assert coarse.shape == tuple(round(f / s) for f, s in zip(FOV, spacing, strict=True))
    image = sitk.GetImageFromArray(np.ascontiguousarray(coarse.transpose(2, 1, 0)))
    image.SetSpacing(spacing)
    fine_grid = sitk.Image([24, 24, 16], sitk.sitkFloat32)
    fine_grid.SetSpacing((1.0, 1.0, 1.0))
    fine_grid.SetOrigin(tuple(0.5 - s / 2 for s in spacing))  # corners coincide with the input's
    fine = sitk.Resample(image, fine_grid, sitk.Transform(), sitk.sitkLinear, 0.0)
    fine_data = sitk.GetArrayFromImage(fine).transpose(2, 1, 0)
    to_fine = np.diag([*(1.0 / f for f in factor), 1.0])
    to_fine[:3, 3] = [(1.0 / f - 1.0) / 2 for f in factor]
    on_grid = ScalarImage(
        fine_data, Geometry.from_affine(canonical.affine @ to_fine, fine_data.shape), path=None
    )
    translated = harmonizer.run(on_grid)
    assert translated.notes == () and translated.n_slices == 16
    blocks = tuple(n for c, f in zip(coarse.shape, factor, strict=True) for n in (c, f))
    back = translated.image.data.reshape(blocks).mean(axis=(1, 3, 5))
    fine_mask = foreground_mask(fine_data).reshape(blocks).all(axis=(1, 3, 5))
    mask = foreground_mask(coarse)
    # The harmonizer blanks the background only after coming back, so compare where every
    # fine voxel of the block is foreground too; outside the input's own mask both are 0.
    both = mask & fine_mask
    assert both.sum() > 200
    out = np.asarray(got.dataobj)
    span = 0.5 * (back[both].max() - back[both].min())
    np.testing.assert_allclose(out[both], back[both], atol=1e-4 * span)
    assert np.all(out[~mask] == 0.0)
