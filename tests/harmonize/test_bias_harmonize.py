"""Harmonization applies the training cache's bias correction to its inputs, and only to them."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from segrenorm.data.facts import TrainingFacts, inference_facts
from segrenorm.data.listing import SubjectRecord
from segrenorm.data.manifest import open_manifest
from segrenorm.data.prepare import prepare_cache
from segrenorm.data.slicing import SliceRecipe
from segrenorm.errors import CacheError, ConfigError
from segrenorm.harmonize.harmonizer import Harmonizer
from segrenorm.models.checkpoint import load_checkpoint
from segrenorm.volumes.bias import DEFAULT_BIAS_CORRECTION, NO_BIAS_CORRECTION, BiasCorrection
from segrenorm.volumes.images import Geometry
from segrenorm.volumes.intensity import foreground_mask
from segrenorm.volumes.readwrite import load_image, load_label, save_image
from segrenorm.volumes.spatial import pad_to_shape

SHAPE = (20, 24, 16)
# Voxel axes point Left, Posterior, Superior at 1.5 x 1.5 x 2 mm: both stages reorient.
AFFINE = np.diag([-1.5, -1.5, 2.0, 1.0])


def _biased_sites(tmp_path: Path, kit: SimpleNamespace) -> list[SubjectRecord]:
    """One phantom per site under a smooth field along x (0.7 to 1.4); site B is brighter."""
    field = np.exp(np.linspace(-0.35, 0.35, SHAPE[0]))[:, None, None]
    geometry = Geometry.from_affine(AFFINE, SHAPE)
    records = []
    for site, gain in (("a", 1.0), ("b", 2.0)):
        data = kit.phantom(SHAPE, seed=len(site) + int(gain)) * field * gain
        path = save_image(data, tmp_path / site / "sub-0.nii.gz", geometry=geometry)
        records.append(SubjectRecord(f"sub-{site}", site, path, None, "train"))
    return records


def test_harmonize_applies_the_training_caches_correction(
    tmp_path: Path, tiny_kit: SimpleNamespace
) -> None:
    records = _biased_sites(tmp_path, tiny_kit)
    bias = BiasCorrection(shrink=2)
    cache = prepare_cache(
        records, tmp_path / "cache", min_foreground=0.0, bias_correction=bias, progress=False
    )
    manifest = open_manifest(cache)
    facts = inference_facts(manifest)
    checkpoint = tiny_kit.save_checkpoint(tmp_path / "n4.pt", **facts)
    stored = load_checkpoint(checkpoint)["cache_info"]["inference"]["bias_correction"]
    assert BiasCorrection.from_dict(stored) == bias  # the checkpoint carries the setting
    assert TrainingFacts.from_dict(facts).bias_correction == bias
    with pytest.raises(CacheError, match=r"malformed inference facts \(ConfigError: bias corr"):
        TrainingFacts.from_dict({**facts, "bias_correction": {"method": "n5"}})

    harmonized = Harmonizer.load(checkpoint).harmonize(records[0].image)  # identity G
    # The output is the corrected input in B's units: cut like evaluate cuts outputs (the
    # recipe without correction, inside the source's foreground), it gives the cache's rows.
    recipe = SliceRecipe.from_manifest(manifest)
    assert recipe.bias == bias
    as_output = dataclasses.replace(recipe, bias=NO_BIAS_CORRECTION)
    source = recipe.to_grid(load_image(records[0].image))
    volume = recipe.to_grid(harmonized)  # on the input's (LPS) grid: reoriented like it
    rescaled = as_output.scale(volume.data, mask_of=source.data)
    rows = pad_to_shape(recipe.cut(rescaled.scaled), tuple(manifest["slice_shape"]), -1.0)[0]
    cached = np.load(cache / "A" / "images.npy")
    assert np.abs(rows - cached).max() < 5e-3  # the identity G is exact to ~1e-3

    # The same model without the correction gives another output: the setting is used.
    plain = tiny_kit.save_checkpoint(
        tmp_path / "plain.pt", **{**facts, "bias_correction": NO_BIAS_CORRECTION.to_dict()}
    )
    uncorrected = Harmonizer.load(plain).harmonize(records[0].image)
    mask = foreground_mask(load_image(records[0].image).data)
    difference = np.abs(uncorrected.data - harmonized.data)[mask]
    assert np.median(difference) > 20.0  # in B's units, a range of about 1700


def test_per_view_models_must_share_the_bias_correction(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, tiny_kit: SimpleNamespace
) -> None:
    n4 = tiny_kit.save_checkpoint(
        tmp_path / "n4.pt", bias_correction=DEFAULT_BIAS_CORRECTION.to_dict()
    )
    with pytest.raises(
        ConfigError, match=r"n4\.pt \(coronal\) was trained on volumes bias-corrected with .*n4"
    ):
        Harmonizer.load_per_view({"axial": tiny_checkpoints["identity"], "coronal": n4})
    # Two uncorrected models fuse, whatever their unused shrink setting.
    other_none = tiny_kit.save_checkpoint(
        tmp_path / "none.pt", bias_correction={"method": "none", "shrink": 2}
    )
    pair = Harmonizer.load_per_view({"axial": tiny_checkpoints["identity"], "coronal": other_none})
    assert pair.views == ("axial", "coronal")


def test_harmonize_scales_with_the_training_caches_headroom(
    tmp_path: Path, tiny_kit: SimpleNamespace
) -> None:
    from tests.data.test_prepare import _lesion_records

    records = _lesion_records(tmp_path)
    options = {"bias_correction": NO_BIAS_CORRECTION, "upper_pct": 99.0, "min_foreground": 0.0}
    cache = prepare_cache(records, tmp_path / "cache", headroom=1.0, progress=False, **options)
    manifest = open_manifest(cache)
    facts = inference_facts(manifest)
    checkpoint = tiny_kit.save_checkpoint(tmp_path / "roomy.pt", **facts)
    assert TrainingFacts.from_dict(facts).headroom == 1.0
    harmonized = Harmonizer.load(checkpoint).harmonize(records[0].image)  # identity G
    # Cut like evaluate cuts outputs, the output gives the cache's rows: harmonize scaled the
    # input with the cache's headroom, and the bright pocket came through unclipped.
    recipe = SliceRecipe.from_manifest(manifest)
    source = recipe.to_grid(load_image(records[0].image))
    volume = recipe.to_grid(harmonized)
    rows = recipe.cut(recipe.scale(volume.data, mask_of=source.data).scaled)
    rows = pad_to_shape(rows, tuple(manifest["slice_shape"]), -1.0)[0]
    cached = np.load(cache / "A" / "images.npy")[: len(rows)]
    assert np.abs(rows - cached).max() < 5e-3
    lesion = np.load(cache / "A" / "labels.npy")[: len(rows)] == 1
    assert rows[lesion].max() < 0.99 and np.ptp(rows[lesion]) > 0.01  # not flattened at 1
    # Without the headroom the same model flattens the pocket on the clip: one output value.
    plain = tiny_kit.save_checkpoint(tmp_path / "plain.pt", **{**facts, "headroom": 0.0})
    clipped = Harmonizer.load(plain).harmonize(records[0].image).data
    pocket = load_label(str(records[0].label)).data == 1  # on the input's grid, as outputs are
    assert np.ptp(clipped[pocket]) < 1e-3 < 1.0 < np.ptp(harmonized.data[pocket])
