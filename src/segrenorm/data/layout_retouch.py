"""The RETOUCH layout: retinal OCT volumes of three vendors with voxel-wise fluid references.

The MICCAI 2017 RETOUCH challenge (retinal OCT fluid detection and segmentation) ships one
folder per vendor and set, each volume an ITK MetaImage pair (an ASCII ``.mhd`` header naming
its ``.raw`` data)::

    RETOUCH-TrainingSet-Cirrus/
      TRAIN001/ oct.mhd oct.raw reference.mhd reference.raw
      TRAIN002/ ...
    RETOUCH-TrainingSet-Spectralis/  TRAIN025/ ...
    RETOUCH-TrainingSet-Topcon/      TRAIN049/ ...
    RETOUCH-TestSet-Cirrus/          TEST001/ oct.mhd oct.raw   (no reference; skipped)
    ...

:func:`retouch_records` reads it for :data:`segrenorm.data.layouts.DATASET_LAYOUTS` (``segrenorm
prepare --dataset retouch ROOT``, which implies ``--modality oct``): one record per training
volume, the site its vendor (``Cirrus``), the image its ``oct.mhd`` and the label map its
``reference.mhd`` (0 background, 1 IRF, 2 SRF, 3 PED: :data:`RETOUCH_CLASSES`). The subject id
is ``Cirrus_TRAIN001``: the challenge numbers volumes across vendors, and the vendor in the id
keeps ids unique even where a copy renumbers them.

``ROOT`` is the folder holding the vendor folders, or one vendor folder itself. A vendor folder
may sit one level down, as when each vendor's zip is unpacked into a folder of its own
(``TrainingCirrus/RETOUCH-TrainingSet-Cirrus/``, or the zip's name twice). ``TestSet`` folders
are skipped with a note: the challenge kept their references, and unlabelled volumes cannot be
scored (list them in a CSV to harmonize them).

Example:
    >>> records, notes, classes = retouch_records(Path("RETOUCH"))  # doctest: +SKIP
    >>> records[0].subject, records[0].site, classes  # doctest: +SKIP
    ('Cirrus_TRAIN001', 'Cirrus', ('background', 'IRF', 'SRF', 'PED'))
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from segrenorm.data.listing import SubjectRecord
from segrenorm.errors import ConfigError, InputError

__all__ = [
    "RETOUCH_CLASSES",
    "RETOUCH_IMAGE",
    "RETOUCH_LABEL",
    "RETOUCH_VENDORS",
    "retouch_records",
]

#: The class names of a RETOUCH cache: the references' labels 0-3.
RETOUCH_CLASSES: tuple[str, ...] = ("background", "IRF", "SRF", "PED")
#: The vendors of the challenge, spelled as its folder names spell them.
RETOUCH_VENDORS: tuple[str, ...] = ("Cirrus", "Spectralis", "Topcon")
#: A volume's image and label map, relative to its ``TRAINxxx`` folder.
RETOUCH_IMAGE, RETOUCH_LABEL = "oct.mhd", "reference.mhd"
# Folder names as the download spells them; matched without regard to case, since copies made
# on case-insensitive file systems (or renamed by hand) change it.
_SET_FOLDER = re.compile(r"^RETOUCH-(TrainingSet|TestSet)-([A-Za-z]+)$", re.IGNORECASE)
_TRAIN = re.compile(r"^TRAIN\d+$", re.IGNORECASE)
# MetaImage headers are short; the data file line sits within the first few hundred bytes.
_HEADER_BYTES = 65536
_DATA_FILE = re.compile(r"^\s*ElementDataFile\s*=\s*(.+?)\s*$", re.MULTILINE)
_LAYOUT = "RETOUCH-TrainingSet-<vendor>/TRAINxxx/{oct.mhd, reference.mhd}"


def _listed(items: Sequence[str], limit: int = 20) -> str:
    """``a, b, c`` with at most ``limit`` items named, then how many more."""
    named = ", ".join(items[:limit])
    return named + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _folders(folder: Path) -> list[Path]:
    """The visible sub-folders of ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _vendor(name: str) -> str:
    """The vendor of a set folder's name, spelled as the challenge spells it where known."""
    match = _SET_FOLDER.match(name)
    assert match is not None
    written = match.group(2)
    return next((v for v in RETOUCH_VENDORS if v.lower() == written.lower()), written)


def _is_training(folder: Path) -> bool:
    match = _SET_FOLDER.match(folder.name)
    return match is not None and match.group(1).lower() == "trainingset"


def _unwrap(folder: Path) -> Path:
    """A set folder, or the folder of the same name that is all it holds (a zip unpacked into
    a folder named after it)."""
    inner = _folders(folder)
    if len(inner) == 1 and inner[0].name.lower() == folder.name.lower():
        return inner[0]
    return folder


def _set_folders(root: Path) -> tuple[list[Path], list[str]]:
    """The set folders ``root`` is or holds (directly or one level down), and notes on the
    folders beside them that hold none."""
    if _SET_FOLDER.match(root.name):
        return [_unwrap(root)], []
    found: list[Path] = []
    other: list[str] = []
    for child in _folders(root):
        if _SET_FOLDER.match(child.name):
            found.append(_unwrap(child))
            continue
        inner = [p for p in _folders(child) if _SET_FOLDER.match(p.name)]
        if inner:
            found += [_unwrap(p) for p in inner]
        else:
            other.append(child.name)
    notes = [f"ignored folder(s) in {root} that hold no RETOUCH set: {_listed(other)}"]
    return found, notes if (found and other) else []


