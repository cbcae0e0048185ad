"""Lesion-wise fidelity: detection, per-lesion Dice, lesion volume and lesion contrast.

A *lesion* here is any pocket of a pocket class (:func:`segrenorm.vocabulary.pocket_classes`):
an MS lesion (class ``lesion``) or a pocket of retinal fluid (``IRF``, ``SRF``, ``PED``). Every
definition below applies to one pocket class at a time: the true and predicted masks are the
voxels of that class.

Every figure is computed per held-out subject on its **volume**: the subject's cache rows
stacked in slice order (:func:`subject_volume`). A slice the cache does not hold (prepare
skips slices with too little foreground) is an empty plane there, with no lesion, no
prediction and no foreground, so a lesion is never joined across a missing slice.

Definitions (``docs/evaluation.md``, "Lesion-wise fidelity"):

* **Lesions** are the 3D connected components of a binary mask under 26-connectivity
  (:data:`STRUCTURE`: voxels touching by a face, an edge or a corner are one lesion), the
  rule of lesion counts in MS studies, so a lesion that is one voxel thick along a
  diagonal is not split in two. Connectivity is on the voxel grid whatever the spacing: on
  OCT, whose B-scans lie 0.05 to 0.1 mm apart and A-scans 0.01 mm, a pocket continues into
  the next B-scan when any of its voxels touches one there (volumes, by contrast, are in
  mm³ from the cache's spacing).
* **Detection** (:func:`detect_lesions`). A true lesion is *detected* (a true positive) when
  the predicted lesion voxels cover at least :data:`DETECTION_FRACTION` (10%) of its voxels,
  and at least one voxel; otherwise it is *removed* (a false negative). A predicted
  component is *hallucinated* (a false positive) when it overlaps no true lesion voxel. A
  10% cover counts a lesion whose predicted extent shrank as found (per-lesion Dice measures
  the shrinking) while a stray voxel on the rim of a large lesion does not count as
  finding it. A predicted component overlapping only lesions it covers less than 10% of is
  neither. Per class: an SRF pocket predicted as PED is a removed SRF and a hallucinated PED.
* **Per-lesion Dice**: each true lesion against the predicted voxels inside its neighbourhood,
  the lesion dilated by :data:`DICE_MARGIN` voxels (26-connected) minus every other true
  lesion, so a prediction that bleeds past the lesion is penalised and a neighbour's
  prediction is not. A removed lesion scores 0 (or its few stray voxels' Dice).
* **Lesion contrast** (:func:`lesion_contrast`). Intensities are taken on the cache's
  scale mapped to ``[0, 1]`` (``(x + 1) / 2``: 0 is the scaling's low percentile, the
  background). The surrounding tissue (normal-appearing white matter for MS lesions, the
  retina around a fluid pocket) is defined without tissue labels: the shell of
  :data:`NAWM_SHELL` voxels around the lesion (its 26-connected dilation) outside every true
  lesion (of any pocket class, when given) and inside the foreground mask (the brain, or the
  retina on OCT). The ratio is ``median(lesion) / median(shell)``: above 1 for bright FLAIR
  lesions, below 1 for dark fluid; the signed contrast ``median(lesion) - median(shell)``.
* **Inversion** (:func:`count_inversions`): a lesion whose signed contrast has one strict
  sign on the source image and the other on the harmonized one (a contrast that becomes 0
  is erased, not inverted).

Example:
    >>> import numpy as np
    >>> truth = np.zeros((1, 5, 10), bool)
    >>> truth[0, 1:3, 1:3] = truth[0, 1:3, 6:8] = True  # two 4-voxel lesions
    >>> pred = np.zeros_like(truth)
    >>> pred[0, 1:3, 1:3] = pred[0, 4, 9] = True  # the first found, a blob elsewhere
    >>> found = detect_lesions(pred, truth)
    >>> found.tp, found.fn, found.fp, found.lesion_dice
    (1, 1, 1, (1.0, 0.0))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from segrenorm.errors import InputError
from segrenorm.vocabulary import pocket_classes

__all__ = [
    "DETECTION_FRACTION",
    "DICE_MARGIN",
    "LESION_CLASS",
    "NAWM_SHELL",
    "STRUCTURE",
    "Detection",
    "contrast_ratios",
    "count_inversions",
    "detect_lesions",
    "label_lesions",
    "lesion_class",
    "lesion_contrast",
    "subject_volume",
    "volume_agreement",
]

#: The class name (case-insensitive) of MS lesions; the fluid classes are pockets too
#: (:data:`segrenorm.vocabulary.POCKET_CLASS_NAMES`).
LESION_CLASS = "lesion"
#: 26-connectivity in 3D: face, edge and corner neighbours.
STRUCTURE = ndimage.generate_binary_structure(3, 3)
#: Share of a true lesion's voxels the prediction must cover for it to be detected.
DETECTION_FRACTION = 0.1
#: Voxels a true lesion is dilated by to form the neighbourhood its Dice is computed in.
DICE_MARGIN = 2
#: Thickness (voxels) of the normal-appearing white-matter shell around each lesion.
NAWM_SHELL = 2


def lesion_class(class_names: Sequence[str]) -> int | None:
    """The first pocket class (``lesion``, ``IRF``, ``SRF``, ``PED``, any case), or None.

    Any cache with such a class gets the lesion lens: the MS-SEG layout's and
    ``simulate flair``'s 2-class caches (``background``, ``lesion``), a cache that keeps
    tissue classes beside the lesions, or a RETOUCH fluid cache (its first fluid class,
    ``IRF``; the lens itself takes every one, :func:`segrenorm.vocabulary.pocket_classes`).
    A class of another name is never taken for lesions, nor the background.

    Args:
        class_names: the cache's class names, background first.

    Returns:
        The index of the first pocket class, or None for a cache without one.
    """
    found = pocket_classes(class_names)
    return found[0] if found else None


def subject_volume(rows: np.ndarray, index: np.ndarray, *, fill: float | bool = 0) -> np.ndarray:
    """One subject's (N, H, W) cache rows as its (Z, H, W) volume, in slice order.

    Args:
        rows: the subject's rows (any order).
        index: (N,) each row's slice index in its canonical volume.
        fill: the value of a slice the cache does not hold.

    Returns:
        ``Z = max(index) - min(index) + 1`` planes; plane ``z`` is the row of slice
        ``min(index) + z``, or ``fill`` where no row has that index.

    Raises:
        InputError: rows and indices of other lengths, or a slice index given twice.
    """
    rows, index = np.asarray(rows), np.asarray(index, dtype=np.int64)
    if rows.ndim != 3 or index.shape != (len(rows),) or len(rows) == 0:
        raise InputError(
            f"subject_volume needs (N, H, W) rows and N slice indices, N >= 1; got rows "
            f"{rows.shape} and indices {index.shape}"
        )
    if np.unique(index).size != index.size:
        raise InputError(
            f"subject_volume got slice indices {sorted(index.tolist())} with repeats: one "
            "subject's rows must come from distinct slices (pass one subject at a time)"
        )
    low = int(index.min())
    volume = np.full((int(index.max()) - low + 1, *rows.shape[1:]), fill, dtype=rows.dtype)
    volume[index - low] = rows
    return volume


def label_lesions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The 26-connected components of a 3D binary mask: ``(labels, count)``, labels 1..count.

    Args:
        mask: (Z, H, W) bool lesion mask.

    Raises:
        InputError: a mask that is not 3D.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise InputError(f"lesion masks are (Z, H, W) volumes, got shape {mask.shape}")
    labels, count = ndimage.label(mask, structure=STRUCTURE)
    return labels, int(count)


@dataclass(frozen=True)
class Detection:
    """One subject's lesion-wise comparison of a predicted with the true lesion mask.

    Args:
        tp: true lesions detected.
        fn: true lesions removed (not detected).
        fp: predicted components hallucinated (overlapping no true lesion voxel).
        lesion_dice: the per-lesion Dice of every true lesion, in component order.
        true_voxels: true lesion voxels.
        pred_voxels: predicted lesion voxels.
    """

    tp: int
    fn: int
    fp: int
    lesion_dice: tuple[float, ...]
    true_voxels: int
    pred_voxels: int


def _padded_box(box: tuple[slice, ...], shape: tuple[int, ...], pad: int) -> tuple[slice, ...]:
    return tuple(
        slice(max(0, s.start - pad), min(n, s.stop + pad)) for s, n in zip(box, shape, strict=True)
    )


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    return ndimage.binary_dilation(mask, structure=STRUCTURE, iterations=steps) if steps else mask


def detect_lesions(
    pred: np.ndarray,
    truth: np.ndarray,
    *,
    fraction: float = DETECTION_FRACTION,
    margin: int = DICE_MARGIN,
) -> Detection:
    """Detected, removed and hallucinated lesions, and each true lesion's Dice.

    Args:
        pred: (Z, H, W) bool predicted lesion mask.
        truth: (Z, H, W) bool true lesion mask.
        fraction: the share of a true lesion's voxels that must be predicted for it to be
            detected (at least one voxel).
        margin: voxels a true lesion is dilated by for its per-lesion Dice.

    Raises:
        InputError: masks of other shapes or not 3D, a fraction outside (0, 1], a negative
            margin.
    """
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise InputError(
            f"predicted lesions {pred.shape} and true lesions {truth.shape} differ in shape: "
            "compare one subject's volumes on one grid"
        )
    if not 0.0 < fraction <= 1.0:
        raise InputError(f"the detection fraction {fraction} must lie in (0, 1]")
    if margin < 0:
        raise InputError(f"the per-lesion Dice margin {margin} must be >= 0 voxels")
    true_labels, n_true = label_lesions(truth)
    pred_labels, n_pred = label_lesions(pred)
    touching = np.unique(pred_labels[truth & pred])
    fp = n_pred - int(np.count_nonzero(touching))
    tp, dice = 0, []
    for k, box in enumerate(ndimage.find_objects(true_labels), start=1):
        assert box is not None  # every label 1..n_true occurs
        box = _padded_box(box, truth.shape, margin)
        lesion = true_labels[box] == k
        size = int(lesion.sum())
        covered = int((pred[box] & lesion).sum())
        if covered >= max(1, math.ceil(fraction * size - 1e-9)):
            tp += 1
        near = _dilate(lesion, margin) & ~(truth[box] & ~lesion)
        guess = pred[box] & near
        dice.append(2.0 * covered / (size + int(guess.sum())))
    return Detection(
        tp=tp, fn=n_true - tp, fp=fp, lesion_dice=tuple(dice),
        true_voxels=int(truth.sum()), pred_voxels=int(pred.sum()),
    )  # fmt: skip


def lesion_contrast(
    image: np.ndarray,
    truth: np.ndarray,
    foreground: np.ndarray,
    *,
    shell: int = NAWM_SHELL,
    others: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each true lesion's median intensity and that of its tissue shell, on the [0, 1] scale.

    Args:
        image: (Z, H, W) intensities on the cache's [-1, 1] scale.
        truth: (Z, H, W) bool true lesion mask (one pocket class).
        foreground: (Z, H, W) bool foreground (the shell stays inside it).
        shell: the shell's thickness in voxels (>= 1).
        others: (Z, H, W) bool voxels of the other pocket classes, which are not tissue
            either (an SRF pocket under a PED); None for none.

    Returns:
        ``(lesion, nawm)``: float64 arrays of one median per true lesion, in component
        order; ``nawm`` is NaN where the shell holds no voxel.

    Raises:
        InputError: arrays of other shapes, or a shell thinner than one voxel.
    """
    image = np.asarray(image, dtype=np.float64)
    truth, foreground = np.asarray(truth, dtype=bool), np.asarray(foreground, dtype=bool)
    if not image.shape == truth.shape == foreground.shape:
        raise InputError(
            f"lesion contrast needs an image, a lesion mask and a foreground of one shape, got "
            f"{image.shape}, {truth.shape} and {foreground.shape}"
        )
    if others is not None and np.shape(others) != truth.shape:
        raise InputError(
            f"lesion contrast got other pocket classes of shape {np.shape(others)} for lesions "
            f"of shape {truth.shape}: pass one subject's volumes on one grid"
        )
    pockets = truth if others is None else truth | np.asarray(others, dtype=bool)
    if shell < 1:
        raise InputError(f"the NAWM shell must be at least 1 voxel thick, got {shell}")
    unit = (image + 1.0) / 2.0
    labels, _ = label_lesions(truth)
    lesion, nawm = [], []
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        assert box is not None
        box = _padded_box(box, truth.shape, shell)
        inside = labels[box] == k
        ring = _dilate(inside, shell) & ~pockets[box] & foreground[box]
        lesion.append(float(np.median(unit[box][inside])))
        nawm.append(float(np.median(unit[box][ring])) if ring.any() else math.nan)
    return np.asarray(lesion, np.float64), np.asarray(nawm, np.float64)


