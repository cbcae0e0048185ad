"""``segrenorm compare``: train the four translators with one budget and evaluate them."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from segrenorm.cli.evaluate_cmd import _BASELINES, add_settings_option
from segrenorm.config.presets import PRESETS

__all__ = ["add_parser", "run"]

_TRANSLATORS = "cyclegan,s-cyclegan,semgan,segrenorm"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``compare`` sub-command.

    Args:
        subparsers: the dispatcher's sub-parser collection.
    """
    parser = subparsers.add_parser(
        "compare",
        help="train cyclegan, s-cyclegan, semgan and segrenorm on one cache, then evaluate",
        description=(
            "Train each translator with the same config, cache, seed and iteration budget "
            "(OUT/runs/), then evaluate them next to every classical pipeline (OUT/report/: "
            "KID/FID, Dice/IoU, robustness curves, paired SSIM/PSNR where the data are "
            "paired, qualitative panel, per-tissue histograms). Finished runs in OUT/runs/ "
            "are reused, so an interrupted comparison continues where it stopped."
        ),
    )
    parser.add_argument("--cache", required=True, metavar="CACHE", help="slice cache folder")
    parser.add_argument("--out", required=True, metavar="DIR", help="comparison folder")
    parser.add_argument(
        "--config",
        default="cpu",
        metavar="PRESET_OR_YAML",
        help=f"shared training config: {', '.join(PRESETS)} or a YAML file (default cpu)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override a training config field for every translator (repeatable)",
    )
    parser.add_argument(
        "--translators",
        default=_TRANSLATORS,
        metavar="LIST",
        help=f"comma-separated translators (default: {_TRANSLATORS})",
    )
    parser.add_argument(
        "--baselines",
        default=_BASELINES,
        metavar="LIST",
        help=f"comma-separated classical baselines (default, every classical pipeline: "
        f"{_BASELINES}); none is always in",
    )
    parser.add_argument(
        "--pairs",
        metavar="SRC:TGT,...",
        help="a cache of more than two sites: compare once per (source, target) pair, e.g. "
        "SA:SV,SA:PI,SV:PI (site names or keys), each in OUT/<source>-to-<target>/",
    )
    add_settings_option(parser, "--eval-set")
    parser.add_argument("--device", default="cpu", help="evaluation device (default cpu)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train, evaluate and print the quality checks and where the report is.

    Args:
        args: the parsed command line.
    """
    from segrenorm.cli.train_cmd import parse_pairs
    from segrenorm.config.load import load_config
    from segrenorm.config.overrides import apply_overrides
    from segrenorm.evaluate.suite import EvaluationConfig
    from segrenorm.report.checks import check_lines
    from segrenorm.workflows.compare import compare, compare_pairs

    config = load_config(args.config, overrides=args.overrides)
    evaluation = apply_overrides(EvaluationConfig(), args.eval_overrides)

    def on_stage(text: str) -> None:
        print(f"compare: {text}", file=sys.stderr, flush=True)

    options: dict[str, Any] = dict(
        translators=[t.strip() for t in args.translators.split(",") if t.strip()],
        baselines=[b.strip() for b in args.baselines.split(",") if b.strip()],
        evaluation=evaluation, device=args.device,
        progress=not args.no_progress and sys.stderr.isatty(), on_stage=on_stage,
    )  # fmt: skip
    if args.pairs is None:
        results = {"": compare(args.cache, args.out, config, **options)}
    else:
        by_pair = compare_pairs(args.cache, args.out, config, parse_pairs(args.pairs), **options)
        results = {f"{s} -> {t}:": result for (s, t), result in by_pair.items()}
    for heading, result in results.items():
        if heading:
            print(heading)
        for line in check_lines(result.results):
            print(line)
        print(f"report: {result.report.html}")
    return 0
