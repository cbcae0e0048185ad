"""The two-vendor retinal OCT benchmark with fluid pockets (the paper's RETOUCH setting).

Virtual eyes (:func:`~segrenorm.simulate.retina.sample_retina`: layered retina, foveal pit,
vessels, IRF/SRF/PED pockets) are rasterised on each vendor's grid
(:func:`~segrenorm.simulate.retina.rasterise`) and rendered with its contrast, optics, speckle
and compression (:func:`~segrenorm.simulate.oct_render.render_oct`; vendors "Cirrus" and
"Spectralis" modelled on the paper's Table II, ``simulate/oct_profiles/``). Training subjects are
distinct per vendor (24 each by default, unpaired, as in RETOUCH); held-out validation and test
subjects are rendered on every vendor with the same id and split (paired truth), plus a clean
render (no speckle, no noise floor: :meth:`~segrenorm.simulate.oct_vendors.OctVendor.clean`)
on every vendor. ``scale`` multiplies every vendor's voxel counts (fields of view kept): 0.5
is the CPU demo.

Output folder::

    images/<vendor>/<id>_oct.nii.gz          scans (int16)
    images/<vendor>-clean/<id>_oct.nii.gz    speckle-free renders of held-out subjects
    labels/<vendor>/<id>_fluid.nii.gz        fluid labels (0 background, 1 IRF, 2 SRF, 3 PED)
    labels/<vendor>/<id>_retina.nii.gz       true retina mask (ILM to Bruch's membrane, fluid)
    subjects.csv                             subject,site,image,label,split,clean,retina
    simulation.json                          vendors, splits, pockets per subject and class

Volumes are stored with axes (A-scan, depth, B-scan) and affine ``diag(sx, sy, sz, 1)``.

Example:
    >>> csv_path = simulate_oct("data/oct", scale=0.5)  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segrenorm._version import __version__
from segrenorm.errors import ConfigError
from segrenorm.simulate.benchmark import (
    CLEAN_SUFFIX,
    _check_out_dir,
    _derived_seed,
    _map_jobs,
    _publish,
    _save_nifti,
    _to_int16,
)
from segrenorm.simulate.flair import _check_int, _draw_subjects, _held_out_counts
from segrenorm.simulate.oct_render import render_oct
from segrenorm.simulate.oct_vendors import OctVendor, load_vendor
from segrenorm.simulate.retina import (
    FLUID_CLASSES,
    LAYER_NAMES,
    FluidSettings,
    OctGrid,
    rasterise,
    sample_retina,
)
from segrenorm.simulate.subjects import CSV_COLUMNS

__all__ = ["OCT_COLUMNS", "OCT_VENDORS", "oct_affine", "simulate_oct"]

FORMAT_VERSION = 1
#: The default vendors: the source first, the target last (the paper's Cirrus -> Spectralis).
OCT_VENDORS: tuple[str, ...] = ("Cirrus", "Spectralis")
#: The columns of an OCT ``subjects.csv``: the T1 ones and the true retina mask.
OCT_COLUMNS: tuple[str, ...] = (*CSV_COLUMNS, "retina")
# Purposes of the random streams derived from the user's seed.
_SPLIT, _EYE, _SCAN = 0, 1, 2


def oct_affine(vendor: OctVendor) -> np.ndarray:
    """The stored affine of a vendor's volumes: ``diag(sx, sy, sz, 1)``.

    Args:
        vendor: The device.

    Returns:
        float64 (4, 4) array.
    """
    return np.diag([*vendor.spacing, 1.0])


@dataclass(frozen=True)
class _Job:
    """Everything one worker needs to make one eye and render it on its vendor(s)."""

    root: Path
    subject: str
    eye_seed: int
    scans: tuple[tuple[OctVendor, int], ...]  # (vendor, speckle and noise seed)
    cleans: tuple[OctVendor, ...]  # speckle-free truths, for held-out subjects
    settings: FluidSettings


def _render_job(job: _Job) -> tuple[str, dict[str, Any]]:
    eye = sample_retina(np.random.default_rng(job.eye_seed), job.settings)
    volumes = {}
    for vendor, noise_seed in job.scans:
        grid = OctGrid(vendor.shape, vendor.spacing)
        volume = volumes[vendor.name] = rasterise(eye, grid, job.settings)
        affine = oct_affine(vendor)
        image = render_oct(volume, vendor, np.random.default_rng(noise_seed))
        name = f"{job.subject}_oct.nii.gz"
        _save_nifti(_to_int16(image), affine, job.root / "images" / vendor.name / name)
        labels = job.root / "labels" / vendor.name
        _save_nifti(volume.labels, affine, labels / f"{job.subject}_fluid.nii.gz")
        retina = volume.retina_mask().astype(np.uint8)
        _save_nifti(retina, affine, labels / f"{job.subject}_retina.nii.gz")
    for vendor in job.cleans:
        # No speckle and no noise: the generator is never drawn from.
        image = render_oct(volumes[vendor.name], vendor, np.random.default_rng(0))
        folder = job.root / "images" / f"{vendor.name}{CLEAN_SUFFIX}"
        _save_nifti(_to_int16(image), oct_affine(vendor), folder / f"{job.subject}_oct.nii.gz")
    return job.subject, eye.pockets_summary()


def _resolve_vendors(vendors: Sequence[str | Path | OctVendor], scale: float) -> list[OctVendor]:
    if isinstance(vendors, str | Path) or len(vendors) < 2:
        raise ConfigError(
            f"vendors={vendors!r}: give at least two OCT vendors, the source first and the "
            "target last (e.g. Cirrus Spectralis)"
        )
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 < scale <= 1:
        raise ConfigError(
            f"scale={scale!r} must lie in (0, 1]: 1.0 is full size, 0.5 the CPU demo; edit a "
            "vendor file for larger grids"
        )
    profiles = [load_vendor(v) for v in vendors]
    profiles = [p if scale == 1 else p.scaled(scale) for p in profiles]
    names = [p.name for p in profiles]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(
                f"vendor name {name!r} is given twice; every vendor needs its own name (it "
                "becomes a folder name)"
            )
        if f"{name}{CLEAN_SUFFIX}" in names:
            raise ConfigError(
                f"vendor {name + CLEAN_SUFFIX!r} has the name of the clean-render folder of "
                f"{name!r}; rename it"
            )
    return profiles


def simulate_oct(
    out_dir: str | Path,
    *,
    vendors: Sequence[str | Path | OctVendor] = OCT_VENDORS,
    subjects_per_vendor: int = 24,
    scale: float = 1.0,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    seed: int = 0,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
    settings: FluidSettings | None = None,
) -> Path:
    """Write the OCT fluid benchmark: scans, labels, ``subjects.csv``, ``simulation.json``.

    With ``n_train = subjects_per_vendor * len(vendors)`` training subjects, about the given
    fractions of all subjects are held out: ``round(test_fraction * N)`` test and
    ``round(val_fraction * N)`` validation subjects, ``N = n_train / (1 - test_fraction -
    val_fraction)`` (defaults: 48 training, 14 test, 7 validation subjects).

    Args:
        out_dir: Output folder; created atomically (built in a hidden sibling, then renamed).
        vendors: Two or more vendors (names ``Cirrus``, ``Spectralis``, vendor files or
            :class:`~segrenorm.simulate.oct_vendors.OctVendor`), the source first, the target
            last.
        subjects_per_vendor: Training subjects per vendor, none shared between vendors.
        scale: Voxel counts times this factor on every vendor (fields of view kept), in (0, 1].
        test_fraction: About this fraction of all subjects are test subjects (final scores),
            rendered on every vendor.
        val_fraction: About this fraction are validation subjects, also on every vendor.
        seed: Seed of subject assignment, eyes, speckle and noise; same seed, same bytes.
        workers: Worker processes rendering subjects in parallel (None: up to 4, one per core).
        overwrite: Replace an existing non-empty ``out_dir``.
        progress: Show a progress bar.
        settings: Fluid pocket counts and sizes; defaults to
            :class:`~segrenorm.simulate.retina.FluidSettings`.

    Returns:
        Path of ``subjects.csv`` in ``out_dir``.

    Raises:
        ConfigError: On an out-of-range option or an unknown vendor.
        InputError: If ``out_dir`` is not empty and ``overwrite`` is False.
    """
    _check_int("subjects_per_vendor", subjects_per_vendor, 1)
    _check_int("seed", seed, 0)
    workers = min(os.cpu_count() or 1, 4) if workers is None else workers
    _check_int("workers", workers, 1)
    profiles = _resolve_vendors(vendors, scale)
    n_train = subjects_per_vendor * len(profiles)
    n_test, n_val = _held_out_counts(n_train, test_fraction, val_fraction)
    out = Path(out_dir)
    _check_out_dir(out, overwrite)
    rng = np.random.default_rng([seed, _SPLIT])
    test, val, train, sites = _draw_subjects(
        [p.name for p in profiles], subjects_per_vendor, n_test, n_val, rng
    )
    fluid = settings or FluidSettings()

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        jobs = []
        for subject in sorted(sites):
            index = int(subject.split("-")[1])
            held_out = len(sites[subject]) > 1
            jobs.append(
                _Job(
                    tmp,
                    subject,
                    _derived_seed(seed, _EYE, index),
                    tuple(
                        (profiles[k], _derived_seed(seed, _SCAN, index, k)) for k in sites[subject]
                    ),
                    tuple(p.clean() for p in profiles) if held_out else (),
                    fluid,
                )
            )
        pockets = dict(_map_jobs(_render_job, jobs, workers, progress, "simulate oct"))
        _write_listing(tmp / "subjects.csv", profiles, sites, test, val)
        meta = _metadata(profiles, seed, scale, (test, val, train), pockets, fluid)
        (tmp / "simulation.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        _publish(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "subjects.csv"


def _write_listing(
    path: Path,
    profiles: list[OctVendor],
    sites: dict[str, list[int]],
    test: list[str],
    val: list[str],
) -> None:
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
                    "image": f"images/{name}/{subject}_oct.nii.gz",
                    "label": f"labels/{name}/{subject}_fluid.nii.gz",
                    "split": split_of.get(subject, "train"),
                    "clean": (
                        f"images/{name}{CLEAN_SUFFIX}/{subject}_oct.nii.gz" if held_out else ""
                    ),
                    "retina": f"labels/{name}/{subject}_retina.nii.gz",
                }
            )
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=OCT_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _metadata(
    profiles: list[OctVendor],
    seed: int,
    scale: float,
    splits: tuple[list[str], list[str], dict[str, list[str]]],
    pockets: dict[str, dict[str, Any]],
    settings: FluidSettings,
) -> dict[str, object]:
    test, val, train = splits
    names = [p.name for p in profiles]
    held_out = sorted(test + val)
    n_train = sum(len(v) for v in train.values())
    return {
        "format_version": FORMAT_VERSION,
        "benchmark": "oct",
        "segrenorm_version": __version__,
        "seed": seed,
        "scale": scale,
        "axes": ["A-scan (x)", "depth (y, away from the vitreous)", "B-scan (z)"],
        "labels": dict(enumerate(FLUID_CLASSES)),
        "regions": list(LAYER_NAMES),
        "vendors": [p.to_dict() for p in profiles],
        "source": names[0],
        "target": names[-1],
        "directions": [[a, b] for i, a in enumerate(names) for b in names[i + 1 :]],
        "clean": {
            "description": "held-out subjects on every vendor without speckle and noise floor",
            "folders": {n: f"images/{n}{CLEAN_SUFFIX}" for n in names},
            "subjects": held_out,
        },
        "fluid_settings": asdict(settings),
        "counts": {
            "subjects": n_train + len(held_out),
            "test": len(test),
            "val": len(val),
            "train": {n: len(train[n]) for n in names},
            "volumes": n_train + len(held_out) * len(names),
            "clean": len(held_out) * len(names),
        },
        "splits": {"test": test, "val": val, "train": train},
        "pockets": {subject: pockets[subject] for subject in sorted(pockets)},
    }