def _missing_data(header: Path) -> str | None:
    """What is wrong with the data file a MetaImage header names, or None if it is there."""
    with header.open("rb") as handle:
        text = handle.read(_HEADER_BYTES).decode("latin-1")
    match = _DATA_FILE.search(text)
    if match is None:
        return f"{header} names no ElementDataFile (not a MetaImage header)"
    name = match.group(1)
    if name.upper() in ("LOCAL", "LIST") or "%" in name or " " in name:
        return None  # inline data, or a file list / pattern SimpleITK checks on reading
    if not (header.parent / name).is_file():
        return f"{header} names its data file {name}, which is missing from {header.parent}"
    return None


def _vendor_records(folder: Path, vendor: str, problems: list[str]) -> list[SubjectRecord]:
    """The volumes of one training-set folder; what is wrong with it goes into ``problems``."""
    volumes = _folders(folder)
    odd = [p.name for p in volumes if not _TRAIN.match(p.name)]
    if odd:
        problems.append(f"folder(s) in {folder} that are not TRAINxxx: {_listed(odd)}")
    kept = [p for p in volumes if _TRAIN.match(p.name)]
    if not kept:
        problems.append(f"{folder} holds no TRAINxxx folder")
    records = []
    for volume in kept:
        image, label = volume / RETOUCH_IMAGE, volume / RETOUCH_LABEL
        missing = [p.name for p in (image, label) if not p.is_file()]
        if missing:
            problems.append(f"{volume} has no {' and no '.join(missing)}")
            continue
        data = [m for m in (_missing_data(image), _missing_data(label)) if m is not None]
        if data:
            problems += data
            continue
        subject = f"{vendor}_{volume.name.upper()}"
        records.append(SubjectRecord(subject, vendor, image.resolve(), label.resolve()))
    return records


def retouch_records(
    root: Path, **options: Path | str | None
) -> tuple[list[SubjectRecord], tuple[str, ...], tuple[str, ...]]:
    """RETOUCH: ``RETOUCH-TrainingSet-<vendor>/TRAINxxx/`` with an OCT and a reference each.

    Every ``TRAINxxx`` folder must hold ``oct.mhd`` and ``reference.mhd`` and the ``.raw`` data
    files their headers name; a volume missing any of them, a folder in a vendor folder that is
    not ``TRAINxxx`` and a vendor folder without volumes are refused, all of them in one
    message, so no volume drops out unnoticed. ``RETOUCH-TestSet-<vendor>`` folders (volumes
    without references) are skipped with a note.

    Args:
        root: the folder holding the vendor folders (directly or one level down), or one
            ``RETOUCH-TrainingSet-<vendor>`` folder itself.
        options: the other layouts' options (``labels``, ``site_column``, ``label_desc``);
            each must be None: the site is the vendor and the labels are the references.

    Returns:
        ``(records, notes, class_names)``: one record per training volume, sorted by vendor and
        volume, with subject ``Cirrus_TRAIN001``, site ``Cirrus`` and no listed split; what was
        skipped; :data:`RETOUCH_CLASSES`.

    Raises:
        ConfigError: if an option is given.
        InputError: for a root that does not exist or holds no training-set folder, a vendor
            given twice, unexpected folders, vendor folders without volumes, or volumes without
            their OCT, reference or data files.
    """
    given = ["--" + name.replace("_", "-") for name, value in options.items() if value is not None]
    if given:
        raise ConfigError(
            f"{' and '.join(given)} {'does' if len(given) == 1 else 'do'} not go with --dataset "
            "retouch: the site is the vendor folder and each volume's label map is its "
            f"{RETOUCH_LABEL}"
        )
    if not root.is_dir():
        raise InputError(
            f"{root}: no such folder; give the folder holding the unpacked "
            "RETOUCH-TrainingSet-<vendor> folders, or one of them"
        )
    sets, notes = _set_folders(root)
    training = [s for s in sets if _is_training(s)]
    tests = [s for s in sets if not _is_training(s)]
    if not training:
        has_volumes = any(_TRAIN.match(p.name) for p in _folders(root))
        hint = (
            f"; {root} holds TRAINxxx folders: keep its RETOUCH-TrainingSet-<vendor> name, "
            "which gives the vendor (the site)"
            if has_volumes
            else ""
        )
        found = f" (only {_listed([t.name for t in tests])})" if tests else ""
        raise InputError(
            f"{root}: no RETOUCH-TrainingSet-<vendor> folder{found}; the retouch layout reads "
            f"ROOT/{_LAYOUT} (ROOT: the folder holding the unpacked vendor folders, or one of "
            f"them){hint}"
        )
    for test in tests:
        n = sum(1 for _ in _folders(test))
        notes.append(
            f"skipped {test} ({n} volume folder(s)): the challenge's test volumes come without "
            "references; list them in a CSV to harmonize them"
        )
    by_vendor: dict[str, list[Path]] = {}
    for folder in training:
        by_vendor.setdefault(_vendor(folder.name), []).append(folder)
    twice = [f"{v} ({_listed([str(f) for f in fs])})" for v, fs in by_vendor.items() if len(fs) > 1]
    if twice:
        raise InputError(
            f"{root}: several training-set folders of one vendor: {'; '.join(twice)}; keep one "
            "per vendor (the vendor is the site)"
        )
    problems: list[str] = []
    records: list[SubjectRecord] = []
    for vendor, (folder,) in sorted(by_vendor.items()):
        records += _vendor_records(folder, vendor, problems)
    if problems:
        raise InputError(
            f"{root} does not follow the RETOUCH layout {_LAYOUT} with the .raw files their "
            f"headers name: {'; '.join(problems)}; complete or move those folders, or list "
            "the subjects in a CSV (--csv)"
        )
    return records, tuple(notes), RETOUCH_CLASSES
