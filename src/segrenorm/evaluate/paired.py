"""Paired ground truth on simulated benchmarks.

Held-out test subjects of ``segrenorm simulate`` exist on both scanners with the same
anatomy, so a harmonized source slice can be compared with the true target-scanner slice
of the same subject and position. Training data stay unpaired; this is evaluation only.

Slices are paired by (subject, slice index) within the cache's test split
(:meth:`EvalData.paired_rows`); metrics are computed inside the target slice's foreground
on the cache's ``[-1, 1]`` scale, per subject (its slices together), then averaged.

Example:
    >>> scores = paired_scores(data, {"none": data.source.images})  # doctest: +SKIP
    >>> scores["methods"]["none"]["ssim"]  # doctest: +SKIP
    0.33
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from segrenorm.evaluate.data import EvalData
from segrenorm.evaluate.metrics import mae, psnr, ssim

__all__ = ["METRICS", "paired_scores"]

#: The paired metrics, in report order.
METRICS = ("ssim", "psnr", "mae")


def paired_scores(data: EvalData, slices: Mapping[str, np.ndarray]) -> dict[str, Any] | None:
    """SSIM, PSNR and MAE of each method against the true target, per subject and overall.

    Args:
        data: the evaluation data.
        slices: method -> harmonized slices, row-aligned with ``data.source``.

    Returns:
        None when no held-out subject exists on both sites; otherwise ``{"n_subjects",
        "n_slices", "methods": {name: {ssim, psnr, mae, ssim_std, psnr_std, mae_std,
        "subjects": {id: {ssim, psnr, mae}}}}}`` (std over subjects).
    """
    src, tgt = data.paired_rows()
    if src.size == 0:
        return None
    subjects = data.target.subjects[tgt]
    order = list(dict.fromkeys(subjects.tolist()))
    methods: dict[str, Any] = {}
    for name, harmonized in slices.items():
        per_subject: dict[str, dict[str, float]] = {}
        for subject in order:
            pick = subjects == subject
            pred = harmonized[src[pick]]
            truth, mask = data.target.images[tgt[pick]], data.target.masks[tgt[pick]]
            per_subject[str(subject)] = {
                "ssim": ssim(pred, truth, data_range=2.0, mask=mask),
                "psnr": psnr(pred, truth, data_range=2.0, mask=mask),
                "mae": mae(pred, truth, mask=mask),
            }
        entry: dict[str, Any] = {}
        for key in METRICS:
            values = [s[key] for s in per_subject.values()]
            entry[key] = float(np.mean(values))
            with np.errstate(invalid="ignore"):  # identical images: PSNR inf, std undefined
                entry[f"{key}_std"] = float(np.std(values))
        methods[name] = {**entry, "subjects": per_subject}
    return {"n_subjects": len(order), "n_slices": int(src.size), "methods": methods}
