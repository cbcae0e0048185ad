"""Pseudo-labels against the truth: ``prepare --auto-labels gmm|segnet`` on the built-in benchmark.

Issue 11, Deliver item 2. The source site of a ``segrenorm simulate t1`` folder is prepared as
if it had no label maps, once per method, into ``OUT/cache-<method>``; every pseudo-label map
(``pseudo_labels/A/*.nii.gz``, on the subject's own grid) is scored against the subject's true
label map: Dice per class, mean ± std over the subjects of each split, and the seconds each
``prepare`` took. The printed table is also written to ``OUT/dice.json``.

With ``--train`` it then measures how much harmonization quality pseudo-labels cost: the
``--config`` preset (with the ``--set`` overrides, e.g. ``--set optim.iterations=3000``, and
the same seed) is trained once on ``OUT/cache-true`` (true labels on both sites) and once per
method on its pseudo-labelled cache, and all runs are evaluated in ONE ``evaluate`` call on the
true-label cache's test split (shared segmentors and feature autoencoder), printing paired
SSIM/PSNR (noisy and clean target), KID ratio and Dice-gap recovery side by side.

Usage:
    .venv/bin/python benchmarks/autolabels.py --out OUT [--data SIMULATED | --subjects 8]
        [--methods gmm segnet] [--train --config cpu --set optim.iterations=3000]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from segrenorm.data.listing import SubjectRecord, read_listing
from segrenorm.data.prepare import prepare_cache
from segrenorm.volumes.readwrite import load_image, load_label
from segrenorm.workflows.autolabel import auto_labeller

FIGURES = ("SSIM noisy", "PSNR noisy", "SSIM clean", "PSNR clean", "KID ratio")


def _dice(a: np.ndarray, b: np.ndarray, k: int) -> float:
    total = int((a == k).sum() + (b == k).sum())
    return float("nan") if total == 0 else 2.0 * int(((a == k) & (b == k)).sum()) / total


def _data(args: argparse.Namespace) -> Path:
    if args.data:
        return Path(args.data)
    from segrenorm.cli import main

    data = Path(args.out) / "data"
    if not (data / "subjects.csv").is_file():
        argv = ["simulate", "t1", "--out", str(data), "--subjects", str(args.subjects),
                "--resolution", "2", "--seed", str(args.seed)]  # fmt: skip
        assert main(argv) == 0
    return data


def _score(cache: Path, truth: dict[str, Path], names: list[str]) -> dict[str, Any]:
    """Dice per class of every pseudo-labelled subject, grouped by split."""
    manifest = json.loads((cache / "manifest.json").read_text())
    by_split: dict[str, list[list[float]]] = {}
    for subject in manifest["subjects"]:
        if subject["label_source"] in (None, "file"):
            continue
        image = load_image(subject["image"])
        pseudo = load_label(cache / subject["label"], like=image).data
        true = load_label(truth[subject["subject"]], like=image).data
        dice = [_dice(pseudo, true, k) for k in range(1, len(names))]
        by_split.setdefault(subject["split"], []).append(dice)
    return {
        split: {
            "n": len(rows),
            **{
                name: [statistics.fmean(c), statistics.pstdev(c)]
                for name, c in zip(names[1:], zip(*rows, strict=True), strict=True)
            },
        }
        for split, rows in sorted(by_split.items())
    }


def _print_dice(table: dict[str, dict[str, Any]], names: list[str]) -> None:
    print(f"\n{'method':8s} {'split':6s} {'n':>3s} " + " ".join(f"{n:>15s}" for n in names[1:]))
    for method, entry in table.items():
        for split, row in entry["dice"].items():
            cells = " ".join(f"{row[n][0]:8.3f} ± {row[n][1]:.3f}" for n in names[1:])
            print(f"{method:8s} {split:6s} {row['n']:3d} {cells}")
        print(f"{method:8s} prepare took {entry['seconds']:.0f} s")


def _train_and_evaluate(args: argparse.Namespace, caches: dict[str, Path]) -> None:
    from segrenorm.config.load import load_config
    from segrenorm.config.overrides import apply_overrides
    from segrenorm.evaluate.suite import EvaluationConfig
    from segrenorm.training.runlog import find_finished_run
    from segrenorm.training.trainer import train
    from segrenorm.workflows.evaluate import evaluate_cache

    config = apply_overrides(load_config(args.config), args.overrides)
    runs = {}
    for name, cache in caches.items():
        runs_dir = Path(args.out) / f"runs-{name}"
        done = find_finished_run(runs_dir, config.name, config.model.translator.value)
        runs[f"{name} labels"] = done or train(config, cache, runs_dir, progress=False)
    _, results = evaluate_cache(
        caches["true"], Path(args.out) / "report", models=runs,
        config=apply_overrides(EvaluationConfig(), args.eval_overrides), split="test",
        title="true vs pseudo-labels of the source site",
    )  # fmt: skip
    rows: dict[str, dict[str, float]] = {}
    for method in runs:
        row: dict[str, float] = {}
        paired = results.get("paired", {}).get("methods", {}).get(method) or {}
        if paired:
            row["SSIM noisy"], row["PSNR noisy"] = float(paired["ssim"]), float(paired["psnr"])
            if paired.get("clean"):
                row["SSIM clean"] = float(paired["clean"]["ssim"])
                row["PSNR clean"] = float(paired["clean"]["psnr"])
        row["KID ratio"] = float(results["distribution"]["methods"][method]["kid_ratio"])
        recovery = results["segmentation"]["gap_recovery"].get(method, [])
        for cls, value in zip(results["class_names"][1:], recovery[1:], strict=False):
            if isinstance(value, (int, float)) and value == value:
                row[f"recovery {cls}"] = float(value)
        rows[method] = row
    (Path(args.out) / "quality.json").write_text(json.dumps(rows, indent=1) + "\n")
    keys = [k for k in FIGURES if any(k in r for r in rows.values())]
    keys += sorted({k for r in rows.values() for k in r if k.startswith("recovery")})
    print(f"\n{'':16s}" + "".join(f"{m:>18s}" for m in rows))
    for key in keys:
        print(f"{key:16s}" + "".join(f"{r.get(key, float('nan')):18.4f}" for r in rows.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="working folder")
    parser.add_argument("--data", help="a segrenorm simulate t1 folder (default: simulate one)")
    parser.add_argument("--subjects", type=int, default=8, help="subjects to simulate")
    parser.add_argument("--seed", type=int, default=0, help="simulation and labeller seed")
    parser.add_argument("--methods", nargs="+", default=["gmm", "segnet"])
    parser.add_argument("--train", action="store_true", help="also measure harmonization loss")
    parser.add_argument("--config", default="cpu", help="preset or YAML for --train")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--eval-set", action="append", default=[], dest="eval_overrides")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = read_listing(_data(args) / "subjects.csv")
    source = records[0].site
    truth = {r.subject: r.label for r in records if r.site == source and r.label is not None}
    hidden: list[SubjectRecord] = [
        dataclasses.replace(r, label=None) if r.site == source else r for r in records
    ]
    table: dict[str, Any] = {}
    caches: dict[str, Path] = {}
    names: list[str] = []
    for method in args.methods:
        start = time.perf_counter()
        cache = prepare_cache(
            hidden, out / f"cache-{method}", overwrite=True, progress=False,
            auto_labels=auto_labeller(method, seed=args.seed),
        )  # fmt: skip
        seconds = time.perf_counter() - start
        names = json.loads((cache / "manifest.json").read_text())["class_names"]
        table[method] = {"seconds": seconds, "dice": _score(cache, truth, names)}
        caches[method] = cache
    (out / "dice.json").write_text(json.dumps(table, indent=1) + "\n")
    _print_dice(table, names)
    if args.train:
        caches = {"true": prepare_cache(records, out / "cache-true", overwrite=True), **caches}
        _train_and_evaluate(args, caches)


if __name__ == "__main__":
    main()
