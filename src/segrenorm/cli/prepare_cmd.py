"""``segrenorm prepare``: slice two sites' volumes into a training cache."""

from __future__ import annotations

import argparse

from segrenorm.data.listing import read_listing, records_from_inputs
from segrenorm.data.manifest import open_manifest, summarize
from segrenorm.data.prepare import prepare_cache
from segrenorm.errors import ConfigError
from segrenorm.vocabulary import SLICE_AXES
from segrenorm.volumes.bias import BIAS_METHODS, BiasCorrection

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``prepare`` sub-command.

    Args:
        subparsers: the dispatcher's sub-parser collection.
    """
    parser = subparsers.add_parser(
        "prepare",
        help="slice two sites' volumes into a training cache",
        description=(
            "Reorient volumes to RAS, correct their bias field (N4), scale each to [-1, 1] "
            "from its foreground percentiles, cut them into 2D slices and store both sites in "
            "one cache folder (docs/cache-format.md). Give subjects with --csv or with "
            "--site-a/--site-b."
        ),
    )
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument(
        "--csv",
        metavar="LISTING",
        help="CSV: subject,site,image[,label][,split][,clean]; paths relative to the CSV",
    )
    inputs.add_argument(
        "--site-a", nargs="+", metavar="PATH", help="source-site images/folders/globs"
    )
    inputs.add_argument(
        "--site-b", nargs="+", metavar="PATH", help="target-site images/folders/globs"
    )
    inputs.add_argument(
        "--labels-a",
        nargs="+",
        metavar="PATH",
        help="source-site label maps, paired to images by name (sub-01_T1w <-> sub-01_dseg)",
    )
    inputs.add_argument("--labels-b", nargs="+", metavar="PATH", help="target-site label maps")
    parser.add_argument("--out", required=True, metavar="DIR", help="cache folder to create")
    parser.add_argument(
        "--sites",
        nargs=2,
        metavar=("NAME_A", "NAME_B"),
        help="source and target site names (default: CSV order, or A B for --site-a/--site-b)",
    )
    parser.add_argument("--n-classes", type=int, help="label classes (default: max label + 1)")
    parser.add_argument("--class-names", nargs="+", metavar="NAME", help="one name per class")
    parser.add_argument("--axis", choices=list(SLICE_AXES), default="axial", help="slice plane")
    parser.add_argument(
        "--spacing",
        nargs=3,
        type=float,
        metavar=("X", "Y", "Z"),
        help="resample to this spacing (mm)",
    )
    parser.add_argument(
        "--percentiles",
        nargs=2,
        type=float,
        default=(0.5, 99.5),
        metavar=("LOW", "HIGH"),
        help="foreground intensity percentiles mapped to -1 and 1 (default: 0.5 99.5)",
    )
    parser.add_argument(
        "--min-foreground",
        type=float,
        default=0.05,
        help="skip slices with a smaller foreground fraction (default: 0.05)",
    )
    parser.add_argument(
        "--pad-multiple",
        type=int,
        default=16,
        help="pad slices to a multiple of this (default: 16)",
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.3,
        help="fraction of each site's subjects held out for testing (default: 0.3)",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.15,
        help="fraction of each site's subjects held out for validation: tuning and checkpoint "
        "selection (default: 0.15; 0 for none)",
    )
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds per site")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and fold draws")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing cache")
    parser.add_argument(
        "--no-mask",
        action="store_true",
        help="no automatic foreground mask: scale over the whole volume and keep every slice",
    )
    parser.add_argument(
        "--bias-correction",
        choices=list(BIAS_METHODS),
        default="n4",
        help="bias-field correction of every volume, inside its foreground, before scaling: "
        "n4 (default, for MRI) or none (OCT, or data already corrected). Stored in the cache "
        "and in every model trained on it; harmonize applies the same",
    )
    parser.add_argument(
        "--bias-shrink",
        type=int,
        default=4,
        metavar="N",
        help="fit the N4 field on the volume shrunk N times along each axis, for speed "
        "(1 to 8; default: 4)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the cache described by the parsed options and print a summary.

    Args:
        args: namespace from the ``prepare`` parser.

    Returns:
        0 on success (errors are raised as ``SegrenormError``).
    """
    from_folders = args.site_a is not None or args.site_b is not None
    if args.csv is not None and (from_folders or args.labels_a or args.labels_b):
        raise ConfigError("give either --csv LISTING or --site-a/--site-b, not both")
    if args.csv is not None:
        records = read_listing(args.csv)
    elif args.site_a is not None and args.site_b is not None:
        records = records_from_inputs(
            args.site_a,
            args.site_b,
            args.labels_a,
            args.labels_b,
            site_names=tuple(args.sites) if args.sites else ("A", "B"),
        )
    else:
        raise ConfigError("no subjects given: pass --csv LISTING, or both --site-a and --site-b")
    out = prepare_cache(
        records,
        args.out,
        sites=tuple(args.sites) if args.sites else None,
        n_classes=args.n_classes,
        class_names=args.class_names,
        slice_axis=args.axis,
        spacing=tuple(args.spacing) if args.spacing else None,
        lower_pct=args.percentiles[0],
        upper_pct=args.percentiles[1],
        min_foreground=args.min_foreground,
        pad_multiple=args.pad_multiple,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        n_folds=args.folds,
        seed=args.seed,
        overwrite=args.overwrite,
        use_mask=not args.no_mask,
        bias_correction=BiasCorrection(method=args.bias_correction, shrink=args.bias_shrink),
        progress=not args.quiet,
    )
    print(summarize(open_manifest(out), str(out)))
    return 0
