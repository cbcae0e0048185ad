"""Subject listings: which volumes belong to which subject and site, and their splits.

Listings come from a CSV (:func:`read_listing`) or from two sites' files, folders or globs
(:func:`records_from_inputs`); :func:`segrenorm.data.prepare.prepare_cache` turns them into a slice
cache, drawing the subjects' train/val/test splits and folds with :func:`assign_splits`.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segrenorm.errors import ConfigError, InputError
from segrenorm.volumes.paths import find_images, image_stem

__all__ = [
    "SUBJECT_SPLITS",
    "SubjectRecord",
    "assign_splits",
    "read_listing",
    "records_from_inputs",
    "site_order",
    "subject_id",
]

#: The subject-level splits a listing may give and ``prepare`` draws.
SUBJECT_SPLITS: tuple[str, ...] = ("train", "val", "test")
_ID_SUFFIX = re.compile(r"_(t1w|dseg|seg|labels?)$", re.IGNORECASE)


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
    noise-free render of the subject on its site's scanner, the clean paired truth.

    Args:
        csv_path: the listing file.

    Raises:
        InputError: naming the file and line for a missing column, an empty value, a missing
            file, an unknown split or a subject listed twice at one site.
    """
    path = Path(csv_path)
    if not path.is_file():
        raise InputError(f"subject listing {path} does not exist")
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip().lower() for c in reader.fieldnames or []]
        missing = [c for c in ("subject", "site", "image") if c not in columns]
        if missing:
            raise InputError(
                f"{path}: missing column(s) {', '.join(missing)}; the header must list "
                "subject,site,image[,label][,split][,clean]"
            )
        records: list[SubjectRecord] = []
        seen: set[tuple[str, str]] = set()
        for row in reader:
            where = f"{path}, line {reader.line_num}"
            values = {
                (k or "").strip().lower(): (v or "").strip()
                for k, v in row.items()
                if isinstance(v, str | None)
            }
            empty = [c for c in ("subject", "site", "image") if not values.get(c)]
            if empty:
                raise InputError(f"{where}: empty value for {', '.join(empty)}")
            image = _listed_path(values["image"], path.parent, where)
            label = (
                _listed_path(values["label"], path.parent, where) if values.get("label") else None
            )
            clean = (
                _listed_path(values["clean"], path.parent, where) if values.get("clean") else None
            )
            split = values.get("split", "").lower() or None
            if split is not None and split not in SUBJECT_SPLITS:
                raise InputError(
                    f"{where}: split {split!r} must be 'train', 'val', 'test' or empty"
                )
            key = (values["site"], values["subject"])
            if key in seen:
                raise InputError(f"{where}: subject {key[1]!r} is listed twice for site {key[0]!r}")
            seen.add(key)
            records.append(
                SubjectRecord(values["subject"], values["site"], image, label, split, clean)
            )
    if not records:
        raise InputError(f"subject listing {path} has a header but no subject rows")
    return records


def _listed_path(value: str, folder: Path, where: str) -> Path:
    candidate = Path(value).expanduser()
    resolved = candidate if candidate.is_absolute() else folder / candidate
    if not resolved.exists():
        raise InputError(f"{where}: file {resolved} does not exist")
    return resolved.resolve()


