"""Lesion insets (the paper's Fig. 6 insets): crops around held-out lesions, every method.

:func:`pick_lesions` chooses a few held-out source lesions of one pocket class (the largest of
each subject first, then the next largest), each shown on the slice where its cross-section
is largest. A cache of one pocket class (``lesion``) shows three of them; a fluid cache
(``IRF``, ``SRF``, ``PED``) at least one pocket of each class, in class order, each row
labelled with its class and outlined with that class's truth and prediction.
:func:`lesion_panel` draws one row per lesion: the source crop, each method's harmonized crop
and a target-scanner crop (the same subject's paired target slice where the benchmark has
one, otherwise the target site's largest held-out lesion). The true lesion's outline is
drawn in red on the source and method crops, and the target segmentor's lesion labels (first
seed) in cyan, so a removed lesion (red without cyan) or a hallucinated one (cyan alone)
shows at a glance. :func:`lesion_figures` does both for the report.

Example:
    >>> figures = lesion_figures(Path("report"), artifacts, data)  # doctest: +SKIP
    >>> sorted(figures)  # doctest: +SKIP
    ['lesions']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from segrenorm.evaluate.lesions import label_lesions, subject_volume
from segrenorm.report.figures import _pyplot, _save
from segrenorm.vocabulary import pocket_classes

if TYPE_CHECKING:
    from segrenorm.evaluate.data import EvalData, SiteSlices
    from segrenorm.evaluate.suite import EvaluationArtifacts

__all__ = ["LesionSpot", "lesion_figures", "lesion_panel", "pick_lesions"]

#: Smallest half side (pixels) of an inset; larger lesions get a wider one.
MIN_HALF = 10


@dataclass(frozen=True)
class LesionSpot:
    """One lesion to show: the row of its largest cross-section and the crop around it.

    Args:
        row: the slice's position in the site's arrays.
        window: ``(top, bottom, left, right)`` of the crop in the slice.
        subject: its subject.
        voxels: the lesion's size in voxels.
    """

    row: int
    window: tuple[int, int, int, int]
    subject: str
    voxels: int


def _window(plane: np.ndarray, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """A square crop around a lesion's cross-section, at least ``2 * MIN_HALF`` wide."""
    ys, xs = np.nonzero(plane)
    cy, cx = int(np.rint(ys.mean())), int(np.rint(xs.mean()))
    half = max(MIN_HALF, int(np.ptp(ys)) // 2 + 5, int(np.ptp(xs)) // 2 + 5)
    half = min(half, min(shape) // 2)
    top = min(max(cy - half, 0), shape[0] - 2 * half)
    left = min(max(cx - half, 0), shape[1] - 2 * half)
    return top, top + 2 * half, left, left + 2 * half


def _spots(part: SiteSlices, c: int) -> list[list[LesionSpot]]:
    """Every lesion of every subject of ``part``, largest first within each subject."""
    out = []
    for subject, positions in part.subject_rows().items():
        positions = positions[np.argsort(part.index[positions], kind="stable")]
        index = part.index[positions]
        labels, _ = label_lesions(subject_volume(part.labels[positions] == c, index, fill=False))
        found = []
        for k, box in enumerate(ndimage.find_objects(labels), start=1):
            assert box is not None
            lesion = labels == k
            area = lesion.reshape(len(lesion), -1).sum(axis=1)
            z = int(np.argmax(area))
            held = np.flatnonzero(index - index.min() == z)  # the plane is a held slice
            row = int(positions[held[0]])
            height, width = part.labels.shape[1:]
            window = _window(lesion[z], (int(height), int(width)))
            found.append(LesionSpot(row, window, subject, int(lesion.sum())))
        out.append(sorted(found, key=lambda s: -s.voxels))
    return out


def pick_lesions(part: SiteSlices, class_index: int, count: int = 3) -> list[LesionSpot]:
    """Up to ``count`` lesions of ``part``: each subject's largest first, then the next largest.

    Args:
        part: the held-out slices of one site.
        class_index: the lesion class.
        count: lesions wanted.
    """
    per_subject = _spots(part, class_index)
    firsts = sorted((s[0] for s in per_subject if s), key=lambda s: -s.voxels)
    rest = sorted((x for s in per_subject for x in s[1:]), key=lambda s: -s.voxels)
    return (firsts + rest)[:count]


def _crop(image: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    top, bottom, left, right = window
    return image[top:bottom, left:right]


def lesion_panel(
    out: str | Path,
    *,
    rows: Sequence[Mapping[str, np.ndarray]],
    truths: Sequence[np.ndarray],
    predictions: Sequence[Mapping[str, np.ndarray]],
    labels: Sequence[str],
    columns: Sequence[str],
    oct: bool = False,
) -> Path:
    """One row of crops per lesion, one column per image (source, methods, target).

    Args:
        out: the PNG path.
        rows: per lesion, column name -> (h, w) crop on the [-1, 1] scale.
        truths: per lesion, the (h, w) true lesion mask of the crop (red outline).
        predictions: per lesion, column name -> (h, w) target-segmentor lesion mask (cyan
            outline); a column without one gets none.
        labels: per lesion, the row's label.
        columns: the column names, in order; their titles.
        oct: OCT B-scan crops: depth grows downward (the vitreous on top, as OCT is read),
            and the legend says pocket; otherwise the slice's second axis points up (RAS).
    """
    plt = _pyplot()
    from matplotlib.lines import Line2D

    size = 1.35
    fig, axes = plt.subplots(
        len(rows), len(columns), figsize=(size * len(columns) + 0.6, size * len(rows) + 0.7),
        squeeze=False,
    )  # fmt: skip
    for r, crops in enumerate(rows):
        for c, name in enumerate(columns):
            ax = axes[r, c]
            ax.imshow(crops[name].T, cmap="gray", vmin=-1, vmax=1,
                      origin="upper" if oct else "lower", interpolation="nearest")  # fmt: skip
            if c < len(columns) - 1 and truths[r].any():  # the target crop has its own lesions
                ax.contour(truths[r].T.astype(float), levels=[0.5], colors="red", linewidths=0.9)
            mark = predictions[r].get(name)
            if mark is not None and mark.any():  # dashed over red: both show where they agree
                ax.contour(mark.T.astype(float), levels=[0.5], colors="cyan", linewidths=0.9,
                           linestyles="dashed")  # fmt: skip
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=8)
        axes[r, 0].set_ylabel(labels[r], fontsize=7)
    word = "pocket" if oct else "lesion"
    handles = [
        Line2D([], [], color="red", label=f"true {word}"),
        Line2D([], [], color="cyan", ls="--", label=f"target segmentor's {word}"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=2, frameon=False, fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return _save(fig, out, dpi=110)


def _spots_per_class(
    data: EvalData, classes: Sequence[int], count: int
) -> list[tuple[int, LesionSpot]]:
    """``count`` lesions of one class; else ``count // len(classes)`` (>= 1) per class."""
    each = count if len(classes) <= 1 else max(1, count // len(classes))
    return [(c, spot) for c in classes for spot in pick_lesions(data.source, c, each)]


def lesion_figures(
    folder: Path, artifacts: EvaluationArtifacts, data: EvalData, *, count: int = 3
) -> dict[str, Path]:
    """``{"lesions": PNG}`` for a cache with pocket classes and held-out pockets, else ``{}``.

    Args:
        folder: where the PNG goes.
        artifacts: the evaluation's harmonized slices and first-seed target-segmentor labels.
        data: the evaluation data.
        count: lesions shown: all of one class, or split between several (one each at least).

    Returns:
        The figure's path under the key ``lesions``, or ``{}``.
    """
    classes = pocket_classes(data.class_names)
    spots = _spots_per_class(data, classes, count)
    if not spots:
        return {}
    src, tgt = data.paired_rows()
    paired = {int(s): int(t) for s, t in zip(src, tgt, strict=True)}
    fallbacks = {c: pick_lesions(data.target, c, 1) for c in classes}
    methods = [n for n in artifacts.harmonized if n != "none"]
    source_col, target_col = f"source ({data.source.name})", f"target ({data.target.name})"
    columns = [source_col, *methods, target_col]
    rows, truths, marks, labels = [], [], [], []
    for c, spot in spots:
        crops = {source_col: _crop(data.source.images[spot.row], spot.window)}
        pred = {}
        for name in ["none", *methods]:
            label = artifacts.target_predictions.get(name)
            if label is not None:
                key = source_col if name == "none" else name
                pred[key] = _crop(label[spot.row] == c, spot.window)
        for name in methods:
            crops[name] = _crop(artifacts.harmonized[name][spot.row], spot.window)
        where, fallback = paired.get(spot.row), fallbacks[c]
        if where is not None:
            crops[target_col] = _crop(data.target.images[where], spot.window)
            note = ""
        elif fallback:
            other = fallback[0]
            crops[target_col] = _crop(data.target.images[other.row], other.window)
            note = ", target: another subject"
        else:
            crops[target_col] = np.full_like(crops[source_col], -1.0)
            note = ", no target lesion"
        rows.append(crops)
        marks.append(pred)
        truths.append(_crop(data.source.labels[spot.row] == c, spot.window))
        z = int(data.source.index[spot.row])
        kind = "" if len(classes) == 1 else f"{data.class_names[c]}: "
        labels.append(f"{kind}{spot.subject} z={z}\n{spot.voxels} vox{note}")
    oct = str(data.cache.manifest.get("modality", "mri")) == "oct"
    path = lesion_panel(folder / "lesions.png", rows=rows, truths=truths, predictions=marks,
                        labels=labels, columns=columns, oct=oct)  # fmt: skip
    return {"lesions": path}
