"""``segrenorm train``: train a translator on a slice cache, or resume a run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from segrenorm.config.presets import PRESETS
from segrenorm.config.schema import Config, config_from_dict, load_config
from segrenorm.errors import ConfigError

__all__ = ["add_parser", "apply_overrides", "resolve", "run"]


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
        "--dry-run",
        action="store_true",
        help="print the resolved config as JSON, check it against the cache, and exit",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Apply ``section.field=value`` strings to an existing config.

    Args:
        config: the base config (e.g. a checkpoint's).
        overrides: strings such as ``"optim.iterations=500"``; values are parsed as YAML.

    Raises:
        ConfigError: a malformed override, unknown key or invalid value.
    """
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like section.field=value.")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        *sections, leaf = key.strip().split(".")
        node = tree
        for name in sections:
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {name} is not a section.")
        node[leaf] = value
    return config_from_dict(tree, base=config)


def resolve(args: argparse.Namespace) -> tuple[Config, Path, Path | None]:
    """The config, cache folder and output folder a ``train`` invocation means.

    Args:
        args: the parsed command line.

    Raises:
        ConfigError: a required option is missing or a value is invalid.
    """
    from segrenorm.models.checkpoint import config_of, load_checkpoint, resolve_checkpoint

    payload: dict[str, Any] | None = None
    ckpt: Path | None = None
    if args.resume:
        ckpt = resolve_checkpoint(args.resume)
        payload = load_checkpoint(ckpt)
    if args.config:
        config = load_config(args.config, overrides=args.overrides)
    elif payload is not None:
        config = apply_overrides(config_of(payload, source=ckpt or args.resume), args.overrides)
    else:
        raise ConfigError(
            "--config is required (a preset or a YAML file) unless --resume is given."
        )
    cache = args.data or (payload["cache_info"].get("path") if payload is not None else None)
    if not cache:
        raise ConfigError("--data is required (the slice cache folder) unless --resume is given.")
    if args.out is None and payload is None:
        raise ConfigError("--out is required: the folder that will hold the run directory.")
    return config, Path(cache), Path(args.out) if args.out else None


def run(args: argparse.Namespace) -> int:
    """Body of ``segrenorm train``: returns 0, or 130 when interrupted (after saving).

    Args:
        args: the parsed command line.
    """
    from segrenorm.data.datasets import SliceCache
    from segrenorm.training.trainer import TrainingInterrupted, check_against_cache, train

    config, cache, out = resolve(args)
    if args.iterations is not None and args.iterations < 1:
        raise ConfigError(f"--iterations {args.iterations} must be >= 1.")
    if args.dry_run:
        check_against_cache(config, SliceCache.open(cache))
        print(config.to_json())
        return 0
    try:
        run_dir = train(
            config,
            cache,
            out if out is not None else Path(args.resume).parent,
            resume=args.resume,
            progress=not args.no_progress,
            max_steps=args.iterations,
        )
    except TrainingInterrupted as exc:
        print(f"segrenorm train: {exc}", file=sys.stderr)
        return 130
    print(run_dir)
    return 0
