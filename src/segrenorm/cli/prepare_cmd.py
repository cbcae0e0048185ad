"""``segrenorm prepare``: slice two or more sites' volumes into a training cache."""

from __future__ import annotations

import argparse
from pathlib import Path

from segrenorm.data.autolabels import AUTO_LABEL_METHODS
from segrenorm.data.folds import parse_folds
from segrenorm.data.layouts import DATASET_LAYOUTS, records_from_layout
from segrenorm.data.listing import SubjectRecord, read_listing, records_from_inputs
from segrenorm.data.manifest import open_manifest, summarize
from segrenorm.data.prepare import prepare_cache
from segrenorm.errors import ConfigError
from segrenorm.vocabulary import MODALITIES, SLICE_AXES
from segrenorm.volumes.bias import BIAS_METHODS, BiasCorrection
from segrenorm.volumes.paths import SUPPORTED_SUFFIXES

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``prepare`` sub-command.

    Args:
        subparsers: the dispatcher's sub-parser collection.
    """
    parser = subparsers.add_parser(
        "prepare",
        help="slice two or more sites' volumes into a training cache",
        description=(
            "Reorient volumes to RAS (OCT: keep the stored voxel order), correct their bias "
            "field (N4; not for --modality oct), "
            "scale each to [-1, 1] from its foreground percentiles (OCT: inside the retina), "
            "cut them into 2D slices and store every site in "
            "one cache folder (docs/cache-format.md). Give the subjects one way: --csv, "
            "--dataset (docs/studies.md), --site (repeated, one per site) or --site-a/--site-b."
        ),
    )
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument(
        "--csv",
        metavar="LISTING",
        help="CSV: subject,site,image[,label][,split][,clean]; paths relative to the CSV",
    )
    inputs.add_argument(
        "--dataset",
        nargs=2,
        metavar=("NAME", "ROOT"),
        help=f"read a dataset's own layout ({', '.join(DATASET_LAYOUTS)}): sites, subjects and "
        "labels from its file names (docs/studies.md)",
    )
    inputs.add_argument(
        "--site",
        action="append",
        nargs="+",
        metavar=("NAME", "PATH"),
        help="one site: its name, then its images/folders/globs; repeat per site, in cache "
        "order (two sites: source, then target)",
    )
    inputs.add_argument(
        "--labels",
        action="append",
        nargs="+",
        metavar=("NAME", "PATH"),
        help="with --site: a site's name, then its label maps, paired to images by name "
        "(repeat per labelled site; sites without labels need --auto-labels); with --dataset: "
        "the folder of label maps (bids: one derivatives pipeline folder)",
    )
    inputs.add_argument(
        "--site-column",
        metavar="COLUMN",
        help="with --dataset bids: the participants.tsv column of the site (default: site)",
    )
    inputs.add_argument(
        "--label-desc",
        metavar="DESC",
        help="with --dataset bids: take only the _dseg maps with this desc- entity, for a "
        "pipeline that writes several (fMRIPrep: aseg, aparcaseg; 'none': the maps without one)",
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
        nargs="+",
        metavar="NAME",
        help="every site name in cache order (default: order of first appearance); with "
        "--site-a/--site-b the two sites' names (default: A B)",
    )
    parser.add_argument("--n-classes", type=int, help="label classes (default: max label + 1)")
    parser.add_argument("--class-names", nargs="+", metavar="NAME", help="one name per class")
    parser.add_argument("--axis", choices=list(SLICE_AXES), default="axial", help="slice plane")
    parser.add_argument(
        "--spacing",
        nargs=3,
        type=float,
        metavar=("X", "Y", "Z"),
        help="the cache's one grid: resample every volume to this voxel size (mm, RAS axes; "
        "default: the target site's median voxel size)",
    )
    parser.add_argument(
        "--target",
        metavar="NAME",
        help="the site (name, or key A, B, ...) whose median voxel size is the grid (default: "
        "the second of two sites; needed with more than two sites unless --spacing is given)",
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
        "--headroom",
        type=float,
        default=None,
        metavar="F",
        help="map the upper percentile plus F times the percentile range to 1, so that "
        "hyperintensities keep their contrast instead of clipping at 1: FLAIR lesions are the "
        "brightest half-percent of a brain (default: 1 with --dataset msseg, else 0)",
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
    parser.add_argument(
        "--folds",
        type=_folds,
        default=5,
        metavar="N|loso",
        help="cross-validation folds per site (default: 5), or loso: leave-one-subject-out, "
        "one fold per person and site (train with --set data.fold=K, score with evaluate "
        "--fold K)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and fold draws")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing cache")
    parser.add_argument(
        "--no-mask",
        action="store_true",
        help="no automatic foreground mask: scale over the whole volume and keep every slice",
    )
    parser.add_argument(
        "--modality",
        choices=list(MODALITIES),
        help="mri (default) or oct (the default of --dataset retouch): OCT volumes keep their "
        "stored voxel order (A-scan, depth, B-scan), are resampled with nearest neighbour, "
        "masked to the retina, scaled as whole B-scans (background kept) and never "
        "bias-corrected; they are sliced along B-scans (--axis axial)",
    )
    parser.add_argument(
        "--bias-correction",
        choices=list(BIAS_METHODS),
        help="bias-field correction of every volume, inside its foreground, before scaling: "
        "n4 (the MRI default) or none (the OCT default and only choice, or MRI data already "
        "corrected). Stored in the cache and in every model trained on it; harmonize applies "
        "the same",
    )
    parser.add_argument(
        "--bias-shrink",
        type=int,
        default=4,
        metavar="N",
        help="fit the N4 field on the volume shrunk N times along each axis, for speed "
        "(1 to 8; default: 4)",
    )
    parser.add_argument(
        "--auto-labels",
        choices=list(AUTO_LABEL_METHODS),
        help="pseudo-label the sites without label maps: gmm (3-class tissue mixture inside the "
        "foreground, smoothed) or segnet (the labelled site's segmentation net after histogram "
        "matching). Written to CACHE/pseudo_labels/; the manifest records each label's source",
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
    from segrenorm.workflows.autolabel import auto_labeller  # imports torch: not for --help

    records, notes, classes, dataset_modality = _records(args)
    modality = _modality(args, dataset_modality)
    bias = args.bias_correction or ("none" if modality == "oct" else "n4")
    if modality == "oct" and bias != "none":
        raise ConfigError(
            f"--bias-correction {bias} with --modality oct: OCT volumes are not bias-corrected; "
            "OCT takes --bias-correction none (or leave the option out)"
        )
    out = prepare_cache(
        records,
        args.out,
        sites=tuple(args.sites) if args.sites else None,
        n_classes=args.n_classes,
        class_names=args.class_names or (None if args.n_classes else classes),
        slice_axis=args.axis,
        spacing=tuple(args.spacing) if args.spacing else None,
        target=args.target,
        lower_pct=args.percentiles[0],
        upper_pct=args.percentiles[1],
        headroom=_headroom(args),
        min_foreground=args.min_foreground,
        pad_multiple=args.pad_multiple,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        n_folds=args.folds,
        seed=args.seed,
        overwrite=args.overwrite,
        use_mask=not args.no_mask,
        bias_correction=BiasCorrection(method=bias, shrink=args.bias_shrink),
        modality=modality,
        auto_labels=auto_labeller(args.auto_labels, seed=args.seed),
        progress=not args.quiet,
    )
    print(summarize(open_manifest(out), str(out)))
    for note in notes:
        print(f"note: {note}")
    return 0


def _modality(args: argparse.Namespace, dataset: str | None) -> str:
    """``--modality``, else the dataset layout's (``retouch``: oct), else mri; a ``--modality``
    that contradicts the dataset's is refused."""
    if dataset is not None and args.modality is not None and args.modality != dataset:
        raise ConfigError(
            f"--modality {args.modality} contradicts --dataset {args.dataset[0]}, which holds "
            f"{dataset} volumes: leave --modality out (or give --modality {dataset})"
        )
    return str(args.modality or dataset or "mri")


