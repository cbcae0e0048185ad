"""The built-in two-scanner T1 benchmark: real anatomy, virtual subjects, known ground truth.

Anatomy comes from the MNI152 2009 T1 template and its tissue probability maps, which nilearn
ships offline. Each virtual subject is the template under a random affine plus a smooth elastic
deformation, composed into one coordinate map and applied to every tissue map in a single
interpolation pass. Each subject is then rendered on a
:class:`~segrenorm.simulate.scanners.ScannerProfile`.

Training subjects are disjoint between the two sites (unpaired, as in a real multi-site study);
held-out test subjects are rendered on both scanners with the same anatomy, so harmonized images
can be compared with their true target-scanner appearance.

Example:
    >>> csv_path = simulate_t1("data/t1", n_subjects=20, seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from segrenorm._version import __version__
from segrenorm.atomic import replace_dir
from segrenorm.errors import ConfigError, InputError
from segrenorm.simulate.anatomy import (
    LABEL_NAMES,
    Anatomy,
    Variability,
    load_mni152_anatomy,
    tissue_labels,
    warp_anatomy,
)
from segrenorm.simulate.scanners import ScannerProfile, apply_scanner, load_scanner

__all__ = [
    "CSV_COLUMNS",
    "SubjectEntry",
    "read_subjects",
    "render_subject",
    "simulate_t1",
]

CSV_COLUMNS = ("subject", "site", "image", "label", "split")
FORMAT_VERSION = 1
# Purposes of the random streams derived from the user's seed.
_SPLIT, _ANATOMY, _SCAN = 0, 1, 2


def render_subject(
    anatomy: Anatomy, deformation_seed: int, scanner: ScannerProfile, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Warp the template into one virtual subject and render it on one scanner.

    Args:
        anatomy: The template anatomy (e.g. :func:`load_mni152_anatomy`, or a crop of it).
        deformation_seed: Identifies the subject: equal seeds give identical anatomy/labels.
        scanner: The scanner profile to render with.
        rng: Random generator for the scanner's bias field and noise.

    Returns:
        ``(image, labels)``: float32 image in output units and uint8 labels, both (X, Y, Z).
    """
    subject = warp_anatomy(anatomy, deformation_seed)
    image = apply_scanner(
        subject.csf, subject.gm, subject.wm, subject.texture, scanner, subject.zooms, rng
    )
    return image, tissue_labels(subject)


@dataclass(frozen=True)
class SubjectEntry:
    """One row of ``subjects.csv``, with paths resolved against the csv folder.

    Args:
        subject: Subject id, e.g. ``"sub-003"``.
        site: Scanner/site name.
        image: Path of the T1w image.
        label: Path of the tissue label map.
        split: ``"train"`` or ``"test"``.
    """

    subject: str
    site: str
    image: Path
    label: Path
    split: str


