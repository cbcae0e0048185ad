"""``segrenorm simulate``: write a built-in benchmark (T1 pair, FLAIR trio), or preview it."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_parser"]

# segrenorm.simulate.scanners.scanner_names(), written out so building the parser imports
# nothing heavy; tests/simulate/test_profiles.py checks that the two agree.
_NAMES = "1.5T, 3T, 1T, 7T"
# The FLAIR scanners (profiles with a lesion intensity), from the weakest to the best.
_FLAIR_NAMES = "SA, SV, PI"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``simulate t1``, ``simulate flair`` and ``simulate preview``.

    Args:
        subparsers: The dispatcher's sub-command collection.
    """
    parser = subparsers.add_parser(
        "simulate",
        help="write a simulated multi-scanner benchmark with ground truth",
        description="Simulated multi-scanner benchmarks built from the MNI152 anatomy.",
    )
    sub = parser.add_subparsers(dest="simulate_command", metavar="BENCHMARK", required=True)

    t1 = sub.add_parser(
        "t1",
        help="T1-weighted brains on two virtual scanners, with tissue labels",
        description=(
            "Render virtual subjects on a source and a target scanner. Training subjects are "
            "disjoint between sites; test subjects appear on both (paired ground truth), and "
            "on the target scanner without noise and bias field (clean truth, "
            "images/<target>-clean/). Scanner pairs: 1.5T -> 3T (default) and 1T -> 7T."
        ),
    )
    t1.add_argument("--out", required=True, metavar="DIR", help="output folder (must be empty)")
    t1.add_argument("--subjects", type=int, default=20, metavar="N", help="virtual subjects")
    t1.add_argument(
        "--test-fraction",
        type=float,
        default=0.3,
        metavar="F",
        help="fraction of subjects held out for the final scores and rendered on both scanners "
        "(default 0.3)",
    )
    t1.add_argument(
        "--val-fraction",
        type=float,
        default=0.15,
        metavar="F",
        help="fraction held out for validation (choosing settings and checkpoints), also on "
        "both scanners (default 0.15; 0 for none)",
    )
    t1.add_argument("--resolution", type=int, choices=(1, 2), default=2, help="grid spacing in mm")
    t1.add_argument(
        "--source",
        default="1.5T",
        metavar="NAME|FILE",
        help=f"source scanner: a named one ({_NAMES}) or a .yaml/.json profile (default 1.5T)",
    )
    t1.add_argument(
        "--target",
        default="3T",
        metavar="NAME|FILE",
        help=f"target scanner: a named one ({_NAMES}) or a .yaml/.json profile (default 3T)",
    )
    t1.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    t1.add_argument("--workers", type=int, default=1, help="worker processes")
    t1.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    t1.set_defaults(func=_run_t1)
    _add_flair(sub)

    preview = sub.add_parser(
        "preview",
        help="PNG of one test subject on every scanner with its labels",
        description="Mid slices of one held-out subject on both scanners and its label overlay.",
    )
    preview.add_argument(
        "data_dir", metavar="DATA_DIR", help="folder written by simulate t1 or simulate flair"
    )
    preview.add_argument("--out", required=True, metavar="PNG", help="output PNG path")
    preview.add_argument("--subject", default=None, help="test subject id, e.g. sub-004")
    preview.set_defaults(func=_run_preview)


def _add_flair(sub: argparse._SubParsersAction) -> None:
    flair = sub.add_parser(
        "flair",
        help="FLAIR brains with MS-like lesions on three virtual scanners (SA, SV, PI)",
        description=(
            "Render virtual subjects with white-matter lesions on FLAIR scanners modelled on "
            "MS-SEG 2016 (SA: Siemens Aera 1.5 T, SV: Siemens Verio 3 T, PI: Philips Ingenia "
            "3 T). Training subjects are distinct per scanner; held-out val/test subjects "
            "appear on every scanner (paired truth), with clean renders in "
            "images/<scanner>-clean/. Labels are binary lesion masks; tissue labels are in "
            "the tissue column. Directions: each scanner toward the later ones."
        ),
    )
    flair.add_argument("--out", required=True, metavar="DIR", help="output folder (must be empty)")
    flair.add_argument(
        "--subjects-per-scanner",
        type=int,
        default=5,
        metavar="N",
        help="training subjects per scanner, none shared (default 5, as in MS-SEG)",
    )
    flair.add_argument(
        "--scanners",
        nargs="+",
        default=_FLAIR_NAMES.split(", "),
        metavar="NAME|FILE",
        help=f"FLAIR scanners from the weakest to the best: named ones ({_FLAIR_NAMES}) or "
        ".yaml/.json profiles with a lesion field (default SA SV PI)",
    )
    flair.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        metavar="F",
        help="about this fraction of all subjects are test subjects, on every scanner "
        "(default 0.2)",
    )
    flair.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        metavar="F",
        help="about this fraction are validation subjects, on every scanner (default 0.1)",
    )
    flair.add_argument(
        "--resolution", type=int, choices=(1, 2), default=2, help="grid spacing in mm"
    )
    flair.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    flair.add_argument("--workers", type=int, default=1, help="worker processes")
    flair.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    flair.set_defaults(func=_run_flair)


def _run_flair(args: argparse.Namespace) -> int:
    from segrenorm.simulate.flair import simulate_flair

    csv_path = simulate_flair(
        args.out,
        subjects_per_scanner=args.subjects_per_scanner,
        scanners=args.scanners,
        test_fraction=args.test_fraction,
        val_fraction=args.val_fraction,
        resolution=args.resolution,
        seed=args.seed,
        overwrite=args.overwrite,
        workers=args.workers,
        progress=sys.stderr.isatty(),
    )
    print(csv_path)
    return 0


def _run_t1(args: argparse.Namespace) -> int:
    from segrenorm.simulate.benchmark import simulate_t1

    csv_path = simulate_t1(
        args.out,
        n_subjects=args.subjects,
        test_fraction=args.test_fraction,
        val_fraction=args.val_fraction,
        resolution=args.resolution,
        source=args.source,
        target=args.target,
        seed=args.seed,
        overwrite=args.overwrite,
        workers=args.workers,
        progress=sys.stderr.isatty(),
    )
    print(csv_path)
    return 0


def _run_preview(args: argparse.Namespace) -> int:
    from segrenorm.simulate.preview import preview_subject

    print(preview_subject(args.data_dir, args.out, subject=args.subject))
    return 0