#: ``--headroom`` when not given, per ``--dataset`` layout: MS-SEG's FLAIR lesions would
#: otherwise clip at 1 (``segrenorm.data.clipping``).
DATASET_HEADROOM = {"msseg": 1.0}


def _headroom(args: argparse.Namespace) -> float:
    """``--headroom``, else the dataset layout's default, else 0."""
    if args.headroom is not None:
        return float(args.headroom)
    dataset = args.dataset[0] if args.dataset else None
    return DATASET_HEADROOM.get(str(dataset), 0.0)


def _records(
    args: argparse.Namespace,
) -> tuple[list[SubjectRecord], tuple[str, ...], tuple[str, ...] | None, str | None]:
    """The subjects of the one input route given, notes on what a layout skipped, the class
    names a layout defines and its modality (None elsewhere)."""
    two_site = [args.site_a, args.site_b, args.labels_a, args.labels_b]
    routes = {
        "--csv": args.csv is not None,
        "--dataset": args.dataset is not None,
        "--site": args.site is not None,
        "--site-a/--site-b": any(value is not None for value in two_site),
    }
    given = [name for name, present in routes.items() if present]
    if len(given) > 1:
        raise ConfigError(
            f"give the subjects one way, not {' and '.join(given)}: --csv LISTING, "
            "--dataset NAME ROOT, --site NAME PATH... (repeated) or --site-a/--site-b"
        )
    if not given:
        raise ConfigError(
            "no subjects given: pass --csv LISTING, --dataset NAME ROOT, one --site NAME "
            "PATH... per site, or both --site-a and --site-b"
        )
    if args.labels is not None and given[0] not in ("--site", "--dataset"):
        raise ConfigError(
            "--labels goes with --site or --dataset; a CSV lists label maps in its label "
            "column, and --site-a/--site-b take --labels-a/--labels-b"
        )
    for option, value in (("--site-column", args.site_column), ("--label-desc", args.label_desc)):
        if value is not None and given[0] != "--dataset":
            raise ConfigError(f"{option} goes with --dataset bids")
    if given[0] == "--csv":
        return read_listing(args.csv), (), None, None
    if given[0] == "--dataset":
        if args.labels is not None and (len(args.labels) > 1 or len(args.labels[0]) > 1):
            raise ConfigError("with --dataset, give --labels once, with one folder: --labels DIR")
        listing = records_from_layout(
            args.dataset[0],
            args.dataset[1],
            labels=None if args.labels is None else args.labels[0][0],
            site_column=args.site_column,
            label_desc=args.label_desc,
        )
        # Layouts name their modality (retouch: oct; the others mri).
        return listing.records, listing.notes, listing.class_names, listing.modality
    if given[0] == "--site":
        if args.sites is not None:
            raise ConfigError("--sites goes with --csv, --dataset or --site-a/--site-b; the "
                              "--site options give the cache order themselves")  # fmt: skip
        sites = [_named(values, "--site") for values in args.site]
        labels = [_named(values, "--labels") for values in args.labels or []]
        named = [name for name, _ in labels]
        twice = sorted({name for name in named if named.count(name) > 1})
        if twice:
            raise ConfigError(f"--labels given more than once for site(s) {twice}")
        return records_from_inputs(sites, dict(labels)), (), None, None
    if args.site_a is None or args.site_b is None:
        raise ConfigError("give both --site-a and --site-b (or one --site NAME PATH... per site)")
    names = tuple(args.sites) if args.sites else ("A", "B")
    if len(names) != 2:
        raise ConfigError(f"--site-a/--site-b are two sites: give --sites two names, not {names}")
    labels_by_site = {
        name: value
        for name, value in zip(names, (args.labels_a, args.labels_b), strict=True)
        if value is not None
    }
    return records_from_inputs(list(zip(names, (args.site_a, args.site_b), strict=True)),
                               labels_by_site), (), None, None  # fmt: skip


def _folds(value: str) -> int | str:
    """``--folds``: a number of folds or loso, refused with a usage message otherwise."""
    try:
        return parse_folds(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is neither a number of folds (1 or more) nor loso"
        ) from None


def _named(values: list[str], option: str) -> tuple[str, list[str]]:
    """``(NAME, [PATH, ...])`` of one ``--site``/``--labels`` option.

    A name that looks like a file (a path separator, an image suffix, an existing file) is
    refused: ``--site data/guys/*.nii.gz`` without a name would make the first file the name.
    A name that is also a folder is allowed (``--site guys guys/``).
    """
    name = values[0]
    if len(values) < 2:
        raise ConfigError(
            f"{option} takes a site name and then its files: {option} NAME PATH [PATH ...]; "
            f"got only {name!r}"
        )
    if "/" in name or "\\" in name or name.endswith(SUPPORTED_SUFFIXES) or Path(name).is_file():
        raise ConfigError(
            f"{option} {name} ...: {name!r} looks like a file, not a site name; give the site's "
            f"name first: {option} NAME PATH [PATH ...] (e.g. {option} guys {name} ...)"
        )
    return name, values[1:]
