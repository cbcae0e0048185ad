"""Tests for ``benchmarks/train_speed.py``'s eager-reference figures: the alternating
measurement on a tiny model (the matmul peak stubbed), the ratios from hand-made timings,
their merging over rounds, the printed verdicts and ``--no-reference``."""

from __future__ import annotations

import importlib.util
import statistics
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from segrenorm.config.load import load_config
from segrenorm.errors import InputError
from segrenorm.models.translator import Translator

ROOT = Path(__file__).resolve().parents[2]
TINY = ("model.ngf=4", "model.ndf=4", "model.seg_ngf=4", "model.embed_dim=8")
TINY += ("data.crop_size=32", "data.batch_size=2")


def _load(name: str) -> ModuleType:
    if str(ROOT / "benchmarks") not in sys.path:  # the scripts import siblings by name
        sys.path.insert(0, str(ROOT / "benchmarks"))
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / f"benchmarks/{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


ts = _load("train_speed")
ref_mod = _load("eager_reference")


def result(preset: str, seconds: list[float], peak: float = 100.0, gflop: float = 10.0) -> Any:
    best = min(seconds)
    return ts.Result(
        preset=preset, translator="segrenorm", device="cpu", threads=2, mode="parallel",
        batch=4, crop=128, gflop=gflop, seconds=seconds, best_s=best,
        median_s=statistics.median(seconds), gflops=gflop / best, peak_gflops=peak,
        fraction=gflop / best / peak, peak_rss_mib=1.0, cuda_peak_mib=None, bf16_best_s=None,
    )  # fmt: skip


def test_reference_ratios_by_hand() -> None:
    r = ts.with_reference(result("ixi", [1.0, 2.0]), 30.0, [1.5, 2.0])
    assert r.ref is not None
    assert r.ref.speedup == pytest.approx(1.5)  # 1.5 s best against 1.0 s
    assert r.ref.paired_speedup == pytest.approx(1.25)  # median of 1.5 / 1 and 2 / 2
    assert r.ref.gflops == pytest.approx(20.0)  # 30 GFLOP in 1.5 s
    assert r.ref.fraction == pytest.approx(0.2)  # of the 100 GFLOP/s peak
    with pytest.raises(InputError, match=r"1 timed iterations against our 2; they alternate"):
        ts.with_reference(result("ixi", [1.0, 2.0]), 30.0, [1.5])


def test_rounds_merge_pairs_and_the_better_peak() -> None:
    one = ts.with_reference(result("cpu", [1.0, 3.0], peak=100.0), 30.0, [2.0, 3.0])
    two = ts.with_reference(result("cpu", [0.5, 1.0], peak=200.0), 30.0, [1.5, 1.5])
    merged = ts.best_of([one, two])
    assert merged.seconds == [1.0, 3.0, 0.5, 1.0] and merged.best_s == 0.5
    assert merged.peak_gflops == 200.0 and merged.fraction == pytest.approx(10.0 / 0.5 / 200)
    assert merged.ref is not None
    assert merged.ref.seconds == [2.0, 3.0, 1.5, 1.5]
    assert merged.ref.speedup == pytest.approx(1.5 / 0.5)
    assert merged.ref.paired_speedup == pytest.approx(statistics.median([2.0, 1.0, 3.0, 1.5]))
    assert merged.ref.fraction == pytest.approx(30.0 / 1.5 / 200)


def test_describe_prints_the_eager_reference_and_verdicts() -> None:
    fast = "\n".join(ts.describe(ts.with_reference(result("ixi", [1.0], 10.0, 8.0), 12.6, [1.4])))
    assert "eager reference 1.400 s best" in fast and "90.0% of the peak" in fast
    assert "1.40x faster per iteration" in fast
    assert "= 80.0% of the fp32 matmul peak 10.0" in fast and "70% of the peak: met" in fast
    assert "1.3x the eager reference: met" in fast
    slow = "\n".join(ts.describe(ts.with_reference(result("ixi", [1.0], 10.0, 6.0), 9.0, [1.2])))
    assert "70% of the peak: MISSED" in slow and "1.3x the eager reference: MISSED" in slow
    bare = "\n".join(ts.describe(result("cpu", [1.0])))
    assert "eager reference" not in bare


def test_measure_alternates_with_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ts, "matmul_peak", lambda device: 50.0)  # the real probe takes long
    threads = torch.get_num_threads()
    job = ts.Job(
        preset="cpu", translator="segrenorm", iterations=2, warmup=1, threads=1, device="cpu",
        compile=False, parallel=False, reference=True, overrides=TINY,
    )  # fmt: skip
    try:
        r = ts.measure(job)
    finally:
        torch.set_num_threads(threads)
    assert r.ref is not None and len(r.ref.seconds) == len(r.seconds) == 2
    assert r.ref.speedup == pytest.approx(min(r.ref.seconds) / min(r.seconds))
    assert r.ref.fraction == pytest.approx(r.ref.gflop / min(r.ref.seconds) / 50.0)
    # The reference's FLOPs are those of one of its iterations on the job's batch.
    config = load_config("cpu", overrides=["model.translator=segrenorm", *TINY])
    ref = ref_mod.reference_of(Translator.from_config(config).train(), config)
    opts = ref_mod.reference_optimizers(ref, config.optim)
    batch = ts.make_batch(config, torch.device("cpu"))
    flops = ts.count_flops(lambda: ref_mod.reference_iteration(ref, opts, batch))
    assert r.ref.gflop == pytest.approx(flops / 1e9)
    assert r.ref.gflop > r.gflop  # no phase convolutions or 4x4 extractor stages


def test_no_reference_flag_reaches_the_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def fake(job: Any) -> Any:
        seen.append(job.reference)
        return result(job.preset, [1.0])

    monkeypatch.setattr(ts, "run_isolated", fake)
    assert ts.main(["--presets", "cpu", "--iterations", "1"]) == 0
    assert ts.main(["--presets", "cpu", "--iterations", "1", "--no-reference"]) == 0
    assert seen == [True, False]
