"""benchmarks/pocket_segmentors.py: its Dice by hand, and the two settings it compares."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType

import numpy as np

from segrenorm.evaluate.segmentors import SegmentorConfig

ROOT = Path(__file__).resolve().parents[2]


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "pocket_segmentors", ROOT / "benchmarks/pocket_segmentors.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dice_per_class_by_hand() -> None:
    bench = _module()
    truth = np.array([[0, 1, 1, 2], [0, 0, 3, 3]])
    pred = np.array([[1, 1, 0, 2], [0, 0, 3, 0]])
    # class 1: |A|=2, |B|=2, overlap 1 -> 0.5; class 2: 1, 1, 1 -> 1; class 3: 1, 2, 1 -> 2/3.
    dice = bench.dice_per_class(pred, truth, [1, 2, 3])
    assert dice == [0.5, 1.0, 2.0 / 3.0]
    assert math.isnan(bench.dice_per_class(pred, truth, [4])[0])  # absent from both


def test_before_is_the_old_pocket_setting_and_after_weighs_pockets_up() -> None:
    bench = _module()
    assert (bench.BEFORE.steps, bench.BEFORE.class_weights, bench.BEFORE.labelled_slices) == (
        150, None, 0.5)  # fmt: skip
    after = SegmentorConfig().resolved(["background", "IRF", "SRF", "PED"])
    assert (after.steps, after.class_weights) == (400, (0.05, 0.95, 0.95, 0.95))
