"""``segrenorm harmonize``: harmonize volumes, folders or globs with a trained model."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from segrenorm.errors import ConfigError

__all__ = ["add_parser", "parse_models", "run"]

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``harmonize`` sub-command.

    Args:
        subparsers: the dispatcher's sub-parser collection.
    """
    parser = subparsers.add_parser(
        "harmonize",
        help="harmonize volumes to the target scanner with a trained model",
        description=(
            "Translate whole 3D volumes slice batch by slice batch with G(x | S(x)) and write "
            "them to --out with the input's file name, affine, header and orientation, in the "
            "target scanner's intensity units. Inputs are never overwritten; a file that "
            "fails is listed in the summary and the exit code is 1. Several processes: "
            "torchrun --nproc_per_node N -m segrenorm harmonize ... (files are shared out)."
        ),
        epilog=(
            "Volumes unlike the training data: every volume is reoriented to RAS (lossless) "
            "and back; an oblique grid (over 20 degrees) gives a warning; an in-plane voxel "
            "size more than --spacing-tolerance off the training spacing is resampled to it "
            "and back (linear, with a warning); more than 8x off is refused. Outputs are "
            "float32 unless --dtype says otherwise; voxels outside the input's foreground "
            "mask are set to --background."
        ),
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="volumes, folders or globs")
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="RUN_OR_CKPT",
        help="run directory or checkpoint; repeat as PLANE=RUN (axial=..., coronal=...) to "
        "use one model per view",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--direction",
        default="AB",
        choices=["AB", "BA"],
        help="AB: the model's source -> target site (G); BA: the reverse (F). Default AB",
    )
    parser.add_argument(
        "--views",
        metavar="PLANES",
        help="comma-separated planes to translate along and average, e.g. "
        "axial,coronal,sagittal (default: the training plane)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=16, metavar="N", help="slices per forward (16)"
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        metavar="TYPE",
        help="output voxel type: float32 (default), input (the input's type, rounded and "
        "clipped) or a type name such as int16",
    )
    parser.add_argument(
        "--background",
        default="zero",
        choices=["zero", "low"],
        help="value outside the foreground mask: 0 (default) or the target's low intensity",
    )
    parser.add_argument(
        "--spacing-tolerance",
        type=float,
        default=0.2,
        metavar="FRACTION",
        help="relative voxel-size difference from training tolerated without resampling (0.2)",
    )
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument(
        "--skip-existing", action="store_true", help="keep outputs that already exist"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace existing outputs (never inputs)"
    )
    parser.add_argument("--compile", action="store_true", help="use torch.compile (opt-in)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.set_defaults(func=run)


def parse_models(values: list[str]) -> str | dict[str, str]:
    """One model for every view, or ``PLANE=RUN`` pairs for one model per view.

    Args:
        values: the ``--model`` arguments.

    Raises:
        ConfigError: a mix of plain and ``PLANE=RUN`` values, or a plane given twice.
    """
    from segrenorm.volumes.spatial import SLICE_AXES

    pairs = [v.split("=", 1) for v in values]
    planar = [len(p) == 2 and p[0] in SLICE_AXES for p in pairs]
    if len(values) == 1 and not planar[0]:
        return values[0]
    if not all(planar):
        raise ConfigError(
            f"--model {' --model '.join(values)}: give one model, or one PLANE=RUN per view "
            f"with PLANE in {', '.join(SLICE_AXES)}"
        )
    planes = [p[0] for p in pairs]
    if len(set(planes)) != len(planes):
        raise ConfigError(f"--model names a plane twice ({', '.join(planes)})")
    return {p[0]: p[1] for p in pairs}


def run(args: argparse.Namespace) -> int:
    """Harmonize the inputs; return 0, or 1 if any file failed.

    Args:
        args: the parsed command line.
    """
    from tqdm import tqdm

    from segrenorm.harmonize.files import (
        gather_results,
        harmonize_files,
        plan_outputs,
        summary_table,
    )
    from segrenorm.harmonize.harmonizer import Harmonizer
    from segrenorm.training.distributed import init_distributed, shutdown_distributed

    models = parse_models(args.model)
    if isinstance(models, dict) and args.views:
        raise ConfigError("--views and PLANE=RUN models both pick the views: give only one")
    plan_outputs(args.inputs, args.out)  # refuse an unsafe output folder before loading models
    ctx = init_distributed(args.device)
    try:
        options = {
            "direction": args.direction,
            "batch_size": args.batch_size,
            "dtype": args.dtype,
            "background": args.background,
            "spacing_tolerance": args.spacing_tolerance,
        }
        if isinstance(models, dict):
            harmonizer = Harmonizer.load_per_view(
                models, device=ctx.device, compile=args.compile, **options
            )
        else:
            harmonizer = Harmonizer.load(
                models, views=args.views, device=ctx.device, compile=args.compile, **options
            )
        prefix = f"[rank {ctx.rank}] " if ctx.world_size > 1 else ""
        show = not args.no_progress

        def on_file(index: int, total: int, path: Path) -> None:
            print(f"{prefix}[{index + 1}/{total}] {path}", file=sys.stderr, flush=True)

        bar = tqdm(unit="slice", leave=False, disable=not show or not sys.stderr.isatty())

        def on_batch(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        log.info(
            "harmonizing to %s (%s, views %s, batch %d) on %s",
            harmonizer.target_name,
            args.direction,
            ",".join(harmonizer.views),
            args.batch_size,
            ctx.device,
        )
        mine = harmonize_files(
            harmonizer,
            args.inputs,
            args.out,
            skip_existing=args.skip_existing,
            overwrite=args.overwrite,
            ctx=ctx,
            on_file=on_file if show or ctx.world_size > 1 else None,
            on_batch=None if bar.disable else on_batch,
        )
        bar.close()
        results = gather_results(mine, ctx)
    finally:
        shutdown_distributed(ctx)
    if ctx.is_main:
        print(summary_table(results))
    return 1 if any(r.status == "failed" for r in results) else 0
