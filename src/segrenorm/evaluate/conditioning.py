"""Conditioning sensitivity of a translator on the held-out slices.

The figure of :mod:`segrenorm.models.conditioning`,
``mean_fg |G(x | f(x)) - G(x | f(x'))| / mean_fg |G(x | f(x)) - x|``, pooled over every
held-out source slice, where each slice ``x`` is given the embedding of another held-out
slice ``x'``: a seeded random cycle through all of them, so no slice keeps its own and the
partner is rarely a neighbouring slice of the same subject (whose segmentation is nearly
the same). Only the segmentation-renormalised translator is conditioned on an embedding;
the others have no figure (None). It is measured on whole slices, one embedding per slice
(training logs it with one per crop), whatever ``--tiles`` says for the method rows.

Example:
    >>> figure = slice_conditioning(model, data.source.images, data.source.masks)  # doctest: +SKIP
    >>> figure["sensitivity"]  # doctest: +SKIP
    0.012
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from segrenorm.errors import ConfigError, InputError
from segrenorm.evaluate.data import as_stacks
from segrenorm.models.conditioning import ConditioningSums, conditioning_sums, embed_batch
from segrenorm.models.inference import image_batch
from segrenorm.models.translator import Translator
from segrenorm.vocabulary import check_direction

__all__ = ["partner_rows", "slice_conditioning"]


def partner_rows(n: int, seed: int = 0) -> np.ndarray:
    """For each of ``n`` slices another slice: one random cycle through all of them.

    Args:
        n: number of slices, at least 2.
        seed: seeds the cycle.

    Returns:
        (n,) int64 array ``p`` with ``p[i] != i`` and every row used once as a partner.

    Raises:
        InputError: fewer than two slices.
    """
    if n < 2:
        raise InputError(
            f"conditioning sensitivity needs at least 2 slices to swap embeddings, got {n}."
        )
    order = np.random.default_rng(seed).permutation(n)
    partner = np.empty(n, dtype=np.int64)
    partner[order] = np.roll(order, -1)  # order[i] -> order[i + 1]
    return partner


def slice_conditioning(
    translator: Translator,
    images: np.ndarray,
    masks: np.ndarray,
    *,
    direction: str = "AB",
    batch_size: int = 32,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, Any] | None:
    """The conditioning sensitivity of a translator over a set of slices.

    Args:
        translator: any of the four translators.
        images: (N, H, W) slices in [-1, 1] (H, W multiples of the translator's stride), or
            (N, k, H, W) context stacks for a 2.5-D translator (the figure is then taken on
            the centre slices).
        masks: (N, H, W) boolean foreground of the (centre) slices.
        direction: ``"AB"`` (G, conditioned on S) or ``"BA"`` (F, on Q).
        batch_size: slices per forward pass.
        seed: seeds the pairing of slices (:func:`partner_rows`).
        device: where the translator lives.

    Returns:
        ``{sensitivity, change, translation, pixels, slices}`` (the means are per
        foreground pixel, on the [-1, 1] scale), or None for a translator that is not
        conditioned on an embedding.

    Raises:
        ConfigError: an unknown direction or a batch size below 1.
        InputError: images and masks of different shapes, or fewer than two slices.
    """
    check_direction(direction)
    if batch_size < 1:
        raise ConfigError(f"batch size {batch_size} must be at least 1")
    stacks = as_stacks(images, masks, "conditioning sensitivity")  # (N, k, H, W)
    partner = partner_rows(len(images), seed)

    def batch(start: int) -> torch.Tensor:
        return image_batch(stacks[start : start + batch_size]).to(device)  # (b, k, H, W)

    starts = range(0, len(images), batch_size)
    pieces = [embed_batch(translator, batch(start), direction) for start in starts]
    if any(p is None for p in pieces):
        return None
    embeddings = torch.cat([p for p in pieces if p is not None])  # (N, embed_dim)
    index = torch.from_numpy(partner).to(embeddings.device)
    total = ConditioningSums()
    for start in starts:
        rows = slice(start, start + batch_size)
        inside = torch.from_numpy(np.ascontiguousarray(masks[rows], bool)).to(device)
        total = total + conditioning_sums(
            translator, batch(start), inside, embeddings[rows], embeddings[index[rows]], direction
        )
    return {**total.as_dict(), "slices": len(images)}