def read_subjects(csv_path: str | Path) -> list[SubjectEntry]:
    """Read a ``subjects.csv`` listing as written by :func:`simulate_t1`.

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
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(
                f"{path}: missing column(s) {', '.join(missing)}; expected {','.join(CSV_COLUMNS)}"
            )
        rows = list(reader)
    entries = []
    for line, row in enumerate(rows, start=2):
        if row["split"] not in ("train", "test"):
            raise InputError(f"{path}, line {line}: split {row['split']!r} is not train or test")
        entries.append(
            SubjectEntry(
                row["subject"],
                row["site"],
                path.parent / row["image"],
                path.parent / row["label"],
                row["split"],
            )
        )
    return entries


@dataclass(frozen=True)
class _Job:
    """Everything one worker needs to render one subject on its site(s)."""

    root: Path
    resolution: int
    subject: str
    deformation_seed: int
    scans: tuple[tuple[ScannerProfile, int], ...]  # (scanner, noise seed)


def _plan(
    n_subjects: int, test_fraction: float, seed: int
) -> tuple[list[str], list[str], list[str], list[str]]:
    """Return (all ids, test ids, source-training ids, target-training ids), each sorted."""
    width = max(3, len(str(n_subjects)))
    ids = [f"sub-{i:0{width}d}" for i in range(1, n_subjects + 1)]
    n_test = math.floor(n_subjects * test_fraction + 0.5)
    n_train = n_subjects - n_test
    if n_train == 1:
        raise ConfigError(
            f"n_subjects={n_subjects} with test_fraction={test_fraction} leaves one training "
            "subject, which cannot be split between two sites; add subjects or change the fraction"
        )
    order = [ids[i] for i in np.random.default_rng(_seed_key(seed, _SPLIT)).permutation(n_subjects)]
    n_source = (n_train + 1) // 2
    test = sorted(order[:n_test])
    train_source = sorted(order[n_test : n_test + n_source])
    train_target = sorted(order[n_test + n_source :])
    return ids, test, train_source, train_target


def _save_nifti(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(data, affine)
    image.set_sform(affine, code="mni")
    image.set_qform(affine, code="mni")
    image.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))


def _render_job(job: _Job) -> None:
    subject = warp_anatomy(load_mni152_anatomy(job.resolution), job.deformation_seed)
    labels = tissue_labels(subject)
    for scanner, noise_seed in job.scans:
        image = apply_scanner(
            subject.csf,
            subject.gm,
            subject.wm,
            subject.texture,
            scanner,
            subject.zooms,
            np.random.default_rng(noise_seed),
        )
        stored = np.clip(np.rint(image), 0, np.iinfo(np.int16).max).astype(np.int16)
        site = scanner.name
        _save_nifti(
            stored, subject.affine, job.root / "images" / site / f"{job.subject}_T1w.nii.gz"
        )
        _save_nifti(
            labels, subject.affine, job.root / "labels" / site / f"{job.subject}_dseg.nii.gz"
        )


def _seed_key(seed: int, purpose: int, *index: int) -> list[int]:
    # Every random stream gets its own key, so subjects do not depend on worker order and
    # adding a subject or a site never changes the others.
    return [seed, purpose, *index]


def _derived_seed(seed: int, purpose: int, *index: int) -> int:
    return int(np.random.SeedSequence(_seed_key(seed, purpose, *index)).generate_state(1)[0])


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder; choose another output folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(
            f"{out}: output folder is not empty; pass overwrite=True (--overwrite) "
            "or choose another folder"
        )


def _publish(tmp: Path, out: Path, overwrite: bool) -> None:
    # Re-check: another process may have filled the folder while we rendered.
    _check_out_dir(out, overwrite)
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700; give the result normal permissions
    replace_dir(tmp, out)


def _run_jobs(jobs: list[_Job], workers: int, progress: bool) -> None:
    results: Iterable[None]
    if workers == 1:
        results = map(_render_job, jobs)
        _drain(results, len(jobs), progress)
        return
    methods = multiprocessing.get_all_start_methods()
    # Fork shares the already-loaded template with the workers instead of reloading it.
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        _drain(pool.map(_render_job, jobs), len(jobs), progress)


def _drain(results: Iterable[None], total: int, progress: bool) -> None:
    if progress:
        from tqdm import tqdm

        results = tqdm(results, total=total, desc="simulate", unit="subject")
    for _ in results:
        pass


def simulate_t1(
    out_dir: str | Path,
    *,
    n_subjects: int = 20,
    test_fraction: float = 0.3,
    resolution: int = 2,
    source: str | Path | ScannerProfile = "1.5T",
    target: str | Path | ScannerProfile = "3T",
    seed: int = 0,
    overwrite: bool = False,
    workers: int = 1,
    progress: bool = False,
) -> Path:
    """Write the two-scanner T1 benchmark: images, labels, ``subjects.csv``, ``simulation.json``.

    Args:
        out_dir: Output folder; created atomically (built in a hidden sibling, then renamed).
        n_subjects: Number of virtual subjects.
        test_fraction: Fraction of subjects held out and rendered on both scanners.
        resolution: Grid spacing in mm, 1 or 2.
        source: Source scanner: a name in :data:`~segrenorm.simulate.scanners.SCANNERS`, a
            profile file or a :class:`~segrenorm.simulate.scanners.ScannerProfile`.
        target: Target scanner, as ``source``.
        seed: Seed of subject assignment, anatomy and scanner noise; same seed, same bytes.
        overwrite: Replace an existing non-empty ``out_dir``.
        workers: Worker processes rendering subjects in parallel.
        progress: Show a progress bar.

    Returns:
        Path of ``subjects.csv`` in ``out_dir``.

    Raises:
        ConfigError: On an out-of-range option or unknown scanner.
        InputError: If ``out_dir`` is not empty and ``overwrite`` is False.
    """
    if isinstance(n_subjects, bool) or not isinstance(n_subjects, int) or n_subjects < 1:
        raise ConfigError(f"n_subjects={n_subjects!r} must be a positive integer")
    if not 0.0 <= test_fraction <= 1.0:
        raise ConfigError(f"test_fraction={test_fraction!r} must lie in [0, 1]")
    if resolution not in (1, 2):
        raise ConfigError(f"resolution={resolution!r} is not supported; use 1 or 2 (mm)")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed={seed!r} must be a non-negative integer")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers={workers!r} must be a positive integer")
    profiles = [p if isinstance(p, ScannerProfile) else load_scanner(p) for p in (source, target)]
    if profiles[0].name == profiles[1].name:
        raise ConfigError(
            f"source and target scanners are both named {profiles[0].name!r}; "
            "give them different names (they become folder names)"
        )
    out = Path(out_dir)
    _check_out_dir(out, overwrite)
    _, test, train_source, train_target = _plan(n_subjects, test_fraction, seed)
    subject_index = {s: int(s.split("-")[1]) for s in test + train_source + train_target}
    sites: dict[str, list[int]] = {s: [0, 1] for s in test}
    sites.update({s: [0] for s in train_source})
    sites.update({s: [1] for s in train_target})

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        anatomy = load_mni152_anatomy(resolution)  # loaded before workers fork, so shared
        jobs = [
            _Job(
                tmp,
                resolution,
                subject,
                _derived_seed(seed, _ANATOMY, subject_index[subject]),
                tuple(
                    (profiles[k], _derived_seed(seed, _SCAN, subject_index[subject], k))
                    for k in sites[subject]
                ),
            )
            for subject in sorted(sites)
        ]
        _run_jobs(jobs, workers, progress)
        rows = []
        for k, profile in enumerate(profiles):
            for subject in sorted(s for s in sites if k in sites[s]):
                rows.append(
                    {
                        "subject": subject,
                        "site": profile.name,
                        "image": f"images/{profile.name}/{subject}_T1w.nii.gz",
                        "label": f"labels/{profile.name}/{subject}_dseg.nii.gz",
                        "split": "test" if subject in test else "train",
                    }
                )
        with (tmp / "subjects.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        (tmp / "simulation.json").write_text(
            json.dumps(
                _metadata(anatomy, profiles, seed, resolution, test, train_source, train_target),
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )
        _publish(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "subjects.csv"


def _metadata(
    anatomy: Anatomy,
    profiles: list[ScannerProfile],
    seed: int,
    resolution: int,
    test: list[str],
    train_source: list[str],
    train_target: list[str],
) -> dict[str, object]:
    return {
        "format_version": FORMAT_VERSION,
        "benchmark": "t1",
        "segrenorm_version": __version__,
        "template": "MNI152 2009 T1 with GM/WM probability maps and brain mask (nilearn)",
        "seed": seed,
        "grid": {
            "resolution_mm": resolution,
            "shape": list(anatomy.shape),
            "affine": anatomy.affine.tolist(),
        },
        "labels": {str(k): v for k, v in LABEL_NAMES.items()},
        "source": profiles[0].to_dict(),
        "target": profiles[1].to_dict(),
        "variability": asdict(Variability()),
        "counts": {
            "subjects": len(test) + len(train_source) + len(train_target),
            "test": len(test),
            "train_source": len(train_source),
            "train_target": len(train_target),
            "volumes": 2 * len(test) + len(train_source) + len(train_target),
        },
        "splits": {
            "test": test,
            "train": {profiles[0].name: train_source, profiles[1].name: train_target},
        },
    }
