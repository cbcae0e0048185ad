"""Harmonization methods as the evaluation sees them: held-out source slices in, slices out.

Every method returns an array aligned row for row with ``EvalData.source.images``, on the
cache's ``[-1, 1]`` scale with background -1 (on OCT: the source's background). The
classical baselines work per volume (the slices of one subject together), learned on the
target site's *training* subjects:

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
    percentiles mapped onto the target's standard scale, linear beyond the end landmarks.
``whitestripe``
    WhiteStripe (Shinohara et al. 2014, T1): each volume z-scored with the mean and standard
    deviation of its white-matter stripe (foreground quantiles within ±0.05 of the
    white-matter mode's), then put on the target's scale (the mean stripe mean and standard
    deviation of its training volumes), so that both sites' white matter coincide.
``denoise-histogram``
    Gaussian smoothing (sigma 0.8 voxel, in-plane) inside the foreground, then histogram
    matching: the strongest cheap baseline on simulated data.
``n4-histogram``, ``n4-denoise-histogram``
    ``histogram`` and ``denoise-histogram`` on N4-corrected source volumes (``prepare``'s
    N4 settings, ``DEFAULT_BIAS_CORRECTION`` of :mod:`segrenorm.volumes.bias`). On a cache
    prepared with N4 the cached slices are already corrected, and these rows repeat the
    plain ones; on a cache without it, each source volume is read from the manifest's path
    and cut again with the cache's recipe plus N4
    (:func:`~segrenorm.evaluate.data.recut_source`). :func:`n4_corrected_baselines` says
    which rows ran on corrected inputs.

**OCT caches** (manifest ``modality`` ``"oct"``). A B-scan's background is part of the
image there (clipped to [-1, 1], not set to -1), so every pipeline acts inside the retina
mask and leaves the background exactly as the source has it: a classical row's background
artefact energy (:mod:`segrenorm.evaluate.artefacts`) is the source's. The ``n4-`` rows are
left out (:func:`omitted_baselines` says why): OCT has no bias field to correct, and
``prepare`` refuses N4 for it. WhiteStripe is kept: its mode is the brightest peak of the
retina's histogram (the hyperreflective RNFL and RPE), a stable anchor like white matter is
in T1, and the row shows how far a brain method carries. The Gaussian of
``denoise-histogram`` averages speckle well enough for a baseline (a median filter is the
classic speckle filter, but another row would change the MRI tables and the CLI's list).

A trained translator is applied with :func:`translator_slices`: ``G(x | S(x))`` batch by
batch, background kept at -1 (MRI) or, given ``keep=`` :func:`output_region` (OCT), kept
as the translator writes it inside the image, where its stripes are measured; a 2.5-D
translator is given the k-slice stacks of :meth:`EvalData.source_stacks` and its centre
output is kept.

Example:
    >>> out = baseline_slices(data, ["none", "histogram"])  # doctest: +SKIP
    >>> out["histogram"].shape == data.source.images.shape  # doctest: +SKIP
    True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy import ndimage

from segrenorm.data.slicing import SliceRecipe
from segrenorm.errors import ConfigError, InputError
from segrenorm.evaluate.artefacts import OCT, cache_modality, image_extent
from segrenorm.evaluate.baselines import HistogramMatcher, NyulStandardizer, WhiteStripe
from segrenorm.evaluate.data import EvalData, SubjectCallback, as_stacks, recut_source
from segrenorm.models.inference import image_batch
from segrenorm.volumes.bias import DEFAULT_BIAS_CORRECTION, BiasCorrection

__all__ = [
    "BASELINES",
    "N4_BASELINES",
    "baseline_slices",
    "cache_is_bias_corrected",
    "is_oct",
    "n4_corrected_baselines",
    "omitted_baselines",
    "output_region",
    "translator_slices",
]

#: The classical baselines, in report order: every pipeline a careful user would run.
BASELINES: tuple[str, ...] = (
    "none",
    "zscore",
    "histogram",
    "nyul",
    "whitestripe",
    "denoise-histogram",
    "n4-histogram",
    "n4-denoise-histogram",
)
#: Baselines that are another baseline on N4-corrected source volumes -> that baseline.
N4_BASELINES: dict[str, str] = {
    "n4-histogram": "histogram",
    "n4-denoise-histogram": "denoise-histogram",
}

#: Why a baseline is not run on an OCT cache.
OCT_OMITTED: dict[str, str] = {
    name: "OCT has no bias field for N4 to correct; prepare refuses N4 on OCT"
    for name in N4_BASELINES
}

_DENOISE_SIGMA = 0.8

Pipeline = Callable[[np.ndarray, np.ndarray], np.ndarray]


def is_oct(data: EvalData) -> bool:
    """Whether ``data`` comes from an OCT cache (manifest ``modality``, ``"mri"`` if absent).

    Args:
        data: the evaluation data.
    """
    return cache_modality(data.cache.manifest) == OCT


def omitted_baselines(data: EvalData) -> dict[str, str]:
    """The baselines never run on ``data``'s cache, each with the reason (for the report).

    Args:
        data: the evaluation data.

    Returns:
        ``{name: reason}``: the ``n4-`` rows on an OCT cache, nothing otherwise.
    """
    return dict(OCT_OMITTED) if is_oct(data) else {}


def output_region(data: EvalData) -> np.ndarray:
    """Where a harmonized source slice holds the method's output, the rest being -1.

    Args:
        data: the evaluation data.

    Returns:
        (N, H, W) bool row-aligned with ``data.source``: the foreground mask on an MRI
        cache, the whole image but its padding on an OCT cache.
    """
    if is_oct(data):
        return image_extent(data, data.source)
    return data.source.masks


def cache_is_bias_corrected(data: EvalData) -> bool:
    """Whether the cache's slices were N4-corrected by ``prepare`` (its manifest says so).

    Args:
        data: the evaluation data.
    """
    if is_oct(data):
        return False  # OCT is never N4-corrected; its manifest may lack the MRI fields
    return SliceRecipe.from_manifest(data.cache.manifest).bias.enabled


def n4_corrected_baselines(data: EvalData, names: Sequence[str]) -> list[str]:
    """The baselines among ``names`` whose source volumes were N4-corrected.

    On a cache prepared with N4, every baseline; otherwise only those of
    :data:`N4_BASELINES`.

    Args:
        data: the evaluation data.
        names: baselines that ran.
    """
    if is_oct(data):
        return []
    corrected = cache_is_bias_corrected(data)
    return [n for n in names if corrected or n in N4_BASELINES]


def _target_foreground(data: EvalData) -> list[np.ndarray]:
    """Foreground intensities of each training subject of the target site."""
    cache, site = data.cache, data.target.site
    images, masks = cache.images(site), cache.masks(site)
    values = []
    for entry in cache.manifest["subjects"]:
        if entry["site"] != site or not data.trains_on(entry) or entry["n_slices"] == 0:
            continue
        rows = slice(entry["first_row"], entry["first_row"] + entry["n_slices"])
        values.append(np.asarray(images[rows])[np.asarray(masks[rows]).astype(bool)])
    if not values:
        # No training subject (e.g. a cache of test subjects only): use the test slices.
        values = [data.target.images[data.target.masks]]
    return values


def _per_volume(data: EvalData, name: str, fn: Pipeline, images: np.ndarray) -> np.ndarray:
    """``fn`` on each source subject's slices of ``images`` (the cache's masks), clipped.

    Outside the mask the output is -1 (MRI) or, on an OCT cache, ``images`` unchanged."""
    keep = is_oct(data)
    out = images.astype(np.float32) if keep else np.full(images.shape, -1.0, dtype=np.float32)
    for subject, positions in data.source.subject_rows().items():
        x, mask = images[positions], data.source.masks[positions]
        if not mask.any():
            continue
        try:
            y = np.clip(fn(x, mask), -1.0, 1.0)
        except InputError as exc:
            raise InputError(f"baseline {name!r}, source subject {subject}: {exc}") from exc
        out[positions] = np.where(mask, y, x if keep else -1.0)
    return out


def _pipelines(data: EvalData, names: set[str]) -> dict[str, Pipeline]:
    """The per-volume function of each plain baseline in ``names``, learned on the target."""
    reference = _target_foreground(data)
    pooled = np.concatenate(reference).astype(np.float64)
    mean_t, std_t = float(pooled.mean()), float(pooled.std())

    def zscore(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        values = x[mask].astype(np.float64)
        std = float(values.std()) or 1.0
        return ((x - values.mean()) / std * std_t + mean_t).astype(np.float32)

    fns: dict[str, Pipeline] = {"none": lambda x, mask: x, "zscore": zscore}
    if {"histogram", "denoise-histogram"} & names:
        matcher = HistogramMatcher().fit(reference)

        def denoise(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
            smooth = ndimage.gaussian_filter(x, (0.0, _DENOISE_SIGMA, _DENOISE_SIGMA))
            return matcher.apply(np.where(mask, smooth, x).astype(np.float32), mask)

        fns["histogram"], fns["denoise-histogram"] = matcher.apply, denoise
    if "nyul" in names:
        fns["nyul"] = NyulStandardizer().fit(reference).apply
    if "whitestripe" in names:
        fns["whitestripe"] = WhiteStripe().fit(reference).apply
    return fns


def baseline_slices(
    data: EvalData,
    names: Sequence[str] = BASELINES,
    *,
    bias: BiasCorrection | None = None,
    on_subject: SubjectCallback | None = None,
) -> dict[str, np.ndarray]:
    """Apply classical baselines to the held-out source slices.

    Args:
        data: the evaluation data.
        names: baselines to run (see :data:`BASELINES`).
        bias: the correction of the ``n4-`` baselines on a cache prepared without one
            (default: ``DEFAULT_BIAS_CORRECTION``, what ``prepare`` uses).
        on_subject: progress callback while source volumes are corrected again.

    Returns:
        name -> (N, H, W) float32 slices row-aligned with ``data.source``, for every name
        but those :func:`omitted_baselines` leaves out on this cache.

    Raises:
        ConfigError: an unknown baseline name, or a ``bias`` that corrects nothing.
        InputError: a volume a baseline cannot normalize (e.g. no white-matter stripe), or
            a source volume that the ``n4-`` baselines need and cannot read.
    """
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ConfigError(
            f"unknown baseline(s) {', '.join(map(repr, unknown))}: choose from "
            f"{', '.join(BASELINES)}"
        )
    names = [n for n in names if n not in omitted_baselines(data)]
    bias = DEFAULT_BIAS_CORRECTION if bias is None else bias
    if not bias.enabled:
        raise ConfigError(
            f"the n4- baselines need a bias correction that corrects, got method={bias.method!r}"
        )
    plain = {N4_BASELINES.get(n, n) for n in names}
    fns = _pipelines(data, plain)
    cached: dict[str, np.ndarray] = {}
    corrected: np.ndarray | None = None
    out = {}
    for name in names:
        base = N4_BASELINES.get(name)
        if base is None or cache_is_bias_corrected(data):
            key = base or name  # an n4- row on an N4 cache repeats the plain row
            if key not in cached:
                cached[key] = _per_volume(data, key, fns[key], data.source.images)
            out[name] = cached[key]
            continue
        if corrected is None:
            recipe = dataclasses.replace(SliceRecipe.from_manifest(data.cache.manifest), bias=bias)
            corrected = recut_source(data, recipe, on_subject=on_subject)
        out[name] = _per_volume(data, name, fns[base], corrected)
    return out


def translator_slices(
    translate: Callable[[torch.Tensor], torch.Tensor],
    images: np.ndarray,
    masks: np.ndarray,
    *,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    keep: np.ndarray | None = None,
) -> np.ndarray:
    """Translate slices batch by batch; outside ``keep`` (default ``masks``) the output is -1.

    Args:
        translate: ``(B, k, H, W) -> (B, 1 or k, H, W)`` in [-1, 1], e.g.
            ``lambda x: model.translate(x, "AB")``; of k output channels the centre one
            is kept.
        images: (N, H, W) float32 slices in [-1, 1] (H, W multiples of the model's stride),
            or (N, k, H, W) context stacks for a 2.5-D model
            (:meth:`~segrenorm.evaluate.data.EvalData.source_stacks`).
        masks: (N, H, W) boolean foreground (of the centre slices).
        batch_size: slices per forward pass.
        device: where the model lives.
        keep: (N, H, W) bool, where the translation is kept: :func:`output_region` (on an
            OCT cache the whole image, whose background stripes are measured); None:
            ``masks``.

    Returns:
        (N, H, W) float32 translated slices, -1 outside ``keep``.

    Raises:
        ConfigError: a batch size below 1.
        InputError: images that are neither (N, H, W) nor (N, k, H, W) over ``masks``, or
            a ``keep`` of another shape than ``masks``.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size {batch_size} must be at least 1")
    stacks = as_stacks(images, masks, "translator_slices")  # (N, k, H, W)
    region = masks if keep is None else keep
    if region.shape != masks.shape:
        raise InputError(
            f"translator_slices: keep {region.shape} must have the masks' shape {masks.shape} "
            "(one (H, W) region per slice)"
        )
    out = np.empty(masks.shape, dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(stacks), batch_size):
            chunk = image_batch(stacks[start : start + batch_size])  # (b, k, H, W)
            y = translate(chunk.to(device))  # (b, 1 or k, H, W)
            out[start : start + batch_size] = y[:, y.shape[1] // 2].float().cpu().numpy()
    return np.where(region, out, -1.0).astype(np.float32)
