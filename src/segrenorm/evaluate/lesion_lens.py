"""The lesion lens of the evaluation suite: pocket-wise fidelity per class, method and seed.

It runs on caches with pocket classes (:func:`segrenorm.vocabulary.pocket_classes`: ``lesion``
for MS-SEG and FLAIR, ``IRF``, ``SRF`` and ``PED`` for retinal fluid) and reuses the
downstream lens's target segmentors: for every segmentor seed, the target segmentor's label
maps of every method's harmonized slices (and of the target's own held-out slices) are handed
to :meth:`LesionLens.add_seed` as the downstream lens makes them, so no segmentor is trained
for it. Per pocket class and held-out subject (its rows stacked into a volume,
:func:`~segrenorm.evaluate.lesions.subject_volume`) it counts detected, removed and
hallucinated pockets, each true pocket's Dice and the pocket volume; per pocket it measures
the contrast ratio to the tissue shell around it on the source, each method's and the
target's images, and counts contrast inversions. The definitions are in
:mod:`segrenorm.evaluate.lesions`; connectivity is 26 on the voxel grid (also on anisotropic
OCT grids), volumes are in mm³ from the cache's spacing.

``results["lesions"]`` (one schema for lesions and fluid; read it through
:func:`lesion_results`, which also reads the single-class shape written before fluid):

shared rule fields
    ``connectivity`` (26), ``detection_fraction``, ``dice_margin``, ``shell`` (voxels),
    ``volume_unit`` (``mm³`` or ``voxels``), ``modality`` (the cache's, ``mri`` when it
    records none), ``n_subjects`` (``source``, ``target``), ``segmentor_seeds``,
    ``class_names`` (the pocket classes, in class order).
``classes[NAME]`` for each pocket class (FLAIR: one, ``lesion``)
    ``class_index``; ``n_lesions`` (``source``, ``target``: true pockets);
    ``detection.methods[METHOD]`` and ``detection.target`` (the target segmentor on the
    target's own held-out scans, against their pockets: the in-domain reference): ``tp``,
    ``fn``, ``fp`` (totals over subjects), ``lesion_dice`` (mean over every true pocket of
    every subject), ``volume_abs_error``, ``volume_rel_error``, ``volume_abs_rel_error`` and
    ``volume_correlation`` (over subjects, from
    :func:`~segrenorm.evaluate.lesions.volume_agreement`): each ``{"mean", "seed_std",
    "per_seed"}`` over segmentor seeds (sample std, None below two seeds); ``per_subject``:
    each subject's counts and volumes, averaged over seeds.
    ``contrast.source``, ``contrast.target`` and ``contrast.methods[METHOD]``: ``ratio_mean``,
    ``ratio_std`` (population, over pockets), ``ratio_median``, ``n_lesions`` and
    ``n_defined`` (pockets with a shell); each method also has ``ratio_gap`` (its mean ratio
    minus the target's), ``inversions`` and ``n_compared``. Images only: no seed.

Example:
    >>> lens = LesionLens.for_data(data, slices)  # doctest: +SKIP
    >>> lens is None  # a T1 cache: no pocket class  # doctest: +SKIP
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
    lesion_contrast,
    subject_volume,
    volume_agreement,
)
from segrenorm.vocabulary import pocket_classes

__all__ = ["SEED_FIGURES", "LesionLens", "lesion_results"]

#: The detection figures repeated per segmentor seed, in report order.
SEED_FIGURES = (
    "tp", "fn", "fp", "lesion_dice", "volume_abs_error", "volume_rel_error",
    "volume_abs_rel_error", "volume_correlation",
)  # fmt: skip


@dataclass(frozen=True)
class _Subject:
    """One held-out subject: its rows in slice order, its label and foreground volumes."""

    name: str
    positions: np.ndarray  # (n,) positions into the site's arrays, by slice index
    index: np.ndarray  # (n,) their slice indices
    labels: np.ndarray  # (Z, H, W) uint8 true label volume (every class)
    foreground: np.ndarray  # (Z, H, W) bool
    voxel_volume: float  # mm³ per voxel, or 1.0 when the cache records no spacing


def _voxel_volume(data: EvalData, part: SiteSlices, subject: str) -> float | None:
    spacing = data.subject_entries(part).get(subject, {}).get("spacing")
    spacing = spacing or data.cache.manifest.get("spacing")
    return None if not spacing else float(np.prod([float(s) for s in spacing]))


def _subjects(data: EvalData, part: SiteSlices) -> tuple[list[_Subject], bool]:
    out, known = [], True
    for name, positions in part.subject_rows().items():
        positions = positions[np.argsort(part.index[positions], kind="stable")]
        index = part.index[positions]
        volume = _voxel_volume(data, part, name)
        known = known and volume is not None
        out.append(_Subject(
            name, positions, index,
            subject_volume(np.asarray(part.labels[positions], np.uint8), index, fill=0),
            subject_volume(part.masks[positions], index, fill=False),
            1.0 if volume is None else volume,
        ))  # fmt: skip
    return out, known


def _detect(subjects: list[_Subject], labels: np.ndarray, c: int) -> dict[str, Any]:
    """One seed's detection figures of one row and class (see the module docstring)."""
    totals = {"tp": 0, "fn": 0, "fp": 0}
    dice: list[float] = []
    true_volume, pred_volume, per_subject = [], [], {}
    for s in subjects:
        pred = subject_volume(labels[s.positions] == c, s.index, fill=False)
        found = detect_lesions(pred, s.labels == c)
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


