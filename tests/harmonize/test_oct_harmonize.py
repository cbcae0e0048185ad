"""Harmonizing OCT: ``.mhd`` volumes in and out with their geometry, nearest-neighbour
resampling both ways, the retina as the foreground and the background kept."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from segrenorm.data.facts import TrainingFacts, inference_facts
from segrenorm.data.manifest import open_manifest
from segrenorm.data.prepare import prepare_cache
from segrenorm.data.slicing import SliceRecipe
from segrenorm.errors import ConfigError
from segrenorm.harmonize.harmonizer import Harmonizer
from segrenorm.volumes.readwrite import load_image, save_image
from segrenorm.volumes.retina import retina_mask
from tests.data.test_prepare import write_oct_study


def _oct_model(tmp_path: Path, tiny_kit: SimpleNamespace) -> tuple[Path, list[Path]]:
    """An identity tiny model with the facts of an OCT cache of ``.mhd`` volumes."""
    records = write_oct_study(tmp_path, ".mhd")
    cache = prepare_cache(
        records, tmp_path / "cache", modality="oct", n_classes=4, min_foreground=0.0,
        lower_pct=1.0, upper_pct=99.0, progress=False,
    )  # fmt: skip
    facts = inference_facts(open_manifest(cache))
    return tiny_kit.save_checkpoint(tmp_path / "oct.pt", **facts), [r.image for r in records]


def test_an_mhd_oct_volume_round_trips_with_nearest_neighbour_and_its_background(
    tmp_path: Path, tiny_kit: SimpleNamespace
) -> None:
    checkpoint, images = _oct_model(tmp_path, tiny_kit)
    harmonizer = Harmonizer.load(checkpoint)
    facts = harmonizer.primary.facts
    assert facts.modality == "oct"
    source = load_image(images[0])  # the fine vendor: 0.002 mm in depth, the model 0.004
    result = harmonizer.run(images[0])
    assert any("(nearest neighbour interpolation)" in note for note in result.notes)
    out = result.image
    assert out.geometry.matches(source.geometry) and out.data.shape == source.data.shape
    # Written as .mhd and read back: the same grid, the same values.
    written = save_image(out.data, tmp_path / "out" / "s0_oct.mhd", geometry=out.geometry)
    again = load_image(written)
    assert again.geometry.matches(source.geometry)
    assert again.geometry.spacing == pytest.approx(source.geometry.spacing)
    np.testing.assert_allclose(again.data, out.data, rtol=1e-6)
    # Nearest neighbour onto the 0.004 mm grid and back: depth pairs are one value, exactly.
    np.testing.assert_array_equal(out.data[:, 0::2], out.data[:, 1::2])
    # The identity G by hand: the grid's voxels scaled in their retina, back in B's units.
    recipe = SliceRecipe.from_facts(facts)
    grid = recipe.to_grid(source).data
    scaled = recipe.scale(grid).scaled
    expected = facts.target_scaling("AB").invert(scaled).repeat(2, axis=1)
    span = facts.target_scaling("AB").high - facts.target_scaling("AB").low
    assert np.abs(out.data - expected).max() < 0.01 * span
    # The background is the translated background, not 0: artefacts stay measurable.
    outside = ~retina_mask(source.data)
    assert (out.data[outside] != 0.0).mean() > 0.9 and out.data[outside].std() > 0.0


def test_oct_and_mri_models_do_not_fuse(tmp_path: Path, tiny_kit: SimpleNamespace) -> None:
    checkpoint, _ = _oct_model(tmp_path, tiny_kit)
    mri = tiny_kit.save_checkpoint(
        tmp_path / "mri.pt", **{**tiny_kit.facts(), "percentiles": [1.0, 99.0]}
    )
    assert TrainingFacts.from_checkpoint(
        {"cache_info": {"inference": tiny_kit.facts()}}, "x"
    ).modality == "mri"  # fmt: skip
    with pytest.raises(ConfigError, match=r"mri\.pt \(coronal\) scaled its mri training slices"):
        Harmonizer.load_per_view({"axial": checkpoint, "coronal": mri})
