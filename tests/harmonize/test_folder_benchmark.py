"""Tests for ``benchmarks/harmonize_folder.py``'s pure helpers (the timed runs are not tested)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "harmonize_folder", ROOT / "benchmarks" / "harmonize_folder.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_schedule_alternates_and_best_runs_keep_the_fastest() -> None:
    bench = load_benchmark()
    assert bench.schedule(["sequential", "overlapped"], 2) == [
        "sequential", "overlapped", "sequential", "overlapped"
    ]  # fmt: skip
    assert bench.volumes_per_minute(20, 30.0) == 40.0
    runs = [
        {"variant": "sequential", "seconds": 30.0, "volumes": 20, "volumes_per_min": 40.0,
         "batch": 16, "peak_rss_gb": 0.8},
        {"variant": "overlapped", "seconds": 25.0, "volumes": 20, "volumes_per_min": 48.0,
         "batch": 8, "peak_rss_gb": 0.9},
        {"variant": "sequential", "seconds": 24.0, "volumes": 20, "volumes_per_min": 50.0,
         "batch": 16, "peak_rss_gb": 0.8},
        {"variant": "overlapped", "seconds": 26.0, "volumes": 20, "volumes_per_min": 46.2,
         "batch": 8, "peak_rss_gb": 0.9},
    ]  # fmt: skip
    best = bench.best_runs(runs)
    assert list(best) == ["sequential", "overlapped"]
    assert best["sequential"] is runs[2] and best["overlapped"] is runs[1]
    lines = bench.summary_lines(best)
    assert lines[0].startswith("sequential:    50.0 volumes/min (24.0 s for 20 volumes), batch 16")
    assert lines[-1] == "overlapped + auto batch / sequential + batch 16: 0.96x"  # 48 / 50


def test_made_volumes_differ_and_keep_air() -> None:
    bench = load_benchmark()
    template = np.zeros((6, 5, 4), np.float32)
    template[1:5, 1:4, 1:3] = np.linspace(10, 200, 24).reshape(4, 3, 2)
    a, b = bench.make_volume(template, 0), bench.make_volume(template, 1)
    assert a.dtype == np.int16 and a.shape == template.shape
    assert np.all(a[template == 0] == 0) and not np.array_equal(a, b)
    # The template's maximum maps to ~1000 times the subject's scale (0.8-1.2), noise sd 10.
    rng = np.random.default_rng(0)
    scale, offset = rng.uniform(0.8, 1.2), rng.uniform(-20.0, 20.0)
    assert float(a.max()) == pytest.approx(1000 * scale + offset, abs=40)
