"""2.5-D input: the neighbour rule, the cache's context rows and the k-slice dataset items."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from segrenorm.config.build import config_from_dict
from segrenorm.data.context import check_context, context_positions
from segrenorm.data.datasets import UnpairedSliceDataset
from segrenorm.data.slice_cache import SliceCache
from segrenorm.errors import CacheError, ConfigError

SIDE = 16
#: Slice indices each subject of the hand-built cache holds: sub-1 skipped slice 3 (too
#: little foreground) and its slices 0..5 are its whole volume; sub-2 starts at slice 2.
HELD = {"sub-1": [0, 1, 2, 4, 5], "sub-2": [2, 3, 4]}


def _hand_cache(root: Path, kit: SimpleNamespace) -> Path:
    """Rows 0..4 are sub-1, rows 5..7 sub-2 (both sites alike); row r's image is r / 10."""
    sites: dict[str, dict[str, np.ndarray]] = {}
    subjects: list[dict[str, Any]] = []
    for site in ("A", "B"):
        index = [(k, z) for k, held in enumerate(HELD.values()) for z in held]
        n = len(index)
        yy, xx = np.mgrid[:SIDE, :SIDE]
        labels = np.zeros((n, SIDE, SIDE), np.uint8)
        for r in range(n):  # a class-1 disc with a class-2 core, both sizes vary by row
            radius = np.hypot(yy - 8, xx - 8)
            labels[r][radius < 4 + r % 3] = 1
            labels[r][radius < 1.5 + r % 2] = 2
        sites[site] = {
            "images": (np.arange(n, dtype=np.float32)[:, None, None] / 10.0)
            * np.ones((1, SIDE, SIDE), np.float32),
            "labels": labels,
            "masks": (labels > 0).astype(np.uint8),
            "slices": np.asarray([(k + 2 * (site == "B"), z) for k, z in index], np.int32),
        }
        first = 0
        for name, held in HELD.items():
            subjects.append(
                {"subject": f"{site}-{name}", "site": site, "image": f"/x/{name}.nii.gz",
                 "label": None, "split": "train", "fold": 0, "shape": [SIDE, SIDE, 6],
                 "n_slices": len(held), "first_row": first}
            )  # fmt: skip
            first += len(held)
    return kit.write_cache(root, sites, subjects, class_names=["bg", "c1", "c2"])


@pytest.fixture
def hand_cache(tmp_path: Path, tiny_kit: SimpleNamespace) -> SliceCache:
    return SliceCache.open(_hand_cache(tmp_path / "cache", tiny_kit))


def test_context_positions_replicate_toward_the_centre() -> None:
    # Held slices 0, 1, 2, 4, 5 of a volume: slice 3 is missing, 0 and 5 are the edges.
    got = context_positions(np.array([0, 1, 2, 4, 5]), 5)
    # Positions into the held list, by hand: each wanted slice z + o, or the nearest held
    # one toward z when it is missing.
    assert got.tolist() == [
        [0, 0, 0, 1, 2],  # z=0: -2, -1 past the edge -> 0; +1 = 1, +2 = 2
        [0, 0, 1, 2, 2],  # z=1: -2 -> 0 (toward 1: 0); +2 = 3 missing -> 2
        [0, 1, 2, 2, 3],  # z=2: +1 = 3 missing -> 2; +2 = 4
        [2, 3, 3, 4, 4],  # z=4: -2 = 2; -1 = 3 missing -> 4 (pos 3); +2 = 6 past -> 5
        [3, 3, 4, 4, 4],  # z=5: -2 = 3 missing -> 4; -1 = 4; +1, +2 past -> 5
    ]
    assert context_positions(np.array([7, 8]), 1).tolist() == [[0], [1]]
    # A whole volume: edge slices repeated, the same as clipping the indices.
    n = 6
    full = context_positions(np.arange(n), 3)
    expected = np.clip(np.arange(n)[:, None] + np.array([-1, 0, 1]), 0, n - 1)
    np.testing.assert_array_equal(full, expected)


@pytest.mark.parametrize("k", [0, 2, -1, 4, True, 1.0])
def test_context_size_must_be_odd_and_positive(k: Any) -> None:
    with pytest.raises(ConfigError, match=r"context_slices=.* must be an odd number"):
        check_context(k)
    with pytest.raises(ConfigError, match="must be an odd number"):
        context_positions(np.arange(4), k)


