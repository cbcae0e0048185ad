"""The downstream-segmentation lens over several segmentor seeds (the paper's Table V).

For each segmentor seed, a source and a target segmentor are trained post hoc, each on one
site's training slices alone (:mod:`segrenorm.evaluate.segmentors`), and every row is
scored per subject (:func:`~segrenorm.evaluate.overlap.subject_scores`): source→source,
target→target and target→METHOD for every method (``target→none`` is target→source). The
*gap recovery* of a method and class is computed per seed,
``(Dice[target→method] - Dice[target→none]) / (Dice[source→source] - Dice[target→none])``,
from that seed's own pair of segmentors.

A post-hoc segmentor's seed alone moves these figures (by ±0.08-0.12 of recovery on the
built-in benchmark), so the lens reports every figure as its mean over the seeds, under the
keys a single-seed lens had, with the spread beside it:

``rows[ROW][dice|iou]``
    ``mean`` and ``std`` (over subjects) as :func:`subject_scores` gives them, each averaged
    over seeds; ``seed_std``: the sample standard deviation (ddof 1) over seeds of the
    per-seed ``mean``; ``per_seed``: each seed's ``mean``. Likewise ``generalized_dice``.
    ``per_subject`` holds each subject's scores averaged over seeds.
``gap_recovery[METHOD]``
    per class, the mean over seeds of the per-seed recovery (NaN where no seed has a gap);
    ``gap_recovery_seed_std`` and ``gap_recovery_per_seed`` beside it.
``dice_gap``
    per class, Dice[source→source] - Dice[target→none]: ``mean``, ``seed_std``, ``per_seed``.
``segmentor_seeds``
    the seeds used.
``segmentor_store``
    only with a store (``evaluate --segmentors DIR``): its ``folder`` and the file names it
    ``loaded`` and ``trained``.
``segmentor``
    the steps, class weights and labelled-slice share the segmentors trained with, automatic
    ones filled in (:meth:`~segrenorm.evaluate.segmentors.SegmentorConfig.resolved`: a cache
    with pocket classes gets weights 0.05/0.95, half-labelled batches and 400 steps).

Means and standard deviations skip seeds where a value is undefined; a standard deviation
needs two defined seeds (else None, or NaN in the recovery lists). With one seed every mean
is that seed's figure exactly.

Example:
    >>> seed_mean_std([0.5, 0.7, None])
    (0.6, 0.14142135623730948)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from segrenorm.errors import ConfigError
from segrenorm.evaluate.data import EvalData
from segrenorm.evaluate.overlap import subject_scores
from segrenorm.evaluate.segmentor_store import SegmentorStore
from segrenorm.evaluate.segmentors import SegmentorConfig, predict_labels, train_segmentor

__all__ = ["SEED_STD_DDOF", "seed_mean_std", "segmentation_lens"]

#: Delta degrees of freedom of the spread over segmentor seeds (the sample std).
SEED_STD_DDOF = 1


def seed_mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the defined values (None and NaN skipped).

    Args:
        values: one figure per seed.

    Returns:
        ``(mean, std)``: None for the mean when no value is defined, None for the std when
        fewer than two are.
    """
    kept = np.asarray(
        [float(v) for v in values if v is not None and not math.isnan(float(v))], np.float64
    )
    if kept.size == 0:
        return None, None
    std = float(kept.std(ddof=SEED_STD_DDOF)) if kept.size > SEED_STD_DDOF else None
    return float(kept.mean()), std


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def _one_seed(
    data: EvalData,
    slices: Mapping[str, np.ndarray],
    segmentor: SegmentorConfig,
    batch_size: int,
    store: SegmentorStore | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Every row of one segmentor pair, and the target segmentor's label maps."""
    n = data.n_classes
    truth, subjects = data.source.labels, data.source.subjects
    nets = {}
    for site in ("source", "target"):
        images, labels = data.train_slices(site)
        if store is None:
            nets[site] = train_segmentor(images, labels, n, segmentor)
        else:
            nets[site] = store.get(images, labels, n, segmentor)[0]
    rows: dict[str, Any] = {}
    predictions: dict[str, np.ndarray] = {}
    own = predict_labels(nets["source"], data.source.images, batch_size=batch_size)
    rows["source→source"] = subject_scores(own, truth, subjects, n)
    target_own = predict_labels(nets["target"], data.target.images, batch_size=batch_size)
    predictions["target"] = target_own
    rows["target→target"] = subject_scores(target_own, data.target.labels, data.target.subjects, n)
    done: dict[int, np.ndarray] = {}  # by array identity: an n4- row on an N4 cache is
    for name, images in slices.items():  # the plain row's array, segmented once
        if id(images) not in done:
            done[id(images)] = predict_labels(nets["target"], images, batch_size=batch_size)
        pred = done[id(images)]
        predictions[name] = pred
        rows[f"target→{name}"] = subject_scores(pred, truth, subjects, n)
    return rows, predictions


def _dice(row: Mapping[str, Any]) -> np.ndarray:
    """Mean Dice per class of one seed's segmentation row (NaN where undefined)."""
    return np.asarray([_nan(v) for v in row["dice"]["mean"]], np.float64)


def _stats(per_seed: Sequence[Sequence[float | None]]) -> dict[str, list[Any]]:
    """``mean``, ``seed_std`` and ``per_seed`` of per-seed lists (one value per class)."""
    columns = [seed_mean_std(values) for values in zip(*per_seed, strict=True)]
    return {
        "mean": [m for m, _ in columns],
        "seed_std": [s for _, s in columns],
        "per_seed": [list(values) for values in per_seed],
    }


def _combine_row(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One segmentation row averaged over seeds, with its spread (see the module docstring)."""
    first = rows[0]
    out: dict[str, Any] = {"n_subjects": first["n_subjects"], "subjects": first["subjects"]}
    if "class_names" in first:
        out["class_names"] = first["class_names"]
    for key in ("dice", "iou"):
        stats = _stats([r[key]["mean"] for r in rows])
        stds = zip(*(r[key]["std"] for r in rows), strict=True)  # subject std, per class
        subject_std = [seed_mean_std(v)[0] for v in stds]
        out[key] = {"mean": stats["mean"], "std": subject_std,
                    "seed_std": stats["seed_std"], "per_seed": stats["per_seed"]}  # fmt: skip
    means = [r["generalized_dice"]["mean"] for r in rows]
    mean, spread = seed_mean_std(means)
    out["generalized_dice"] = {
        "mean": mean,
        "std": seed_mean_std([r["generalized_dice"]["std"] for r in rows])[0],
        "seed_std": spread,
        "per_seed": means,
    }
    per_subject: dict[str, Any] = {}
    for subject in first["per_subject"]:
        scores = [r["per_subject"][subject] for r in rows]
        entry: dict[str, Any] = {
            key: [seed_mean_std(v)[0] for v in zip(*(s[key] for s in scores), strict=True)]
            for key in ("dice", "iou")
        }
        entry["generalized_dice"] = seed_mean_std([s["generalized_dice"] for s in scores])[0]
        per_subject[subject] = entry
    out["per_subject"] = per_subject
    return out


def _recovery(rows: Mapping[str, Any], methods: Sequence[str]) -> dict[str, np.ndarray]:
    """Per method, the gap recovery per class of one seed's rows (NaN where no gap)."""
    upper, lower = _dice(rows["source→source"]), _dice(rows["target→none"])
    gap = upper - lower
    out = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for name in methods:
            out[name] = np.where(gap > 0, (_dice(rows[f"target→{name}"]) - lower) / gap, np.nan)
    return out


def segmentation_lens(
    data: EvalData,
    slices: Mapping[str, np.ndarray],
    segmentor: SegmentorConfig,
    *,
    seeds: Sequence[int],
    batch_size: int = 32,
    on_seed: Callable[[int, dict[str, np.ndarray]], None] | None = None,
    store: SegmentorStore | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Score every method's slices with segmentor pairs of several seeds.

    Only the segmentors are trained once per seed; the slices are given, so nothing else of
    the evaluation is repeated.

    Args:
        data: the held-out slices of both sites.
        slices: method name -> harmonized source slices (must include ``"none"``).
        segmentor: the segmentors' size and budget; its ``seed`` is replaced by each seed.
        seeds: the segmentor seeds, at least one.
        batch_size: slices per forward pass.
        on_seed: called after each seed with the seed and its target-segmentor label maps
            per method (and ``"target"``), e.g. by the lesion lens, which reuses them.
        store: where trained segmentors are looked up before training and kept after
            (:mod:`segrenorm.evaluate.segmentor_store`); None trains every one.

    Returns:
        ``(results, predictions)``: the JSON-ready lens (see the module docstring) and the
        first seed's target-segmentor label maps per method (and ``"target"``).

    Raises:
        ConfigError: no seed, or no ``"none"`` method.
    """
    if not seeds:
        raise ConfigError("the segmentation lens needs at least one segmentor seed")
    if "none" not in slices:
        raise ConfigError("the segmentation lens needs the 'none' method: the gap refers to it")
    per_seed, predictions = [], {}
    mark = 0 if store is None else len(store.log)  # this lens's entries follow
    segmentor = segmentor.resolved(data.class_names)  # sparse pockets: weights, budget
    for k, seed in enumerate(seeds):
        config = dataclasses.replace(segmentor, seed=int(seed))
        rows, preds = _one_seed(data, slices, config, batch_size, store)
        per_seed.append(rows)
        if on_seed is not None:
            on_seed(int(seed), preds)
        if k == 0:
            predictions = preds  # the report's panel shows the first seed's labels
    names = list(slices)
    recoveries = [_recovery(rows, names) for rows in per_seed]
    recovery, spread, values = {}, {}, {}
    for name in names:
        stats = _stats([[float(v) for v in r[name]] for r in recoveries])  # NaN: no gap
        recovery[name] = [_nan(v) for v in stats["mean"]]
        spread[name] = [_nan(v) for v in stats["seed_std"]]
        values[name] = stats["per_seed"]
    gaps = [_dice(r["source→source"]) - _dice(r["target→none"]) for r in per_seed]
    gap_lists = [[None if math.isnan(v) else float(v) for v in gap] for gap in gaps]
    stored = {} if store is None else {"segmentor_store": _store_summary(store, mark)}
    return {
        "rows": {row: _combine_row([r[row] for r in per_seed]) for row in per_seed[0]},
        "gap_recovery": recovery,
        "gap_recovery_seed_std": spread,
        "gap_recovery_per_seed": values,
        "dice_gap": _stats(gap_lists),
        "segmentor_seeds": [int(s) for s in seeds],
        # The settings the segmentors trained with, automatic ones filled in.
        "segmentor": {
            "iterations": segmentor.steps,
            "class_weights": None
            if segmentor.class_weights is None
            else list(segmentor.class_weights),
            "labelled_slices": segmentor.labelled_slices,
        },
        "class_names": list(data.class_names),
        **stored,  # absent without a store, as before the store existed
    }, predictions


def _store_summary(store: SegmentorStore, mark: int) -> dict[str, Any]:
    """The store's folder and which of its files this lens (log entries from ``mark``)
    loaded and which it trained."""
    log = store.log[mark:]
    return {
        "folder": str(store.folder),
        "loaded": [name for name, loaded in log if loaded],
        "trained": [name for name, loaded in log if not loaded],
    }
