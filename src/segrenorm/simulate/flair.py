"""The three-scanner FLAIR benchmark with MS-like lesions (the paper's MS-SEG setting).

Virtual subjects are the MNI152 anatomy under a random warp (as in
:func:`~segrenorm.simulate.benchmark.simulate_t1`), each given white-matter lesions
(:func:`~segrenorm.simulate.lesions.add_lesions`) and rendered with FLAIR contrast (CSF dark,
GM brighter than WM, lesions bright) on the scanners "SA", "SV" and "PI" modelled on the
paper's Table I (``simulate/profiles/``). Training subjects are distinct per scanner (five each
by default: no subject is scanned twice, as in MS-SEG); held-out validation and test subjects
are rendered on every scanner with the same id and split (paired truth), plus a clean render
(noise- and bias-free, :meth:`~segrenorm.simulate.scanners.ScannerProfile.clean`) on every
scanner, since every scanner but the first is a target of some direction (the paper's
SA->SV, SA->PI and SV->PI: each scanner toward the later ones of ``scanners``).

Output folder::

    images/<scanner>/<id>_FLAIR.nii.gz         the scans (int16)
    images/<scanner>-clean/<id>_FLAIR.nii.gz   clean renders of held-out subjects
    labels/<scanner>/<id>_lesions.nii.gz       binary lesion masks (0 background, 1 lesion)
    labels/<scanner>/<id>_tissue.nii.gz        tissue labels (0-3; lesions count as WM)
    labels/<scanner>/<id>_tissue-lesions.nii.gz  with ``labels="tissue+lesion"``: tissue labels
                                               with lesions as class 4 (the ``label`` column)
    subjects.csv                               subject,site,image,label,split,clean,tissue
    simulation.json                            scanners, splits, lesion statistics per subject

Example:
    >>> csv_path = simulate_flair("data/flair", subjects_per_scanner=5)  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segrenorm._version import __version__
from segrenorm.errors import ConfigError
from segrenorm.simulate.anatomy import (
    LABEL_NAMES,
    Anatomy,
    Variability,
    load_mni152_anatomy,
    tissue_labels,
    warp_anatomy,
)
from segrenorm.simulate.benchmark import (
    CLEAN_SUFFIX,
    _check_out_dir,
    _derived_seed,
    _map_jobs,
    _publish,
    _save_nifti,
    _to_int16,
)
from segrenorm.simulate.lesions import LESION_LABELS, Lesions, LesionSettings, add_lesions
from segrenorm.simulate.scanners import ScannerProfile, apply_scanner, load_scanner
from segrenorm.simulate.subjects import CSV_COLUMNS

__all__ = ["FLAIR_COLUMNS", "FLAIR_SCANNERS", "render_flair", "simulate_flair"]

FORMAT_VERSION = 1
#: The default scanners, from the weakest to the best (each a source toward later ones).
FLAIR_SCANNERS: tuple[str, ...] = ("SA", "SV", "PI")
#: The label maps the ``label`` column can name, and their class names (``prepare
#: --class-names``). "lesion" is the paper's MS-SEG setting; "tissue+lesion" gives the
#: segmentation network (and so segrenorm's conditioning) anatomy to see on lesion-free slices,
#: where a background/lesion mask is background everywhere.
FLAIR_LABEL_SETS: dict[str, tuple[str, ...]] = {
    "lesion": ("background", "lesion"),
    "tissue+lesion": (*(LABEL_NAMES[k] for k in sorted(LABEL_NAMES)), "lesion"),
}

#: The columns of a FLAIR ``subjects.csv``: the T1 ones and the tissue label map.
FLAIR_COLUMNS: tuple[str, ...] = (*CSV_COLUMNS, "tissue")
# Purposes of the random streams derived from the user's seed.
_SPLIT, _ANATOMY, _SCAN, _LESIONS = 0, 1, 2, 3


def render_flair(
    subject: Anatomy, lesions: Lesions, scanner: ScannerProfile, rng: np.random.Generator
) -> np.ndarray:
    """Render a subject with its lesions on a FLAIR scanner (lesions replace white matter).

    Args:
        subject: The subject's tissue maps.
        lesions: Its lesions, on the same grid (:func:`~segrenorm.simulate.lesions.add_lesions`).
        scanner: A profile with a ``lesion`` intensity.
        rng: Random generator for the bias field and noise.

    Returns:
        float32 image in output units.

    Raises:
        ConfigError: If the scanner has no ``lesion`` intensity.
    """
    return apply_scanner(
        subject.csf,
        subject.gm,
        subject.wm - lesions.probability,
        subject.texture,
        scanner,
        subject.zooms,
        rng,
        lesion=lesions.probability,
    )


@dataclass(frozen=True)
class _Job:
    """Everything one worker needs to make one subject and render it on its scanner(s)."""

    root: Path
    resolution: int
    subject: str
    deformation_seed: int
    lesion_seed: int
    scans: tuple[tuple[ScannerProfile, int], ...]  # (scanner, noise seed)
    cleans: tuple[ScannerProfile, ...]  # noise-free truths, for held-out subjects
    settings: LesionSettings
    labels: str  # a key of FLAIR_LABEL_SETS


def _label_file(labels: str, subject: str) -> str:
    return f"{subject}_lesions.nii.gz" if labels == "lesion" else f"{subject}_tissue-lesions.nii.gz"


def _render_job(job: _Job) -> tuple[str, dict[str, Any]]:
    subject = warp_anatomy(load_mni152_anatomy(job.resolution), job.deformation_seed)
    lesions = add_lesions(subject, np.random.default_rng(job.lesion_seed), job.settings)
    tissue = tissue_labels(subject)
    affine = subject.affine
    for scanner, noise_seed in job.scans:
        image = render_flair(subject, lesions, scanner, np.random.default_rng(noise_seed))
        site = scanner.name
        _save_nifti(
            _to_int16(image), affine, job.root / "images" / site / f"{job.subject}_FLAIR.nii.gz"
        )
        labels = job.root / "labels" / site
        _save_nifti(lesions.mask, affine, labels / f"{job.subject}_lesions.nii.gz")
        _save_nifti(tissue, affine, labels / f"{job.subject}_tissue.nii.gz")
        if job.labels == "tissue+lesion":
            lesion_class = len(FLAIR_LABEL_SETS["tissue+lesion"]) - 1
            combined = np.where(lesions.mask > 0, lesion_class, tissue).astype(tissue.dtype)
            _save_nifti(combined, affine, labels / _label_file(job.labels, job.subject))
    for scanner in job.cleans:
        # No noise and no bias field: the generator is never drawn from.
        image = render_flair(subject, lesions, scanner, np.random.default_rng(0))
        folder = job.root / "images" / f"{scanner.name}{CLEAN_SUFFIX}"
        _save_nifti(_to_int16(image), affine, folder / f"{job.subject}_FLAIR.nii.gz")
    return job.subject, lesions.summary()


def _held_out_counts(n_train: int, test_fraction: float, val_fraction: float) -> tuple[int, int]:
    """Test and validation counts that make about those fractions of all subjects."""
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError(f"test_fraction={test_fraction!r} must lie in [0, 1)")
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction={val_fraction!r} must lie in [0, 1)")
    if test_fraction + val_fraction >= 1.0:
        raise ConfigError(
            f"test_fraction={test_fraction} and val_fraction={val_fraction} add up to 1 or "
            "more, leaving no training subjects; lower them"
        )
    total = n_train / (1.0 - test_fraction - val_fraction)
    return math.floor(test_fraction * total + 0.5), math.floor(val_fraction * total + 0.5)


def _resolve_scanners(scanners: Sequence[str | Path | ScannerProfile]) -> list[ScannerProfile]:
    if isinstance(scanners, str | Path) or len(scanners) < 2:
        raise ConfigError(
            f"scanners={scanners!r}: give at least two FLAIR scanners (e.g. SA SV PI)"
        )
    profiles = [p if isinstance(p, ScannerProfile) else load_scanner(p) for p in scanners]
    names = [p.name for p in profiles]
    for profile in profiles:
        if profile.lesion is None:
            raise ConfigError(
                f"scanner {profile.name!r} has no 'lesion' intensity, so it cannot render "
                "lesions; use a FLAIR profile (SA, SV, PI) or add a 'lesion' field to the file"
            )
        if names.count(profile.name) > 1:
            raise ConfigError(
                f"scanner name {profile.name!r} is given twice; every scanner needs its own "
                "name (it becomes a folder name)"
            )
        if f"{profile.name}{CLEAN_SUFFIX}" in names:
            raise ConfigError(
                f"scanner {profile.name + CLEAN_SUFFIX!r} has the name of the clean-render "
                f"folder of {profile.name!r}; rename it"
            )
    return profiles


def _draw_subjects(
    names: Sequence[str], per_site: int, n_test: int, n_val: int, rng: np.random.Generator
) -> tuple[list[str], list[str], dict[str, list[str]], dict[str, list[int]]]:
    """Subject ids and who is scanned where: held-out subjects on every site, training ones
    on one site each (``per_site`` per site, none scanned twice).

    Args:
        names: the sites (scanners or vendors), in order.
        per_site: training subjects per site.
        n_test, n_val: held-out subjects (test, validation), rendered on every site.
        rng: the split's random stream (one permutation of all ids is drawn from it).

    Returns:
        ``(test, val, train, sites)``: the sorted test and validation ids, the sorted training
        ids per site name, and per subject id the indices of the sites that scan it.
    """
    total = per_site * len(names) + n_test + n_val
    width = max(3, len(str(total)))
    ids = [f"sub-{i:0{width}d}" for i in range(1, total + 1)]
    order = [ids[i] for i in rng.permutation(total)]
    test, val = sorted(order[:n_test]), sorted(order[n_test : n_test + n_val])
    rest = order[n_test + n_val :]
    train = {name: sorted(rest[k * per_site : (k + 1) * per_site]) for k, name in enumerate(names)}
    sites = {s: list(range(len(names))) for s in test + val}
    for k, name in enumerate(names):
        sites.update({s: [k] for s in train[name]})
    return test, val, train, sites


def _check_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name}={value!r} must be an integer >= {low}")


def simulate_flair(
    out_dir: str | Path,
    *,
    subjects_per_scanner: int = 5,
    scanners: Sequence[str | Path | ScannerProfile] = FLAIR_SCANNERS,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    resolution: int = 2,
    seed: int = 0,
    overwrite: bool = False,
    workers: int = 1,
    progress: bool = False,
    lesions: LesionSettings | None = None,
    labels: str = "lesion",
) -> Path:
    """Write the FLAIR lesion benchmark: images, masks, ``subjects.csv``, ``simulation.json``.

    With ``n_train = subjects_per_scanner * len(scanners)`` training subjects, the held-out
    counts make about the given fractions of all subjects: ``round(test_fraction * N)`` test
    and ``round(val_fraction * N)`` validation subjects, ``N = n_train / (1 - test_fraction -
    val_fraction)`` (defaults: 15 training, 4 test, 2 validation subjects).

    Args:
        out_dir: Output folder; created atomically (built in a hidden sibling, then renamed).
        subjects_per_scanner: Training subjects per scanner, none shared between scanners.
        scanners: Two or more FLAIR scanners (profiles with a ``lesion`` intensity): names
            (``SA``, ``SV``, ``PI``), profile files or profiles, from the weakest to the best.
        test_fraction: About this fraction of all subjects are test subjects (final scores),
            rendered on every scanner.
        val_fraction: About this fraction are validation subjects, also on every scanner.
        resolution: Grid spacing in mm, 1 or 2.
        seed: Seed of subject assignment, anatomy, lesions and noise; same seed, same bytes.
        overwrite: Replace an existing non-empty ``out_dir``.
        workers: Worker processes rendering subjects in parallel.
        progress: Show a progress bar.
        lesions: Lesion count, placement, volume and shape rules; defaults to
            :class:`~segrenorm.simulate.lesions.LesionSettings`.
        labels: What the ``label`` column names (:data:`FLAIR_LABEL_SETS`): ``"lesion"``
            (binary masks) or ``"tissue+lesion"`` (tissue labels with lesions as class 4).

    Returns:
        Path of ``subjects.csv`` in ``out_dir``.

    Raises:
        ConfigError: On an out-of-range option, an unknown scanner or one without lesions.
        InputError: If ``out_dir`` is not empty and ``overwrite`` is False.
    """
    _check_int("subjects_per_scanner", subjects_per_scanner, 1)
    _check_int("seed", seed, 0)
    _check_int("workers", workers, 1)
    if resolution not in (1, 2):
        raise ConfigError(f"resolution={resolution!r} is not supported; use 1 or 2 (mm)")
    if labels not in FLAIR_LABEL_SETS:
        raise ConfigError(f"labels={labels!r} is not a FLAIR label set; use one of "
                          f"{', '.join(FLAIR_LABEL_SETS)}")  # fmt: skip
    profiles = _resolve_scanners(scanners)
    n_train = subjects_per_scanner * len(profiles)
    n_test, n_val = _held_out_counts(n_train, test_fraction, val_fraction)
    out = Path(out_dir)
    _check_out_dir(out, overwrite)
    rng = np.random.default_rng([seed, _SPLIT])
    test, val, train, sites = _draw_subjects(
        [p.name for p in profiles], subjects_per_scanner, n_test, n_val, rng
    )
    settings = lesions or LesionSettings()

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        anatomy = load_mni152_anatomy(resolution)  # loaded before workers fork, so shared
        jobs = []
        for subject in sorted(sites):
            index = int(subject.split("-")[1])
            held_out = len(sites[subject]) > 1
            jobs.append(
                _Job(
                    tmp,
                    resolution,
                    subject,
                    _derived_seed(seed, _ANATOMY, index),
                    _derived_seed(seed, _LESIONS, index),
                    tuple(
                        (profiles[k], _derived_seed(seed, _SCAN, index, k)) for k in sites[subject]
                    ),
                    tuple(p.clean() for p in profiles) if held_out else (),
                    settings,
                    labels,
                )
            )
        stats = dict(_map_jobs(_render_job, jobs, workers, progress, "simulate flair"))
        split_of = {s: "test" for s in test} | {s: "val" for s in val}
        rows = []
        for k, profile in enumerate(profiles):
            name = profile.name
            for subject in sorted(s for s in sites if k in sites[s]):
                held_out = len(sites[subject]) > 1
                rows.append(
                    {
                        "subject": subject,
                        "site": name,
                        "image": f"images/{name}/{subject}_FLAIR.nii.gz",
                        "label": f"labels/{name}/{_label_file(labels, subject)}",
                        "split": split_of.get(subject, "train"),
                        "clean": (
                            f"images/{name}{CLEAN_SUFFIX}/{subject}_FLAIR.nii.gz"
                            if held_out
                            else ""
                        ),
                        "tissue": f"labels/{name}/{subject}_tissue.nii.gz",
                    }
                )
        with (tmp / "subjects.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=FLAIR_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        meta = _metadata(anatomy, profiles, seed, resolution, (test, val, train), stats, settings)
        meta["labels"] = {"set": labels, "class_names": list(FLAIR_LABEL_SETS[labels])}
        (tmp / "simulation.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
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
    splits: tuple[list[str], list[str], dict[str, list[str]]],
    stats: dict[str, dict[str, Any]],
    settings: LesionSettings,
) -> dict[str, object]:
    test, val, train = splits
    names = [p.name for p in profiles]
    held_out = sorted(test + val)
    n_train = sum(len(v) for v in train.values())
    return {
        "format_version": FORMAT_VERSION,
        "benchmark": "flair",
        "segrenorm_version": __version__,
        "template": "MNI152 2009 T1 with GM/WM probability maps and brain mask (nilearn)",
        "seed": seed,
        "grid": {
            "resolution_mm": resolution,
            "shape": list(anatomy.shape),
            "affine": anatomy.affine.tolist(),
        },
        "labels": {str(k): v for k, v in LESION_LABELS.items()},
        "tissue_labels": {str(k): v for k, v in LABEL_NAMES.items()},
        "scanners": [p.to_dict() for p in profiles],
        "directions": [[a, b] for i, a in enumerate(names) for b in names[i + 1 :]],
        "clean": {
            "description": "held-out subjects on every scanner without noise and bias field",
            "folders": {n: f"images/{n}{CLEAN_SUFFIX}" for n in names},
            "subjects": held_out,
        },
        "variability": asdict(Variability()),
        "lesion_settings": asdict(settings),
        "counts": {
            "subjects": n_train + len(held_out),
            "test": len(test),
            "val": len(val),
            "train": {n: len(train[n]) for n in names},
            "volumes": n_train + len(held_out) * len(names),
            "clean": len(held_out) * len(names),
        },
        "splits": {"test": test, "val": val, "train": train},
        "lesions": {subject: stats[subject] for subject in sorted(stats)},
    }
