"""``segrenorm demo``: the built-in benchmark end to end, with the headline numbers at the end."""

from __future__ import annotations

import argparse
import sys

from segrenorm.cli.evaluate_cmd import add_settings_option
from segrenorm.config.load import load_config

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``demo`` sub-command.

    Args:
        subparsers: the dispatcher's sub-parser collection.
    """
    parser = subparsers.add_parser(
        "demo",
        help="simulate a two-scanner T1 benchmark, train, harmonize, evaluate and report",
        description=(
            "Runs: segrenorm simulate t1 (2 mm, 20 subjects) -> prepare -> train (the cpu "
            "preset by default) -> harmonize the held-out source scans -> evaluate against "
            "no harmonization and the classical baselines -> report (HTML, Markdown, JSON, "
            "CSV). 9 to 17 minutes on 2 CPU cores (BENCHMARKS.md). Stages whose output exists "
            "are reused, so an interrupted demo continues where it stopped. --source/--target "
            "choose the scanner pair (1T -> 7T is the second built-in pair)."
        ),
    )
    parser.add_argument("--out", default="demo_out", help="demo folder (default: demo_out)")
    parser.add_argument(
        "--config", default="cpu", metavar="PRESET_OR_YAML", help="training config (default: cpu)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override one training config field, e.g. --set optim.iterations=200 (repeatable)",
    )
    add_settings_option(parser, "--eval-set")
    parser.add_argument("--seed", type=int, default=0, help="seed of every stage (default: 0)")
    parser.add_argument(
        "--subjects", type=int, default=20, help="virtual subjects to simulate (default: 20)"
    )
    parser.add_argument(
        "--source",
        default="1.5T",
        metavar="NAME|FILE",
        help="source scanner: 1.5T (default), 3T, 1T, 7T or a profile file",
    )
    parser.add_argument(
        "--target", default="3T", metavar="NAME|FILE", help="target scanner (default: 3T)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo and print the headline numbers and where the report is.

    Args:
        args: the parsed command line.
    """
    from segrenorm.config.overrides import apply_overrides
    from segrenorm.workflows.demo import DEMO_EVALUATION, headline, run_demo

    config = load_config(args.config, overrides=args.overrides)
    evaluation = apply_overrides(DEMO_EVALUATION, args.eval_overrides)

    def on_stage(text: str) -> None:
        print(f"demo: {text}", file=sys.stderr, flush=True)

    result = run_demo(
        args.out, config=config, evaluation=evaluation, seed=args.seed,
        subjects=args.subjects, source=args.source, target=args.target, on_stage=on_stage,
    )  # fmt: skip
    print(headline(result.results))
    times = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
    print(f"\nstage times: {times}")
    print(f"run directory: {result.run_dir}")
    print(f"report: {result.report.html}")
    print(f"        {result.report.markdown}, {result.report.json}, {result.report.csv}")
    return 0