def contrast_ratios(lesion: np.ndarray, nawm: np.ndarray) -> np.ndarray:
    """``lesion / nawm`` per lesion; NaN where the NAWM median is not positive or undefined.

    Args:
        lesion: lesion medians (:func:`lesion_contrast`).
        nawm: NAWM medians, the same length.
    """
    lesion, nawm = np.asarray(lesion, np.float64), np.asarray(nawm, np.float64)
    out = np.full(lesion.shape, math.nan)
    ok = np.isfinite(nawm) & (nawm > 0)
    out[ok] = lesion[ok] / nawm[ok]
    return out


def count_inversions(
    before: tuple[np.ndarray, np.ndarray], after: tuple[np.ndarray, np.ndarray]
) -> tuple[int, int]:
    """Lesions whose signed contrast (lesion − NAWM median) flips sign, and lesions compared.

    Args:
        before: ``(lesion, nawm)`` medians on the source image.
        after: ``(lesion, nawm)`` medians of the same lesions on the harmonized image.

    Returns:
        ``(inversions, compared)``: lesions with a strictly positive contrast on one image
        and a strictly negative one on the other; lesions with a defined NAWM on both.

    Raises:
        InputError: the two sides hold different numbers of lesions.
    """
    src = np.asarray(before[0], np.float64) - np.asarray(before[1], np.float64)
    out = np.asarray(after[0], np.float64) - np.asarray(after[1], np.float64)
    if src.shape != out.shape:
        raise InputError(
            f"inversions compare the same lesions before and after: got {src.size} and "
            f"{out.size} lesions"
        )
    both = np.isfinite(src) & np.isfinite(out)
    return int(np.count_nonzero(both & (src * out < 0))), int(np.count_nonzero(both))


