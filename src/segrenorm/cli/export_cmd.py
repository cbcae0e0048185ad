"""``segrenorm export``: TorchScript and ONNX of one translation direction, checked."""

from __future__ import annotations

import argparse

from segrenorm.errors import ConfigError
from segrenorm.vocabulary import DIRECTIONS

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``export`` sub-command.

    Args:
        subparsers: the dispatcher's sub-parser collection.
    """
    parser = subparsers.add_parser(
        "export",
        help="export a trained translator to TorchScript and ONNX",
        description=(
            "Export the segmentation net, semantic extractor and generator of one direction "
            "as one graph (input: (batch, 1, H, W) slices in [-1, 1]) to OUT/translator_<DIR>"
            ".pt (TorchScript) and .onnx, plus a .json with the preprocessing and the target "
            "intensity scale. Each export is checked against PyTorch (within 1e-4; ONNX with "
            "onnxruntime)."
        ),
    )
    parser.add_argument("--model", required=True, metavar="RUN_OR_CKPT", help="run or checkpoint")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--direction", default="AB", choices=DIRECTIONS, help="default AB")
    parser.add_argument(
        "--format",
        default="torchscript,onnx",
        metavar="LIST",
        help="comma-separated: torchscript, onnx (default both)",
    )
    parser.add_argument(
        "--shape",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="slice size fixed in the graph (default: the training cache's padded slice size)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing exports")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export and check; print one line per format.

    Args:
        args: the parsed command line.
    """
    from segrenorm.export.exporter import export_model

    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    if not formats:
        raise ConfigError("--format is empty: give torchscript, onnx or both")
    checks = export_model(
        args.model,
        args.out,
        direction=args.direction,
        formats=formats,
        shape=args.shape,
        overwrite=args.overwrite,
    )
    for check in checks:
        print(f"{check.fmt}: {check.path} (max |diff| vs PyTorch {check.max_abs_diff:.2e}, ok)")
    return 0
