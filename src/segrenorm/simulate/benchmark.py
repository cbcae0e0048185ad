"""The built-in two-scanner T1 benchmark: real anatomy, virtual subjects, known ground truth.

Anatomy comes from the MNI152 2009 T1 template and its tissue probability maps, which nilearn
ships offline. Each virtual subject is the template under a random affine plus a smooth elastic
deformation, composed into one coordinate map and applied to every tissue map in a single
interpolation pass. Each subject is then rendered on a
:class:`~segrenorm.simulate.scanners.ScannerProfile`.

Training subjects are disjoint between the two sites (unpaired, as in a real multi-site study);
held-out test subjects are rendered on both scanners with the same anatomy, so harmonized images
can be compared with their true target-scanner appearance. Each held-out subject is also
rendered on the target scanner without noise and bias field (its contrast, gamma, texture and
blur kept, :meth:`~segrenorm.simulate.scanners.ScannerProfile.clean`) into
``images/<target>-clean/``, listed in the ``clean`` column of ``subjects.csv``: a second, clean
paired truth.

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
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

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
from segrenorm.simulate.subjects import CSV_COLUMNS

__all__ = ["CLEAN_SUFFIX", "render_subject", "simulate_t1"]

JobT = TypeVar("JobT")
ResultT = TypeVar("ResultT")

FORMAT_VERSION = 1
#: The clean renders of held-out subjects go to ``images/<target><CLEAN_SUFFIX>/``.
CLEAN_SUFFIX = "-clean"
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
class _Job:
    """Everything one worker needs to render one subject on its site(s)."""

    root: Path
    resolution: int
    subject: str
    deformation_seed: int
    scans: tuple[tuple[ScannerProfile, int], ...]  # (scanner, noise seed)
    clean: ScannerProfile | None = None  # the target scanner's noise-free truth, if held out


def _plan(
    n_subjects: int, test_fraction: float, val_fraction: float, seed: int
) -> tuple[list[str], list[str], list[str], list[str], list[str]]:
    """Return (all ids, test, validation, source-training, target-training ids), each sorted.

    Test subjects are drawn first, as before validation existed, so a seed and test fraction
    keep their test subjects; validation subjects come next from the same shuffle.
    """
    width = max(3, len(str(n_subjects)))
    ids = [f"sub-{i:0{width}d}" for i in range(1, n_subjects + 1)]
    n_test = math.floor(n_subjects * test_fraction + 0.5)
    n_val = math.floor(n_subjects * val_fraction + 0.5)
    n_train = n_subjects - n_test - n_val
    if n_train == 1 or n_train < 0:
        raise ConfigError(
            f"n_subjects={n_subjects} with test_fraction={test_fraction} and "
            f"val_fraction={val_fraction} leaves {max(n_train, 0)} training subject(s), which "
            "cannot be split between two sites; add subjects or lower the fractions"
        )
    order = [ids[i] for i in np.random.default_rng(_seed_key(seed, _SPLIT)).permutation(n_subjects)]
    n_source = (n_train + 1) // 2
    test = sorted(order[:n_test])
    val = sorted(order[n_test : n_test + n_val])
    train = order[n_test + n_val :]
    return ids, test, val, sorted(train[:n_source]), sorted(train[n_source:])


def _save_nifti(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(data, affine)
    image.set_sform(affine, code="mni")
    image.set_qform(affine, code="mni")
    image.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))


def _to_int16(image: np.ndarray) -> np.ndarray:
    """Output units as stored: rounded and clipped to int16 (T1 and FLAIR benchmarks alike)."""
    return np.clip(np.rint(image), 0, np.iinfo(np.int16).max).astype(np.int16)


def _render(subject: Anatomy, scanner: ScannerProfile, seed: int) -> np.ndarray:
    image = apply_scanner(
        subject.csf,
        subject.gm,
        subject.wm,
        subject.texture,
        scanner,
        subject.zooms,
        np.random.default_rng(seed),
    )
    return _to_int16(image)


def _render_job(job: _Job) -> None:
    subject = warp_anatomy(load_mni152_anatomy(job.resolution), job.deformation_seed)
    labels = tissue_labels(subject)
    for scanner, noise_seed in job.scans:
        site = scanner.name
        _save_nifti(
            _render(subject, scanner, noise_seed),
            subject.affine,
            job.root / "images" / site / f"{job.subject}_T1w.nii.gz",
        )
        _save_nifti(
            labels, subject.affine, job.root / "labels" / site / f"{job.subject}_dseg.nii.gz"
        )
    if job.clean is not None:
        # Stored as int16 like the scans: rounding adds under 0.03 % of WM, far below any noise.
        folder = job.root / "images" / f"{job.clean.name}{CLEAN_SUFFIX}"
        _save_nifti(
            _render(subject, job.clean, 0), subject.affine, folder / f"{job.subject}_T1w.nii.gz"
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


def _map_jobs(
    render: Callable[[JobT], ResultT],
    jobs: Sequence[JobT],
    workers: int,
    progress: bool,
    desc: str,
) -> list[ResultT]:
    """``render`` over ``jobs`` in order, in ``workers`` processes (T1 and FLAIR benchmarks).

    Results do not depend on the worker count: every job carries its own seeds.
    """

    def collect(results: Iterable[ResultT]) -> list[ResultT]:
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(jobs), desc=desc, unit="subject")
        return list(results)

    if workers == 1:
        return collect(map(render, jobs))
    methods = multiprocessing.get_all_start_methods()
    # Fork shares the already-loaded template with the workers instead of reloading it.
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    processes = max(1, min(workers, len(jobs)))
    with ProcessPoolExecutor(max_workers=processes, mp_context=context) as pool:
        return collect(pool.map(render, jobs))


def simulate_t1(
    out_dir: str | Path,
    *,
    n_subjects: int = 20,
    test_fraction: float = 0.3,
    val_fraction: float = 0.15,
    resolution: int = 2,
    source: str | Path | ScannerProfile = "1.5T",
    target: str | Path | ScannerProfile = "3T",
    seed: int = 0,
    overwrite: bool = False,
    workers: int = 1,
    progress: bool = False,
) -> Path:
    """Write the two-scanner T1 benchmark: images, labels, ``subjects.csv``, ``simulation.json``.

    Held-out subjects (on both scanners) also get their clean target render in
    ``images/<target>-clean/``, listed in ``subjects.csv``'s ``clean`` column.

    Args:
        out_dir: Output folder; created atomically (built in a hidden sibling, then renamed).
        n_subjects: Number of virtual subjects.
        test_fraction: Fraction of subjects held out for the final scores, rendered on both
            scanners.
        val_fraction: Fraction of subjects held out for validation (choosing settings and
            checkpoints), also rendered on both scanners.
        resolution: Grid spacing in mm, 1 or 2.
        source: Source scanner: a name from
            :func:`~segrenorm.simulate.scanners.scanner_names` (``1.5T``, ``3T``, ``1T``,
            ``7T``), a profile file or a :class:`~segrenorm.simulate.scanners.ScannerProfile`.
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
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction={val_fraction!r} must lie in [0, 1)")
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
    clean_folder = f"{profiles[1].name}{CLEAN_SUFFIX}"
    if profiles[0].name == clean_folder:
        raise ConfigError(
            f"source scanner {profiles[0].name!r} has the name of the target's clean-render "
            "folder; rename the source scanner"
        )
    out = Path(out_dir)
    _check_out_dir(out, overwrite)
    _, test, val, train_source, train_target = _plan(n_subjects, test_fraction, val_fraction, seed)
    subject_index = {s: int(s.split("-")[1]) for s in test + val + train_source + train_target}
    sites: dict[str, list[int]] = {s: [0, 1] for s in test + val}
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
                # Every subject on both scanners is held out: it gets the clean truth too.
                profiles[1].clean() if len(sites[subject]) == 2 else None,
            )
            for subject in sorted(sites)
        ]
        _map_jobs(_render_job, jobs, workers, progress, "simulate")
        rows = []
        for k, profile in enumerate(profiles):
            for subject in sorted(s for s in sites if k in sites[s]):
                rows.append(
                    {
                        "subject": subject,
                        "site": profile.name,
                        "image": f"images/{profile.name}/{subject}_T1w.nii.gz",
                        "label": f"labels/{profile.name}/{subject}_dseg.nii.gz",
                        "split": "test"
                        if subject in test
                        else "val"
                        if subject in val
                        else "train",
                        "clean": (
                            f"images/{clean_folder}/{subject}_T1w.nii.gz"
                            if k == 1 and len(sites[subject]) == 2
                            else ""
                        ),
                    }
                )
        with (tmp / "subjects.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        (tmp / "simulation.json").write_text(
            json.dumps(
                _metadata(
                    anatomy,
                    profiles,
                    seed,
                    resolution,
                    (test, val, train_source, train_target),
                    sorted(s for s in sites if len(sites[s]) == 2),
                ),
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
    splits: tuple[list[str], list[str], list[str], list[str]],
    held_out: list[str],
) -> dict[str, object]:
    test, val, train_source, train_target = splits
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
        "clean": {
            "description": "held-out subjects on the target scanner without noise and bias field",
            "folder": f"images/{profiles[1].name}{CLEAN_SUFFIX}",
            "scanner": profiles[1].clean().to_dict(),
            "subjects": held_out,
        },
        "variability": asdict(Variability()),
        "counts": {
            "subjects": len(test) + len(val) + len(train_source) + len(train_target),
            "test": len(test),
            "val": len(val),
            "train_source": len(train_source),
            "train_target": len(train_target),
            "volumes": 2 * (len(test) + len(val)) + len(train_source) + len(train_target),
            "clean": len(held_out),
        },
        "splits": {
            "test": test,
            "val": val,
            "train": {profiles[0].name: train_source, profiles[1].name: train_target},
        },
    }
