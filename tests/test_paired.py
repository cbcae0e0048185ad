"""Paired ground-truth evaluation on a tiny two-site cache with one shared test subject."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from segrenorm import io
from segrenorm.cache import SubjectRecord, prepare_cache
from segrenorm.datasets import SliceCache
from segrenorm.errors import CacheError
from segrenorm.evaluate.paired import (
    classical_methods,
    evaluate_paired,
    paired_test_subjects,
    translator_method,
)
from segrenorm.io import Geometry

SHAPE = (24, 24, 12)


def _volume(seed: int, scale: float, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    grid = np.indices(SHAPE).astype(np.float64)
    r = np.sqrt(((grid - np.array([11.5, 11.5, 5.5])[:, None, None, None]) ** 2).sum(0))
    labels = np.zeros(SHAPE, np.uint8)
    labels[r <= 9] = 1
    labels[r <= 5] = 2
    base = np.where(labels == 1, 0.4, 0.0) + np.where(labels == 2, 1.0, 0.0)
    rng = np.random.default_rng(seed)
    image = scale * (base**gamma) + np.abs(rng.normal(0, 0.02, SHAPE)) * scale
    return image, labels


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> SliceCache:
    root = tmp_path_factory.mktemp("paired")
    geometry = Geometry.from_affine(np.eye(4), SHAPE)
    records = []
    subjects = [("s0", "train"), ("s1", "train"), ("s2", "test")]
    for site, scale, gamma in (("old", 100.0, 2.0), ("new", 900.0, 0.7)):
        for k, (name, split) in enumerate(subjects):
            image, labels = _volume(k, scale, gamma)
            img = io.save_image(image, root / site / f"{name}.nii.gz", geometry=geometry)
            lab = io.save_label(labels, root / site / f"{name}_dseg.nii.gz", geometry=geometry)
            records.append(SubjectRecord(name, site, img, lab, split))
    return SliceCache.open(prepare_cache(records, root / "cache", progress=False))


def test_pairs_are_aligned_by_subject_and_slice(cache: SliceCache) -> None:
    subjects = paired_test_subjects(cache)
    assert [s.subject for s in subjects] == ["s2"]
    p = subjects[0]
    assert p.source.shape == p.target.shape == p.mask.shape
    # Same anatomy on both sites: the foreground masks coincide.
    assert (p.mask == p.source_mask).mean() > 0.99


def test_classical_methods_and_perfect_translator(cache: SliceCache) -> None:
    subjects = paired_test_subjects(cache)
    target = subjects[0].target
    methods = classical_methods(cache)
    # An oracle that returns the true target scores perfectly; the gamma distortion
    # between sites makes "none" worse and histogram matching recovers most of it.
    methods["oracle"] = lambda p: target
    results = evaluate_paired(subjects, methods)
    assert results["oracle"]["ssim"] == pytest.approx(1.0)
    assert results["oracle"]["mae"] == 0.0
    assert results["histogram_matching"]["mae"] < results["none"]["mae"]


def test_translator_method_batches_and_keeps_background(cache: SliceCache) -> None:
    p = paired_test_subjects(cache)[0]
    calls: list[int] = []

    def translate(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return torch.zeros_like(x)

    out = translator_method(translate, batch_size=4)(p)
    assert max(calls) == 4 and sum(calls) == len(p.source)
    assert np.all(out[~p.source_mask] == -1.0)
    assert np.all(out[p.source_mask] == 0.0)


def test_unpaired_cache_is_refused(tmp_path: Path, cache: SliceCache) -> None:
    subjects = [dict(s) for s in cache.manifest["subjects"]]
    for s in subjects:
        if s["site"] == "B":
            s["split"] = "train"
    unpaired = SliceCache(cache.path, {**cache.manifest, "subjects": subjects})
    with pytest.raises(CacheError, match="no paired ground truth"):
        paired_test_subjects(unpaired)
