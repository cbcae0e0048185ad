"""Subject listings: which volumes belong to which subject and site, and their splits.

Listings come from a CSV (:func:`read_listing`), from each site's files, folders or globs
(:func:`records_from_inputs`) or from a dataset layout (``segrenorm.data.layouts``);
:func:`segrenorm.data.prepare.prepare_cache` checks them with :func:`check_distinct` and turns
them into a slice cache, drawing the subjects' train/val/test splits and folds with
:func:`segrenorm.data.splits.assign_splits`.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from segrenorm.errors import ConfigError, InputError
from segrenorm.vocabulary import site_keys
from segrenorm.volumes.paths import find_images, image_stem

__all__ = [
    "HELD_OUT_SPLITS",
    "SUBJECT_SPLITS",
    "SubjectRecord",
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
        group: the person the record belongs to when one person has several records (the
            sessions ``sub-01_ses-01`` and ``sub-01_ses-02`` of a BIDS participant): the
            records of one group get one split and one fold. None: the subject is its own group.
    """

    subject: str
    site: str
    image: Path
    label: Path | None
    split: str | None = None
    clean: Path | None = None
    group: str | None = None

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
    pairs: list[tuple[SubjectRecord, SubjectRecord]] = []
    for record in records:
        other = by_file.setdefault(_file_key(record.image), record)
        if other is not record:
            pairs.append((other, record))
    if pairs:
        raise InputError(
            "the same image file is listed more than once, so a subject would train against "
            "itself: " + _file_clashes(records, pairs) + ". Give each site its own files"
        )
    clashes: list[str] = []
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
            "one subject id at two sites: " + _some(clashes) + ". Rename the subjects if "
            "they are different people; a travelling subject scanned at several sites may be "
            "listed at each only as a held-out subject, with the same split 'val' or 'test' "
            "in a CSV's split column"
        )


def _some(clauses: Sequence[str], limit: int = 5) -> str:
    """The first ``limit`` clauses joined by ``; ``, then how many more there are."""
    more = f"; and {len(clauses) - limit} more" if len(clauses) > limit else ""
    return "; ".join(clauses[:limit]) + more


def _file_clashes(
    records: Sequence[SubjectRecord], pairs: Sequence[tuple[SubjectRecord, SubjectRecord]]
) -> str:
    """The clashing files, summed up per pair of sites where one site's images are all the
    other's (the same folder given twice), else listed pair by pair (at most five)."""
    per_site = {r.site: sum(s.site == r.site for s in records) for r in records}
    by_sites: dict[tuple[str, str], list[tuple[SubjectRecord, SubjectRecord]]] = {}
    for first, second in pairs:
        by_sites.setdefault((first.site, second.site), []).append((first, second))
    whole, clauses = [], []
    for (x, y), found in by_sites.items():
        a, b = found[0]
        e_g = f"{len(found)} image(s), e.g. {a.image}" + (
            f" and {b.image}" if a.image != b.image else ""
        )
        if x != y and len(found) == per_site[x] == per_site[y]:
            whole.append(f"sites {x!r} and {y!r} are given the same files ({e_g})")
        elif x != y and len(found) in (per_site[x], per_site[y]):
            part, full = (x, y) if len(found) == per_site[x] else (y, x)
            whole.append(f"every image of site {part!r} is also given to site {full!r} ({e_g})")
        else:
            clauses += [
                f"{a.image} (site {a.site!r}, subject {a.subject!r}) and {b.image} (site "
                f"{b.site!r}, subject {b.subject!r}) are the same image file"
                for a, b in found
            ]
    return "; ".join(whole + ([_some(clauses)] if clauses else []))


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
