"""Tests of the train/val/test split of a prepared cache, as SliceCache and the dataset read it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from segrenorm.data.datasets import UnpairedSliceDataset
from segrenorm.data.listing import SubjectRecord
from segrenorm.data.manifest import open_manifest, summarize
from segrenorm.data.prepare import prepare_cache
from segrenorm.data.slice_cache import SliceCache
from segrenorm.errors import ConfigError, InputError
from segrenorm.volumes.images import Geometry
from segrenorm.volumes.readwrite import save_image, save_label

SHAPE = (16, 16, 3)


def _subject(folder: Path, name: str, seed: int) -> tuple[Path, Path]:
    """A small noisy disc of labels 1 (ring) and 2 (core) on a dark background."""
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    radius = np.hypot(yy - 7.5, xx - 7.5)[..., None] * np.ones(SHAPE)
    labels = (radius < 6).astype(np.uint8) + (radius < 3).astype(np.uint8)
    data = labels * 200.0 + np.random.default_rng(seed).normal(10.0, 2.0, SHAPE)
    geometry = Geometry.from_affine(np.eye(4), SHAPE)
    folder.mkdir(parents=True, exist_ok=True)
    image = save_image(data, folder / f"{name}_T1w.nii.gz", geometry=geometry)
    label = save_label(labels, folder / f"{name}_dseg.nii.gz", geometry=geometry)
    return image, label


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> list[SubjectRecord]:
    """Six subjects per site, none with a listed split."""
    root = tmp_path_factory.mktemp("split-volumes")
    out: list[SubjectRecord] = []
    for site in ("1.5T", "3T"):
        for k in range(6):
            image, label = _subject(root / site, f"sub-{k}", len(out))
            out.append(SubjectRecord(f"sub-{site}-{k}", site, image, label))
    return out


@pytest.fixture(scope="module")
def split_cache(
    records: list[SubjectRecord], tmp_path_factory: pytest.TempPathFactory
) -> SliceCache:
    """The default split of six subjects per site: 2 test, 1 val, 3 train (hand rounding)."""
    out = tmp_path_factory.mktemp("split-cache") / "cache"
    return SliceCache.open(prepare_cache(records, out, pad_multiple=8, progress=False))


def _subjects(cache: SliceCache, site: str, rows: np.ndarray) -> set[str]:
    return {cache.subject_of(site, int(r)) for r in rows}


def test_default_split_is_train_val_test_and_rows_follow_it(split_cache: SliceCache) -> None:
    manifest = split_cache.manifest
    want = {"seed": 0, "test_fraction": 0.3, "val_fraction": 0.15, "n_folds": 5}
    assert manifest["split"] == want
    for site in ("A", "B"):
        listed = {s["subject"]: s["split"] for s in manifest["subjects"] if s["site"] == site}
        assert sorted(listed.values()) == ["test", "test", "train", "train", "train", "val"]
        parts = {split: split_cache.rows(site, split) for split in ("train", "val", "test")}
        for split, rows in parts.items():
            want_subjects = {k for k, v in listed.items() if v == split}
            assert _subjects(split_cache, site, rows) == want_subjects
        every = np.concatenate(list(parts.values()))
        assert np.array_equal(np.sort(every), split_cache.rows(site, "all"))
        assert every.size == split_cache.n_rows(site)  # disjoint: no row in two splits
        # Folds behave as before: the fold's subjects are test, all the others (val too) train.
        fold = next(int(s["fold"]) for s in manifest["subjects"] if s["site"] == site)
        held = split_cache.rows(site, "test", fold=fold)
        assert np.array_equal(
            np.sort(np.concatenate([held, split_cache.rows(site, "train", fold=fold)])),
            split_cache.rows(site, "all"),
        )
    text = summarize(manifest, "c")
    assert "train 9 slices / 3 subjects, val 3 slices / 1 subjects, test 6 slices / 2" in text


def test_test_subjects_do_not_depend_on_the_val_fraction(
    records: list[SubjectRecord], split_cache: SliceCache, tmp_path: Path
) -> None:
    plain = open_manifest(prepare_cache(records, tmp_path / "c", val_fraction=0.0, progress=False))
    assert plain["split"]["val_fraction"] == 0.0

    def keyed(manifest: dict[str, object], split: str) -> set[tuple[str, str]]:
        subjects = manifest["subjects"]
        assert isinstance(subjects, list)
        return {(s["site"], s["subject"]) for s in subjects if s["split"] == split}

    assert keyed(plain, "test") == keyed(split_cache.manifest, "test")
    assert keyed(plain, "val") == set()
    assert keyed(plain, "train") == keyed(split_cache.manifest, "train") | keyed(
        split_cache.manifest, "val"
    )
    assert "val" not in summarize(plain, "c")


def test_training_reads_only_train_subjects(split_cache: SliceCache) -> None:
    data = UnpairedSliceDataset(split_cache, crop_size=8, seed=3)
    for site, rows in ((data.source, data.source_rows), (data.target, data.target_rows)):
        assert np.array_equal(rows, split_cache.rows(site, "train"))
    seen = set()
    for i in range(len(data)):
        sample = data[i]
        seen.add(("A", split_cache.subject_of("A", int(sample["a_row"]))))
        seen.add(("B", split_cache.subject_of("B", int(sample["b_row"]))))
    held = {
        (s["site"], s["subject"]) for s in split_cache.manifest["subjects"] if s["split"] != "train"
    }
    assert seen and not seen & held
    val = UnpairedSliceDataset(split_cache, crop_size=8, split="val")
    assert np.array_equal(val.source_rows, split_cache.rows("A", "val"))


def test_listed_paired_val_subjects_keep_their_split(
    records: list[SubjectRecord], tmp_path: Path
) -> None:
    # A simulated benchmark lists each held-out subject on both sites with its split.
    # Only held-out subjects share an id across sites (segrenorm.data.listing.check_distinct).
    listed = {"sub-0": "val", "sub-1": "test"}
    paired = []
    for r in records:
        shared = f"sub-{r.subject.rsplit('-', 1)[1]}"
        paired.append(replace(r, subject=shared, split=listed[shared]) if shared in listed
                      else replace(r, split="train"))  # fmt: skip
    cache = SliceCache.open(prepare_cache(paired, tmp_path / "c", val_fraction=0.5, progress=False))
    for site in ("A", "B"):
        assert _subjects(cache, site, cache.rows(site, "val")) == {"sub-0"}
        assert _subjects(cache, site, cache.rows(site, "test")) == {"sub-1"}


def test_old_cache_without_val_loads_with_no_val_rows(
    split_cache: SliceCache, tmp_path: Path
) -> None:
    import shutil

    old = tmp_path / "old"
    shutil.copytree(split_cache.path, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["split"]["val_fraction"]
    for s in manifest["subjects"]:
        s["split"] = "train" if s["split"] == "val" else s["split"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    cache = SliceCache.open(old)
    assert cache.rows("A", "val").size == 0
    assert cache.rows("A", "train").size + cache.rows("A", "test").size == cache.n_rows("A")
    with pytest.raises(ConfigError, match=r"site A of .* has no rows in split 'val'"):
        UnpairedSliceDataset(cache, crop_size=8, split="val")


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"val_fraction": -0.1}, ConfigError, r"val_fraction -0.1 must be in \[0, 1\)"),
        ({"val_fraction": 0.8}, ConfigError, "val_fraction 0.8 \\+ test_fraction 0.3 must stay"),
        (
            {"val_fraction": 0.3, "test_fraction": 0.6},
            InputError,
            r"site '1.5T' has 6 subject\(s\) without a listed split: drawing 4 test "
            r"\(test_fraction 0.6\) and 2 val \(val_fraction 0.3\) would leave the train split "
            r"empty; lower the val fraction \(--val-fraction, 0 for no val split\)",
        ),
    ],
)
def test_prepare_refuses_fractions_that_leave_no_training(
    records: list[SubjectRecord],
    tmp_path: Path,
    changes: dict[str, float],
    error: type[Exception],
    message: str,
) -> None:
    with pytest.raises(error, match=message):
        prepare_cache(records, tmp_path / "c", progress=False, **changes)  # type: ignore[arg-type]
    assert not (tmp_path / "c").exists()
