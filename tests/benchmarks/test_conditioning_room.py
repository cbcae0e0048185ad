"""Tests for ``benchmarks/conditioning_room.py``: the fits' errors on hand-computed cases."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_room() -> ModuleType:
    path = ROOT / "benchmarks/conditioning_room.py"
    spec = importlib.util.spec_from_file_location("conditioning_room", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


room = load_room()


def arrays(*rows: list[float]) -> list[np.ndarray]:
    return [np.asarray(r, dtype=np.float64) for r in rows]


def test_slopes_that_differ_by_slice_are_room_for_a_per_slice_map_only() -> None:
    # Slice 1: y = x; slice 2: y = 3x, on x = 1, 2, 3. The pooled line through the six points
    # is y = 2x (x mean 2, y mean 4, slope sum((x-2)(y-4)) / sum((x-2)^2) = 8 / 4): residuals
    # 1, 2, 3 on either slice, mean 2. The identity misses slice 2 by 2, 4, 6: mean 2.
    xs = arrays([1, 2, 3], [1, 2, 3])
    ys = arrays([1, 2, 3], [3, 6, 9])
    classes = [np.zeros(3, np.uint8), np.zeros(3, np.uint8)]
    errors = room.fit_errors(xs, ys, classes, degree=1)
    assert errors["identity"]["all"] == pytest.approx(2.0)
    assert errors["global"]["all"] == pytest.approx(2.0)
    assert errors["per-slice"]["all"] == pytest.approx(0.0, abs=1e-9)
    assert errors["per-class"]["all"] == pytest.approx(2.0)  # one class: the global map
    assert errors["global"]["class 0"] == pytest.approx(2.0)


def test_a_map_that_differs_by_class_is_room_for_the_per_class_map_only() -> None:
    # In both slices class 0 has y = x and class 1 has y = 2x + 1: every slice holds both,
    # so per-slice lines fit no better than the pooled one, and per-class lines are exact.
    x = [0.0, 1.0, 2.0, 0.0, 1.0, 2.0]
    y = [0.0, 1.0, 2.0, 1.0, 3.0, 5.0]
    c = np.asarray([0, 0, 0, 1, 1, 1], np.uint8)
    errors = room.fit_errors(arrays(x, x), arrays(y, y), [c, c], degree=1)
    assert errors["per-class"]["all"] == pytest.approx(0.0, abs=1e-9)
    assert errors["per-class"]["class 1"] == pytest.approx(0.0, abs=1e-9)
    # Pooled line: x mean 1, y mean 2, slope (sum (x-1)(y-2)) / (sum (x-1)^2) = 6 / 4 = 1.5
    # (per slice: (-1)(-2) + 0 + (1)(0) + (-1)(-1) + 0 + (1)(3) = 6 over 4), intercept 0.5:
    # predictions 0.5, 2, 3.5 for each class; |errors| 0.5, 1, 1.5 and 0.5, 1, 1.5: mean 1.
    assert errors["global"]["all"] == pytest.approx(1.0)
    assert errors["per-slice"]["all"] == pytest.approx(1.0)
    assert errors["identity"]["class 1"] == pytest.approx(2.0)  # (1 + 2 + 3) / 3
    assert errors["identity"]["all"] == pytest.approx(1.0)  # class 0 exact: 6 / 6


def test_a_rare_class_keeps_the_global_map_and_bad_input_is_refused() -> None:
    x = [0.0, 1.0, 2.0, 3.0]
    y = [0.0, 2.0, 4.0, 10.0]
    c = np.asarray([0, 0, 0, 1], np.uint8)  # class 1: one pixel, too few for a line
    errors = room.fit_errors(arrays(x), arrays(y), [c], degree=1)
    assert errors["per-class"]["class 1"] == pytest.approx(errors["global"]["class 1"])
    assert errors["per-class"]["class 0"] == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="one x, y and class array per slice"):
        room.fit_errors([], [], [], degree=1)
    with pytest.raises(ValueError, match="a slice has 2 pixels, or unequal arrays; need more"):
        room.fit_errors(arrays([0, 1]), arrays([0, 1]), [np.zeros(2, np.uint8)], degree=1)


def test_main_pairs_the_held_out_slices_and_refuses_missing_clean_renders(
    eval_study: SimpleNamespace, capsys: pytest.CaptureFixture[str]
) -> None:
    from segrenorm.data.slice_cache import SliceCache
    from segrenorm.evaluate.data import EvalData

    cache = str(eval_study.cache)
    assert room.main(["--cache", cache, "--source", "old", "--target", "new", "--split",
                      "test", "--degrees", "1", "--min-pixels", "10"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    # The identity row by hand: pair the test slices of t0 and t1 by subject and slice index.
    data = EvalData.from_cache(SliceCache.open(cache, pair=("old", "new")), split="test")
    target = {(str(s), int(i)): k for k, (s, i) in
              enumerate(zip(data.target.subjects, data.target.index, strict=True))}  # fmt: skip
    errors, slices = [], 0
    for k, key in enumerate(zip(data.source.subjects, data.source.index, strict=True)):
        t = target[(str(key[0]), int(key[1]))]
        inside = data.source.masks[k] & data.target.masks[t]
        if inside.sum() >= 10:
            slices += 1
            errors.append(np.abs(data.source.images[k] - data.target.images[t])[inside])
    assert f"old -> new (target scan), test: {slices} paired slices" in printed
    identity = next(line for line in printed.splitlines() if line.startswith("identity"))
    assert float(identity.split()[1]) == pytest.approx(np.concatenate(errors).mean(), abs=6e-5)
    with pytest.raises(SystemExit, match="records no clean target renders"):
        room.main(["--cache", cache, "--source", "old", "--target", "new", "--split", "test",
                   "--clean"])  # fmt: skip
