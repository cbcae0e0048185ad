"""The MS-SEG 2016 layout: FLAIR volumes and consensus lesion masks, one site per centre.

The MICCAI 2016 MS lesion segmentation challenge (MSSEG 2016) ships its data as::

    Training/
      Center_01/
        Patient_01/
          Preprocessed_Data/FLAIR_preprocessed.nii.gz   (and T1, T2, DP, GADO)
          Masks/Consensus.nii.gz                        (and ManualSegmentation_1..7)
          Raw_Data/...
        Patient_02/ ...
      Center_07/ ...
    Testing/ ...        (the challenge's test cases; skipped, see below)

:func:`msseg_records` reads it for :data:`segrenorm.data.layouts.DATASET_LAYOUTS` (``segrenorm
prepare --dataset msseg ROOT``): one record per patient, the site its centre (``Center_01``), the
image its preprocessed FLAIR and the label map its consensus lesion mask, with the two classes
:data:`MSSEG_CLASSES`. The subject id is ``Center_01_Patient_02``: the challenge numbers patients
within each centre, and ids must be unique study-wide (evaluation pairs slices by id).

``ROOT`` is the folder that holds ``Training/`` (the unpacked download) or ``Training/`` itself.
A ``Testing/`` folder beside ``Training/`` is skipped with a note: the challenge's test cases
come from a centre absent from training and its patients reuse the training's numbering, so
they are a study of their own (list them in a CSV with ids of their own to use them).

Example:
    >>> records, notes, classes = msseg_records(Path("MSSEG-2016"))  # doctest: +SKIP
    >>> records[0].subject, records[0].site, classes  # doctest: +SKIP
    ('Center_01_Patient_01', 'Center_01', ('background', 'lesion'))
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from segrenorm.data.listing import SubjectRecord
from segrenorm.errors import ConfigError, InputError

__all__ = ["MSSEG_CLASSES", "MSSEG_IMAGE", "MSSEG_LABEL", "msseg_records"]

#: The class names of an MS-SEG cache: the consensus masks mark lesion voxels with 1.
MSSEG_CLASSES: tuple[str, ...] = ("background", "lesion")
#: A patient's image, relative to its folder.
MSSEG_IMAGE = Path("Preprocessed_Data") / "FLAIR_preprocessed.nii.gz"
#: A patient's label map, relative to its folder.
MSSEG_LABEL = Path("Masks") / "Consensus.nii.gz"
_CENTRE = re.compile(r"^Center_\d+$")
_PATIENT = re.compile(r"^Patient_\d+$")
_TRAINING, _TESTING = "Training", "Testing"


def _listed(items: Sequence[str], limit: int = 20) -> str:
    """``a, b, c`` with at most ``limit`` items named, then how many more."""
    named = ", ".join(items[:limit])
    return named + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _folders(folder: Path) -> list[Path]:
    """The visible sub-folders of ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _training_folder(root: Path) -> tuple[Path, list[str]]:
    """The ``Training/`` folder that ``root`` names or holds, and notes on what lies beside it."""
    if (root / _TRAINING).is_dir():
        notes = []
        testing = root / _TESTING
        if testing.is_dir():
            n = sum(len(_folders(c)) for c in _folders(testing) if _CENTRE.match(c.name))
            notes.append(
                f"skipped {testing} ({n} patient folder(s)): the challenge's test cases reuse "
                "the training's patient numbers and add a centre; list them in a CSV with ids "
                "of their own to use them"
            )
        other = [p.name for p in _folders(root) if p.name not in (_TRAINING, _TESTING)]
        if other:
            notes.append(f"ignored folder(s) beside {_TRAINING}/ in {root}: {_listed(other)}")
        return root / _TRAINING, notes
    if root.name == _TRAINING or any(_CENTRE.match(p.name) for p in _folders(root)):
        return root, []
    raise InputError(
        f"{root}: neither a {_TRAINING}/ folder nor Center_XX folders; the msseg layout reads "
        f"ROOT/{_TRAINING}/Center_XX/Patient_YY/{MSSEG_IMAGE} (ROOT: the unpacked MSSEG 2016 "
        f"download, or its {_TRAINING}/ folder itself)"
    )


def msseg_records(
    root: Path, **options: Path | str | None
) -> tuple[list[SubjectRecord], tuple[str, ...], tuple[str, ...]]:
    """MS-SEG 2016: ``Training/Center_XX/Patient_YY/`` with a FLAIR and a consensus mask each.

    Every patient folder must hold ``Preprocessed_Data/FLAIR_preprocessed.nii.gz`` and
    ``Masks/Consensus.nii.gz``; a patient missing either, a folder in ``Training/`` that is not
    ``Center_XX``, one in a centre that is not ``Patient_YY``, and a centre without patients
    are refused, all of them in one message, so no patient drops out unnoticed. Files beside
    the folders (a README) are ignored.

    Args:
        root: the folder holding ``Training/``, or ``Training/`` itself.
        options: the other layouts' options (``labels``, ``site_column``, ``label_desc``);
            each must be None: the site is the centre folder and the labels are the patients'
            ``Masks/Consensus.nii.gz``.

    Returns:
        ``(records, notes, class_names)``: one record per patient, sorted by centre and
        patient, with subject ``Center_01_Patient_02``, site ``Center_01`` and no listed split;
        what was skipped; :data:`MSSEG_CLASSES`.

    Raises:
        ConfigError: if an option is given.
        InputError: for a root without ``Training/`` or centres, unexpected folders, centres
            without patients or patients without their FLAIR or consensus mask.
    """
    given = ["--" + name.replace("_", "-") for name, value in options.items() if value is not None]
    if given:
        raise ConfigError(
            f"{' and '.join(given)} {'does' if len(given) == 1 else 'do'} not go with --dataset "
            "msseg: the site is the Center_XX "
            f"folder and each patient's label map is its {MSSEG_LABEL}"
        )
    training, notes = _training_folder(root)
    problems: list[str] = []
    records: list[SubjectRecord] = []
    centres = _folders(training)
    strange = [c.name for c in centres if not _CENTRE.match(c.name)]
    if strange:
        problems.append(f"folder(s) in {training} that are not Center_XX: {_listed(strange)}")
    for centre in (c for c in centres if _CENTRE.match(c.name)):
        patients = _folders(centre)
        odd = [p.name for p in patients if not _PATIENT.match(p.name)]
        if odd:
            problems.append(f"folder(s) in {centre} that are not Patient_YY: {_listed(odd)}")
        kept = [p for p in patients if _PATIENT.match(p.name)]
        if not kept:
            problems.append(f"{centre} holds no Patient_YY folder")
        for patient in kept:
            image, label = patient / MSSEG_IMAGE, patient / MSSEG_LABEL
            missing = [str(p.relative_to(patient)) for p in (image, label) if not p.is_file()]
            if missing:
                problems.append(f"{patient} has no {' and no '.join(missing)}")
                continue
            subject = f"{centre.name}_{patient.name}"
            records.append(SubjectRecord(subject, centre.name, image.resolve(), label.resolve()))
    if problems:
        raise InputError(
            f"{training} does not follow the MS-SEG 2016 layout Center_XX/Patient_YY/"
            f"{{{MSSEG_IMAGE}, {MSSEG_LABEL}}}: {'; '.join(problems)}; complete or move those "
            "folders, or list the subjects in a CSV (--csv)"
        )
    if not records:
        raise InputError(f"{training}: no Center_XX/Patient_YY folder; nothing to read")
    return records, tuple(notes), MSSEG_CLASSES