def volume_agreement(true: Sequence[float], pred: Sequence[float]) -> dict[str, float | None]:
    """Agreement of predicted with true total lesion volume, over subjects.

    Args:
        true: each subject's true lesion volume.
        pred: each subject's predicted lesion volume, the same order.

    Returns:
        ``abs_error``: mean ``|pred - true|``; ``rel_error``: mean ``(pred - true) / true``
        and ``abs_rel_error``: mean ``|pred - true| / true``, over subjects with lesions;
        ``correlation``: Pearson's r over subjects (None for fewer than two subjects or a
        constant side). None where no subject defines a value.

    Raises:
        InputError: lists of other lengths, or none.
    """
    t, p = np.asarray(true, np.float64), np.asarray(pred, np.float64)
    if t.shape != p.shape or t.ndim != 1 or t.size == 0:
        raise InputError(
            f"volume agreement needs one true and one predicted volume per subject, got "
            f"{t.size} and {p.size}"
        )
    has = t > 0
    rel = (p[has] - t[has]) / t[has]
    corr = None
    if t.size >= 2 and t.std() > 0 and p.std() > 0:
        corr = float(np.corrcoef(t, p)[0, 1])
    return {
        "abs_error": float(np.abs(p - t).mean()),
        "rel_error": float(rel.mean()) if rel.size else None,
        "abs_rel_error": float(np.abs(rel).mean()) if rel.size else None,
        "correlation": corr,
    }
