"""Harmonization methods as the evaluation sees them: held-out source slices in, slices out.

Every method returns an array aligned row for row with ``EvalData.source.images``, on the
cache's ``[-1, 1]`` scale with background -1. The classical baselines work per volume (the
slices of one subject together), learned on the target site's *training* subjects:

``none``
    the source as it is.
``zscore``
    per-volume z-score of the foreground, expressed in the target site's scale (its pooled
    training-foreground mean and standard deviation), so the output is comparable with
    target slices.
``histogram``
    dense histogram matching: 101 foreground quantiles mapped piecewise-linearly onto the
    target's mean quantiles.
``nyul``
    Nyúl-Udupa standardization: landmarks at the 1st, 10th, ..., 90th and 99th foreground
    percentiles mapped onto the target's mean landmarks, linear beyond the end landmarks.
``denoise-histogram``
    Gaussian smoothing (sigma 0.8 voxel, in-plane) inside the foreground, then histogram
    matching: the strongest cheap baseline on simulated data.

A trained translator is applied with :func:`translator_slices`: ``G(x | S(x))`` batch by
batch, background kept at -1.

Example:
    >>> out = baseline_slices(data, ["none", "histogram"])  # doctest: +SKIP
    >>> out["histogram"].shape == data.source.images.shape  # doctest: +SKIP
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy import ndimage

from segrenorm.errors import ConfigError
from segrenorm.evaluate.baselines import HistogramMatcher, NyulStandardizer
from segrenorm.evaluate.data import EvalData

__all__ = ["BASELINES", "baseline_slices", "translator_slices"]

#: The classical baselines, in report order.
BASELINES: tuple[str, ...] = ("none", "zscore", "histogram", "nyul", "denoise-histogram")

_DENOISE_SIGMA = 0.8


def _target_foreground(data: EvalData) -> list[np.ndarray]:
    """Foreground intensities of each training subject of the target site."""
    cache, site = data.cache, data.target.site
    images, masks = cache.images(site), cache.masks(site)
    values = []
    for entry in cache.manifest["subjects"]:
        if entry["site"] != site or entry["split"] != "train" or entry["n_slices"] == 0:
            continue
        rows = slice(entry["first_row"], entry["first_row"] + entry["n_slices"])
        values.append(np.asarray(images[rows])[np.asarray(masks[rows]).astype(bool)])
    if not values:
        # No training subject (e.g. a cache of test subjects only): use the test slices.
        values = [data.target.images[data.target.masks]]
    return values


def _per_volume(data: EvalData, fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    out = np.full(data.source.images.shape, -1.0, dtype=np.float32)
    for positions in data.source.subject_rows().values():
        x, mask = data.source.images[positions], data.source.masks[positions]
        if not mask.any():
            continue
        y = np.clip(fn(x, mask), -1.0, 1.0)
        out[positions] = np.where(mask, y, -1.0)
    return out


def baseline_slices(data: EvalData, names: Sequence[str] = BASELINES) -> dict[str, np.ndarray]:
    """Apply classical baselines to the held-out source slices.

    Args:
        data: the evaluation data.
        names: baselines to run (see :data:`BASELINES`).

    Raises:
        ConfigError: an unknown baseline name.
    """
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ConfigError(
            f"unknown baseline(s) {', '.join(map(repr, unknown))}: choose from "
            f"{', '.join(BASELINES)}"
        )
    reference = _target_foreground(data)
    pooled = np.concatenate(reference).astype(np.float64)
    mean_t, std_t = float(pooled.mean()), float(pooled.std())
    matcher = (
        HistogramMatcher().fit(reference)
        if {"histogram", "denoise-histogram"} & set(names)
        else None
    )
    nyul = NyulStandardizer().fit(reference) if "nyul" in names else None

    def zscore(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        values = x[mask].astype(np.float64)
        std = float(values.std()) or 1.0
        return ((x - values.mean()) / std * std_t + mean_t).astype(np.float32)

    def denoise(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        smooth = ndimage.gaussian_filter(x, (0.0, _DENOISE_SIGMA, _DENOISE_SIGMA))
        assert matcher is not None
        return matcher.apply(np.where(mask, smooth, x).astype(np.float32), mask)

    fns: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
        "none": lambda x, mask: x,
        "zscore": zscore,
        "denoise-histogram": denoise,
    }
    if matcher is not None:
        fns["histogram"] = matcher.apply
    if nyul is not None:
        fns["nyul"] = nyul.apply
    return {name: _per_volume(data, fns[name]) for name in names}


def translator_slices(
    translate: Callable[[torch.Tensor], torch.Tensor],
    images: np.ndarray,
    masks: np.ndarray,
    *,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Translate slices batch by batch; background (outside ``masks``) stays -1.

    Args:
        translate: ``(B, 1, H, W) -> (B, 1, H, W)`` in [-1, 1], e.g.
            ``lambda x: model.translate(x, "AB")``.
        images: (N, H, W) float32 slices in [-1, 1] (H, W multiples of the model's stride).
        masks: (N, H, W) boolean foreground.
        batch_size: slices per forward pass.
        device: where the model lives.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size {batch_size} must be at least 1")
    out = np.empty(images.shape, dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            chunk = np.ascontiguousarray(images[start : start + batch_size, None], np.float32)
            y = translate(torch.from_numpy(chunk).to(device))
            out[start : start + batch_size] = y[:, 0].float().cpu().numpy()
    return np.where(masks, out, -1.0).astype(np.float32)
