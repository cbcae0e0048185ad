"""``segrenorm evaluate``: score baselines, runs and harmonized folders; write the report."""

from __future__ import annotations

import argparse
import sys

from segrenorm.errors import ConfigError

__all__ = ["add_parser", "add_settings_option", "named_paths", "run"]

#: Every classical pipeline (segrenorm.evaluate.methods.BASELINES, spelled out here so the
#: parser needs no numerical imports; tests/evaluate/test_methods.py keeps the two equal).
_BASELINES = (
    "none,zscore,histogram,nyul,whitestripe,denoise-histogram,n4-histogram,n4-denoise-histogram"
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``evaluate`` sub-command.

    Args:
        subparsers: the dispatcher's sub-parser collection.
    """
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate harmonization on a cache's held-out data and write a report",
        description=(
            "Four lenses on the held-out source slices of a cache, each method against the "
            "target site: KID/FID in the features of a multitask autoencoder; Dice, IoU and "
            "Generalized Dice of post-hoc segmentors (Table V layout); robustness of the "
            "cycle to noise (runs only); paired SSIM/PSNR/MAE where held-out subjects exist "
            "on both sites (simulated benchmarks). Writes report.html, report.md, "
            "results.json, results.csv and PNG figures to --out."
        ),
        epilog=(
            "Methods: classical baselines (--baselines), trained runs (--model NAME=RUN: "
            "held-out slices are translated in memory) and folders written by segrenorm "
            "harmonize (--harmonized NAME=DIR). Give a run and a folder the same NAME to "
            "score the folder's volumes and take the robustness curve from the run. "
            "Budgets: --set autoencoder.iterations=300 --set segmentor.iterations=300 "
            "--set robustness_slices=128 --set sigmas=0,0.1,0.2,0.3,0.4,0.5 ..."
        ),
    )
    parser.add_argument("--cache", required=True, metavar="CACHE", help="slice cache folder")
    parser.add_argument("--out", required=True, metavar="DIR", help="report folder")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=RUN",
        help="a trained run (or checkpoint) to evaluate under NAME (repeatable)",
    )
    parser.add_argument(
        "--harmonized",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="a folder of harmonized held-out source volumes to evaluate under NAME",
    )
    parser.add_argument(
        "--baselines",
        default=_BASELINES,
        metavar="LIST",
        help=f"comma-separated classical baselines (default, every classical pipeline: "
        f"{_BASELINES}); none is always in. The n4- ones bias-correct the source volumes "
        "again when the cache was prepared with --bias-correction none",
    )
    add_settings_option(parser, "--set")
    parser.add_argument("--seed", type=int, default=0, help="seed of every lens (default 0)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--title", default="segrenorm evaluation", help="the report's title")
    parser.add_argument(
        "--split",
        choices=("val", "test"),
        default="test",
        help="held-out subjects to score: val to tune presets and choose checkpoints, test "
        "(default) once, for the final table",
    )
    parser.add_argument(
        "--fold",
        type=int,
        metavar="K",
        help="leave-one-subject-out / k-fold: score the subjects of the cache's fold K (both "
        "sites) with --model runs trained with --set data.fold=K (a run of another fold is "
        "refused); see prepare --folds loso",
    )
    parser.add_argument(
        "--tiles",
        default="none",
        metavar="auto|none|N",
        help="how --model runs translate, as segrenorm harmonize --tiles: none (default) "
        "whole slices, auto overlapping tiles of the training crop size for a run trained "
        "on crops, N tiles of N pixels",
    )
    parser.add_argument(
        "--segmentors",
        metavar="DIR",
        help="a folder that keeps the post-hoc segmentors: one trained by an earlier "
        "evaluation on the same training slices with the same settings (a val run before "
        "the test run, another direction of the same cache) is loaded instead of trained "
        "again; new ones are stored there. Default: train every one",
    )
    for flag, role in (("--source", "source"), ("--target", "target")):
        parser.add_argument(
            flag,
            metavar="SITE",
            help=f"the {role} site of a cache of more than two sites, for --harmonized folders "
            "without a --model (runs bring the pair they were trained on)",
        )
    parser.set_defaults(func=run)


def add_settings_option(parser: argparse.ArgumentParser, flag: str) -> None:
    """Add the repeatable evaluation-settings option (``dest="eval_overrides"``).

    Args:
        parser: the command's parser.
        flag: ``--set`` for ``evaluate``; ``--eval-set`` where ``--set`` is the training's.
    """
    parser.add_argument(
        flag,
        dest="eval_overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="an evaluation setting, e.g. autoencoder.iterations=200 or segmentor.iterations"
        "=300 (repeatable; see docs/evaluation.md)",
    )


def named_paths(values: list[str], option: str) -> dict[str, str]:
    """Parse ``NAME=PATH`` values of a repeatable option.

    Args:
        values: the option's values.
        option: the option's name, for messages.

    Raises:
        ConfigError: a value without ``=``, an empty name or path, or a name given twice.
    """
    out: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ConfigError(
                f"{option} {value!r} must look like NAME=PATH, e.g. segrenorm=runs/00000"
            )
        if name.strip() in out:
            raise ConfigError(f"{option} names {name.strip()!r} twice")
        out[name.strip()] = path.strip()
    return out


def run(args: argparse.Namespace) -> int:
    """Evaluate and print where the report is.

    Args:
        args: the parsed command line.
    """
    from segrenorm.config.overrides import apply_overrides
    from segrenorm.evaluate.suite import EvaluationConfig
    from segrenorm.report.checks import check_lines
    from segrenorm.workflows.evaluate import evaluate_cache

    models = named_paths(args.model, "--model")
    harmonized = named_paths(args.harmonized, "--harmonized")
    baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
    config = apply_overrides(EvaluationConfig(), args.eval_overrides).with_seed(args.seed)

    def on_stage(text: str) -> None:
        print(f"evaluate: {text}", file=sys.stderr, flush=True)

    paths, results = evaluate_cache(
        args.cache, args.out, models=models, harmonized=harmonized, baselines=baselines,
        config=config, device=args.device, title=args.title, on_stage=on_stage,
        split=args.split, tiles=args.tiles, source=args.source, target=args.target,
        fold=args.fold, segmentors=args.segmentors,
    )  # fmt: skip
    for line in check_lines(results):
        print(line)
    stored = results.get("segmentation", {}).get("segmentor_store")
    if stored:
        print(
            f"segmentors: {len(stored['loaded'])} loaded from {stored['folder']}, "
            f"{len(stored['trained'])} trained and stored there"
        )
    print(f"report: {paths.html} (also {paths.markdown.name}, {paths.json.name}, {paths.csv.name})")
    return 0
