"""The ``subjects.csv`` listing that ``segrenorm simulate t1`` writes, and reading it back.

One row per (subject, site) volume: ``subject, site, image, label, split`` and the optional
``clean`` column, the noise-free, bias-free render of a held-out subject on the target scanner
(filled on the target-site rows of subjects rendered on both scanners, empty elsewhere).
Listings written before that column existed are read the same way, without clean renders.

Example:
    >>> entries = read_subjects("data/t1/subjects.csv")  # doctest: +SKIP
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from segrenorm.errors import InputError

__all__ = ["CSV_COLUMNS", "SubjectEntry", "read_subjects"]

#: The columns :func:`~segrenorm.simulate.benchmark.simulate_t1` writes, in order; ``clean``
#: is optional when reading.
CSV_COLUMNS = ("subject", "site", "image", "label", "split", "clean")
_REQUIRED = CSV_COLUMNS[:5]
_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SubjectEntry:
    """One row of ``subjects.csv``, with paths resolved against the csv folder.

    Args:
        subject: Subject id, e.g. ``"sub-003"``.
        site: Scanner/site name.
        image: Path of the T1w image.
        label: Path of the tissue label map.
        split: ``"train"``, ``"val"`` or ``"test"``.
        clean: Path of the noise-free, bias-free render on this site's scanner, or None.
    """

    subject: str
    site: str
    image: Path
    label: Path
    split: str
    clean: Path | None = None


def read_subjects(csv_path: str | Path) -> list[SubjectEntry]:
    """Read a ``subjects.csv`` listing as written by ``simulate_t1``.

    Args:
        csv_path: Path of the csv file.

    Returns:
        The rows in file order.

    Raises:
        InputError: If the file is missing, lacks a column or has an unknown split.
    """
    path = Path(csv_path)
    if not path.is_file():
        raise InputError(f"{path}: subject listing not found; run `segrenorm simulate t1` first")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in _REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(
                f"{path}: missing column(s) {', '.join(missing)}; expected "
                f"{','.join(_REQUIRED)}[,clean]"
            )
        rows = list(reader)
    entries = []
    for line, row in enumerate(rows, start=2):
        if row["split"] not in _SPLITS:
            raise InputError(
                f"{path}, line {line}: split {row['split']!r} is not {', '.join(_SPLITS)}"
            )
        clean = (row.get("clean") or "").strip()
        entries.append(
            SubjectEntry(
                row["subject"],
                row["site"],
                path.parent / row["image"],
                path.parent / row["label"],
                row["split"],
                path.parent / clean if clean else None,
            )
        )
    return entries
