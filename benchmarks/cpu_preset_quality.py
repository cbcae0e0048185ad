"""Paired quality of a training run, checkpoint by checkpoint, on the built-in 2 mm benchmark.

Runs the demo (simulate -> prepare -> train with the ``cpu`` preset -> harmonize ->
evaluate) unless ``--run`` names an existing run, then scores every checkpoint of the run
on the held-out subjects, whose true target-scanner scans exist: SSIM, PSNR and MAE inside
the brain, next to the classical baselines. The ratios printed are the translator's SSIM
over no harmonization's and over the best classical baseline's.

    python benchmarks/cpu_preset_quality.py --out /tmp/cpu_quality
    python benchmarks/cpu_preset_quality.py --out /tmp/cpu_quality --set optim.lr_disc=4e-4
    python benchmarks/cpu_preset_quality.py --run demo_out/runs/00000-cpu-segrenorm \
        --cache demo_out/cache
"""

from __future__ import annotations

import argparse
import json
import re
import time
import typing
from pathlib import Path

import torch

from segrenorm.config.load import load_config
from segrenorm.evaluate.data import EvalData
from segrenorm.evaluate.methods import baseline_slices, translator_slices
from segrenorm.evaluate.paired import paired_scores
from segrenorm.models.checkpoint import load_translator
from segrenorm.workflows.demo import run_demo


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

    data = EvalData.from_cache(cache_dir)
    scores = paired_scores(data, baseline_slices(data))
    if scores is None:
        parser.error(f"{cache_dir} has no held-out subjects on both sites")
    baselines = scores["methods"]
    print(f"{scores['n_subjects']} held-out subjects on both scanners; baselines:")
    print("| method | SSIM | PSNR (dB) | MAE |\n|---|---|---|---|")
    for name, s in baselines.items():
        print(f"| {name} | {s['ssim']:.4f} | {s['psnr']:.2f} | {s['mae']:.4f} |")
    best_name = max(baselines, key=lambda k: baselines[k]["ssim"])
    best, none = baselines[best_name]["ssim"], baselines["none"]["ssim"]

    curve = []
    print("\n| checkpoint step | SSIM | PSNR (dB) | MAE | SSIM / none | SSIM / best baseline |")
    print("|---|---|---|---|---|---|")
    for step, path in _checkpoints(run_dir):
        model, _ = load_translator(path)

        def translate(x: torch.Tensor, model: torch.nn.Module = model) -> torch.Tensor:
            return typing.cast(torch.Tensor, model.translate(x, "AB"))  # type: ignore[operator]

        slices = translator_slices(translate, data.source.images, data.source.masks)
        scored = paired_scores(data, {"model": slices})
        assert scored is not None
        s = scored["methods"]["model"]
        label = "final" if step < 0 else str(step)
        curve.append({"step": label, **{k: s[k] for k in ("ssim", "psnr", "mae")}})
        print(
            f"| {label} | {s['ssim']:.4f} | {s['psnr']:.2f} | {s['mae']:.4f} | "
            f"{s['ssim'] / none:.3f} | {s['ssim'] / best:.3f} ({best_name}) |"
        )
    if train_seconds is not None:
        print(f"\ntraining wall time: {train_seconds:.0f} s")
    if args.json:
        baseline_means = {
            k: {m: v[m] for m in ("ssim", "psnr", "mae")} for k, v in baselines.items()
        }
        record = {"baselines": baseline_means, "curve": curve, "train_s": train_seconds}
        args.json.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
