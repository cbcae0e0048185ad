"""The ``segrenorm`` command line: one sub-module per command, bodies call the API.

Each command module exposes ``add_parser(subparsers)`` which registers its options and
sets ``func`` to a callable taking the parsed namespace and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from segrenorm.errors import SegrenormError

__all__ = ["COMMANDS", "build_parser", "main"]

# Explicit registry: command name -> module under segrenorm.cli.
COMMANDS: dict[str, str] = {
    "simulate": "segrenorm.cli.simulate_cmd",
    "prepare": "segrenorm.cli.prepare_cmd",
    "train": "segrenorm.cli.train_cmd",
    "demo": "segrenorm.cli.demo_cmd",
    "harmonize": "segrenorm.cli.harmonize_cmd",
    "export": "segrenorm.cli.export_cmd",
    "evaluate": "segrenorm.cli.evaluate_cmd",
    "compare": "segrenorm.cli.compare_cmd",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segrenorm",
        description="Unpaired multi-scanner harmonization with segmentation renormalization.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMANDS.values():
        importlib.import_module(module_name).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except SegrenormError as exc:
        print(f"segrenorm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"segrenorm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
