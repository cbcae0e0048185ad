"""The lesion lens of the evaluation suite: lesion-wise fidelity per method and segmentor seed.

It runs on caches with a class named ``lesion`` (:func:`~segrenorm.evaluate.lesions.lesion_class`)
and reuses the downstream lens's target segmentors: for every segmentor seed, the target
segmentor's label maps of every method's harmonized slices (and of the target's own held-out
slices) are handed to :meth:`LesionLens.add_seed` as the downstream lens makes them, so no
segmentor is trained for it. Per held-out subject (its rows stacked into a volume,
:func:`~segrenorm.evaluate.lesions.subject_volume`) it counts detected, removed and
hallucinated lesions, each true lesion's Dice and the lesion volume; per lesion it measures
the lesion-to-NAWM contrast ratio on the source, each method's and the target's images, and
counts contrast inversions. The definitions are in :mod:`segrenorm.evaluate.lesions`.

``results["lesions"]``:

``detection.methods[METHOD]`` and ``detection.target`` (the target segmentor on the target's
own held-out scans, against their lesions: the in-domain reference)
    ``tp``, ``fn``, ``fp`` (totals over subjects), ``lesion_dice`` (mean over every true
    lesion of every subject), ``volume_abs_error``, ``volume_rel_error``,
    ``volume_abs_rel_error`` and ``volume_correlation`` (over subjects, from
    :func:`~segrenorm.evaluate.lesions.volume_agreement`): each ``{"mean", "seed_std",
    "per_seed"}`` over segmentor seeds (sample std, None below two seeds); ``per_subject``:
    each subject's counts and volumes, averaged over seeds.
``contrast.source``, ``contrast.target`` and ``contrast.methods[METHOD]``
    ``ratio_mean``, ``ratio_std`` (population, over lesions), ``ratio_median``,
    ``n_lesions`` and ``n_defined`` (lesions with a NAWM shell); each method also has
    ``ratio_gap`` (its mean ratio minus the target's), ``inversions`` and ``n_compared``.
    Images only: no seed.

Example:
    >>> lens = LesionLens.for_data(data, slices)  # doctest: +SKIP
    >>> lens is None  # a T1 cache: no lesion class  # doctest: +SKIP
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from segrenorm.errors import InputError
from segrenorm.evaluate.data import EvalData, SiteSlices
from segrenorm.evaluate.downstream import seed_mean_std
from segrenorm.evaluate.lesions import (
    DETECTION_FRACTION,
    DICE_MARGIN,
    NAWM_SHELL,
    contrast_ratios,
    count_inversions,
    detect_lesions,
    label_lesions,
    lesion_class,
    lesion_contrast,
    subject_volume,
    volume_agreement,
)

__all__ = ["SEED_FIGURES", "LesionLens"]

#: The detection figures repeated per segmentor seed, in report order.
SEED_FIGURES = (
    "tp", "fn", "fp", "lesion_dice", "volume_abs_error", "volume_rel_error",
    "volume_abs_rel_error", "volume_correlation",
)  # fmt: skip


@dataclass(frozen=True)
class _Subject:
    """One held-out subject: its rows in slice order, its lesion and foreground volumes."""

    name: str
    positions: np.ndarray  # (n,) positions into the site's arrays, by slice index
    index: np.ndarray  # (n,) their slice indices
    truth: np.ndarray  # (Z, H, W) bool lesion mask
    foreground: np.ndarray  # (Z, H, W) bool
    voxel_volume: float  # mm³ per voxel, or 1.0 when the cache records no spacing


def _voxel_volume(data: EvalData, part: SiteSlices, subject: str) -> float | None:
    spacing = data.subject_entries(part).get(subject, {}).get("spacing")
    spacing = spacing or data.cache.manifest.get("spacing")
    return None if not spacing else float(np.prod([float(s) for s in spacing]))


def _subjects(data: EvalData, part: SiteSlices, c: int) -> tuple[list[_Subject], bool]:
    out, known = [], True
    for name, positions in part.subject_rows().items():
        positions = positions[np.argsort(part.index[positions], kind="stable")]
        index = part.index[positions]
        volume = _voxel_volume(data, part, name)
        known = known and volume is not None
        out.append(_Subject(
            name, positions, index,
            subject_volume(part.labels[positions] == c, index, fill=False),
            subject_volume(part.masks[positions], index, fill=False),
            1.0 if volume is None else volume,
        ))  # fmt: skip
    return out, known


def _detect(subjects: list[_Subject], labels: np.ndarray, c: int) -> dict[str, Any]:
    """One seed's detection figures of one row (see the module docstring)."""
    totals = {"tp": 0, "fn": 0, "fp": 0}
    dice: list[float] = []
    true_volume, pred_volume, per_subject = [], [], {}
    for s in subjects:
        pred = subject_volume(labels[s.positions] == c, s.index, fill=False)
        found = detect_lesions(pred, s.truth)
        for key in totals:
            totals[key] += getattr(found, key)
        dice += found.lesion_dice
        true_volume.append(found.true_voxels * s.voxel_volume)
        pred_volume.append(found.pred_voxels * s.voxel_volume)
        per_subject[s.name] = {
            "tp": found.tp, "fn": found.fn, "fp": found.fp, "n_lesions": found.tp + found.fn,
            "true_volume": true_volume[-1], "pred_volume": pred_volume[-1],
        }  # fmt: skip
    agreement = volume_agreement(true_volume, pred_volume)
    return {
        **totals,
        "lesion_dice": float(np.mean(dice)) if dice else None,
        **{f"volume_{k}": v for k, v in agreement.items()},
        "per_subject": per_subject,
    }


