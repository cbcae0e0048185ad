"""The segmentor store: keyed by what trains a net, loaded back exactly, refusing bad files."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from segrenorm import __version__
from segrenorm.errors import CheckpointError, InputError
from segrenorm.evaluate.segmentor_store import (
    NAME_DIGITS,
    STORE_FORMAT,
    SegmentorStore,
    segmentor_key,
)
from segrenorm.evaluate.segmentors import SegmentorConfig, predict_labels, train_segmentor

CONFIG = SegmentorConfig(ngf=4, depth=2, iterations=3, batch_size=2, seed=1)


def _slices() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.zeros((4, 16, 16), np.uint8)
    labels[:, 4:12, 4:12] = 1
    images = (labels * 1.0 - 0.5 + 0.1 * rng.standard_normal(labels.shape)).astype(np.float32)
    return images, labels


def test_key_is_the_sha256_of_the_inputs_by_hand() -> None:
    images, labels = _slices()
    hasher = hashlib.sha256()
    facts = {"format": STORE_FORMAT, "segrenorm": __version__, "torch": torch.__version__,
             "n_classes": 2, "config": dataclasses.asdict(CONFIG)}  # fmt: skip
    hasher.update(json.dumps(facts, sort_keys=True).encode())
    for array in (images, labels):
        hasher.update(f"{array.dtype.str}{array.shape}".encode())
        hasher.update(array.tobytes())
    assert segmentor_key(images, labels, 2, CONFIG) == hasher.hexdigest()


def test_key_changes_with_every_input_and_only_with_them() -> None:
    images, labels = _slices()
    base = segmentor_key(images, labels, 2, CONFIG)
    assert segmentor_key(images.copy(), labels.copy(), 2, CONFIG) == base
    one_pixel = images.copy()
    one_pixel[2, 3, 3] += 1e-6
    other_label = labels.copy()
    other_label[0, 0, 0] = 1
    variants = [
        segmentor_key(one_pixel, labels, 2, CONFIG),
        segmentor_key(images, other_label, 2, CONFIG),
        segmentor_key(images, labels, 3, CONFIG),
        segmentor_key(images, labels, 2, dataclasses.replace(CONFIG, seed=2)),
        segmentor_key(images, labels, 2, dataclasses.replace(CONFIG, iterations=4)),
        segmentor_key(images.astype(np.float64), labels, 2, CONFIG),
        segmentor_key(images.reshape(2, 32, 16), labels.reshape(2, 32, 16), 2, CONFIG),
    ]
    assert len({base, *variants}) == len(variants) + 1


def _counting(calls: list[int]) -> Any:
    def train(images: np.ndarray, labels: np.ndarray, n: int, config: SegmentorConfig) -> Any:
        calls.append(config.seed)
        return train_segmentor(images, labels, n, config)

    return train


def test_a_stored_net_is_loaded_back_exactly_and_not_trained_again(tmp_path: Path) -> None:
    images, labels = _slices()
    calls: list[int] = []
    store = SegmentorStore(tmp_path / "segs", train=_counting(calls))
    trained, loaded_first = store.get(images, labels, 2, CONFIG)
    key = segmentor_key(images, labels, 2, CONFIG)
    assert not loaded_first and calls == [1]
    assert sorted(p.name for p in (tmp_path / "segs").iterdir()) == [f"{key[:NAME_DIGITS]}.pt"]
    again = SegmentorStore(tmp_path / "segs", train=_counting(calls))
    net, loaded = again.get(images, labels, 2, CONFIG)
    assert loaded and calls == [1]  # no second training
    assert not net.training
    want, got = trained.state_dict(), net.state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
    np.testing.assert_array_equal(predict_labels(net, images), predict_labels(trained, images))
    # Another seed is another net.
    again.get(images, labels, 2, dataclasses.replace(CONFIG, seed=7))
    assert calls == [1, 7]
    assert [loaded for _, loaded in again.log] == [True, False]


def test_the_store_refuses_damaged_foreign_and_mismatched_files(tmp_path: Path) -> None:
    images, labels = _slices()
    store = SegmentorStore(tmp_path)
    key = segmentor_key(images, labels, 2, CONFIG)
    file = store.path(key)
    remedy = f"delete {file} and evaluate again: the segmentor is then trained anew."
    store.get(images, labels, 2, CONFIG)  # a real file, then cut short
    file.write_bytes(file.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="is truncated or corrupt") as damaged:
        store.get(images, labels, 2, CONFIG)
    assert str(damaged.value).endswith(remedy)
    torch.save({"format": STORE_FORMAT, "key": key, "weights": np.zeros(2)}, file)
    with pytest.raises(CheckpointError, match="refuses to unpickle") as foreign:
        store.get(images, labels, 2, CONFIG)
    assert str(foreign.value).endswith(remedy)
    torch.save({"format": 99}, file)
    with pytest.raises(CheckpointError, match=re.escape("store format 1 (found 99); ")):
        store.get(images, labels, 2, CONFIG)
    # The file of another key copied under this one's name.
    other = dataclasses.replace(CONFIG, seed=3)
    store.get(images, labels, 2, other)
    file.write_bytes(store.path(segmentor_key(images, labels, 2, other)).read_bytes())
    with pytest.raises(CheckpointError, match="holds the segmentor of other data or settings"):
        store.get(images, labels, 2, CONFIG)
    torch.save({"format": STORE_FORMAT, "key": key, "n_classes": 2, "ngf": 4, "depth": 2,
                "in_channels": 1, "state_dict": {"x": torch.zeros(1)}}, file)  # fmt: skip
    with pytest.raises(CheckpointError, match="its weights do not fit a segmentor"):
        store.get(images, labels, 2, CONFIG)


def test_the_store_must_be_a_folder(tmp_path: Path) -> None:
    path = tmp_path / "segs"
    path.write_text("x")
    with pytest.raises(InputError, match=f"segmentor store {path} is a file, not a folder"):
        SegmentorStore(path)
