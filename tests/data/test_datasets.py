"""Tests for the slice cache reader, the unpaired dataset and the resumable batch stream."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from segrenorm.data.batches import BatchStream, infinite_loader
from segrenorm.data.datasets import UnpairedSliceDataset
from segrenorm.data.slice_cache import SliceCache
from segrenorm.errors import CacheError, ConfigError

H, W = 24, 32
SLICES = 4  # per subject


@pytest.fixture
def make_cache(tiny_kit: SimpleNamespace) -> Callable[..., Path]:
    """Write a tiny valid cache: ``make_cache(root, subjects_per_site=3, n_test=1, shape=(H, W))``.

    Foreground sits in a small block in the top-left corner (class 1 with a class-2 core),
    so uniform crops rarely hit it. Site B images are offset so the sites are told apart.
    """

    def make(
        root: Path, subjects_per_site: int = 3, n_test: int = 1, shape: tuple[int, int] = (H, W)
    ) -> Path:
        sites: dict[str, dict[str, np.ndarray]] = {}
        subjects: list[dict[str, Any]] = []
        for site, offset in (("A", 0.0), ("B", 0.25)):
            n = subjects_per_site * SLICES
            labels = np.zeros((n, *shape), np.uint8)
            labels[:, 2:8, 3:9] = 1
            labels[:, 4:6, 5:7] = 2
            # Background -1, foreground a per-row, per-class ramp: each row's values are unique.
            rows = np.arange(n, dtype=np.float32)[:, None, None]
            images = np.where(labels > 0, offset + 0.01 * rows + 0.2 * labels, -1.0)
            owners = np.repeat(np.arange(subjects_per_site), SLICES)
            index = np.tile(np.arange(SLICES), subjects_per_site)
            sites[site] = {
                "images": images.astype(np.float32),
                "labels": labels,
                "masks": (labels > 0).astype(np.uint8),
                "slices": np.stack([owners, index], axis=1).astype(np.int32),
            }
            for k in range(subjects_per_site):
                subjects.append(
                    {"subject": f"sub-{site}{k}", "site": site, "image": f"/x/{site}{k}.nii.gz",
                     "label": None, "split": "test" if k >= subjects_per_site - n_test else "train",
                     "fold": k,
                     "scaling": {"low": 0.0, "high": 1.0, "lower_pct": 0.5, "upper_pct": 99.5},
                     "shape": [W, H, SLICES], "n_slices": SLICES, "first_row": k * SLICES}
                )  # fmt: skip
        names = ["background", "one", "two"]
        return tiny_kit.write_cache(
            root, sites, subjects, class_names=names, n_folds=subjects_per_site
        )

    return make


@pytest.fixture
def cache_dir(make_cache: Callable[..., Path], tmp_path: Path) -> Path:
    return make_cache(tmp_path / "cache")


def edit_manifest(root: Path, **changes: Any) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    manifest.update(changes)
    (root / "manifest.json").write_text(json.dumps(manifest))


def batches_equal(x: dict[str, torch.Tensor], y: dict[str, torch.Tensor]) -> bool:
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


# --- SliceCache ----------------------------------------------------------------------------


def test_cache_properties_and_rows(cache_dir: Path) -> None:
    cache = SliceCache.open(cache_dir)
    assert cache.n_classes == 3 and cache.class_names == ("background", "one", "two")
    assert cache.sites == ("A", "B") and cache.site_names == ("1.5T", "3T")
    assert cache.slice_shape == (H, W) and cache.manifest["format_version"] == 1
    train, test, every = (cache.rows("A", s) for s in ("train", "test", "all"))
    assert train.tolist() == list(range(8)) and test.tolist() == list(range(8, 12))
    assert every.tolist() == list(range(12))
    # Leave-one-subject-out: fold 1 holds out subject 1, the rest train.
    assert cache.rows("B", "test", fold=1).tolist() == [4, 5, 6, 7]
    assert cache.rows("B", "train", fold=1).tolist() == [0, 1, 2, 3, 8, 9, 10, 11]
    assert [cache.subject_of("B", r) for r in (0, 3, 4, 11)] == [
        "sub-B0",
        "sub-B0",
        "sub-B1",
        "sub-B2",
    ]
    assert cache.images("A").dtype == np.float32 and cache.labels("B").shape == (12, H, W)
    assert cache.masks("A")[0].sum() == 36


def test_subject_of_skips_subjects_without_slices(cache_dir: Path) -> None:
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    empty = {**manifest["subjects"][0], "subject": "sub-empty", "n_slices": 0, "first_row": 4}
    manifest["subjects"].insert(1, empty)
    (cache_dir / "manifest.json").write_text(json.dumps(manifest))
    cache = SliceCache.open(cache_dir)
    assert [cache.subject_of("A", r) for r in (3, 4, 11)] == ["sub-A0", "sub-A1", "sub-A2"]
    assert cache.rows("A", "test", fold=0).tolist() == [0, 1, 2, 3]


def test_cache_pickles_without_memmaps(cache_dir: Path) -> None:
    cache = SliceCache.open(cache_dir)
    cache.images("A")
    clone = pickle.loads(pickle.dumps(cache))
    assert clone._maps == {}
    assert np.array_equal(clone.images("A"), cache.images("A"))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda c: c.rows("C"), "unknown site 'C'"),
        (lambda c: c.rows("A", "dev"), "unknown split 'dev'; expected one of train, val, test"),
        (lambda c: c.rows("A", "val", fold=0), "split 'val' cannot be combined with fold 0"),
        (lambda c: c.rows("A", fold=7), r"fold 7 is out of range: .* has folds 0\.\.2"),
        (lambda c: c.subject_of("A", 12), "row 12 is out of range for site A"),
    ],
)
def test_cache_bad_queries(cache_dir: Path, call: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        call(SliceCache.open(cache_dir))


def test_cache_missing_folder_says_run_prepare(tmp_path: Path) -> None:
    with pytest.raises(CacheError, match=r"nowhere does not exist.*segrenorm prepare"):
        SliceCache.open(tmp_path / "nowhere")
    with pytest.raises(CacheError, match=r"has no manifest\.json.*segrenorm prepare"):
        SliceCache.open(tmp_path)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        # Checked by segrenorm.data.manifest.open_manifest, which SliceCache.open relies on.
        ({"complete": False}, r"incomplete.*segrenorm prepare"),
        ({"format_version": 9}, r"format_version 9.*segrenorm prepare"),
        ({"slice_shape": [24, 30]}, r"images\.npy holds float32 \(12, 24, 32\)"),
        # Checked here: fields only the dataset reads.
        ({"n_classes": 0}, r"'n_classes' must be a positive integer, got 0"),
        ({"class_names": ["bg"]}, r"'class_names' must list 3 names, got \['bg'\]"),
    ],
)
def test_cache_bad_manifest(cache_dir: Path, changes: dict[str, Any], match: str) -> None:
    edit_manifest(cache_dir, **changes)
    with pytest.raises(CacheError, match=match):
        SliceCache.open(cache_dir)


@pytest.mark.parametrize(("key", "value"), [("fold", "0"), ("split", "dev"), ("subject", 3)])
def test_cache_bad_subject_fields(cache_dir: Path, key: str, value: Any) -> None:
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    manifest["subjects"][2][key] = value
    (cache_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match=r"subjects\[2\] needs a 'subject' name, a 'split'"):
        SliceCache.open(cache_dir)


def test_cache_bad_files(cache_dir: Path) -> None:
    (cache_dir / "B" / "masks.npy").unlink()
    with pytest.raises(CacheError, match=r"masks\.npy.*segrenorm prepare"):
        SliceCache.open(cache_dir)
    (cache_dir / "manifest.json").write_text("{not json")
    with pytest.raises(CacheError, match=r"manifest\.json.*segrenorm prepare"):
        SliceCache.open(cache_dir)


# --- UnpairedSliceDataset ------------------------------------------------------------------


def test_sample_shapes_dtypes_and_onehot(cache_dir: Path) -> None:
    data = UnpairedSliceDataset(cache_dir, crop_size=16)
    assert len(data) == 8
    sample = data[3]
    for s in ("a", "b"):
        assert sample[s].shape == (1, 16, 16) and sample[s].dtype == torch.float32
        assert sample[f"{s}_label"].shape == (16, 16) and sample[f"{s}_label"].dtype == torch.int64
        assert sample[f"{s}_onehot"].shape == (3, 16, 16)
        assert (
            sample[f"{s}_mask"].shape == (1, 16, 16) and sample[f"{s}_mask"].dtype == torch.float32
        )
        assert sample[s].min() >= -1 and sample[s].max() <= 1
        assert torch.equal(sample[f"{s}_onehot"].argmax(0), sample[f"{s}_label"])
        assert torch.equal(sample[f"{s}_onehot"].sum(0), torch.ones(16, 16))
    assert int(sample["a_row"]) == 3
    with pytest.raises(IndexError, match="sample 8 is out of range"):
        data[8]


def test_full_size_crop_returns_whole_slice(
    make_cache: Callable[..., Path], tmp_path: Path
) -> None:
    cache = SliceCache.open(make_cache(tmp_path / "square", shape=(16, 16)))
    data = UnpairedSliceDataset(cache, crop_size=16, split="all")
    for i in (0, 5, 11):
        sample = data[i]
        assert np.array_equal(sample["a"][0].numpy(), cache.images("A")[i])
        b_row = int(sample["b_row"])
        assert np.array_equal(sample["b_label"].numpy(), cache.labels("B")[b_row])


def test_crop_size_zero_returns_whole_padded_slices(cache_dir: Path) -> None:
    cache = SliceCache.open(cache_dir)  # 24x32 slices: not square, so no crop could cover them
    data = UnpairedSliceDataset(cache, crop_size=0, split="all", foreground_bias=1.0)
    batch = next(infinite_loader(data, batch_size=3, seed=0))
    assert batch["a"].shape == (3, 1, H, W) and batch["b_label"].shape == (3, H, W)
    for side, site in (("a", "A"), ("b", "B")):
        rows = batch[f"{side}_row"].numpy()
        assert np.array_equal(batch[side][:, 0].numpy(), cache.images(site)[rows])
        assert np.array_equal(batch[f"{side}_label"].numpy(), cache.labels(site)[rows])
        assert np.array_equal(batch[f"{side}_mask"][:, 0].numpy(), cache.masks(site)[rows] > 0)


def test_direction_ba_makes_site_b_the_source(cache_dir: Path) -> None:
    cache = SliceCache.open(cache_dir)
    flipped = UnpairedSliceDataset(cache, crop_size=H, direction="BA", split="all")
    assert len(flipped) == 12
    sample = flipped[5]
    assert int(sample["a_row"]) == 5
    # The (H, H) crop of a (H, W) slice must match site B's row at some column offset.
    for side, site in (("a", "B"), ("b", "A")):
        row, crop = int(sample[f"{side}_row"]), sample[side][0].numpy()
        source = cache.images(site)[row]
        assert any(np.array_equal(crop, source[:, x : x + H]) for x in range(W - H + 1))
    a_fg = sample["a"][sample["a_label"][None] > 0]
    assert a_fg.min() >= 0.25 + 0.2 - 1e-6  # site B's foreground offset, not site A's


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"crop_size": 33}, r"crop_size 33 is larger than the cached slice size 24x32"),
        ({"crop_size": -1}, r"crop_size must be 0 \(whole slices\) or a positive integer, got -1"),
        ({"direction": "AC"}, "direction 'AC' is unknown"),
        ({"split": "dev"}, "unknown split 'dev'"),
        ({"foreground_bias": 1.5}, r"foreground_bias must be a probability in \[0, 1\], got 1.5"),
        ({"semantic_dropout": -0.1}, "semantic_dropout must be a probability"),
        ({"length": 0}, "length must be a positive integer"),
        ({"seed": -1}, "seed must be non-negative"),
    ],
)
def test_dataset_bad_config(cache_dir: Path, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        UnpairedSliceDataset(cache_dir, **{"crop_size": 16, **kwargs})


def test_dataset_bad_cache_path_and_empty_split(
    make_cache: Callable[..., Path], tmp_path: Path
) -> None:
    with pytest.raises(CacheError, match=r"missing_cache does not exist.*segrenorm prepare"):
        UnpairedSliceDataset(tmp_path / "missing_cache")
    root = make_cache(tmp_path / "c", n_test=0)
    with pytest.raises(ConfigError, match=r"site A of .* has no rows in split 'test'"):
        UnpairedSliceDataset(root, split="test", crop_size=16)


def test_label_beyond_n_classes_is_reported(cache_dir: Path) -> None:
    labels = np.load(cache_dir / "A" / "labels.npy")
    labels[0] = 7
    np.save(cache_dir / "A" / "labels.npy", labels)
    with pytest.raises(CacheError, match=r"labels\.npy row 0 holds label 7 but the manifest"):
        UnpairedSliceDataset(cache_dir, crop_size=16)[0]


def test_unpaired_target_rows_independent_of_source(cache_dir: Path) -> None:
    data = UnpairedSliceDataset(cache_dir, crop_size=8, length=400)
    pairs = [(int(s["a_row"]), int(s["b_row"])) for s in (data[i] for i in range(400))]
    b_for_a: dict[int, set[int]] = {}
    for a, b in pairs:
        b_for_a.setdefault(a, set()).add(b)
    assert set(b_for_a) == set(range(8))  # length > rows cycles over every source row
    assert all(len(bs) >= 5 for bs in b_for_a.values())  # b is not a function of a
    counts = np.bincount([b for _, b in pairs], minlength=8)
    assert counts.min() > 25  # all 8 target training rows drawn, roughly uniformly


def test_determinism_seed_epoch(cache_dir: Path) -> None:
    one = UnpairedSliceDataset(cache_dir, crop_size=8, seed=3, semantic_dropout=0.5)
    two = UnpairedSliceDataset(cache_dir, crop_size=8, seed=3, semantic_dropout=0.5)
    other = UnpairedSliceDataset(cache_dir, crop_size=8, seed=4, semantic_dropout=0.5)
    assert all(batches_equal(one[i], two[i]) for i in range(8))
    assert not all(batches_equal(one[i], other[i]) for i in range(8))
    before = [one[i] for i in range(8)]
    one.set_epoch(1)
    assert not all(batches_equal(before[i], one[i]) for i in range(8))
    one.set_epoch(0)
    assert all(batches_equal(before[i], one[i]) for i in range(8))


def test_identical_across_worker_counts(cache_dir: Path) -> None:
    data = UnpairedSliceDataset(cache_dir, crop_size=8, seed=1, semantic_dropout=0.5)
    data.set_epoch(2)
    serial = list(DataLoader(data, batch_size=3, num_workers=0))
    parallel = list(DataLoader(data, batch_size=3, num_workers=2))
    assert len(serial) == 3 and all(
        batches_equal(x, y) for x, y in zip(serial, parallel, strict=True)
    )
    stream0 = infinite_loader(data, batch_size=2, num_workers=0, seed=5)
    stream2 = infinite_loader(data, batch_size=2, num_workers=2, seed=5)
    for _ in range(6):  # crosses an epoch boundary (4 batches per epoch)
        assert batches_equal(next(stream0), next(stream2))
    stream2.close()


def test_foreground_bias_hits_foreground_more_often(cache_dir: Path) -> None:
    def hit_rate(bias: float) -> float:
        data = UnpairedSliceDataset(cache_dir, crop_size=8, foreground_bias=bias, length=300)
        return float(np.mean([data[i]["a_label"].gt(0).any().item() for i in range(300)]))

    uniform, biased = hit_rate(0.0), hit_rate(1.0)
    assert biased == 1.0  # a crop centred on (jittered) foreground always contains some
    assert uniform < 0.5 and biased > uniform + 0.4


def test_semantic_dropout_masks_image_and_label_together(cache_dir: Path) -> None:
    plain = UnpairedSliceDataset(cache_dir, crop_size=16, foreground_bias=1.0)
    dropped = UnpairedSliceDataset(
        cache_dir, crop_size=16, foreground_bias=1.0, semantic_dropout=1.0
    )
    changed = 0
    for i in range(8):
        x, y = plain[i], dropped[i]
        for s in ("a", "b"):
            assert int(x[f"{s}_row"]) == int(y[f"{s}_row"])  # same crops, only dropout differs
            gone = x[f"{s}_label"] != y[f"{s}_label"]
            kept = set(y[f"{s}_label"].unique().tolist()) - {0}
            assert kept and kept <= set(x[f"{s}_label"].unique().tolist())  # non-empty subset
            assert torch.all(y[f"{s}_label"][gone] == 0)
            assert torch.all(y[s][0][gone] == -1) and torch.all(y[f"{s}_mask"][0][gone] == 0)
            assert torch.equal(y[s][0][~gone], x[s][0][~gone])
            assert torch.equal(y[f"{s}_onehot"].argmax(0), y[f"{s}_label"])
            changed += int(gone.any())
    assert changed >= 4  # 2 classes present: 2 of the 3 non-empty subsets drop one
    for split in ("test", "all"):
        plain = UnpairedSliceDataset(cache_dir, crop_size=16, split=split)
        never = UnpairedSliceDataset(cache_dir, crop_size=16, split=split, semantic_dropout=1.0)
        assert all(batches_equal(plain[i], never[i]) for i in range(len(plain)))


# --- BatchStream ---------------------------------------------------------------------------


def test_stream_resume_gives_same_next_batch(cache_dir: Path) -> None:
    data = UnpairedSliceDataset(cache_dir, crop_size=8, seed=2)
    for stop in (3, 4, 9):  # mid-epoch, exactly at an epoch's end, and in a later epoch
        uninterrupted = BatchStream(data, batch_size=2, seed=7)
        for _ in range(stop):
            next(uninterrupted)
        state = uninterrupted.state_dict()
        fresh = UnpairedSliceDataset(cache_dir, crop_size=8, seed=2)  # as after a restart
        resumed = BatchStream(fresh, batch_size=2, seed=7)
        resumed.load_state_dict(json.loads(json.dumps(state)))  # survives a JSON checkpoint
        for _ in range(3):
            assert batches_equal(next(uninterrupted), next(resumed))
    assert uninterrupted.batches_per_epoch == 4
    assert (uninterrupted.state_dict()["epoch"], uninterrupted.state_dict()["position"]) == (2, 4)


def test_stream_reshuffles_each_epoch_and_batches(cache_dir: Path) -> None:
    data = UnpairedSliceDataset(cache_dir, crop_size=8)
    stream = BatchStream(data, batch_size=3, drop_last=False)
    assert [len(b) for b in stream.epoch_batches(0)] == [3, 3, 2]
    assert stream.epoch_batches(0) != stream.epoch_batches(1)
    assert sorted(i for b in stream.epoch_batches(1) for i in b) == list(range(8))
    assert next(stream)["a"].shape == (3, 1, 8, 8)
    assert BatchStream(data, batch_size=3).batches_per_epoch == 2


def test_rank_shards_are_disjoint(cache_dir: Path) -> None:
    data = UnpairedSliceDataset(cache_dir, crop_size=8, split="all")  # 12 source rows
    streams = [BatchStream(data, batch_size=2, rank=r, world_size=3, seed=1) for r in range(3)]
    for epoch in (0, 1):
        shards = [{i for b in s.epoch_batches(epoch) for i in b} for s in streams]
        assert all(len(shard) == 4 for shard in shards) and len(set.union(*shards)) == 12
    rows = [set(next(s)["a_row"].tolist()) | set(next(s)["a_row"].tolist()) for s in streams]
    assert not (rows[0] & rows[1] or rows[0] & rows[2] or rows[1] & rows[2])


def test_stream_bad_settings(cache_dir: Path) -> None:
    data = UnpairedSliceDataset(cache_dir, crop_size=8)
    with pytest.raises(ConfigError, match="fewer than batch_size 9"):
        BatchStream(data, batch_size=9)
    with pytest.raises(ConfigError, match=r"rank 2 is not in 0..world_size-1 \(world_size=2\)"):
        BatchStream(data, batch_size=1, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="need batch_size >= 1"):
        BatchStream(data, batch_size=0)
    stream = BatchStream(data, batch_size=2, seed=1)
    with pytest.raises(ConfigError, match="saved with seed=0 but this stream has seed=1"):
        stream.load_state_dict({"epoch": 0, "position": 1, "seed": 0})
    with pytest.raises(ConfigError, match="needs integer 'epoch' and 'position'"):
        stream.load_state_dict({"epoch": 0})
    with pytest.raises(ConfigError, match=r"position 5 is outside 0..4"):
        stream.load_state_dict({"epoch": 0, "position": 5})
    with pytest.raises(ConfigError, match="epoch must be non-negative"):
        data.set_epoch(-1)