def _over_seeds(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Seed figures as ``{"mean", "seed_std", "per_seed"}``; per-subject ones averaged."""
    out: dict[str, Any] = {}
    for key in SEED_FIGURES:
        values = [r[key] for r in per_seed]
        mean, std = seed_mean_std(values)
        out[key] = {"mean": mean, "seed_std": std, "per_seed": values}
    subjects = per_seed[0]["per_subject"]
    out["per_subject"] = {
        name: {k: float(np.mean([r["per_subject"][name][k] for r in per_seed])) for k in fields}
        for name, fields in subjects.items()
    }
    return out


def _contrast(subjects: list[_Subject], images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lesion and NAWM medians of every lesion of every subject, in subject order."""
    lesion, nawm = [np.zeros(0)], [np.zeros(0)]
    for s in subjects:
        volume = subject_volume(images[s.positions], s.index, fill=-1.0)
        found = lesion_contrast(volume, s.truth, s.foreground, shell=NAWM_SHELL)
        lesion.append(found[0])
        nawm.append(found[1])
    return np.concatenate(lesion), np.concatenate(nawm)


def _ratio_stats(medians: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    ratios = contrast_ratios(*medians)
    kept = ratios[np.isfinite(ratios)]
    defined = kept.size > 0
    return {
        "ratio_mean": float(kept.mean()) if defined else None,
        "ratio_std": float(kept.std()) if defined else None,
        "ratio_median": float(np.median(kept)) if defined else None,
        "n_lesions": int(ratios.size),
        "n_defined": int(kept.size),
    }


class LesionLens:
    """Lesion-wise fidelity of every method, fed one segmentor seed at a time.

    Args:
        data: the held-out slices of both sites.
        slices: method name -> harmonized source slices, row-aligned with ``data.source``.
        class_index: the lesion class.

    Raises:
        InputError: a lesion class out of range.
    """

    def __init__(self, data: EvalData, slices: Mapping[str, np.ndarray], class_index: int):
        if not 0 < class_index < data.n_classes:
            raise InputError(
                f"lesion class {class_index} is not a foreground class of the cache's "
                f"{data.n_classes} classes {list(data.class_names)}"
            )
        self.data, self.slices, self.class_index = data, dict(slices), int(class_index)
        self.source, known_a = _subjects(data, data.source, self.class_index)
        self.target, known_b = _subjects(data, data.target, self.class_index)
        self.volume_unit = "mm³" if known_a and known_b else "voxels"
        self._seeds: list[int] = []
        self._per_seed: list[dict[str, dict[str, Any]]] = []

    @classmethod
    def for_data(cls, data: EvalData, slices: Mapping[str, np.ndarray]) -> LesionLens | None:
        """The lens for ``data``, or None for a cache without a class named ``lesion``.

        Args:
            data: the held-out slices of both sites.
            slices: method name -> harmonized source slices.
        """
        found = lesion_class(data.class_names)
        return None if found is None else cls(data, slices, found)

    def add_seed(self, seed: int, predictions: Mapping[str, np.ndarray]) -> None:
        """Score one segmentor seed's target-segmentor label maps.

        Args:
            seed: the segmentor seed.
            predictions: ``"target"`` (on the target's own slices) and every method's name ->
                (N, H, W) label maps.

        Raises:
            InputError: a method's or the target's label maps are missing.
        """
        missing = [k for k in ("target", *self.slices) if k not in predictions]
        if missing:
            raise InputError(
                f"the lesion lens got no target-segmentor labels of {missing} for segmentor "
                f"seed {seed}: pass the downstream lens's predictions of every method"
            )
        c = self.class_index
        rows = {"target": _detect(self.target, predictions["target"], c)}
        for name in self.slices:
            rows[name] = _detect(self.source, predictions[name], c)
        self._seeds.append(int(seed))
        self._per_seed.append(rows)

    def results(self) -> dict[str, Any]:
        """The JSON-ready lens (see the module docstring)."""
        data = self.data
        source = _contrast(self.source, data.source.images)
        own = _ratio_stats(_contrast(self.target, data.target.images))
        target = own["ratio_mean"]
        methods = {}
        for name, images in self.slices.items():
            after = _contrast(self.source, images)
            stats = _ratio_stats(after)
            mean = stats["ratio_mean"]
            stats["ratio_gap"] = None if mean is None or target is None else mean - target
            stats["inversions"], stats["n_compared"] = count_inversions(source, after)
            methods[name] = stats
        detection: dict[str, Any] = {}
        if self._per_seed:
            detection = {
                "target": _over_seeds([r["target"] for r in self._per_seed]),
                "methods": {n: _over_seeds([r[n] for r in self._per_seed]) for n in self.slices},
            }
        return {
            "class_name": data.class_names[self.class_index],
            "class_index": self.class_index,
            "connectivity": 26,
            "detection_fraction": DETECTION_FRACTION,
            "dice_margin": DICE_MARGIN,
            "nawm_shell": NAWM_SHELL,
            "volume_unit": self.volume_unit,
            "n_lesions": {"source": _count(self.source), "target": _count(self.target)},
            "n_subjects": {"source": len(self.source), "target": len(self.target)},
            "segmentor_seeds": list(self._seeds),
            "detection": detection,
            "contrast": {
                "source": _ratio_stats(source),
                "target": own,
                "methods": methods,
            },
        }


def _count(subjects: list[_Subject]) -> int:
    return sum(label_lesions(s.truth)[1] for s in subjects)
