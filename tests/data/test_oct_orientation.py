"""OCT volumes keep their stored voxel order: depth is never flipped by a RAS reorientation.

A RETOUCH ``.mhd`` has the identity direction (ITK's LPS), which nibabel-style RAS reorientation
would flip along x and y: the vitreous (depth 0) would land at the bottom of every B-scan, where
the retina mask and the models do not expect it. These tests write such files with SimpleITK
and look at where the bright band lands in the cache and after harmonize.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from segrenorm.data.listing import SubjectRecord
from segrenorm.data.prepare import prepare_cache
from segrenorm.data.slicing import SliceRecipe
from segrenorm.errors import ConfigError
from segrenorm.volumes.readwrite import load_image

SHAPE = (16, 40, 4)  # x (A-scans), y (depth), z (B-scans)
TOP, BOTTOM = 6, 20  # the band's first and last depth; vitreous above, dark background below


def _write_mhd(array: np.ndarray, path: Path) -> Path:
    """An (x, y, z) array as a MetaImage with the identity direction (SimpleITK: [z, y, x])."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.SetSpacing((0.05, 0.01, 0.2))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def _eye(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.gamma(4.0, 2.5, SHAPE).astype(np.float32)  # dim speckled vitreous, mean 10
    data[:, TOP : BOTTOM + 1] *= 20.0  # the retina band
    data[:, BOTTOM - 1 : BOTTOM + 1] *= 2.0  # its brightest layer at the bottom (the RPE)
    return data


def test_an_identity_direction_mhd_keeps_the_vitreous_on_top(tmp_path: Path) -> None:
    records = [
        SubjectRecord(f"s{k}", site, _write_mhd(_eye(k), tmp_path / site / f"s{k}.mhd"), None)
        for k, site in enumerate(["CR", "CR", "SP", "SP"])
    ]
    cache = prepare_cache(
        records, tmp_path / "cache", modality="oct", val_fraction=0.0, test_fraction=0.0,
        pad_multiple=8, progress=False,
    )  # fmt: skip
    masks = np.load(cache / "A" / "masks.npy")  # (N, X, Y): B-scans, depth on the last axis
    images = np.load(cache / "A" / "images.npy")
    assert masks.shape[1:] == (16, 40)
    depth_profile = masks.mean(axis=(0, 1))
    # The retina mask sits where the band was written, not mirrored to 39 - BOTTOM..39 - TOP.
    assert depth_profile[TOP + 1 : BOTTOM].min() > 0.9
    assert depth_profile[: TOP - 1].max() == 0.0 and depth_profile[BOTTOM + 3 :].max() == 0.0
    assert images[:, :, : TOP - 1].mean() < images[:, :, TOP + 1 : BOTTOM].mean()


def test_orient_is_the_identity_for_oct_and_ras_for_mri(tmp_path: Path) -> None:
    path = _write_mhd(_eye(0), tmp_path / "eye.mhd")
    image = load_image(path)
    oct_recipe, mri_recipe = SliceRecipe(modality="oct"), SliceRecipe()
    oriented = oct_recipe.orient(image)
    np.testing.assert_array_equal(oriented.data, image.data)
    assert oct_recipe.grid_spacing(image.geometry) == (0.05, 0.01, 0.2)
    ras = mri_recipe.orient(image)
    np.testing.assert_array_equal(ras.data, image.data[::-1, ::-1, :])  # LPS -> RAS flips x, y
    back = mri_recipe.unorient(ras.data, image.geometry)
    np.testing.assert_array_equal(back, image.data)
    np.testing.assert_array_equal(oct_recipe.unorient(oriented.data, image.geometry), image.data)


def test_oct_is_cut_along_b_scans_only() -> None:
    for axis in ("coronal", "sagittal"):
        with pytest.raises(ConfigError, match=rf"not '{axis}' planes .* use --axis axial"):
            SliceRecipe(modality="oct", axis=axis)
    assert SliceRecipe(modality="mri", axis="coronal").axis == "coronal"  # MRI: any plane
