"""Robustness of a translator's cycle to noise on the translated image (the paper's Fig. 9).

A harmonizer that keeps anatomy should need only a small change of its input to stay on
the cycle: zero-mean Gaussian noise ``n`` of standard deviation sigma is added to
``G(x)``, and the reconstruction ``F(G(x) + n)`` is compared with ``x`` (MSE and SSIM inside
the source foreground, on the ``[-1, 1]`` scale). A method whose reconstructions degrade
less as sigma grows is more robust; the area under each curve (normalised by the sigma
range, so it is the curve's mean height) summarises it in one number.

For the segmentation-renormalised translator ``G`` is conditioned on ``S(x)`` and ``F`` on
``Q(G(x) + n)``: the noisy image is segmented too, as it would be in use. A 2.5-D translator
cycles whole k-slice stacks (noise on every channel) and is scored on the centre slice.

The curves translate whole slices, whatever ``--tiles`` says for the method rows: they
compare translators with one another under noise, not against the target, so every
translator is run the same way and no tile blending enters the cycle.

Example:
    >>> curves = noise_sensitivity(model, images, masks)  # doctest: +SKIP
    >>> curves["ssim_auc"]  # doctest: +SKIP
    0.81
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from segrenorm.errors import ConfigError, InputError
from segrenorm.evaluate.data import as_stacks
from segrenorm.evaluate.metrics import ssim_map
from segrenorm.models.inference import image_batch
from segrenorm.models.translator import Translator
from segrenorm.vocabulary import check_direction

__all__ = ["DEFAULT_SIGMAS", "curve_auc", "noise_sensitivity"]

#: Noise levels of the paper's sensitivity curves, on the [-1, 1] image scale.
DEFAULT_SIGMAS: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)


def curve_auc(sigmas: Sequence[float], values: Sequence[float]) -> float:
    """Trapezoidal area under a curve divided by the sigma range (its mean height).

    Args:
        sigmas: increasing noise levels, at least two.
        values: the metric at each level.

    Raises:
        InputError: fewer than two points, mismatched lengths or decreasing sigmas.
    """
    s, v = np.asarray(sigmas, np.float64), np.asarray(values, np.float64)
    if s.size < 2 or s.shape != v.shape or np.any(np.diff(s) <= 0):
        raise InputError(
            f"an area under the curve needs at least two increasing sigmas and one value "
            f"each; got sigmas {s.tolist()} and {v.size} values"
        )
    area = float(np.sum((v[1:] + v[:-1]) * np.diff(s)) / 2.0)
    return area / float(s[-1] - s[0])


def noise_sensitivity(
    translator: Translator,
    images: np.ndarray,
    masks: np.ndarray,
    *,
    direction: str = "AB",
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    batch_size: int = 32,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """MSE and SSIM between ``F(G(x) + n)`` and ``x`` for each noise level.

    Args:
        translator: a trained translator (eval mode).
        images: (N, H, W) source slices in [-1, 1], or (N, k, H, W) context stacks for a
            2.5-D translator (:meth:`~segrenorm.evaluate.data.EvalData.source_stacks`).
        masks: (N, H, W) boolean foreground (of the centre slices); metrics are averaged
            over it.
        direction: ``"AB"`` (x from site A: G then F) or ``"BA"``.
        sigmas: noise standard deviations, increasing, on the [-1, 1] scale.
        batch_size: slices per forward pass.
        seed: seeds the noise (the same noise for every method compared).
        device: where the translator lives.

    Returns:
        ``{"sigma", "mse", "ssim"}`` lists and ``mse_auc``, ``ssim_auc`` (curve means).

    Raises:
        ConfigError: an unknown direction, a negative sigma or a batch size below 1.
        InputError: images and masks of different shapes, or an empty mask.
    """
    check_direction(direction)
    levels = [float(s) for s in sigmas]
    if any(s < 0 for s in levels) or batch_size < 1:
        raise ConfigError(
            f"noise sigmas {levels} must be >= 0 and batch size {batch_size} at least 1"
        )
    stacks = as_stacks(images, masks, "noise_sensitivity")  # (N, k, H, W)
    centre = stacks.shape[1] // 2
    inside = masks.astype(bool)
    if not inside.any():
        raise InputError("noise_sensitivity: the foreground masks are empty")
    back = direction[::-1]
    generator = torch.Generator().manual_seed(seed)
    sq_err = np.zeros(len(levels))
    ssim_sum = np.zeros(len(levels))
    with torch.inference_mode():
        for start in range(0, len(stacks), batch_size):
            block = np.ascontiguousarray(stacks[start : start + batch_size], np.float32)
            x = image_batch(block).to(device)  # (b, k, H, W)
            chunk = block[:, centre]  # (b, H, W): what the cycle is scored against
            translated = translator.translate(x, direction)
            m = inside[start : start + batch_size]
            for k, sigma in enumerate(levels):
                noise = torch.randn(translated.shape, generator=generator) * sigma
                rec = translator.translate(translated + noise.to(translated.device), back)
                rec_np = rec[:, centre].float().cpu().numpy().astype(np.float64)
                sq_err[k] += float(((rec_np - chunk) ** 2)[m].sum())
                ssim_sum[k] += float(ssim_map(chunk, rec_np, data_range=2.0)[m].sum())
    count = float(inside.sum())
    mse = (sq_err / count).tolist()
    ssim = (ssim_sum / count).tolist()
    result: dict[str, Any] = {"sigma": levels, "mse": mse, "ssim": ssim}
    if len(levels) >= 2:
        result["mse_auc"] = curve_auc(levels, mse)
        result["ssim_auc"] = curve_auc(levels, ssim)
    return result