def _contrast(
    subjects: list[_Subject], images: np.ndarray, c: int, classes: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Pocket and shell medians of every class-``c`` pocket of every subject, subject order."""
    lesion, shell = [np.zeros(0)], [np.zeros(0)]
    for s in subjects:
        volume = subject_volume(images[s.positions], s.index, fill=-1.0)
        others = np.isin(s.labels, [k for k in classes if k != c])  # fluid is not tissue
        found = lesion_contrast(volume, s.labels == c, s.foreground, shell=NAWM_SHELL,
                                others=others)  # fmt: skip
        lesion.append(found[0])
        shell.append(found[1])
    return np.concatenate(lesion), np.concatenate(shell)


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
    """Pocket-wise fidelity of every method and pocket class, fed one segmentor seed at a time.

    Args:
        data: the held-out slices of both sites.
        slices: method name -> harmonized source slices, row-aligned with ``data.source``.
        classes: the pocket classes, e.g. ``[1]`` (lesion) or ``[1, 2, 3]`` (IRF, SRF, PED).

    Raises:
        InputError: no class, a repeated one, or one that is not a foreground class.
    """

    def __init__(self, data: EvalData, slices: Mapping[str, np.ndarray], classes: Sequence[int]):
        wanted = [int(c) for c in classes]
        bad = [c for c in wanted if not 0 < c < data.n_classes]
        if not wanted or bad or len(set(wanted)) != len(wanted):
            raise InputError(
                f"pocket classes {wanted} must be distinct foreground classes of the cache's "
                f"{data.n_classes} classes {list(data.class_names)} (at least one)"
            )
        self.data, self.slices, self.classes = data, dict(slices), sorted(wanted)
        self.source, known_a = _subjects(data, data.source)
        self.target, known_b = _subjects(data, data.target)
        self.volume_unit = "mm³" if known_a and known_b else "voxels"
        self._seeds: list[int] = []
        self._per_seed: list[dict[int, dict[str, dict[str, Any]]]] = []

    @classmethod
    def for_data(cls, data: EvalData, slices: Mapping[str, np.ndarray]) -> LesionLens | None:
        """The lens for ``data``, or None for a cache without a pocket class.

        Args:
            data: the held-out slices of both sites.
            slices: method name -> harmonized source slices.

        Returns:
            The lens over every pocket class of the cache, or None.
        """
        found = pocket_classes(data.class_names)
        return cls(data, slices, found) if found else None

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
        per_class = {}
        for c in self.classes:
            rows = {"target": _detect(self.target, predictions["target"], c)}
            for name in self.slices:
                rows[name] = _detect(self.source, predictions[name], c)
            per_class[c] = rows
        self._seeds.append(int(seed))
        self._per_seed.append(per_class)

    def _class_results(self, c: int) -> dict[str, Any]:
        data = self.data
        source = _contrast(self.source, data.source.images, c, self.classes)
        own = _ratio_stats(_contrast(self.target, data.target.images, c, self.classes))
        target = own["ratio_mean"]
        methods = {}
        for name, images in self.slices.items():
            after = _contrast(self.source, images, c, self.classes)
            stats = _ratio_stats(after)
            mean = stats["ratio_mean"]
            stats["ratio_gap"] = None if mean is None or target is None else mean - target
            stats["inversions"], stats["n_compared"] = count_inversions(source, after)
            methods[name] = stats
        detection: dict[str, Any] = {}
        if self._per_seed:
            seeds = [r[c] for r in self._per_seed]
            detection = {
                "target": _over_seeds([r["target"] for r in seeds]),
                "methods": {n: _over_seeds([r[n] for r in seeds]) for n in self.slices},
            }
        return {
            "class_index": c,
            "n_lesions": {"source": _count(self.source, c), "target": _count(self.target, c)},
            "detection": detection,
            "contrast": {"source": _ratio_stats(source), "target": own, "methods": methods},
        }

    def results(self) -> dict[str, Any]:
        """The JSON-ready lens (see the module docstring).

        Returns:
            The shared rule fields and ``classes``: one entry per pocket class, by name.
        """
        names = [str(self.data.class_names[c]) for c in self.classes]
        return {
            "class_names": names,
            "modality": str(self.data.cache.manifest.get("modality") or "mri"),
            "connectivity": 26,
            "detection_fraction": DETECTION_FRACTION,
            "dice_margin": DICE_MARGIN,
            "shell": NAWM_SHELL,
            "volume_unit": self.volume_unit,
            "n_subjects": {"source": len(self.source), "target": len(self.target)},
            "segmentor_seeds": list(self._seeds),
            "classes": {
                n: self._class_results(c) for n, c in zip(names, self.classes, strict=True)
            },
        }


def _count(subjects: list[_Subject], c: int) -> int:
    return sum(label_lesions(s.labels == c)[1] for s in subjects)


#: Per-class keys of the single-class shape (before fluid), moved under ``classes[NAME]``.
_CLASS_KEYS = ("class_index", "n_lesions", "detection", "contrast")


def lesion_results(lesions: Mapping[str, Any] | None) -> dict[str, Any]:
    """``results["lesions"]`` in the current schema, whichever schema it was written in.

    The single-class shape written before fluid (``class_name``, ``class_index``,
    ``n_lesions``, ``detection`` and ``contrast`` at the top, ``nawm_shell``) becomes one entry
    of ``classes``; a current one is returned as it is (a shallow copy).

    Args:
        lesions: the lens's results as read from ``results.json``, or None.

    Returns:
        The current shape; ``{}`` for None or an empty lens.

    Raises:
        InputError: a mapping with neither ``classes`` nor the single-class keys.
    """
    if not lesions:
        return {}
    if "classes" in lesions:
        return dict(lesions)
    if "detection" not in lesions and "contrast" not in lesions:
        raise InputError(
            f"results['lesions'] has neither 'classes' nor 'detection'/'contrast' (keys "
            f"{sorted(lesions)}): it is no lesion lens output; re-run segrenorm evaluate"
        )
    name = str(lesions.get("class_name", "lesion"))
    out = {k: v for k, v in lesions.items() if k not in (*_CLASS_KEYS, "class_name")}
    out["shell"] = out.pop("nawm_shell", NAWM_SHELL)
    out.setdefault("modality", "mri")
    out["class_names"] = [name]
    out["classes"] = {name: {k: lesions[k] for k in _CLASS_KEYS if k in lesions}}
    return out
