"""Overlap metrics between integer label maps: per-class Dice and IoU, Generalized Dice.

Every function takes a predicted and a true label map of the same shape (any number of
dimensions: one slice, a stack of slices or a volume) holding class indices in
``[0, n_classes)``, and counts true positives, false positives and false negatives per
class in one ``numpy.bincount`` over the joint labels.

Conventions:
    * A class absent from both maps has no defined Dice or IoU; it gets ``empty`` (NaN by
      default, so that means over classes or subjects can skip it with ``nanmean``).
      A class absent from the truth but predicted scores 0.
    * Generalized Dice (Crum et al. 2006, with the ``1 / volume**2`` class weights of
      Sudre et al. 2017) follows MONAI's ``GeneralizedDiceScore`` (``weight_type="square"``):
      a scored class absent from the truth would get an infinite weight, so it takes the
      largest weight among the present classes instead (every weight is 1 when no scored
      class is present). Predicting such a class is therefore penalised as heavily as the
      rarest present class, rather than ignored (weight 0 would make those false positives
      free). Where MONAI returns 1.0 because no scored class occurs in either map, we
      return NaN, like the per-class scores.
    * :func:`overlap_scores` and :func:`subject_scores` return JSON-ready dicts: undefined
      values become ``None``.

Example:
    >>> import numpy as np
    >>> truth = np.array([[0, 1, 1], [0, 2, 2]])
    >>> pred = np.array([[0, 1, 2], [0, 2, 2]])
    >>> dice_per_class(pred, truth, 3).round(3).tolist()
    [1.0, 0.667, 0.8]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from segrenorm.errors import InputError

__all__ = [
    "check_label_maps",
    "confusion_counts",
    "dice_from_counts",
    "dice_per_class",
    "generalized_dice",
    "generalized_dice_from_counts",
    "iou_from_counts",
    "iou_per_class",
    "json_float",
    "overlap_scores",
    "scores_from_counts",
    "subject_scores",
]


def _check_n_classes(n_classes: int) -> int:
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)):
        raise InputError(f"n_classes must be an integer >= 2, got {n_classes!r}.")
    if n_classes < 2:
        raise InputError(
            f"n_classes={n_classes} must be >= 2 (background plus at least one class)."
        )
    return int(n_classes)


def check_label_maps(
    pred: np.ndarray, truth: np.ndarray, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Validate a pair of label maps and return them as flat int64 arrays.

    Args:
        pred: predicted class indices, any shape, integer or bool dtype.
        truth: true class indices, the same shape.
        n_classes: number of classes, background included; at least 2.

    Raises:
        InputError: for ``n_classes < 2``, shapes that differ, a non-integer dtype, or a
            label outside ``[0, n_classes)``; the message names the map and the value.
    """
    n_classes = _check_n_classes(n_classes)
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise InputError(
            f"pred has shape {pred.shape} but truth has shape {truth.shape}: label maps "
            "must be compared voxel by voxel, so give arrays of the same shape."
        )
    flat = []
    for name, array in (("pred", pred), ("truth", truth)):
        if array.dtype.kind not in "biu":
            raise InputError(
                f"{name} has dtype {array.dtype}; label maps hold integer class indices: "
                "round and cast them with .astype(np.int64)."
            )
        values = array.reshape(-1).astype(np.int64, copy=False)
        if values.size:
            low, high = int(values.min()), int(values.max())
            if low < 0 or high >= n_classes:
                bad = low if low < 0 else high
                raise InputError(
                    f"{name} holds label {bad}, outside [0, {n_classes}) for "
                    f"n_classes={n_classes}: pass the right n_classes or remap the labels."
                )
        flat.append(values)
    return flat[0], flat[1]


def confusion_counts(pred: np.ndarray, truth: np.ndarray, n_classes: int) -> np.ndarray:
    """True positives, false positives and false negatives of every class.

    Args:
        pred: predicted class indices, any shape.
        truth: true class indices, the same shape.
        n_classes: number of classes, background included.

    Returns:
        int64 array (n_classes, 3): column 0 tp, 1 fp, 2 fn; row c is class c.

    Raises:
        InputError: see :func:`check_label_maps`.
    """
    p, t = check_label_maps(pred, truth, n_classes)
    n = int(n_classes)
    joint = np.bincount(t * n + p, minlength=n * n).reshape(n, n)  # (truth, pred)
    tp = np.diag(joint)
    fp = joint.sum(axis=0) - tp
    fn = joint.sum(axis=1) - tp
    return np.stack([tp, fp, fn], axis=1).astype(np.int64)


