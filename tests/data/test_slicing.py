"""Tests of segrenorm.data.slicing: the one recipe that cuts volumes like the training slices."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from segrenorm.data.facts import TrainingFacts
from segrenorm.data.listing import SubjectRecord
from segrenorm.data.manifest import open_manifest
from segrenorm.data.prepare import prepare_cache
from segrenorm.data.slicing import SliceRecipe
from segrenorm.errors import CacheError, ConfigError
from segrenorm.volumes.bias import DEFAULT_BIAS_CORRECTION, NO_BIAS_CORRECTION, BiasCorrection
from segrenorm.volumes.images import Geometry, LabelMap, ScalarImage
from segrenorm.volumes.intensity import fit_scaling, foreground_mask
from segrenorm.volumes.readwrite import load_image, save_image
from segrenorm.volumes.retina import retina_mask
from segrenorm.volumes.spatial import pad_to_shape
from tests.volumes.test_retina import oct_phantom

SHAPE = (20, 24, 16)
# Voxel axes point Left, Posterior, Superior at 1.5 x 1.5 x 2 mm: the recipe flips x and y.
AFFINE = np.diag([-1.5, -1.5, 2.0, 1.0])


def _image(tiny_kit: SimpleNamespace, seed: int = 0) -> ScalarImage:
    data = tiny_kit.phantom(SHAPE, seed).astype(np.float32)
    return ScalarImage(data=data, geometry=Geometry.from_affine(AFFINE, SHAPE))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"axis": "oblique"}, "unknown slice axis 'oblique': choose sagittal, coronal, axial"),
        ({"spacing": (1.0, 0.0, 1.0)}, r"spacing \(1.0, 0.0, 1.0\) must be three positive"),
        ({"spacing": (1.0, 1.0)}, "must be three positive numbers"),
        ({"percentiles": (50.0, 50.0)}, "percentiles 50.0, 50.0 must be 0 <= lower < upper"),
        ({"percentiles": (-1.0, 99.0)}, "percentiles -1.0, 99.0 must be"),
        ({"pad_multiple": 0}, "pad_multiple 0 must be >= 1"),
        ({"bias": "n4"}, "bias 'n4' must be a BiasCorrection"),
    ],
)
def test_recipe_refuses_bad_settings(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SliceRecipe(**changes)


def test_recipe_from_manifest_and_old_manifest_defaults() -> None:
    bias = BiasCorrection(shrink=2)
    manifest = {
        "slice_axis": "coronal", "spacing": [1, 2, 3], "percentiles": [1, 99],
        "use_mask": False, "pad_multiple": 8, "bias_correction": bias.to_dict(),
    }  # fmt: skip
    recipe = SliceRecipe.from_manifest(manifest)
    assert recipe == SliceRecipe("coronal", (1.0, 2.0, 3.0), (1.0, 99.0), False, 8, bias)
    assert recipe.spacing is not None and all(type(s) is float for s in recipe.spacing)
    # A cache from before a field existed: its default (no bias correction).
    old = SliceRecipe.from_manifest({"slice_axis": "axial", "spacing": None})
    assert old == SliceRecipe("axial", None, (0.5, 99.5), True, 16, NO_BIAS_CORRECTION)
    assert SliceRecipe().bias == NO_BIAS_CORRECTION
    with pytest.raises(ConfigError, match="bias-correction shrink=0 must be 1 to 8"):
        SliceRecipe.from_manifest({**manifest, "bias_correction": {"shrink": 0}})


def test_recipe_headroom_from_manifest_and_facts(tiny_kit: SimpleNamespace) -> None:
    manifest = {"slice_axis": "axial", "spacing": None, "headroom": 1.0}
    assert SliceRecipe.from_manifest(manifest).headroom == 1.0
    facts = TrainingFacts.from_dict(tiny_kit.facts(headroom=0.5))
    assert facts.headroom == 0.5 and SliceRecipe.from_facts(facts).headroom == 0.5
    assert TrainingFacts.from_dict(tiny_kit.facts()).headroom == 0.0  # older checkpoints
    with pytest.raises(ConfigError, match=r"headroom -1.0 must be between 0 and 10"):
        SliceRecipe.from_manifest({**manifest, "headroom": -1})
    with pytest.raises(CacheError, match=r"malformed inference facts.*headroom 11.0 must be"):
        TrainingFacts.from_dict(tiny_kit.facts(headroom=11))
    # The scale step fits with the headroom: 0.5 of the percentile range above the upper one.
    data = np.zeros((12, 12, 12))
    data[2:10, 2:10, 2:10] = np.linspace(100.0, 200.0, 512).reshape(8, 8, 8)
    plain = SliceRecipe().scale(data).scaling
    roomy = SliceRecipe(headroom=0.5).scale(data).scaling
    assert roomy.low == plain.low
    assert roomy.high - roomy.low == pytest.approx(1.5 * (plain.high - plain.low))


def test_recipe_from_training_facts(tiny_kit: SimpleNamespace) -> None:
    facts = TrainingFacts.from_dict(tiny_kit.facts(slice_axis="sagittal", use_mask=False))
    recipe = SliceRecipe.from_facts(facts)
    assert recipe == SliceRecipe("sagittal", (2.0, 2.0, 2.0), (0.5, 99.5), False, 8)
    assert recipe.bias == NO_BIAS_CORRECTION  # a checkpoint from before bias correction
    stored = tiny_kit.facts(bias_correction=DEFAULT_BIAS_CORRECTION.to_dict())
    assert SliceRecipe.from_facts(TrainingFacts.from_dict(stored)).bias == DEFAULT_BIAS_CORRECTION


def test_to_grid_orients_to_ras_and_resamples_images_and_labels(
    tiny_kit: SimpleNamespace,
) -> None:
    image = _image(tiny_kit)
    labels = LabelMap(data=(image.data > 400).astype(np.uint8), geometry=image.geometry)
    kept = SliceRecipe().to_grid(image)
    assert kept.geometry.axcodes == ("R", "A", "S") and kept.geometry.spacing == (1.5, 1.5, 2.0)
    np.testing.assert_array_equal(kept.data, image.data[::-1, ::-1, :])
    recipe = SliceRecipe(spacing=(3.0, 3.0, 2.0))
    resampled, resampled_labels = recipe.to_grid(image), recipe.to_grid(labels)
    assert resampled.geometry.shape == (10, 12, 16) == resampled_labels.geometry.shape
    assert resampled.geometry.spacing == (3.0, 3.0, 2.0)
    assert resampled_labels.data.dtype == np.uint8
    assert set(np.unique(resampled_labels.data)) == {0, 1}  # nearest neighbour: no new values


def test_scale_fits_inside_the_mask_of_the_chosen_volume(tiny_kit: SimpleNamespace) -> None:
    data = _image(tiny_kit).data
    scaled, mask, scaling = SliceRecipe(percentiles=(1.0, 99.0)).scale(data)
    assert mask is not None
    np.testing.assert_array_equal(mask, foreground_mask(data))
    assert scaling == fit_scaling(data, mask, 1.0, 99.0)
    np.testing.assert_array_equal(scaled, scaling.apply(data, mask))
    assert scaled.dtype == np.float32 and scaled[~mask].max() == -1.0
    # A harmonized volume is scaled by its own percentiles inside its source's foreground.
    brighter = data * 2.0 + 50.0
    other = SliceRecipe().scale(brighter, mask_of=data)
    np.testing.assert_array_equal(other.mask, mask)
    np.testing.assert_allclose(other.scaled, SliceRecipe().scale(data).scaled, atol=1e-5)
    whole = SliceRecipe(use_mask=False).scale(data)
    assert whole.mask is None and whole.scaling == fit_scaling(data, None, 0.5, 99.5)


def test_scale_corrects_the_bias_field_inside_the_mask_before_scaling(
    tiny_kit: SimpleNamespace,
) -> None:
    data = _image(tiny_kit).data
    # A smooth multiplicative field along x: 0.74 to 1.35.
    field = np.exp(np.linspace(-0.3, 0.3, SHAPE[0]))[:, None, None]
    biased = (data * field).astype(np.float32)
    bias = BiasCorrection(shrink=2)
    recipe = SliceRecipe(percentiles=(1.0, 99.0), bias=bias)
    scaled, mask, scaling = recipe.scale(biased, spacing=(1.5, 1.5, 2.0))
    assert mask is not None
    np.testing.assert_array_equal(mask, foreground_mask(biased))  # found before correcting
    corrected = bias.apply(biased, (1.5, 1.5, 2.0), mask)
    assert scaling == fit_scaling(corrected, mask, 1.0, 99.0)
    np.testing.assert_array_equal(scaled, scaling.apply(corrected, mask))
    plain = SliceRecipe(percentiles=(1.0, 99.0)).scale(biased)
    assert np.abs(scaled - plain.scaled)[mask].mean() > 0.02  # the correction changed things
    with pytest.raises(ConfigError, match=r"corrects the bias field \(n4\) and needs the grid"):
        recipe.scale(biased)


def test_cut_and_slice_shape(tiny_kit: SimpleNamespace) -> None:
    data = _image(tiny_kit).data
    assert SliceRecipe(axis="axial").cut(data).shape == (16, 20, 24)
    assert SliceRecipe(axis="coronal").cut(data).shape == (24, 20, 16)
    np.testing.assert_array_equal(SliceRecipe(axis="sagittal").cut(data)[3], data[3])
    recipe = SliceRecipe(pad_multiple=16)
    assert recipe.slice_shape([(20, 24), (17, 33)]) == (32, 48)
    assert SliceRecipe(pad_multiple=1).slice_shape([(20, 24)]) == (20, 24)


def test_recipe_reproduces_the_prepared_cache(tmp_path: Path, tiny_kit: SimpleNamespace) -> None:
    records = []
    for site in ("a", "b"):
        path = tmp_path / site / "sub-0.nii.gz"
        path.parent.mkdir()
        save_image(_image(tiny_kit, seed=len(site)).data, path, geometry=_image(tiny_kit).geometry)
        records.append(SubjectRecord(f"sub-{site}", site, path, None, "train"))
    out = prepare_cache(
        records, tmp_path / "cache", spacing=(3.0, 3.0, 2.0), min_foreground=0.0, progress=False
    )
    manifest = open_manifest(out)
    recipe = SliceRecipe.from_manifest(manifest)
    assert recipe.bias == DEFAULT_BIAS_CORRECTION  # prepare corrects with N4 by default
    volume = recipe.to_grid(load_image(records[0].image))
    cut = recipe.cut(recipe.scale(volume.data, spacing=volume.geometry.spacing).scaled)
    shape = recipe.slice_shape([cut.shape[1:]])
    assert list(shape) == manifest["slice_shape"]
    cached = np.load(out / "A" / "images.npy")
    np.testing.assert_array_equal(cached, pad_to_shape(cut, shape, -1.0)[0])


# --------------------------------------------------------------------------- OCT


def _oct_image(depth: int = 1, seed: int = 0) -> ScalarImage:
    """The OCT phantom at 0.02 x (0.004 / depth) x 0.1 mm, stored as RAS (x, y, z)."""
    data = oct_phantom(seed, (24, 48, 3), depth=depth).data
    affine = np.diag([0.02, 0.004 / depth, 0.1, 1.0])
    return ScalarImage(data=data, geometry=Geometry.from_affine(affine, data.shape))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"modality": "ct"}, "modality 'ct' is unknown: use one of mri, oct"),
        (
            {"modality": "oct", "bias": DEFAULT_BIAS_CORRECTION},
            r"OCT volumes are not bias-corrected \(asked for n4\): OCT takes "
            "--bias-correction none",
        ),
    ],
)
def test_oct_recipe_refuses_n4_and_unknown_modalities(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        SliceRecipe(**changes)


def test_modality_from_manifest_and_facts(tiny_kit: SimpleNamespace) -> None:
    manifest = {"slice_axis": "axial", "spacing": [0.02, 0.004, 0.1], "modality": "oct"}
    assert SliceRecipe.from_manifest(manifest).modality == "oct"
    assert SliceRecipe.from_manifest({"slice_axis": "axial"}).modality == "mri"  # old caches
    oct_facts = TrainingFacts.from_dict(tiny_kit.facts(modality="oct"))
    assert oct_facts.modality == "oct" and SliceRecipe.from_facts(oct_facts).is_oct
    old = TrainingFacts.from_dict(tiny_kit.facts())  # a checkpoint from before OCT
    assert old.modality == "mri" and not SliceRecipe.from_facts(old).is_oct


def test_oct_images_are_resampled_with_nearest_neighbour() -> None:
    image = _oct_image(depth=2)  # 0.002 mm in depth, the grid 0.004 mm
    labels = LabelMap((image.data > 30).astype(np.uint8), image.geometry)
    recipe = SliceRecipe(spacing=(0.02, 0.004, 0.1), modality="oct")
    assert recipe.interpolation == "nearest"
    gridded = recipe.to_grid(image)
    assert gridded.geometry.shape == (24, 48, 3)
    assert set(np.unique(gridded.data)) <= set(np.unique(image.data))  # measured values only
    assert set(np.unique(recipe.to_grid(labels).data)) == {0, 1}
    linear = SliceRecipe(spacing=(0.02, 0.004, 0.1)).to_grid(image)  # MRI: linear
    assert not set(np.unique(linear.data)) <= set(np.unique(image.data))


def test_oct_scaling_fits_the_retina_and_keeps_the_background() -> None:
    data = _oct_image().data
    scaled, mask, scaling = SliceRecipe(percentiles=(1.0, 99.0), modality="oct").scale(data)
    assert mask is not None
    np.testing.assert_array_equal(mask, retina_mask(data))
    # By hand: the retina's 1st and 99th percentiles map to -1 and 1, every voxel the same.
    low, high = np.percentile(data[mask], [1.0, 99.0])
    assert scaling.low == pytest.approx(low) and scaling.high == pytest.approx(high)
    expected = np.clip((data.astype(np.float64) - low) * 2.0 / (high - low) - 1.0, -1.0, 1.0)
    np.testing.assert_allclose(scaled, expected, atol=1e-5)
    background = scaled[~mask]
    assert (background > -1.0).mean() > 0.5  # the vitreous keeps its speckle: not set to -1
    assert background.std() > 0.01
    mri = SliceRecipe(percentiles=(1.0, 99.0)).scale(data)  # the MRI rule: background -1
    assert mri.mask is not None and (mri.scaled[~mri.mask] == -1.0).all()
