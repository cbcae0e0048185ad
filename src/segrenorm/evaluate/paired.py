"""Paired ground truth on simulated benchmarks, against the noisy and the clean target.

Held-out subjects of ``segrenorm simulate`` exist on both scanners with the same anatomy,
so a harmonized source slice can be compared with the true target-scanner slice of the same
subject and position. Training data stay unpaired; this is evaluation only.

Slices are paired by (subject, slice index) within the evaluated split
(:meth:`EvalData.paired_rows`). There are two truths:

- the target scanner's own scan, as cached (noise, bias field and all);
- where the cache records one (``clean`` in the manifest, from ``simulate``'s listing), the
  subject's noise-free, bias-free render on the target scanner (:func:`clean_target_slices`),
  scaled exactly like the target scan so both truths share one intensity convention.

Metrics are computed on the cache's ``[-1, 1]`` scale inside the label-defined brain mask
(target labels > 0: the anatomy, the same at both sites, rather than an intensity threshold
that depends on one scanner's noise), per subject (its slices together), then averaged. A
cache whose foreground classes are all pocket classes (:func:`~segrenorm.vocabulary.pocket_classes`:
FLAIR's ``background, lesion``, OCT's ``background, IRF, SRF, PED``) does not define the
anatomy by its labels: there the mask is the foreground both paired scans share (the brain,
or on OCT the retina).

Example:
    >>> scores = paired_scores(data, {"none": data.source.images})  # doctest: +SKIP
    >>> none = scores["methods"]["none"]  # doctest: +SKIP
    >>> none["ssim"], none["clean"]["ssim"]  # doctest: +SKIP
    (0.33, 0.35)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from segrenorm.errors import InputError
from segrenorm.evaluate.data import EvalData
from segrenorm.evaluate.metrics import mae, psnr, ssim
from segrenorm.vocabulary import pocket_classes

__all__ = ["METRICS", "clean_target_slices", "paired_scores"]

#: The paired metrics, in report order.
METRICS = ("ssim", "psnr", "mae")


def clean_target_slices(data: EvalData) -> tuple[np.ndarray, np.ndarray] | None:
    """The clean target renders of the evaluated subjects, row-aligned with ``data.target``.

    Each clean volume is brought onto the cache's grid (reoriented, resampled) and cut like
    the target scans. It is scaled with its noisy target scan's own recorded scaling (the
    manifest's ``scaling``) and given that scan's foreground (voxels outside it are -1), not
    with scaling fitted on itself: a scaling fitted on the clean render would map its own
    percentiles to -1 and 1, so the two truths would differ by a gain and an offset that no
    method could be blamed or credited for. With one scaling, a voxel where the noisy scan
    equals the clean render gets the same value in both. The clean render is not
    bias-corrected: it has no bias field to remove.

    Args:
        data: the evaluation data.

    Returns:
        None when no evaluated target subject has a clean render; otherwise ``(slices,
        present)``: (N, H, W) float32 in [-1, 1] (background -1) and (N,) bool, True on the
        rows whose subject has a clean render.

    Raises:
        InputError: a recorded clean render is missing or not on its target scan's grid.
    """
    from segrenorm.data.slicing import SliceRecipe
    from segrenorm.volumes.intensity import IntensityScaling
    from segrenorm.volumes.readwrite import load_image
    from segrenorm.volumes.spatial import pad_to_shape

    manifest = data.cache.manifest
    entries = data.subject_entries(data.target)
    groups = {s: rows for s, rows in data.target.subject_rows().items() if entries[s].get("clean")}
    if not groups:
        return None
    recipe = SliceRecipe.from_manifest(manifest)
    out = np.full(data.target.images.shape, -1.0, dtype=np.float32)
    present = np.zeros(len(data.target), dtype=bool)
    for subject, positions in groups.items():
        entry = entries[subject]
        path = Path(entry["clean"])
        if not path.is_file():
            raise InputError(
                f"{path}: the clean render of target subject {subject}, recorded in "
                f"{data.cache.path / 'manifest.json'}, does not exist; restore it or re-run "
                "segrenorm simulate and prepare"
            )
        volume = recipe.to_grid(load_image(path))
        if list(volume.data.shape) != [int(n) for n in entry["shape"]]:
            raise InputError(
                f"{path}: on the cache's grid it is {volume.data.shape}, its target scan "
                f"{entry['image']} is {tuple(entry['shape'])}; a clean render must share its "
                "scan's grid"
            )
        scaled = IntensityScaling.from_dict(entry["scaling"]).apply(volume.data)
        cut = recipe.cut(scaled)[data.target.index[positions]]
        cut = pad_to_shape(cut, data.cache.slice_shape, -1.0)[0]
        cut[~data.target.masks[positions]] = -1.0
        out[positions] = cut
        present[positions] = True
    return out, present


def _score(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    return {
        "ssim": ssim(pred, truth, data_range=2.0, mask=mask),
        "psnr": psnr(pred, truth, data_range=2.0, mask=mask),
        "mae": mae(pred, truth, mask=mask),
    }


def _summary(per_subject: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    for key in METRICS:
        values = [s[key] for s in per_subject.values()]
        entry[key] = float(np.mean(values))
        with np.errstate(invalid="ignore"):  # identical images: PSNR inf, std undefined
            entry[f"{key}_std"] = float(np.std(values))
    return {**entry, "subjects": dict(per_subject)}


def paired_scores(data: EvalData, slices: Mapping[str, np.ndarray]) -> dict[str, Any] | None:
    """SSIM, PSNR and MAE of each method against the true target, per subject and overall.

    Args:
        data: the evaluation data.
        slices: method -> harmonized slices, row-aligned with ``data.source``.

    Returns:
        None when no held-out subject exists on both sites; otherwise ``{"n_subjects",
        "n_slices", "mask", "methods": {name: {ssim, psnr, mae, ssim_std, psnr_std, mae_std,
        "subjects": {id: {ssim, psnr, mae}}[, "clean": the same against the clean truth]}}``
        (std over subjects). With clean truth there is also ``"clean": {"n_subjects",
        "n_slices", "target"}``, where ``target`` scores the noisy target scan itself against
        the clean render: what a method that reproduced the target scan exactly would get.
    """
    src, tgt = data.paired_rows()
    if src.size == 0:
        return None
    clean = clean_target_slices(data)
    subjects = data.target.subjects[tgt]
    order = list(dict.fromkeys(subjects.tolist()))
    picks = {str(s): subjects == s for s in order}
    # The brain as the labels define it, shared by both sites (same anatomy), not an
    # intensity threshold of one scanner's image. Lesion or fluid masks do not cover the
    # anatomy: there, the foreground (brain or retina) both scans share.
    pockets_only = pocket_classes(data.class_names) == list(range(1, len(data.class_names)))
    if pockets_only:
        shared = data.target.masks[tgt] & data.source.masks[src]
        brain = {s: shared[pick] for s, pick in picks.items()}
    else:
        brain = {s: data.target.labels[tgt[pick]] > 0 for s, pick in picks.items()}
    with_clean = [] if clean is None else [s for s in picks if clean[1][tgt[picks[s]]].all()]

    def against(truth: np.ndarray, pred: np.ndarray, names: list[str]) -> dict[str, Any]:
        return _summary({s: _score(pred[picks[s]], truth[tgt[picks[s]]], brain[s]) for s in names})

    methods: dict[str, Any] = {}
    for name, harmonized in slices.items():
        pred = harmonized[src]
        methods[name] = against(data.target.images, pred, list(picks))
        if clean is not None and with_clean:
            methods[name]["clean"] = against(clean[0], pred, with_clean)
    result: dict[str, Any] = {
        "n_subjects": len(order),
        "n_slices": int(src.size),
        "mask": "foreground of both scans" if pockets_only else "target labels > 0",
        "methods": methods,
    }
    if clean is not None and with_clean:
        result["clean"] = {
            "n_subjects": len(with_clean),
            "n_slices": int(sum(int(picks[s].sum()) for s in with_clean)),
            "target": against(clean[0], data.target.images[tgt], with_clean),
        }
    return result
