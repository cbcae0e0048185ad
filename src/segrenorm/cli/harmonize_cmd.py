"""``segrenorm harmonize``: harmonize volumes, folders or globs with a trained model."""

from __future__ import annotations

import argparse

from segrenorm.errors import ConfigError
from segrenorm.vocabulary import DIRECTIONS, SLICE_AXES

__all__ = ["add_parser", "parse_models", "run"]


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
            "and back; an oblique grid (over 20 degrees) gives a warning; a volume whose voxel "
            "along any axis is more than --spacing-tolerance off the model's training grid "
            "is resampled to it along all three axes, as prepare does, and its output back "
            "onto the input's grid (linear, with a warning); more than 8x off along any axis "
            "is refused. Outputs are "
            "float32 unless --dtype says otherwise; voxels outside the input's foreground "
            "mask are set to --background."
        ),
    )
    parser.add_argument("inputs", nargs="*", metavar="INPUT", help="volumes, folders or globs")
    parser.add_argument(
        "--csv",
        metavar="LISTING",
        help="instead of INPUTs: a listing with subject,site,image columns (as prepare reads); "
        "each row is harmonized by the --model trained on its site, rows at the models' "
        "target site are left as they are; outputs go to OUT/SITE/FILE_NAME, and "
        "OUT/harmonize-by-site.json records which model translated which row",
    )
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="RUN_OR_CKPT",
        help="run directory or checkpoint; repeat as PLANE=RUN (axial=..., coronal=...) to "
        "use one model per view; with --csv, repeat it once per source site (a folder "
        "holding several runs gives all its finished runs)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--direction",
        default="AB",
        choices=DIRECTIONS,
        help="AB: the model's source -> target site (G); BA: the reverse (F). Default AB",
    )
    parser.add_argument(
        "--views",
        metavar="PLANES",
        help="comma-separated planes to translate along and average, e.g. "
        "axial,coronal,sagittal (default: the training plane)",
    )
    parser.add_argument(
        "--batch-size",
        default="auto",
        metavar="auto|N",
        help="slices per forward pass; auto (default): the batch that measures fastest for the "
        "model and slice size on this machine, within a memory cap (timed once a run; 16 with "
        "--compile)",
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
        default=0.05,
        metavar="FRACTION",
        help="relative voxel-size difference from the model's training grid tolerated "
        "without resampling; within it a volume is translated as it is (default: 0.05)",
    )
    parser.add_argument(
        "--tiles",
        default="none",
        metavar="auto|none|N",
        help="none (default): whole slices; auto: overlapping tiles of the training crop size, "
        "blended with a Gaussian window, when the model trained on crops (whole slices when it "
        "trained on whole slices); N: tiles of N pixels (a multiple of the stride)",
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
    from segrenorm.harmonize.batching import parse_batch_size
    from segrenorm.harmonize.files import harmonize_paths
    from segrenorm.harmonize.harmonizer import HarmonizeOptions
    from segrenorm.harmonize.sites import harmonize_listing

    if bool(args.csv) == bool(args.inputs):
        raise ConfigError(
            "give the volumes to harmonize either as INPUT arguments or as a --csv listing "
            "(subject,site,image), not both and not neither"
        )
    options = HarmonizeOptions(
        direction=args.direction,
        batch_size=parse_batch_size(args.batch_size, "--batch-size"),
        dtype=args.dtype,
        background=args.background,
        spacing_tolerance=args.spacing_tolerance,
        tiles=args.tiles,
    )
    common = {
        "options": options, "views": args.views, "device": args.device,
        "compile": args.compile, "skip_existing": args.skip_existing,
        "overwrite": args.overwrite, "progress": not args.no_progress,
    }  # fmt: skip
    if args.csv:
        if any(parse_models([m]) != m for m in args.model):
            raise ConfigError("--csv picks a model per site: give --model RUN, not PLANE=RUN")
        summary = harmonize_listing(args.csv, args.out, args.model, **common)
    else:
        summary = harmonize_paths(args.inputs, args.out, parse_models(args.model), **common)
    if summary.is_main:
        print(summary.table())
    return 1 if summary.failed else 0
