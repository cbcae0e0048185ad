"""Paired quality of the ``cpu`` preset on the built-in 2 mm T1 benchmark.

Runs the demo pipeline (simulate -> prepare -> train with the ``cpu`` preset) unless
``--run`` names an existing run, then scores every checkpoint of the run on the held-out
subjects, whose true target-scanner scans exist: SSIM, PSNR and MAE inside the brain,
against no harmonization, histogram matching and denoise-then-histogram-matching. The
ratio printed is the translator's SSIM over the best classical baseline's.

    python benchmarks/cpu_preset_quality.py --out /tmp/cpu_quality
    python benchmarks/cpu_preset_quality.py --run demo_out/runs/00000-cpu-segrenorm \
        --cache demo_out/cache
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch

from segrenorm.checkpoint import load_translator
from segrenorm.config import load_config
from segrenorm.datasets import SliceCache
from segrenorm.demo import format_table, run_demo
from segrenorm.evaluate.paired import (
    classical_methods,
    evaluate_paired,
    paired_test_subjects,
    translator_method,
)


def _checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for path in sorted((run_dir / "checkpoints").glob("step-*.pt")):
        match = re.search(r"step-(\d+)", path.name)
        if match:
            found.append((int(match.group(1)), path))
    final = run_dir / "final.pt"
    if final.is_file():
        found.append((-1, final))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("cpu_quality_out"))
    parser.add_argument("--run", type=Path, help="score an existing run directory instead")
    parser.add_argument("--cache", type=Path, help="its slice cache (with --run)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()

    train_seconds = None
    if args.run is None:
        start = time.perf_counter()
        result = run_demo(args.out, config=load_config("cpu", overrides=args.overrides))
        train_seconds = result.seconds["train"]
        run_dir, cache_dir = result.run_dir, args.out / "cache"
        print(f"demo finished in {time.perf_counter() - start:.0f} s")
    else:
        run_dir, cache_dir = args.run, args.cache
        if cache_dir is None:
            parser.error("--run needs --cache")

    cache = SliceCache.open(cache_dir)
    subjects = paired_test_subjects(cache)
    baselines = evaluate_paired(subjects, classical_methods(cache))
    print(f"{len(subjects)} held-out subjects on both scanners; baselines:")
    print(format_table(baselines))
    best_name = max(baselines, key=lambda k: baselines[k]["ssim"])
    best = baselines[best_name]["ssim"]
    none = baselines["none"]["ssim"]

    curve = []
    print("\n| checkpoint step | SSIM | PSNR (dB) | MAE | SSIM / none | SSIM / best baseline |")
    print("|---|---|---|---|---|---|")
    for step, path in _checkpoints(run_dir):
        model, _ = load_translator(path)

        def translate(x: torch.Tensor, model: torch.nn.Module = model) -> torch.Tensor:
            return model.translate(x, "AB")  # type: ignore[operator]

        s = evaluate_paired(subjects, {"model": translator_method(translate)})["model"]
        label = "final" if step < 0 else str(step)
        curve.append({"step": label, **s})
        print(
            f"| {label} | {s['ssim']:.4f} | {s['psnr']:.2f} | {s['mae']:.4f} | "
            f"{s['ssim'] / none:.3f} | {s['ssim'] / best:.3f} ({best_name}) |"
        )
    if train_seconds is not None:
        print(f"\ntraining wall time: {train_seconds:.0f} s")
    if args.json:
        args.json.write_text(
            json.dumps({"baselines": baselines, "curve": curve, "train_s": train_seconds}, indent=2)
        )


if __name__ == "__main__":
    main()
