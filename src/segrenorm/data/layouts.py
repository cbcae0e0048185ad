"""Dataset layouts: subject listings read from a public dataset's own folder structure.

``segrenorm prepare --dataset NAME ROOT`` reads the subjects, their sites and label maps from
the file naming of a known dataset instead of a CSV. Each layout is a function
``(root, *, labels, site_column, label_desc) -> LayoutListing`` registered in
:data:`DATASET_LAYOUTS`; adding a dataset is one more function and one more entry. The layouts
and their rules are in ``docs/studies.md``.

- ``ixi``: ``IXI002-Guys-0828-T1.nii.gz`` files in one folder; the site (Guys, HH, IOP) and the
  subject (``IXI002``) come from the name. Label maps from ``labels``, matched by file stem.
- ``bids``: ``sub-*/[ses-*/]anat/*_T1w.nii[.gz]``; the site from a ``participants.tsv`` column;
  labels from ``derivatives/*/sub-*/[ses-*/]anat/*_dseg.nii[.gz]`` when present (one ``desc-``
  of them with ``label_desc``).
- ``msseg``: MS-SEG 2016 FLAIR and consensus masks (:mod:`segrenorm.data.layout_msseg`).
- ``retouch``: RETOUCH OCT volumes and fluid references, the site the vendor; OCT, so
  ``prepare`` implies ``--modality oct`` (:mod:`segrenorm.data.layout_retouch`).

Example:
    >>> listing = records_from_layout("ixi", "IXI-T1", labels="IXI-labels")  # doctest: +SKIP
    >>> sorted({r.site for r in listing.records})  # doctest: +SKIP
    ['Guys', 'HH', 'IOP']
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from segrenorm.data.layout_msseg import msseg_records
from segrenorm.data.layout_retouch import retouch_records
from segrenorm.data.listing import SubjectRecord
from segrenorm.errors import ConfigError, InputError
from segrenorm.volumes.paths import find_images, image_stem

__all__ = ["DATASET_LAYOUTS", "NO_DESC", "DatasetLayout", "LayoutListing", "records_from_layout"]

#: An IXI file stem: subject, site, scan number and modality (``DTI-00`` has an index).
_IXI_NAME = re.compile(r"^(IXI\d+)-([A-Za-z]+)-(\d+)-([A-Za-z0-9]+(?:-\d+)?)$")
#: Role suffixes an IXI label file may add to its image's stem.
_IXI_LABEL_SUFFIX = re.compile(r"_(seg|dseg|labels?)$", re.IGNORECASE)
#: ``label_desc`` value that keeps the ``_dseg`` maps without a ``desc-`` entity.
NO_DESC = "none"
#: BIDS folders that hold no raw subject data.
_BIDS_NOT_RAW = ("derivatives", "sourcedata", "code")
#: ``space-`` values of a derivative label map that lie on the subject's own T1w grid.
_NATIVE_SPACES = ("orig", "T1w", "individual", "native")
_MISSING_VALUES = ("", "n/a", "na", "nan")


@dataclass(frozen=True)
class LayoutListing:
    """What a dataset layout found.

    Args:
        records: one record per subject (and session), labels where found, no listed splits.
        notes: what was skipped or left unlabelled, one line each, for the user to read.
        class_names: the label classes the dataset defines (msseg: background, lesion), or
            None to let ``prepare`` name them.
        modality: what the volumes are: ``"mri"`` or ``"oct"`` (retouch), for ``prepare`` to
            pick its recipe (``--modality``) without being told.
    """

    records: list[SubjectRecord]
    notes: tuple[str, ...] = field(default=())
    class_names: tuple[str, ...] | None = None
    modality: str = "mri"


class DatasetLayout(Protocol):
    """A layout: ``(root, *, labels, site_column, label_desc) -> LayoutListing``, refusing
    the options it does not use."""

    def __call__(
        self, root: Path, *, labels: Path | None, site_column: str | None, label_desc: str | None
    ) -> LayoutListing: ...


def records_from_layout(
    name: str,
    root: str | Path,
    *,
    labels: str | Path | None = None,
    site_column: str | None = None,
    label_desc: str | None = None,
) -> LayoutListing:
    """Read a dataset's subjects with the layout ``name`` (a key of :data:`DATASET_LAYOUTS`).

    Args:
        name: the layout, e.g. ``"ixi"`` or ``"bids"``.
        root: the dataset's top folder.
        labels: the folder of label maps (ixi), or one derivatives pipeline folder (bids).
        site_column: the ``participants.tsv`` column holding the site (bids; default ``site``).
        label_desc: keep only the label maps with this ``desc-`` entity (bids; :data:`NO_DESC`
            for those without one), for a pipeline that writes several (fMRIPrep's
            ``desc-aseg`` and ``desc-aparcaseg``).

    Raises:
        ConfigError: for an unknown layout or an option the layout does not take.
        InputError: for a missing folder or a dataset that does not follow the layout.
    """
    layout = DATASET_LAYOUTS.get(name)
    if layout is None:
        raise ConfigError(
            f"dataset layout {name!r} is unknown; known layouts: {', '.join(DATASET_LAYOUTS)}"
        )
    top = Path(root).expanduser()
    if not top.is_dir():
        raise InputError(f"{top}: no such folder; give the {name} dataset's top folder")
    label_dir = None if labels is None else Path(labels).expanduser()
    if label_dir is not None and not label_dir.is_dir():
        raise InputError(f"{label_dir}: no such folder; --labels takes the folder of label maps")
    return layout(top, labels=label_dir, site_column=site_column, label_desc=label_desc)


def _listed(items: Sequence[object], limit: int = 20) -> str:
    """``a, b, c`` with at most ``limit`` items named, then how many more."""
    named = ", ".join(str(item) for item in items[:limit])
    return named + (f" and {len(items) - limit} more" if len(items) > limit else "")


def ixi_layout(
    root: Path, *, labels: Path | None, site_column: str | None, label_desc: str | None
) -> LayoutListing:
    """IXI: T1 volumes named ``IXI<nnn>-<site>-<scan>-T1.nii.gz`` in one folder.

    The subject id is ``IXI<nnn>`` and the site the name's second part (Guys, HH, IOP). Files of
    other IXI modalities (T2, PD, MRA, DTI) are skipped and counted in the notes; any other
    image file in the folder is refused, all of them in one message, so no subject is dropped
    unnoticed. A label map in ``labels`` pairs with the image whose stem it repeats, with an
    optional ``_seg``/``_dseg``/``_label``/``_labels`` suffix (``IXI002-Guys-0828-T1_seg.nii.gz``);
    images without one get no label map (see ``--auto-labels``).

    Args:
        root: the folder of IXI volumes (not searched recursively).
        labels: the folder of label maps, or None.
        site_column: must be None (the site is in the file name).
        label_desc: must be None (IXI label maps are matched by stem).

    Raises:
        ConfigError: if ``site_column`` or ``label_desc`` is given.
        InputError: for image files that do not follow the IXI naming, no T1 volume, or two
            label maps for one image.
    """
    if site_column is not None:
        raise ConfigError("--site-column is for the bids layout; ixi reads the site from names")
    if label_desc is not None:
        raise ConfigError("--label-desc is for the bids layout; ixi pairs labels by file stem")
    label_files = _ixi_labels(labels, root) if labels is not None else {}
    taken = {path for paths in label_files.values() for path in paths}
    bad: list[str] = []
    other: Counter[str] = Counter()
    records: list[SubjectRecord] = []
    for image in find_images([root]):
        if image.resolve() in taken:
            continue  # labels kept beside their images
        match = _IXI_NAME.match(image_stem(image))
        if match is None:
            bad.append(image.name)
            continue
        subject, site, _, modality = match.groups()
        if modality != "T1":
            other[modality.split("-")[0]] += 1
            continue
        found = label_files.get(image_stem(image), [])
        if len(found) > 1:
            raise InputError(
                f"{image}: several label maps match it ({_listed([p.name for p in found])}); "
                "keep one per image in the labels folder"
            )
        records.append(SubjectRecord(subject, site, image.resolve(), found[0] if found else None))
    if bad:
        maps = [n for n in bad if _IXI_NAME.match(_IXI_LABEL_SUFFIX.sub("", image_stem(n)))]
        hint = f"; {len(maps)} of them look like label maps: pass --labels {root}" if maps else ""
        raise InputError(
            f"{root}: {len(bad)} image file(s) do not follow the IXI naming "
            f"IXI<nnn>-<site>-<scan>-<modality>.nii.gz: {_listed(bad)}; move them out of the "
            f"folder or list the subjects in a CSV (--csv){hint}"
        )
    if not records:
        raise InputError(
            f"{root}: no IXI T1 volume (IXI<nnn>-<site>-<scan>-T1.nii.gz); the ixi layout "
            "reads T1 volumes only"
        )
    notes = []
    if other:
        counts = ", ".join(f"{m} {n}" for m, n in sorted(other.items()))
        notes.append(f"skipped {sum(other.values())} non-T1 IXI file(s) ({counts})")
    if labels is not None:
        unlabelled = [r.subject for r in records if r.label is None]
        if unlabelled:
            notes.append(
                f"{len(unlabelled)} of {len(records)} T1 volume(s) have no label map in "
                f"{labels}: {_listed(unlabelled, 10)}"
            )
        unmatched = sorted(set(label_files) - {image_stem(r.image) for r in records})
        if unmatched:
            notes.append(f"{len(unmatched)} label map(s) match no T1 volume: {_listed(unmatched)}")
    return LayoutListing(records, tuple(notes))


def _ixi_labels(folder: Path, root: Path) -> dict[str, list[Path]]:
    """Label maps of ``folder`` by the image stem they name (in the image folder itself, only
    the files with a role suffix are label maps)."""
    beside = folder.resolve() == root.resolve()
    found: dict[str, list[Path]] = {}
    for path in find_images([folder]):
        stem = _IXI_LABEL_SUFFIX.sub("", image_stem(path))
        if not (beside and stem == image_stem(path)):
            found.setdefault(stem, []).append(path.resolve())
    return found


def _entities(stem: str) -> tuple[dict[str, str], str]:
    """BIDS entities and suffix of a file stem: ``sub-01_run-2_T1w`` -> ({sub, run}, T1w)."""
    *pairs, suffix = stem.split("_")
    entities = dict(part.split("-", 1) for part in pairs if "-" in part)
    return entities, suffix


def _bids_files(top: Path, suffix: str, skip: Sequence[str] = ()) -> list[Path]:
    """Every ``*_<suffix>.nii[.gz]`` below ``top``, outside hidden folders and ``skip``."""
    found = []
    for folder, dirs, files in os.walk(top):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in skip)
        found += [
            Path(folder) / name
            for name in sorted(files)
            if name.endswith((f"_{suffix}.nii", f"_{suffix}.nii.gz")) and not name.startswith(".")
        ]
    return found


def _bids_place(path: Path, top: Path) -> tuple[str, str | None, str | None] | None:
    """(sub, ses, run) of a file at ``sub-*/[ses-*/]anat/``, None if it lies elsewhere."""
    parts = path.relative_to(top).parts
    entities, _ = _entities(image_stem(path))
    if len(parts) not in (3, 4) or parts[-2] != "anat" or not parts[0].startswith("sub-"):
        return None
    session = parts[1] if len(parts) == 4 else None
    if session is not None and not session.startswith("ses-"):
        return None
    if f"sub-{entities.get('sub')}" != parts[0] or (
        entities.get("ses") != (None if session is None else session[4:])
    ):
        return None
    return parts[0], session, entities.get("run")


def bids_layout(
    root: Path, *, labels: Path | None, site_column: str | None, label_desc: str | None
) -> LayoutListing:
    """BIDS: ``sub-*/[ses-*/]anat/*_T1w.nii[.gz]``, the site in ``participants.tsv``.

    The subject id is ``sub-01``, or ``sub-01_ses-02`` for a file in a session folder; one T1w
    volume per subject and session (several runs are refused: list the one to use in a CSV).
    Label maps are the ``*_dseg.nii[.gz]`` of ``derivatives/*/`` (or of the one pipeline folder
    ``labels``) at ``sub-*/[ses-*/]anat/``, matched by the entities sub, ses and run; a map in
    a ``space-`` other than the subject's own (orig, T1w, individual, native) is not used.
    The site is per participant: every session of ``sub-01`` is at the site of its
    ``participants.tsv`` row, and all of them get one split and fold (their records share the
    group ``sub-01``).

    Args:
        root: the dataset's top folder (holding ``participants.tsv``).
        labels: one derivatives pipeline folder to take label maps from, or None for all.
        site_column: the ``participants.tsv`` column of the site; None for ``site``.
        label_desc: keep only the ``_dseg`` maps with this ``desc-`` entity (:data:`NO_DESC`:
            those without one); None for every map.

    Raises:
        InputError: for no participants.tsv, a missing column (listing the columns it has), a
            subject missing from it or with an empty site, a T1w file outside the pattern,
            several T1w volumes of one subject and session, or several label maps of one.
    """
    column = site_column or "site"
    sites = _bids_sites(root / "participants.tsv", column)
    images = _bids_files(root, "T1w", _BIDS_NOT_RAW)
    placed = {path: _bids_place(path, root) for path in images}
    outside = [str(p.relative_to(root)) for p, where in placed.items() if where is None]
    if outside:
        raise InputError(
            f"{root}: {len(outside)} T1w file(s) lie outside sub-*/[ses-*/]anat/ or name "
            f"another subject or session than their folders: {_listed(outside)}; move or "
            "rename them, or list the subjects in a CSV (--csv)"
        )
    if not images:
        raise InputError(f"{root}: no sub-*/[ses-*/]anat/*_T1w.nii[.gz] volume")
    ids: dict[str, list[Path]] = {}
    for path, where in placed.items():
        assert where is not None
        ids.setdefault(where[0] if where[1] is None else f"{where[0]}_{where[1]}", []).append(path)
    several = [f"{sid} ({_listed([p.name for p in ps])})" for sid, ps in ids.items() if len(ps) > 1]
    if several:
        raise InputError(
            f"{root}: several T1w volumes for one subject and session: {'; '.join(several)}; "
            "the bids layout takes one per session: list the ones to use in a CSV (--csv)"
        )
    subjects = sorted({where[0] for where in placed.values() if where is not None})
    absent = [s for s in subjects if s not in sites]
    empty = [s for s in subjects if s in sites and sites[s].lower() in _MISSING_VALUES]
    problems = [f"no row for {_listed(absent)}"] if absent else []
    problems += [f"an empty {column!r} value for {_listed(empty)}"] if empty else []
    if problems:
        raise InputError(
            f"{root / 'participants.tsv'}: {'; '.join(problems)}; give every subject with a T1w "
            f"volume its site in the {column!r} column"
        )
    found, skipped = _bids_labels(root, labels, label_desc)
    records, notes = [], []
    for sid, (path,) in sorted(ids.items()):
        where = placed[path]
        assert where is not None
        matches = found.get(where, [])
        if len(matches) > 1:
            raise InputError(
                f"{path}: several label maps match it ({_listed([str(p) for p in matches])}); "
                "pick one derivatives pipeline with --labels ROOT/derivatives/PIPELINE, or one "
                f"kind of map with --label-desc DESC (here: {_descs(matches)})"
            )
        label = matches[0] if matches else None
        records.append(SubjectRecord(sid, sites[where[0]], path.resolve(), label, group=where[0]))
    unlabelled = sum(r.label is None for r in records)
    if unlabelled and (found or labels is not None or label_desc is not None):
        notes.append(f"{unlabelled} of {len(records)} T1w volume(s) have no _dseg label map")
    if skipped:
        notes.append(f"skipped {skipped} _dseg map(s) in a template space (space-...)")
    return LayoutListing(records, tuple(notes))


def _bids_sites(tsv: Path, column: str) -> dict[str, str]:
    """``participant_id`` (with its ``sub-`` prefix) -> value of ``column``."""
    if not tsv.is_file():
        raise InputError(
            f"{tsv} does not exist; the bids layout reads each subject's site from its "
            f"{column!r} column (--site-column): add the file or list the subjects in a CSV"
        )
    with tsv.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in ("participant_id", column) if c not in columns]
        if missing:
            raise InputError(
                f"{tsv}: no column {', '.join(repr(c) for c in missing)}; it has the columns "
                f"{', '.join(columns) or '(none)'}; choose the site column with --site-column"
            )
        rows = [(reader.line_num, row) for row in reader]
    long = [str(line) for line, row in rows if None in row]
    if long:
        raise InputError(
            f"{tsv}: line(s) {_listed(long)} have more fields than the header ({len(columns)} "
            "columns); remove the extra tabs or name the extra columns in the header"
        )
    sites: dict[str, str] = {}
    first: dict[str, int] = {}
    twice: list[str] = []
    for line, row in rows:
        values = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        pid = "sub-" + values["participant_id"].removeprefix("sub-")
        if first.setdefault(pid, line) != line:
            twice.append(f"{pid} (lines {first[pid]} and {line})")
        sites[pid] = values[column]
    if twice:
        raise InputError(
            f"{tsv}: participant_id listed more than once: {_listed(twice)}; keep one row per "
            "participant (its site holds for all of its sessions)"
        )
    return sites


def _descs(maps: Sequence[Path]) -> str:
    """The distinct ``desc-`` values of label maps, ``none`` for a map without one."""
    values = {_entities(image_stem(path))[0].get("desc", NO_DESC) for path in maps}
    return ", ".join(sorted(values))


def _bids_labels(
    root: Path, labels: Path | None, label_desc: str | None
) -> tuple[dict[tuple[str, str | None, str | None], list[Path]], int]:
    """Native-space ``_dseg`` maps (of the ``desc-`` asked for) by (sub, ses, run), and how
    many were in another space."""
    pipelines = (
        [labels]
        if labels is not None
        else sorted(p for p in (root / "derivatives").glob("*") if p.is_dir())
    )
    found: dict[tuple[str, str | None, str | None], list[Path]] = {}
    skipped = 0
    for pipeline in pipelines:
        for path in _bids_files(pipeline, "dseg"):
            where = _bids_place(path, pipeline)
            if where is None:
                continue
            entities = _entities(image_stem(path))[0]
            if label_desc is not None and entities.get("desc", NO_DESC) != label_desc:
                continue
            space = entities.get("space")
            if space is not None and space not in _NATIVE_SPACES:
                skipped += 1
                continue
            found.setdefault(where, []).append(path.resolve())
    return found, skipped


def msseg_layout(root: Path, **options: Path | str | None) -> LayoutListing:
    """MS-SEG 2016 (``Training/Center_XX/Patient_YY/``): see :mod:`segrenorm.data.layout_msseg`."""
    return LayoutListing(*msseg_records(root, **options))


def retouch_layout(root: Path, **options: Path | str | None) -> LayoutListing:
    """RETOUCH (``RETOUCH-TrainingSet-<vendor>/TRAINxxx/``), OCT: see
    :mod:`segrenorm.data.layout_retouch`."""
    return LayoutListing(*retouch_records(root, **options), modality="oct")


#: Every dataset layout by name.
DATASET_LAYOUTS: dict[str, DatasetLayout] = {
    "ixi": ixi_layout,
    "bids": bids_layout,
    "msseg": msseg_layout,
    "retouch": retouch_layout,
}