def records_from_inputs(
    site_a: Sequence[str | Path],
    site_b: Sequence[str | Path],
    labels_a: Sequence[str | Path] | None = None,
    labels_b: Sequence[str | Path] | None = None,
    site_names: tuple[str, str] = ("A", "B"),
) -> list[SubjectRecord]:
    """Build records from two sites' files, folders or globs, pairing labels by subject id.

    Images and labels are paired by :func:`subject_id`; labels without an image are ignored,
    and files given as labels are not taken as images, so one folder may hold both.

    Args:
        site_a: image files/folders/globs of the first (source) site.
        site_b: the same for the second (target) site.
        labels_a: label maps of the first site, or None for no labels.
        labels_b: label maps of the second site (given exactly when ``labels_a`` is).
        site_names: names of the two sites.

    Raises:
        InputError: for labels given for one site only, an image without a label, or two
            images with one subject id.
    """
    if (labels_a is None) != (labels_b is None):
        raise InputError("labels were given for one site only: give label maps for both or none")
    if len(site_names) != 2 or site_names[0] == site_names[1]:
        raise ConfigError(f"site names {site_names!r} must be two different names")
    records: list[SubjectRecord] = []
    for name, images, labels in (
        (site_names[0], site_a, labels_a),
        (site_names[1], site_b, labels_b),
    ):
        label_files = [p.resolve() for p in find_images(labels)] if labels is not None else []
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
            if labels is not None and sid not in label_by_id:
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


def site_order(records: Sequence[SubjectRecord], sites: tuple[str, str] | None) -> tuple[str, str]:
    """The (source, target) site names of ``records``.

    Args:
        records: subjects of exactly two sites.
        sites: the two names in the wanted order, or None for the order of first appearance.

    Raises:
        ConfigError: if ``sites`` is not two different names.
        InputError: if the records do not hold exactly those (or exactly two) sites.
    """
    present = list(dict.fromkeys(r.site for r in records))
    if sites is not None:
        if len(sites) != 2 or sites[0] == sites[1]:
            raise ConfigError(f"sites {sites!r} must be two different site names")
        unknown = [s for s in present if s not in sites]
        absent = [s for s in sites if s not in present]
        if unknown or absent:
            raise InputError(
                f"sites {list(sites)} do not match the records' sites {present}: "
                + (f"no subject at {absent}" if absent else f"unexpected {unknown}")
            )
        return sites[0], sites[1]
    if len(present) != 2:
        raise InputError(f"harmonization needs exactly two sites, the records have {present}")
    return present[0], present[1]


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
    subjects and the folds do not depend on ``val_fraction``. A fraction that rounds to zero
    subjects gives an empty split. Every record gets a fold ``0..n_folds-1``.

    Args:
        records: the subjects of one site.
        test_fraction: fraction of the subjects without a split to draw as test.
        n_folds: number of cross-validation folds.
        seed: seed of the draws.
        site_idx: the site's index (0 or 1), so that the two sites draw differently.
        val_fraction: fraction of the subjects without a split to draw as val.

    Raises:
        InputError: if the drawn val subjects would leave the site without a training
            subject; the message names the site and says how to change the fractions.
    """
    order = sorted(range(len(records)), key=lambda i: records[i].subject)
    rng = np.random.default_rng([seed, site_idx])
    free = [i for i in order if records[i].split is None]
    shuffled = [free[j] for j in rng.permutation(len(free))]
    n_test = _round_half_up(test_fraction * len(free))
    n_test = min(n_test, max(len(free) - 1, 0))  # keep at least one drawn training subject
    n_val = _round_half_up(val_fraction * len(free))
    n_listed_train = sum(records[i].split == "train" for i in order)
    if n_val > 0 and n_test + n_val >= len(free) and n_listed_train == 0:
        site = records[0].site
        raise InputError(
            f"site {site!r} has {len(free)} subject(s) without a listed split: drawing "
            f"{n_test} test (test_fraction {test_fraction}) and {n_val} val (val_fraction "
            f"{val_fraction}) would leave the train split empty; lower the val fraction "
            "(--val-fraction, 0 for no val split) or the test fraction (--test-fraction), "
            "or add subjects to the site"
        )
    n_val = min(n_val, len(free) - n_test)
    drawn = {i: "test" for i in shuffled[:n_test]}
    drawn.update({i: "val" for i in shuffled[n_test : n_test + n_val]})
    folds = rng.permutation(len(order))
    result = []
    for i in range(len(records)):
        split = records[i].split or drawn.get(i, "train")
        result.append((split, int(folds[order.index(i)] % n_folds)))
    return result
