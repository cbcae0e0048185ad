"""Evaluation data: held-out slices, pairing, harmonized volumes read back, baselines."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from segrenorm.data.prepare import prepare_cache
from segrenorm.data.slice_cache import SliceCache
from segrenorm.data.slicing import SliceRecipe
from segrenorm.errors import CacheError, ConfigError, InputError
from segrenorm.evaluate.baselines import NyulStandardizer
from segrenorm.evaluate.data import EvalData, slices_from_volumes
from segrenorm.evaluate.methods import BASELINES, baseline_slices, translator_slices
from segrenorm.volumes.images import Geometry
from segrenorm.volumes.readwrite import load_image, save_image
from segrenorm.volumes.retina import retina_mask
from segrenorm.volumes.spatial import from_canonical, slice_volume, unpad
from tests.data.test_prepare import write_oct_study


@pytest.fixture(scope="module")
def data(eval_study: SimpleNamespace) -> EvalData:
    return EvalData.from_cache(eval_study.cache)


def test_held_out_slices_of_both_sites(data: EvalData) -> None:
    assert data.source.name == "old" and data.target.name == "new"
    assert set(data.source.subjects) == {"t0", "t1"} == set(data.target.subjects)
    assert data.source.images.shape == data.source.labels.shape == data.source.masks.shape
    assert data.source.images.shape[1:] == (24, 24)
    assert data.class_names == ("background", "csf", "gm", "wm")
    images, labels = data.train_slices("target")
    assert images.shape == labels.shape and len(images) > len(data.target)
    with pytest.raises(ConfigError, match="site 'elsewhere' is unknown"):
        data.train_slices("elsewhere")


def test_pairs_match_subject_and_slice(data: EvalData) -> None:
    src, tgt = data.paired_rows()
    assert src.size == len(data.source) == len(data.target)
    np.testing.assert_array_equal(data.source.subjects[src], data.target.subjects[tgt])
    np.testing.assert_array_equal(data.source.index[src], data.target.index[tgt])
    # Same anatomy on both scanners: the label maps of a pair coincide.
    np.testing.assert_array_equal(data.source.labels[src], data.target.labels[tgt])


def test_unknown_direction_and_unlabelled_cache(eval_study: SimpleNamespace) -> None:
    with pytest.raises(ConfigError, match="direction 'AA' is unknown"):
        EvalData.from_cache(eval_study.cache, direction="AA")
    cache = SliceCache.open(eval_study.cache)
    unlabelled = SliceCache(cache.path, {**cache.manifest, "has_labels": False})
    with pytest.raises(CacheError, match="no label maps"):
        EvalData.from_cache(unlabelled)


def test_cache_without_held_out_target_is_refused(eval_study: SimpleNamespace) -> None:
    cache = SliceCache.open(eval_study.cache)
    subjects = [
        dict(s, split="train") if s["site"] == "B" else s for s in cache.manifest["subjects"]
    ]
    all_train = SliceCache(cache.path, {**cache.manifest, "subjects": subjects})
    with pytest.raises(CacheError, match=r"site B \(new\) has no test slices"):
        EvalData.from_cache(all_train)


def test_volumes_read_back_like_the_cache(data: EvalData, tmp_path: Path) -> None:
    # The source volumes, "harmonized" by the cache's bias correction alone (what an identity
    # translator gives): their slices are the cache's, so outputs are not corrected again.
    recipe = SliceRecipe.from_manifest(data.cache.manifest)
    assert recipe.bias.enabled
    folder = tmp_path / "copies"
    folder.mkdir()
    for entry in data.cache.manifest["subjects"]:
        if entry["site"] == "A" and entry["split"] == "test":
            image = load_image(entry["image"])
            grid = recipe.to_grid(image)
            mask = recipe.mask(grid.data)
            corrected = recipe.bias.apply(grid.data, grid.geometry.spacing, mask)
            out = folder / Path(entry["image"]).name
            save_image(from_canonical(corrected, image.geometry), out, geometry=image.geometry)
    seen: list[str] = []
    slices = slices_from_volumes(data, folder, on_subject=lambda i, n, s: seen.append(s))
    assert seen == ["t0", "t1"]
    np.testing.assert_allclose(slices, data.source.images, atol=1e-6)


def test_harmonized_volume_missing_or_on_another_grid(data: EvalData, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist: run segrenorm harmonize"):
        slices_from_volumes(data, tmp_path / "nowhere")
    folder = tmp_path / "partial"
    folder.mkdir()
    first = next(
        Path(e["image"]) for e in data.cache.manifest["subjects"]
        if e["site"] == "A" and e["subject"] == "t0"
    )  # fmt: skip
    shutil.copy(first, folder / first.name)
    with pytest.raises(InputError, match="no harmonized volume for held-out subject t1"):
        slices_from_volumes(data, folder)
    image = load_image(first)
    cropped = Geometry.from_affine(image.geometry.affine, (20, 24, 10))
    second = next(
        Path(e["image"]) for e in data.cache.manifest["subjects"]
        if e["site"] == "A" and e["subject"] == "t1"
    )  # fmt: skip
    save_image(image.data[:20], folder / second.name, geometry=cropped)
    with pytest.raises(InputError, match="differs from its source"):
        slices_from_volumes(data, folder)


def test_baselines_align_and_move_towards_the_target(data: EvalData) -> None:
    out = baseline_slices(data)
    assert list(out) == list(BASELINES)
    np.testing.assert_array_equal(out["none"], data.source.images)
    src, tgt = data.paired_rows()
    fg = data.target.masks[tgt] & data.source.masks[src]
    truth = data.target.images[tgt][fg]
    error = {k: float(np.abs(v[src][fg] - truth).mean()) for k, v in out.items()}
    for name in ("zscore", "histogram", "nyul", "denoise-histogram"):
        assert error[name] < error["none"], (name, error)
        assert np.all(out[name][~data.source.masks] == -1.0)
    with pytest.raises(ConfigError, match="unknown baseline\\(s\\) 'wishful'"):
        baseline_slices(data, ["none", "wishful"])


def test_nyul_is_linear_beyond_its_end_landmarks() -> None:
    rng = np.random.default_rng(0)
    nyul = NyulStandardizer().fit([rng.uniform(0, 1, 5000)])
    x = rng.uniform(0, 1, 5000)
    x[:2] = [-0.5, 1.5]  # far outside: extrapolated, not clamped
    out = nyul.apply(x, np.ones_like(x, dtype=bool))
    assert out[0] < -0.3 and out[1] > 1.3
    with pytest.raises(ValueError, match="increasing"):
        NyulStandardizer((10.0, 5.0))
    with pytest.raises(RuntimeError, match="before fit"):
        NyulStandardizer().apply(x, np.ones_like(x, dtype=bool))


def test_translator_slices_batches_and_keeps_background(data: EvalData) -> None:
    calls: list[int] = []

    def translate(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return torch.zeros_like(x)

    out = translator_slices(translate, data.source.images, data.source.masks, batch_size=4)
    assert max(calls) == 4 and sum(calls) == len(data.source)
    assert np.all(out[~data.source.masks] == -1.0) and np.all(out[data.source.masks] == 0.0)
    with pytest.raises(ConfigError, match="batch size 0"):
        translator_slices(translate, data.source.images, data.source.masks, batch_size=0)


def test_manifest_records_the_study(eval_study: SimpleNamespace) -> None:
    manifest = json.loads((eval_study.cache / "manifest.json").read_text())
    splits = {(s["site"], s["split"]) for s in manifest["subjects"]}
    assert splits == {("A", "train"), ("A", "test"), ("B", "train"), ("B", "test")}


def test_paired_scores_per_subject(data: EvalData) -> None:
    from segrenorm.evaluate.paired import paired_scores

    src, tgt = data.paired_rows()
    oracle = data.source.images.copy()
    oracle[src] = data.target.images[tgt]  # the true target scan of every pair
    scores = paired_scores(data, {"none": data.source.images, "oracle": oracle})
    assert scores is not None and scores["n_subjects"] == 2
    assert scores["methods"]["oracle"]["ssim"] == pytest.approx(1.0)
    assert scores["methods"]["oracle"]["mae"] == 0.0 and scores["methods"]["oracle"][
        "psnr"
    ] == float("inf")
    none = scores["methods"]["none"]
    assert none["mae"] > 0.05 and set(none["subjects"]) == {"t0", "t1"}
    assert none["ssim"] == pytest.approx(np.mean([s["ssim"] for s in none["subjects"].values()]))
    # Without held-out subjects on both sites there is no ground truth.
    other = EvalData(
        data.cache,
        "AB",
        data.source,
        dataclasses.replace(data.target, subjects=data.target.subjects + "x"),
    )
    assert paired_scores(other, {"none": data.source.images}) is None


def test_oct_held_out_slices_keep_the_retina_masks_and_recut_like_prepare(
    tmp_path: Path,
) -> None:
    records = write_oct_study(tmp_path, splits=("train", "test"))
    cache = prepare_cache(
        records, tmp_path / "cache", modality="oct", n_classes=4, min_foreground=0.0,
        val_fraction=0.0, progress=False,
    )  # fmt: skip
    oct_data = EvalData.from_cache(cache)
    # The masks are the cache's: the retina of the fine vendor's test subject on the grid.
    source = load_image(records[1].image)
    retina = retina_mask(source.data[:, 1::2])  # nearest neighbour to 0.004 mm in depth
    masks = unpad(oct_data.source.masks, ((4, 4), (0, 0)))
    np.testing.assert_array_equal(masks, slice_volume(retina, "axial"))
    # A harmonized volume equal to its input is cut back into exactly the cached rows: the
    # manifest's OCT recipe (nearest neighbour, retina, background kept), not the MRI one.
    folder = tmp_path / "harmonized"
    folder.mkdir()
    shutil.copy(records[1].image, folder / records[1].image.name)
    recut = slices_from_volumes(oct_data, folder)
    np.testing.assert_allclose(recut, oct_data.source.images, atol=1e-6)
    assert (recut[~oct_data.source.masks] > -1.0).mean() > 0.3  # background kept (padding -1)
