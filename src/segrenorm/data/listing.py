"""Subject listings: which volumes belong to which subject and site, and their splits.

Listings come from a CSV (:func:`read_listing`), from each site's files, folders or globs
(:func:`records_from_inputs`) or from a dataset layout (``segrenorm.data.layouts``);
:func:`segrenorm.data.prepare.prepare_cache` checks them with :func:`check_distinct` and turns
them into a slice cache, drawing the subjects' train/val/test splits and folds with
:func:`assign_splits`.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segrenorm.errors import ConfigError, InputError
from segrenorm.vocabulary import site_keys
from segrenorm.volumes.paths import find_images, image_stem

__all__ = [
    "HELD_OUT_SPLITS",
    "SUBJECT_SPLITS",
    "SubjectRecord",
    "assign_splits",
    "check_distinct",
    "read_listing",
    "records_from_inputs",
    "site_order",
    "subject_id",
]

#: The subject-level splits a listing may give and ``prepare`` draws.
SUBJECT_SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Splits in which one subject may appear at several sites (a travelling, paired subject).
HELD_OUT_SPLITS: tuple[str, ...] = ("val", "test")
_ID_SUFFIX = re.compile(r"_(t1w|dseg|seg|labels?)$", re.IGNORECASE)
_REQUIRED = ("subject", "site", "image")
_FILES = ("image", "label", "clean")


@dataclass(frozen=True)
class SubjectRecord:
    """One subject's volume (and optional label map) at one site.

    Args:
        subject: subject identifier, unique within its site.
        site: site (scanner) name.
        image: path of the intensity volume.
        label: path of the label map, or None.
        split: ``"train"``, ``"val"`` or ``"test"`` to fix the subject's split, None to draw it.
        clean: path of a noise-free, bias-free render of the same subject on this site's
            scanner (``segrenorm simulate`` writes one per held-out target subject), or None;
            evaluation scores paired methods against it too.
    """

    subject: str
    site: str
    image: Path
    label: Path | None
    split: str | None = None
    clean: Path | None = None

    def __post_init__(self) -> None:
        if self.split is not None and self.split not in SUBJECT_SPLITS:
            raise InputError(
                f"subject {self.subject!r}: split {self.split!r} is not 'train', 'val' or 'test'"
            )


def subject_id(path: str | Path) -> str:
    """Subject id of a volume file: its name without the image suffix and one role suffix.

    The role suffixes ``_T1w``, ``_dseg``, ``_seg``, ``_label`` and ``_labels`` (any case) are
    dropped, so ``sub-01_T1w.nii.gz`` and ``sub-01_dseg.nii.gz`` both give ``sub-01``.

    Args:
        path: a volume file path.
    """
    return _ID_SUFFIX.sub("", image_stem(path))


def read_listing(csv_path: str | Path) -> list[SubjectRecord]:
    """Read a subject listing CSV with columns ``subject, site, image[, label][, split][, clean]``.

    Relative paths are relative to the CSV's folder; an empty ``label`` means no label map and an
    empty ``split`` lets :func:`prepare_cache` draw it. ``clean`` (optional, may be empty) is a
    noise-free render of the subject on its site's scanner, the clean paired truth. Every row is
    checked before anything is reported, so one error lists every bad row.

    Args:
        csv_path: the listing file.

    Raises:
        InputError: naming the file for missing columns or no rows, or listing every bad row
            (its line and what is wrong: an empty value, a missing file, an unknown split, a
            subject listed twice at one site).
    """
    path = Path(csv_path)
    if not path.is_file():
        raise InputError(f"subject listing {path} does not exist")
    folder = path.parent.absolute()  # relative paths in the listing are relative to it
    records: list[SubjectRecord] = []
    problems: list[str] = []
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip().lower() for c in reader.fieldnames or []]
        missing = [c for c in _REQUIRED if c not in columns]
        if missing:
            raise InputError(
                f"{path}: missing column(s) {', '.join(missing)} (the header has "
                f"{', '.join(columns) or 'no columns'}); the header must list "
                "subject,site,image[,label][,split][,clean]"
            )
        first_line: dict[tuple[str, str], int] = {}
        for row in reader:
            line = reader.line_num
            values = {
                (k or "").strip().lower(): (v or "").strip()
                for k, v in row.items()
                if isinstance(v, str | None)
            }
            empty = [c for c in _REQUIRED if not values.get(c)]
            wrong = [f"empty value for {', '.join(empty)}"] if empty else []
            # An absolute listed path stays absolute: Path("/csv/dir") / "/data/x" is /data/x.
            files = {c: folder / Path(values[c]).expanduser() for c in _FILES if values.get(c)}
            wrong += [f"{c} file {f} does not exist" for c, f in files.items() if not f.exists()]
            split = values.get("split", "").lower() or None
            if split is not None and split not in SUBJECT_SPLITS:
                wrong.append(f"split {split!r} must be 'train', 'val', 'test' or empty")
            key = (values.get("site", ""), values.get("subject", ""))
            if all(key) and key in first_line:
                wrong.append(
                    f"subject {key[1]!r} is listed twice for site {key[0]!r} "
                    f"(first at line {first_line[key]})"
                )
            elif all(key):
                first_line[key] = line
            if wrong:
                problems.append(f"line {line}: {', '.join(wrong)}")
                continue
            resolved = {c: f.resolve() for c, f in files.items()}
            records.append(
                SubjectRecord(key[1], key[0], resolved["image"], resolved.get("label"), split,
                              resolved.get("clean"))
            )  # fmt: skip
    if problems:
        raise InputError(
            f"{path}: {len(problems)} bad row(s); fix them and run again: " + "; ".join(problems)
        )
    if not records:
        raise InputError(f"subject listing {path} has a header but no subject rows")
    return records


def records_from_inputs(
    sites: Sequence[tuple[str, Sequence[str | Path]]],
    labels: Mapping[str, Sequence[str | Path]] | None = None,
) -> list[SubjectRecord]:
    """Build records from each site's files, folders or globs, pairing labels by subject id.

    Images and labels are paired by :func:`subject_id`; labels without an image are ignored,
    and files given as labels are not taken as images, so one folder may hold both. Labels may
    be given for some sites only: the others' records have no label map (``prepare`` decides
    what an unlabelled site needs).

    Args:
        sites: ``(site name, image files/folders/globs)`` per site, in cache order.
        labels: label maps per site name, for any subset of the sites; None for none.

    Raises:
        ConfigError: for a site named twice or labels of a site that is not given.
        InputError: for an image without a label at a site given labels, two images with one
            subject id at one site, or a site whose every image was given as a label map.
    """
    names = [name for name, _ in sites]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"site name(s) {twice} given more than once: name each site once")
    labels = dict(labels or {})
    unknown = [name for name in labels if name not in names]
    if unknown:
        raise ConfigError(
            f"labels given for site(s) {unknown} that are not among the sites {names}"
        )
    records: list[SubjectRecord] = []
    for name, images in sites:
        given = labels.get(name)
        label_files = [p.resolve() for p in find_images(given)] if given is not None else []
        label_by_id: dict[str, Path] = {}
        for label in label_files:
            label_by_id.setdefault(subject_id(label), label)
        seen: dict[str, Path] = {}
        # A folder may hold images and their label maps side by side (BIDS derivatives).
        for image in find_images(images):
            if image.resolve() in label_files:
                continue
            sid = subject_id(image)
            if sid in seen:
                raise InputError(
                    f"site {name}: {seen[sid]} and {image} both have subject id {sid!r}; "
                    "rename one or list the subjects in a CSV (--csv)"
                )
            seen[sid] = image
            if given is not None and sid not in label_by_id:
                raise InputError(
                    f"site {name}: no label map for {image} (subject id {sid!r}); label files "
                    "pair with images by name without suffix and without _T1w/_dseg/_seg/_label"
                )
            records.append(SubjectRecord(sid, name, image.resolve(), label_by_id.get(sid)))
        if not seen:
            raise InputError(
                f"site {name}: every image given was also given as a label map; point the labels "
                "at the label files only (e.g. a glob such as 'folder/*_dseg.nii.gz')"
            )
    return records


def check_distinct(records: Sequence[SubjectRecord]) -> None:
    """Refuse one image file listed twice, or one subject id at two sites outside val/test.

    Files are compared by identity (``os.path.samefile``: the same resolved path, a symbolic
    or a hard link), so the same folder given as two sites is caught. A subject id may appear
    at several sites only as a travelling subject held out for paired evaluation: listed with
    the same split, ``val`` or ``test``, at each of them (as ``segrenorm simulate`` writes).

    Args:
        records: the subjects of every site, from any listing route.

    Raises:
        InputError: naming both paths (and sites) of every clash, and what to do.
    """
    by_file: dict[object, SubjectRecord] = {}
    clashes: list[str] = []
    for record in records:
        key = _file_key(record.image)
        other = by_file.setdefault(key, record)
        if other is not record:
            clashes.append(
                f"{other.image} (site {other.site!r}, subject {other.subject!r}) and "
                f"{record.image} (site {record.site!r}, subject {record.subject!r}) are the "
                "same image file"
            )
    if clashes:
        raise InputError(
            "the same image file is listed more than once, so a subject would train against "
            "itself: " + "; ".join(clashes) + ". Give each site its own files"
        )
    by_subject: dict[str, SubjectRecord] = {}
    for record in records:
        other = by_subject.setdefault(record.subject, record)
        if other is record or other.site == record.site:
            continue  # duplicates within one site are refused by prepare, naming the site
        if other.split == record.split and record.split in HELD_OUT_SPLITS:
            continue
        clashes.append(
            f"subject {record.subject!r} is at site {other.site!r} ({other.image}) and at "
            f"site {record.site!r} ({record.image})"
        )
    if clashes:
        raise InputError(
            "one subject id at two sites: " + "; ".join(clashes) + ". Rename the subjects if "
            "they are different people; a travelling subject scanned at several sites may be "
            "listed at each only as a held-out subject, with the same split 'val' or 'test' "
            "in a CSV's split column"
        )


def _file_key(path: Path) -> object:
    try:
        stat = os.stat(path)
    except OSError:
        return Path(path).resolve()
    return (stat.st_dev, stat.st_ino)


def site_order(records: Sequence[SubjectRecord], sites: Sequence[str] | None) -> tuple[str, ...]:
    """The site names of ``records``, in cache order (keys ``A``, ``B``, ...).

    Args:
        records: subjects of two or more sites.
        sites: the names in the wanted order (every site of the records, once), or None for
            the order of first appearance.

    Raises:
        ConfigError: if ``sites`` names a site twice.
        InputError: if the records do not hold exactly those sites, or fewer than two.
    """
    present = list(dict.fromkeys(r.site for r in records))
    if sites is not None:
        names = list(sites)
        if len(set(names)) != len(names):
            raise ConfigError(f"sites {names!r} name a site more than once")
        unknown = [s for s in present if s not in names]
        absent = [s for s in names if s not in present]
        if unknown or absent:
            raise InputError(
                f"sites {names} do not match the records' sites {present}: "
                + (f"no subject at {absent}" if absent else f"unexpected {unknown}")
            )
        present = names
    if len(present) < 2:
        raise InputError(
            f"harmonization needs at least two sites, the subjects are all at {present}; "
            "list subjects of a source and a target site"
        )
    site_keys(len(present))  # refuses more sites than the cache has keys for
    return tuple(present)


def _round_half_up(value: float) -> int:
    return int(np.floor(value + 0.5))


def assign_splits(
    records: Sequence[SubjectRecord],
    test_fraction: float,
    n_folds: int,
    seed: int,
    site_idx: int,
    val_fraction: float = 0.0,
) -> list[tuple[str, int]]:
    """(split, fold) per record of one site; deterministic in the seed and the subject ids.

    A record's own ``split`` wins and the fractions apply only to the other ("free") records.
    These are sorted by subject id and shuffled with ``seed``; the first
    ``round(test_fraction * n_free)`` (rounded half up, leaving at least one free record for
    training) are test and the next ``round(val_fraction * n_free)`` are val, so the test
    subjects and the folds do not depend on ``val_fraction``. A fraction above 0 must give its
    split at least one subject (listed or drawn); a site whose subjects all have a listed split
    is exempt. Every record gets a fold ``0..n_folds-1``.

    Args:
        records: the subjects of one site.
        test_fraction: fraction of the subjects without a split to draw as test.
        n_folds: number of cross-validation folds.
        seed: seed of the draws.
        site_idx: the site's index in cache order (0, 1, ...), so that sites draw differently.
        val_fraction: fraction of the subjects without a split to draw as val.

    Raises:
        InputError: if the drawn val subjects would leave the site without a training
            subject, or a fraction above 0 gives its split no subject at the site; the message
            names the site and the empty split and says how to change the fractions.
    """
    order = sorted(range(len(records)), key=lambda i: records[i].subject)
    rng = np.random.default_rng([seed, site_idx])
    free = [i for i in order if records[i].split is None]
    shuffled = [free[j] for j in rng.permutation(len(free))]
    n_test = _round_half_up(test_fraction * len(free))
    n_test = min(n_test, max(len(free) - 1, 0))  # keep at least one drawn training subject
    n_val = _round_half_up(val_fraction * len(free))
    n_listed_train = sum(records[i].split == "train" for i in order)
    site = records[0].site if records else "?"
    if n_val > 0 and n_test + n_val >= len(free) and n_listed_train == 0:
        raise InputError(
            f"site {site!r} has {len(free)} subject(s) without a listed split: drawing "
            f"{n_test} test (test_fraction {test_fraction}) and {n_val} val (val_fraction "
            f"{val_fraction}) would leave the train split empty; lower the val fraction "
            "(--val-fraction, 0 for no val split) or the test fraction (--test-fraction), "
            "or add subjects to the site"
        )
    n_val = min(n_val, len(free) - n_test)
    if free:
        _check_not_empty(records, site, len(free), {"test": (test_fraction, n_test),
                                                    "val": (val_fraction, n_val)})  # fmt: skip
    drawn = {i: "test" for i in shuffled[:n_test]}
    drawn.update({i: "val" for i in shuffled[n_test : n_test + n_val]})
    folds = rng.permutation(len(order))
    result = []
    for i in range(len(records)):
        split = records[i].split or drawn.get(i, "train")
        result.append((split, int(folds[order.index(i)] % n_folds)))
    return result


def _check_not_empty(
    records: Sequence[SubjectRecord], site: str, n_free: int, drawn: dict[str, tuple[float, int]]
) -> None:
    """Refuse a requested split (fraction > 0) that neither the listing nor the draw fills."""
    empty = [
        (split, fraction)
        for split, (fraction, n_drawn) in drawn.items()
        if fraction > 0 and n_drawn == 0 and not any(r.split == split for r in records)
    ]
    if not empty:
        return
    what = " and ".join(f"{s} split (--{s}-fraction {f})" for s, f in empty)
    fixes = ", ".join(f"--{s}-fraction 0 for no {s} split" for s, _ in empty)
    raise InputError(
        f"site {site!r} has {n_free} subject(s) without a listed split, too few for the "
        f"requested {what}: it rounds to 0 subjects, so the {' and '.join(s for s, _ in empty)} "
        f"split would be empty at this site. Add subjects to the site, raise the fraction, pass "
        f"{fixes}, or list each subject's split in a CSV 'split' column (--csv)"
    )