def _ratio(num: np.ndarray, den: np.ndarray, empty: float) -> np.ndarray:
    out = np.full(num.shape, empty, dtype=np.float64)
    defined = den > 0
    out[defined] = num[defined] / den[defined]
    return out


def _split_counts(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[1] != 3:
        raise InputError(
            f"expected confusion counts (n_classes, 3) of tp, fp, fn, got shape {counts.shape}: "
            "use confusion_counts()."
        )
    return counts[:, 0], counts[:, 1], counts[:, 2]


def dice_from_counts(counts: np.ndarray, *, empty: float = math.nan) -> np.ndarray:
    """Dice ``2tp / (2tp + fp + fn)`` of every class from :func:`confusion_counts`.

    Counts add up, so summing the counts of slices gives the Dice of their volume.

    Args:
        counts: (n_classes, 3) true positives, false positives, false negatives.
        empty: the value of a class absent from both maps.
    """
    tp, fp, fn = _split_counts(counts)
    return _ratio(2 * tp, 2 * tp + fp + fn, empty)


def iou_from_counts(counts: np.ndarray, *, empty: float = math.nan) -> np.ndarray:
    """IoU ``tp / (tp + fp + fn)`` of every class from :func:`confusion_counts`.

    Args:
        counts: (n_classes, 3) true positives, false positives, false negatives.
        empty: the value of a class absent from both maps.
    """
    tp, fp, fn = _split_counts(counts)
    return _ratio(tp, tp + fp + fn, empty)


def generalized_dice_from_counts(counts: np.ndarray, *, include_background: bool = False) -> float:
    """Generalized Dice from :func:`confusion_counts` (see :func:`generalized_dice`).

    Args:
        counts: (n_classes, 3) true positives, false positives, false negatives.
        include_background: score row 0 too.
    """
    tp, fp, fn = _split_counts(counts)
    if not include_background:
        tp, fp, fn = tp[1:], fp[1:], fn[1:]
    volume = tp + fn  # voxels of each scored class in the truth
    present = volume > 0
    weights = np.ones_like(volume)
    if present.any():
        weights[present] = 1.0 / volume[present] ** 2
        weights[~present] = weights[present].max()  # MONAI's rule for absent classes
    den = float((weights * (2 * tp + fp + fn)).sum())
    if den == 0:
        return math.nan
    return float(2 * (weights * tp).sum() / den)


def dice_per_class(
    pred: np.ndarray, truth: np.ndarray, n_classes: int, *, empty: float = math.nan
) -> np.ndarray:
    """Dice ``2tp / (2tp + fp + fn)`` of every class.

    Args:
        pred: predicted class indices, any shape.
        truth: true class indices, the same shape.
        n_classes: number of classes, background included.
        empty: the value of a class absent from both maps (NaN by default; MONAI's
            ``DiceMetric(ignore_empty=False)`` uses 1.0).

    Returns:
        float64 array (n_classes,), background first.
    """
    return dice_from_counts(confusion_counts(pred, truth, n_classes), empty=empty)


def iou_per_class(
    pred: np.ndarray, truth: np.ndarray, n_classes: int, *, empty: float = math.nan
) -> np.ndarray:
    """Intersection over union (Jaccard) ``tp / (tp + fp + fn)`` of every class.

    Args:
        pred: predicted class indices, any shape.
        truth: true class indices, the same shape.
        n_classes: number of classes, background included.
        empty: the value of a class absent from both maps (NaN by default).

    Returns:
        float64 array (n_classes,), background first.
    """
    return iou_from_counts(confusion_counts(pred, truth, n_classes), empty=empty)


def generalized_dice(
    pred: np.ndarray, truth: np.ndarray, n_classes: int, *, include_background: bool = False
) -> float:
    """Generalized Dice ``2 sum_c w_c tp_c / sum_c w_c (2tp_c + fp_c + fn_c)``.

    Weights are ``w_c = 1 / (voxels of class c in truth)**2``, so small structures count
    as much as large ones. A scored class absent from the truth takes the largest weight
    of the present classes (MONAI's convention; see the module docstring).

    Args:
        pred: predicted class indices, any shape.
        truth: true class indices, the same shape.
        n_classes: number of classes, background included.
        include_background: score class 0 too (off by default: background dominates).

    Returns:
        The score in [0, 1], or NaN when no scored class occurs in either map.
    """
    return generalized_dice_from_counts(
        confusion_counts(pred, truth, n_classes), include_background=include_background
    )


def json_float(value: float) -> float | None:
    """A plain float, or ``None`` for NaN (JSON has no NaN).

    Args:
        value: any real number.
    """
    value = float(value)
    return None if math.isnan(value) else value


def overlap_scores(pred: np.ndarray, truth: np.ndarray, n_classes: int) -> dict[str, Any]:
    """Per-class Dice and IoU and foreground Generalized Dice, as a JSON-ready dict.

    Args:
        pred: predicted class indices, any shape.
        truth: true class indices, the same shape.
        n_classes: number of classes, background included.

    Returns:
        ``{"dice": [...], "iou": [...], "generalized_dice": g}``: lists of n_classes plain
        floats, background first, and the Generalized Dice without background. A class
        absent from both maps (or no foreground anywhere, for ``g``) gives ``None``.
    """
    return scores_from_counts(confusion_counts(pred, truth, n_classes))


def scores_from_counts(counts: np.ndarray) -> dict[str, Any]:
    """The dict of :func:`overlap_scores` from :func:`confusion_counts` output.

    Args:
        counts: (n_classes, 3) true positives, false positives, false negatives.
    """
    return {
        "dice": [json_float(v) for v in dice_from_counts(counts)],
        "iou": [json_float(v) for v in iou_from_counts(counts)],
        "generalized_dice": json_float(generalized_dice_from_counts(counts)),
    }


def _mean_std(values: np.ndarray) -> tuple[float | None, float | None]:
    """NaN-skipping mean and population std of a 1D array; None where nothing is defined."""
    kept = values[~np.isnan(values)]
    if kept.size == 0:
        return None, None
    return float(kept.mean()), float(kept.std())


def subject_scores(
    pred: np.ndarray,
    truth: np.ndarray,
    subject_ids: Sequence[Any] | np.ndarray,
    n_classes: int,
    *,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Overlap per subject (its slices stacked as one volume), then mean and std over subjects.

    Args:
        pred: (N, ...) predicted label maps, one row per slice.
        truth: (N, ...) true label maps of the same shape.
        subject_ids: N subject identifiers (any hashable; reported as strings), the
            owner of each row; a subject's rows need not be contiguous.
        n_classes: classes, background included.
        class_names: optional n_classes names, copied into the result.

    Returns:
        A JSON-ready dict::

            {"n_subjects": S, "subjects": [id, ...],           # first-appearance order
             "class_names": [...],                             # only when given
             "dice": {"mean": [C floats], "std": [C floats]},  # background first
             "iou": {"mean": [...], "std": [...]},
             "generalized_dice": {"mean": g, "std": s},        # foreground classes
             "per_subject": {id: {"dice": [...], "iou": [...], "generalized_dice": g}}}

        Means and population standard deviations (ddof 0) run over the subjects where a
        value is defined: a class absent from a subject's truth and prediction is skipped
        for that subject (``None`` in ``per_subject``); ``None`` when no subject defines it.

    Raises:
        InputError: mismatched shapes or lengths, bad labels, or wrong number of names.
    """
    pred, truth = np.asarray(pred), np.asarray(truth)
    check_label_maps(pred, truth, n_classes)
    ids = [str(s) for s in np.asarray(subject_ids, dtype=object).reshape(-1)]
    if pred.ndim < 1 or len(ids) != pred.shape[0] or not ids:
        raise InputError(
            f"subject_scores got {len(ids)} subject ids for label maps of shape {pred.shape}: "
            "give one id per row (slice), at least one row."
        )
    if class_names is not None and len(class_names) != n_classes:
        raise InputError(
            f"subject_scores got {len(class_names)} class names for {n_classes} classes."
        )
    subjects = list(dict.fromkeys(ids))
    owner = np.asarray(ids, dtype=object)
    dice, iou, gdice, per_subject = [], [], [], {}
    for subject in subjects:
        counts = confusion_counts(pred[owner == subject], truth[owner == subject], n_classes)
        dice.append(dice_from_counts(counts))
        iou.append(iou_from_counts(counts))
        gdice.append(generalized_dice_from_counts(counts))
        per_subject[subject] = scores_from_counts(counts)
    result: dict[str, Any] = {"n_subjects": len(subjects), "subjects": subjects}
    if class_names is not None:
        result["class_names"] = [str(name) for name in class_names]
    for key, table in (("dice", np.array(dice)), ("iou", np.array(iou))):
        stats = [_mean_std(table[:, c]) for c in range(int(n_classes))]
        result[key] = {"mean": [m for m, _ in stats], "std": [s for _, s in stats]}
    g_mean, g_std = _mean_std(np.array(gdice, dtype=np.float64))
    result["generalized_dice"] = {"mean": g_mean, "std": g_std}
    result["per_subject"] = per_subject
    return result
