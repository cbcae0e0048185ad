"""``segrenorm train``: train a translator on a slice cache, or resume a run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from segrenorm.config.presets import PRESETS
from segrenorm.errors import ConfigError

if TYPE_CHECKING:
    from segrenorm.config.schema import Config

__all__ = ["add_parser", "parse_pairs", "run"]


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """``"SA:SV,SA:PI"`` as ``[("SA", "SV"), ("SA", "PI")]`` (``--pairs``), in order.

    Args:
        text: comma-separated ``SOURCE:TARGET`` items (site names or cache keys).

    Raises:
        ConfigError: an empty list, or an item that is not two non-empty names around one
            colon.
    """
    pairs = []
    for item in (part.strip() for part in text.split(",")):
        source, colon, target = item.partition(":")
        if not colon or not source.strip() or not target.strip() or ":" in target:
            raise ConfigError(
                f"--pairs item {item!r} of {text!r} is not SOURCE:TARGET: give comma-separated "
                "site pairs, e.g. --pairs SA:SV,SA:PI,SV:PI"
            )
        pairs.append((source.strip(), target.strip()))
    return pairs


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``train`` sub-command.

    Args:
        subparsers: the dispatcher's sub-parser collection.
    """
    parser = subparsers.add_parser(
        "train",
        help="train a translator on a slice cache (or resume a run)",
        description=(
            "Train one of the four translators on a cache from `segrenorm prepare`. Each run "
            "gets a numbered folder OUT/NNNNN-<config>-<translator>/ with config.json, "
            "log.jsonl, TensorBoard scalars, image grids and checkpoints. Ctrl-C saves "
            "checkpoints/last.pt; --resume continues exactly where it stopped. For several "
            "GPUs: torchrun --nproc_per_node N -m segrenorm train ..."
        ),
        epilog=(
            "Caches of more than two sites: train one pair with --set data.source=NAME --set "
            "data.target=NAME (the run folder is then named ...-<source>-to-<target>), "
            "every other site toward one target, one model per pair, with --to NAME, or "
            "chosen pairs with --pairs SA:SV,SA:PI,SV:PI."
        ),
    )
    parser.add_argument(
        "--config",
        metavar="PRESET_OR_YAML",
        help=f"preset ({', '.join(PRESETS)}) or YAML file; with --resume, defaults to the "
        "checkpoint's own config",
    )
    parser.add_argument(
        "--data",
        metavar="CACHE",
        help="slice cache folder; with --resume, defaults to the cache the run used",
    )
    parser.add_argument(
        "--out",
        metavar="RUNS",
        help="folder holding run directories (a resumed run stays in its own folder)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override one config field, e.g. --set optim.iterations=500 (repeatable)",
    )
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR_OR_CKPT",
        help="continue a run directory (its checkpoints/last.pt) or a checkpoint file",
    )
    parser.add_argument(
        "--iterations",
        type=int,
        metavar="N",
        help="stop after global step N, keeping the learning-rate schedule (resume to go on)",
    )
    parser.add_argument(
        "--to",
        metavar="SITE",
        help="train every other site of the cache toward SITE, one model and run folder per "
        "pair, one after the other; a pair that already finished in --out is reused",
    )
    parser.add_argument(
        "--pairs",
        metavar="SRC:TGT,...",
        help="train these (source, target) pairs of the cache (site names or keys, e.g. "
        "SA:SV,SA:PI,SV:PI), one model and run folder per pair, in this order, as --to does",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved config as JSON (with --to or --pairs: the pairs and which "
        "are already trained), check it against the cache, and exit",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Body of ``segrenorm train``: returns 0, or 130 when interrupted (after saving).

    Args:
        args: the parsed command line.
    """
    from segrenorm.data.slice_cache import SliceCache
    from segrenorm.training.resolve import resolve_training
    from segrenorm.training.session import check_against_cache
    from segrenorm.training.trainer import TrainingInterrupted, train

    if args.to is not None or args.pairs is not None:
        _check_many(args)  # before resolving: --resume would pick the run's own config
    plan = resolve_training(
        config=args.config, data=args.data, out=args.out, resume=args.resume,
        overrides=args.overrides,
    )  # fmt: skip
    if args.iterations is not None and args.iterations < 1:
        raise ConfigError(f"--iterations {args.iterations} must be >= 1.")
    if args.to is not None or args.pairs is not None:
        return _train_many(args, plan.config, plan.cache, plan.out)
    if args.dry_run:
        pair = (plan.config.data.source, plan.config.data.target)
        check_against_cache(plan.config, SliceCache.open(plan.cache, pair=pair))
        print(plan.config.to_json())
        return 0
    try:
        run_dir = train(
            plan.config,
            plan.cache,
            plan.out,
            resume=plan.resume,
            progress=not args.no_progress,
            max_steps=args.iterations,
        )
    except TrainingInterrupted as exc:
        print(f"segrenorm train: {exc}", file=sys.stderr)
        return 130
    print(run_dir)
    return 0


def _check_many(args: argparse.Namespace) -> None:
    """Refuse what ``--to`` / ``--pairs`` cannot be combined with."""
    flag = "--to" if args.pairs is None else "--pairs"
    if args.to is not None and args.pairs is not None:
        raise ConfigError(
            f"--to {args.to} and --pairs {args.pairs} both choose the pairs: give one (--to T "
            "is the pairs 'every other site -> T')"
        )
    if args.resume or args.iterations is not None:
        raise ConfigError(
            f"{flag} trains whole pairs and reuses the finished ones: it cannot be combined "
            "with --resume or --iterations (resume one pair's run by itself with --resume RUN)"
        )


def _train_many(args: argparse.Namespace, config: Config, cache: Path, out: Path) -> int:
    """``train --to SITE`` or ``--pairs LIST``: one run per pair; prints each run folder."""
    from segrenorm.training.trainer import TrainingInterrupted
    from segrenorm.workflows.pairs import train_pairs, train_toward

    def say(text: str) -> None:
        print(f"segrenorm train: {text}", file=sys.stderr, flush=True)

    try:
        progress = not args.no_progress
        if args.pairs is not None:
            pairs = parse_pairs(args.pairs)
            runs = train_pairs(config, cache, out, pairs, dry_run=args.dry_run,
                               progress=progress, say=say)  # fmt: skip
        else:
            runs = train_toward(config, cache, out, args.to, dry_run=args.dry_run,
                                progress=progress, say=say)  # fmt: skip
    except TrainingInterrupted as exc:
        print(f"segrenorm train: {exc}; the finished pairs are reused next time", file=sys.stderr)
        return 130
    for run in runs:
        if run.run_dir is not None:
            print(run.run_dir)
    return 0