def test_context_positions_refuse_unordered_indices() -> None:
    with pytest.raises(ConfigError, match="not strictly increasing"):
        context_positions(np.array([0, 2, 2]), 3)


@pytest.mark.parametrize("k", [2, 0, 4])
def test_config_refuses_an_even_or_zero_context(k: int) -> None:
    with pytest.raises(ConfigError, match=rf"data.context_slices={k} must be an odd number"):
        config_from_dict({"data": {"context_slices": k}})


def test_config_default_and_old_configs_have_one_slice() -> None:
    assert config_from_dict({}).data.context_slices == 1
    old = config_from_dict({"data": {"crop_size": 64}})  # written before the field existed
    assert old.data.context_slices == 1
    assert config_from_dict({"data": {"context_slices": 3}}).data.context_slices == 3


def test_cache_context_rows_stay_within_a_subject(hand_cache: SliceCache) -> None:
    rows = hand_cache.context_rows("A", np.arange(8), 3)
    assert rows.tolist() == [
        [0, 0, 1],  # sub-1 z=0: below the edge -> itself
        [0, 1, 2],
        [1, 2, 2],  # z=2: z=3 skipped -> itself
        [3, 3, 4],  # z=4: z=3 skipped -> itself; z=5 is row 4
        [3, 4, 4],  # z=5: past the edge
        [5, 5, 6],  # sub-2 z=2: its first held slice (never sub-1's last rows)
        [5, 6, 7],
        [6, 7, 7],
    ]
    np.testing.assert_array_equal(hand_cache.context_rows("B", np.arange(8), 1)[:, 0], range(8))
    assert hand_cache.context_rows("A", 3, 5).tolist() == [2, 3, 3, 4, 4]


def test_cache_context_rows_bad_input(hand_cache: SliceCache, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="out of range for site A"):
        hand_cache.context_rows("A", np.array([8]), 3)
    with pytest.raises(ConfigError, match="must be an odd number"):
        hand_cache.context_rows("A", np.array([0]), 2)
    slices = np.load(hand_cache.path / "A" / "slices.npy")
    slices[1, 1] = 0  # sub-1 now lists slice 0 twice
    np.save(hand_cache.path / "A" / "slices.npy", slices)
    broken = SliceCache.open(hand_cache.path)
    with pytest.raises(CacheError, match=r"slices.npy, subject A-sub-1: .*not strictly"):
        broken.context_rows("A", np.array([0]), 3)


def test_k3_item_is_the_stack_whose_centre_is_the_k1_item(hand_cache: SliceCache) -> None:
    settings: dict[str, Any] = {"crop_size": 8, "foreground_bias": 0.5, "seed": 4}
    flat = UnpairedSliceDataset(hand_cache, **settings)
    stacked = UnpairedSliceDataset(hand_cache, context_slices=3, **settings)
    for i in range(len(flat)):
        one, three = flat[i], stacked[i]
        assert one["a"].shape == (1, 8, 8) and three["a"].shape == (3, 8, 8)
        for side in ("a", "b"):
            assert np.array_equal(three[side][1:2].numpy(), one[side].numpy())
            for key in ("_label", "_mask", "_onehot", "_row"):
                assert np.array_equal(three[side + key].numpy(), one[side + key].numpy())
            # Every channel is the crop of its context row (images are row / 10).
            site = "A" if side == "a" else "B"
            want = hand_cache.context_rows(site, int(one[f"{side}_row"]), 3) / 10.0
            got = three[side].numpy().reshape(3, -1)
            np.testing.assert_allclose(got, np.repeat(want[:, None], 64, axis=1), atol=1e-7)


def test_semantic_dropout_blanks_every_channel(hand_cache: SliceCache) -> None:
    data = UnpairedSliceDataset(
        hand_cache, crop_size=16, semantic_dropout=1.0, seed=1, context_slices=3
    )
    blanked = 0
    for i in range(len(data)):
        item = data[i]
        row = int(item["a_row"])
        kept = item["a_label"].numpy() > 0
        original = hand_cache.labels("A")[row] > 0
        dropped = original & ~kept
        blanked += int(dropped.sum())
        assert np.all(item["a"].numpy()[:, dropped] == -1.0)
    assert blanked > 0  # the test saw a dropped class
