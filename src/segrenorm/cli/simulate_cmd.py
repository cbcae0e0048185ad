"""``segrenorm simulate``: write a built-in benchmark (T1, FLAIR, OCT), or preview one."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_parser"]

# segrenorm.simulate.scanners.scanner_names(), written out so building the parser imports
# nothing heavy; tests/simulate/test_profiles.py checks that the two agree.
_NAMES = "1.5T, 3T, 1T, 7T"
# The FLAIR scanners (profiles with a lesion intensity), from the weakest to the best.
_FLAIR_NAMES = "SA, SV, PI"
# segrenorm.simulate.oct_vendors.vendor_names(): the OCT vendors (tests/simulate/test_oct.py).
_OCT_NAMES = "Cirrus, Spectralis"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``simulate t1``, ``simulate flair``, ``simulate oct`` and ``simulate preview``.

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
    _add_oct(sub)

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
    flair.add_argument(
        "--labels",
        choices=("lesion", "tissue+lesion"),
        default="lesion",
        help="what the CSV's label column names: binary lesion masks (default; prepare with "
        "--class-names background lesion) or tissue labels with lesions as class 4 (prepare "
        "with --class-names background CSF GM WM lesion)",
    )
    flair.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    flair.add_argument("--workers", type=int, default=1, help="worker processes")
    flair.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    flair.set_defaults(func=_run_flair)


def _add_oct(sub: argparse._SubParsersAction) -> None:
    oct_parser = sub.add_parser(
        "oct",
        help="retinal OCT with fluid pockets (IRF, SRF, PED) on two vendors (Cirrus, Spectralis)",
        description=(
            "Render virtual eyes (layered retina, foveal pit, vessel shadows, IRF/SRF/PED "
            "pockets) as B-scan volumes on OCT vendors modelled on the paper's Table II "
            "(Cirrus: 512 x 1024 x 128, single-frame speckle, log display; Spectralis: 256 x "
            "496 x 49, averaged frames, power-law display). Training subjects are distinct per "
            "vendor; held-out val/test subjects appear on every vendor (paired truth), with "
            "speckle-free renders in images/<vendor>-clean/. Labels: 0 background, 1 IRF, "
            "2 SRF, 3 PED; true retina masks are in the retina column."
        ),
    )
    oct_parser.add_argument(
        "--out", required=True, metavar="DIR", help="output folder (must be empty)"
    )
    oct_parser.add_argument(
        "--vendors",
        nargs="+",
        default=_OCT_NAMES.split(", "),
        metavar="NAME|FILE",
        help=f"OCT vendors, the source first and the target last: named ones ({_OCT_NAMES}) "
        "or .yaml/.json vendor files (default Cirrus Spectralis)",
    )
    oct_parser.add_argument(
        "--subjects-per-vendor",
        type=int,
        default=24,
        metavar="N",
        help="training subjects per vendor, none shared (default 24, as in the paper)",
    )
    oct_parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        metavar="S",
        help="voxel counts times S on every vendor, fields of view kept (default 1.0: full "
        "size; 0.5 is the CPU demo)",
    )
    oct_parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        metavar="F",
        help="about this fraction of all subjects are test subjects, on every vendor (default 0.2)",
    )
    oct_parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        metavar="F",
        help="about this fraction are validation subjects, on every vendor (default 0.1)",
    )
    oct_parser.add_argument(
        "--seed", type=int, default=0, help="random seed (same seed, same files)"
    )
    oct_parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes (default: one per CPU core, at most 4)",
    )
    oct_parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    oct_parser.set_defaults(func=_run_oct)


def _run_oct(args: argparse.Namespace) -> int:
    from segrenorm.simulate.oct import simulate_oct

    csv_path = simulate_oct(
        args.out,
        vendors=args.vendors,
        subjects_per_vendor=args.subjects_per_vendor,
        scale=args.scale,
        test_fraction=args.test_fraction,
        val_fraction=args.val_fraction,
        seed=args.seed,
        workers=args.workers,
        overwrite=args.overwrite,
        progress=sys.stderr.isatty(),
    )
    print(csv_path)
    return 0


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
        labels=args.labels,
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
