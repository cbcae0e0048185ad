"""``segrenorm demo``: the built-in benchmark end to end, with paired numbers at the end."""

from __future__ import annotations

import argparse
import sys

from segrenorm.config import load_config

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``demo`` sub-command.

    Args:
        subparsers: the dispatcher's sub-parser collection.
    """
    parser = subparsers.add_parser(
        "demo",
        help="simulate a two-scanner T1 benchmark, prepare, train, and score against truth",
        description=(
            "Runs: segrenorm simulate t1 (2 mm, 20 subjects) -> prepare -> train (the cpu "
            "preset by default, about 10 minutes on 2 CPU cores) -> paired evaluation of the "
            "held-out subjects against no harmonization and histogram matching. Stages whose "
            "output exists are reused."
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
        help="override one config field, e.g. --set optim.iterations=200 (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every stage (default: 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo and print where the results are and the headline numbers."""
    from segrenorm.demo import format_table, run_demo

    config = load_config(args.config, overrides=args.overrides)
    result = run_demo(
        args.out,
        config=config,
        seed=args.seed,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    print(format_table(result.scores))
    print(f"\nrun directory: {result.run_dir}")
    print(f"results: {result.out / 'results.md'} and {result.out / 'results.json'}")
    return 0
