"""Ablation with training seeds: the four translators x N seeds on one cache, one budget.

Issue 10 item 7. For every seed in ``--seeds`` and every translator (segrenorm, s-cyclegan,
semgan with semantic dropout, cyclegan) this trains the ``--config`` preset (with
``--set`` overrides and ``run.seed`` = the seed) into ``OUT/seed<S>/runs/`` -- a run that
already finished there is reused, so an interrupted ablation picks up where it stopped --
then evaluates every run in ONE ``evaluate`` call (the post-hoc segmentors and the feature
autoencoder are trained once and shared by all rows, so differences between rows are the
translators' own) and prints, per translator, mean ± std over the training seeds of:

- paired SSIM and PSNR against the noisy target scan and against the clean target render;
- KID / KID(source vs target);
- Dice-gap recovery per class (each seed's figure is itself the mean over segmentor seeds);
- the conditioning sensitivity (segrenorm only);
- and, for segrenorm, the same figures of its wrong-segmentation control rows.

A difference between two translators smaller than the larger of their seed spreads is
printed as a tie. ``--train-only`` with ``--shard I/N`` trains every N-th job (two shards
with ``OMP_NUM_THREADS=1`` use the 2 cores better than one process for these small models).

Usage:
    .venv/bin/python benchmarks/ablation.py --cache CACHE --out OUT [--seeds 0 1 2]
        [--config cpu] [--set loss.identity=0] [--split val|test] [--train-only --shard 0/2]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from segrenorm.config.load import load_config
from segrenorm.config.overrides import apply_overrides
from segrenorm.config.schema import Config, TranslatorKind
from segrenorm.workflows.compare import translator_config

TRANSLATORS = ("segrenorm", "s-cyclegan", "semgan", "cyclegan")


def _seeded(config: Config, seed: int, kind: str) -> Config:
    from segrenorm.config.build import config_from_dict

    raw = translator_config(config, TranslatorKind(kind)).to_dict()
    raw["run"]["seed"] = seed
    return config_from_dict(raw).validate()


def _train(args: argparse.Namespace, config: Config) -> dict[str, Path]:
    from segrenorm.training.runlog import find_finished_run
    from segrenorm.training.trainer import train

    index, shards = (int(v) for v in args.shard.split("/"))
    runs: dict[str, Path] = {}
    jobs = [(seed, kind) for seed in args.seeds for kind in args.translators]
    for number, (seed, kind) in enumerate(jobs):
        cfg = _seeded(config, seed, kind)
        runs_dir = Path(args.out) / f"seed{seed}" / "runs"
        done = find_finished_run(runs_dir, cfg.name, kind)
        if done is not None:
            runs[f"{kind}-s{seed}"] = done
            continue
        if number % shards != index:
            continue
        print(f"training {kind} seed {seed} -> {runs_dir}", flush=True)
        runs[f"{kind}-s{seed}"] = train(cfg, args.cache, runs_dir, progress=False)
    return runs


def _spread(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def _figures(results: dict[str, Any], method: str) -> dict[str, float]:
    """The headline numbers of one evaluated method."""
    out: dict[str, float] = {}
    row = results.get("paired", {}).get("methods", {}).get(method)
    if row:
        out["SSIM noisy"], out["PSNR noisy"] = float(row["ssim"]), float(row["psnr"])
        if row.get("clean"):
            out["SSIM clean"] = float(row["clean"]["ssim"])
            out["PSNR clean"] = float(row["clean"]["psnr"])
    dist = results["distribution"]["methods"].get(method)
    if dist:
        out["KID ratio"] = float(dist["kid_ratio"])
    recovery = results["segmentation"]["gap_recovery"].get(method, [])
    for name, value in zip(results["class_names"][1:], recovery[1:], strict=False):
        if isinstance(value, (int, float)) and value == value:  # skip None and NaN
            out[f"recovery {name}"] = float(value)
    cond = (results.get("conditioning") or {}).get(method)
    if isinstance(cond, dict) and cond.get("sensitivity") is not None:
        out["conditioning"] = float(cond["sensitivity"])
    return out


def _summarise(results: dict[str, Any], seeds: list[int]) -> dict[str, dict[str, list[float]]]:
    groups: dict[str, dict[str, list[float]]] = {}
    for method in results["distribution"]["methods"]:
        stem, _, tail = method.rpartition("-s")
        for seed in seeds:
            if stem and (tail == str(seed) or tail.startswith(f"{seed} ")):  # not s1 in s10
                label = stem + tail[len(str(seed)) :]  # e.g. "segrenorm (wrong seg)"
                for key, value in _figures(results, method).items():
                    groups.setdefault(label, {}).setdefault(key, []).append(value)
    return groups


def _print(groups: dict[str, dict[str, list[float]]]) -> None:
    keys = sorted({k for g in groups.values() for k in g})
    for key in keys:
        print(f"\n{key}:")
        stats = {name: _spread(g[key]) for name, g in groups.items() if key in g}
        for name, (mean, std) in stats.items():
            print(f"  {name:28s} {mean:9.4f} ± {std:.4f}  (n={len(groups[name][key])})")
        if "segrenorm" in stats and "s-cyclegan" in stats:
            (m1, s1), (m2, s2) = stats["segrenorm"], stats["s-cyclegan"]
            verdict = "tie" if abs(m1 - m2) <= max(s1, s2) else "beyond seed spread"
            print(f"  segrenorm - s-cyclegan = {m1 - m2:+.4f}: {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", default="cpu")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--translators", nargs="+", default=list(TRANSLATORS))
    parser.add_argument("--split", choices=("val", "test"), default="val")
    parser.add_argument("--eval-set", action="append", default=[], dest="eval_overrides")
    parser.add_argument("--train-only", action="store_true")
    parser.add_argument("--shard", default="0/1", help="I/N: train every N-th job from I")
    args = parser.parse_args()
    config = apply_overrides(load_config(args.config), args.overrides)
    runs = _train(args, config)
    if args.train_only:
        return
    from segrenorm.evaluate.suite import EvaluationConfig
    from segrenorm.workflows.evaluate import evaluate_cache

    _, results = evaluate_cache(
        args.cache,
        Path(args.out) / f"report-{args.split}",
        models=runs,
        config=apply_overrides(EvaluationConfig(), args.eval_overrides),
        split=args.split,
        title=f"ablation: {len(args.seeds)} training seeds, {args.split} split",
        segmentors=Path(args.out) / "segmentors",  # the val run's serve the test run
    )
    groups = _summarise(results, args.seeds)
    (Path(args.out) / f"summary-{args.split}.json").write_text(json.dumps(groups, indent=1))
    _print(groups)


if __name__ == "__main__":
    main()
