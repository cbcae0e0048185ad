"""Figures for inspecting data: PNG files rendered with matplotlib's Agg backend.

:func:`preview_subject` shows one held-out simulated subject on both scanners and its labels:
one row per scanner, the clean target render where the simulation wrote one, then a label
overlay row; columns axial / coronal / sagittal mid slices. On a ``simulate flair`` folder it
shows every scanner, the clean render on the last (best) one and the lesion mask in red.

On a ``simulate oct`` folder it shows the central B-scan (through the fovea) of the subject on
every vendor beside its clean render, the fluid pockets outlined per class
(:func:`segrenorm.simulate.preview_oct.save_oct_preview`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from segrenorm.atomic import atomic_file
from segrenorm.errors import InputError
from segrenorm.simulate.anatomy import LABEL_NAMES
from segrenorm.simulate.preview_oct import OctView, save_oct_preview
from segrenorm.simulate.subjects import SubjectEntry, read_subjects

__all__ = ["preview_subject", "save_subject_preview"]

# Transparent background, then CSF / GM / WM.
_LABEL_COLOURS = ("#00000000", "#3b75af", "#ef8636", "#f5e15a")
# Transparent background, then lesion.
_LESION_COLOURS = ("#00000000", "#e8283c")
_VIEWS = ("axial", "coronal", "sagittal")
_OCT_SUFFIX = "_oct.nii.gz"


def _load_nifti(path: Path) -> nib.Nifti1Image:
    if not path.is_file():
        raise InputError(f"{path}: listed in subjects.csv but missing; re-run the simulation")
    image = nib.load(str(path))
    if not isinstance(image, nib.Nifti1Image):
        raise InputError(f"{path}: not a NIfTI-1 volume; expected a .nii/.nii.gz file")
    return image


def _mid_slices(volume: np.ndarray, centre: Sequence[int]) -> list[np.ndarray]:
    # Arrays are RAS+: transpose so rows run inferior->superior / posterior->anterior.
    x, y, z = centre
    return [volume[:, :, z].T, volume[:, y, :].T, volume[x, :, :].T]


def _aspects(zooms: Sequence[float]) -> list[float]:
    zx, zy, zz = zooms
    return [zy / zx, zz / zx, zz / zy]


def save_subject_preview(
    rows: Sequence[tuple[str, np.ndarray]],
    labels: np.ndarray,
    out_png: str | Path,
    *,
    zooms: Sequence[float] = (1.0, 1.0, 1.0),
    title: str = "",
    lesions: bool = False,
) -> Path:
    """Write a grid of mid slices: one row per image, then the labels over the last image.

    Args:
        rows: ``(row title, volume)`` pairs, volumes (X, Y, Z) in RAS+ voxel order.
        labels: Integer label map (X, Y, Z) with values in :data:`LABEL_NAMES`.
        out_png: Output PNG path; written atomically.
        zooms: Voxel size in mm, for correct aspect ratios.
        title: Figure title.
        lesions: The labels are a binary lesion mask (0 background, 1 lesion), not tissues.

    Returns:
        The PNG path.

    Raises:
        InputError: If no rows are given or a volume's shape differs from the labels'.
    """
    if not rows:
        raise InputError("preview: no image rows given; pass at least one (title, volume) pair")
    for name, volume in rows:
        if volume.shape != labels.shape:
            raise InputError(
                f"preview: image {name!r} has shape {volume.shape} but labels have "
                f"{labels.shape}; images and labels must share one grid"
            )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    brain = labels > 0
    if lesions and brain.any():  # centre on the largest lesion, window on lesion intensities
        from scipy import ndimage

        parts, _ = ndimage.label(brain)
        brain = parts == int(np.bincount(parts.ravel())[1:].argmax()) + 1
    centre = (
        [round(float(c.mean())) for c in np.nonzero(brain)]
        if brain.any()
        else [n // 2 for n in labels.shape]
    )
    aspects = _aspects(zooms)
    fig, axes = plt.subplots(len(rows) + 1, 3, figsize=(9.5, 3.2 * (len(rows) + 1)), squeeze=False)
    for r, (name, volume) in enumerate(rows):
        # Each scanner in its own window, as a radiologist would view it.
        vmax = float(np.percentile(volume[brain] if brain.any() else volume, 99.5))
        for c, sl in enumerate(_mid_slices(volume, centre)):
            axes[r, c].imshow(sl, cmap="gray", origin="lower", vmin=0, vmax=vmax, aspect=aspects[c])
        axes[r, 0].set_ylabel(name, fontsize=11)
    label_name, under = rows[-1]
    vmax = float(np.percentile(under[brain] if brain.any() else under, 99.5))
    colours = _LESION_COLOURS if lesions else _LABEL_COLOURS
    cmap = ListedColormap(colours)
    for c, (sl, lab) in enumerate(
        zip(_mid_slices(under, centre), _mid_slices(labels, centre), strict=True)
    ):
        axis = axes[-1, c]
        axis.imshow(sl, cmap="gray", origin="lower", vmin=0, vmax=vmax, aspect=aspects[c])
        axis.imshow(
            np.ma.masked_equal(lab, 0),
            cmap=cmap,
            vmin=0,
            vmax=len(colours) - 1,
            origin="lower",
            alpha=0.45,
            interpolation="nearest",
            aspect=aspects[c],
        )
    axes[-1, 0].set_ylabel(f"labels on {label_name}", fontsize=11)
    for c, view in enumerate(_VIEWS):
        axes[0, c].set_title(view)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    names = {1: "lesion"} if lesions else {k: LABEL_NAMES[k] for k in (1, 2, 3)}
    handles = [Patch(color=colours[k], label=name) for k, name in names.items()]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_file(out) as handle:
            fig.savefig(handle, format="png", dpi=110)
    finally:
        plt.close(fig)
    return out


def preview_subject(
    data_dir: str | Path, out_png: str | Path, *, subject: str | None = None
) -> Path:
    """Render one held-out subject of a simulated benchmark on both scanners, with labels.

    Args:
        data_dir: Folder written by :func:`segrenorm.simulate.benchmark.simulate_t1`, by
            ``simulate flair`` or by ``simulate oct`` (then: ``save_oct_preview``).
        out_png: Output PNG path.
        subject: Test subject id (e.g. ``"sub-004"``); default: the first test subject.

    Returns:
        The PNG path.

    Raises:
        InputError: If the folder has no listing, no test subject on both sites (every vendor,
            for OCT), or the requested subject is not one of them.
    """
    root = Path(data_dir)
    entries = read_subjects(root / "subjects.csv")
    sites = list(dict.fromkeys(e.site for e in entries))
    meta_path = root / "simulation.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    if _is_oct(meta, entries):
        return _preview_oct(root, entries, meta, out_png, subject)
    flair = meta.get("benchmark") == "flair"  # every scanner, from the weakest to the best
    if meta:
        sites = (
            [s["name"] for s in meta["scanners"]]
            if flair
            else [meta["source"]["name"], meta["target"]["name"]]
        )
    if len(sites) != 2 and not (flair and len(sites) > 2):
        raise InputError(
            f"{root / 'subjects.csv'}: lists {len(sites)} site(s) ({', '.join(sites)}); "
            "a preview needs exactly a source and a target site"
        )
    chosen, tests = _chosen_subject(root, entries, sites, subject)
    rows = []
    for site in sites:
        entry = tests[(chosen, site)]
        image = _load_nifti(entry.image)
        rows.append((site, np.asarray(image.get_fdata(dtype=np.float32))))
    clean = tests[(chosen, sites[-1])].clean
    if clean is not None:  # the target without noise and bias field, where simulated
        volume = _load_nifti(clean).get_fdata(dtype=np.float32)
        rows.append((f"{sites[-1]} clean", np.asarray(volume)))
    label_img = _load_nifti(tests[(chosen, sites[-1])].label)
    labels = np.asarray(label_img.dataobj).astype(np.uint8)
    zooms = tuple(float(z) for z in label_img.header.get_zooms()[:3])
    title = f"{chosen}: {sites[0]} (source) vs {sites[-1]} (target)"
    if flair:
        title = f"{chosen}: {', '.join(sites)} (FLAIR)"
    return save_subject_preview(rows, labels, out_png, zooms=zooms, title=title, lesions=flair)


def _chosen_subject(
    root: Path, entries: Sequence[SubjectEntry], sites: Sequence[str], subject: str | None
) -> tuple[str, dict[tuple[str, str], SubjectEntry]]:
    """The test subject to show (``subject``, or the first one on every site) and the test
    rows by (subject, site)."""
    tests = {(e.subject, e.site): e for e in entries if e.split == "test"}
    every = "both sites" if len(sites) == 2 else "every site"
    paired = sorted({s for s, _ in tests if all((s, site) in tests for site in sites)})
    if not paired:
        raise InputError(
            f"{root / 'subjects.csv'}: no test subject is listed on {every} "
            f"{', '.join(sites)}; simulate with a test fraction above 0"
        )
    chosen = subject or paired[0]
    if chosen not in paired:
        shown = ", ".join(paired[:10]) + (" ..." if len(paired) > 10 else "")
        raise InputError(
            f"{root}: subject {chosen!r} is not a test subject on {every}; choose one of {shown}"
        )
    return chosen, tests


# --------------------------------------------------------------------------- OCT


def _is_oct(meta: dict[str, object], entries: Sequence[SubjectEntry]) -> bool:
    """Whether a simulated folder holds OCT: its metadata says so, or its scans are named so."""
    if meta.get("benchmark") == "oct" or meta.get("modality") == "oct":
        return True
    return bool(entries) and all(e.image.name.endswith(_OCT_SUFFIX) for e in entries)


def _oct_vendors(meta: dict[str, object], entries: Sequence[SubjectEntry]) -> list[str]:
    """The vendors, source first: ``simulation.json``'s ``vendors`` (names, or objects with a
    ``name``) where it lists them, else the listing's order."""
    listed = meta.get("vendors")
    if isinstance(listed, list) and listed:
        names = [v["name"] if isinstance(v, dict) else v for v in listed]
        if all(isinstance(n, str) for n in names):
            return [str(n) for n in names]
    return list(dict.fromkeys(e.site for e in entries))


def _preview_oct(
    root: Path,
    entries: Sequence[SubjectEntry],
    meta: dict[str, object],
    out_png: str | Path,
    subject: str | None,
) -> Path:
    """:func:`preview_subject` on a ``simulate oct`` folder."""
    vendors = _oct_vendors(meta, entries)
    chosen, tests = _chosen_subject(root, entries, vendors, subject)
    views = []
    for vendor in vendors:
        entry = tests[(chosen, vendor)]
        image = _load_nifti(entry.image)
        zx, zy, zz = (float(z) for z in image.header.get_zooms()[:3])
        clean = None
        if entry.clean is not None:  # speckle-free, where the simulation rendered one
            clean = np.asarray(_load_nifti(entry.clean).get_fdata(dtype=np.float32))
        scan = np.asarray(image.get_fdata(dtype=np.float32))
        labels = np.asarray(_load_nifti(entry.label).dataobj).astype(np.uint8)
        views.append(OctView(vendor, scan, labels, (zx, zy, zz), clean))
    title = f"{chosen}: {', '.join(vendors)} (OCT, central B-scan)"
    return save_oct_preview(views, out_png, title=title)
