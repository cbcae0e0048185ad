"""The wrong-segmentation control: a conditioned translator fed another slice's segmentation.

For a segmentation-renormalised translator the control row ``NAME (wrong seg)`` holds
``G(x | f(x'))``: every held-out source slice ``x`` translated with the segmentation
embedding of another held-out slice ``x'``, the partner that the conditioning-sensitivity
figure gives it (:func:`~segrenorm.evaluate.conditioning.partner_rows`, same seed). It is
scored on every lens except robustness, next to its method's own row ``G(x | f(x))``: what a
lens loses between the two is what the segmentation conditioning contributes to it. If the
conditioning does nothing, the two rows are equal.

The translation is one function of a batch of pairs, (B, 2k, H, W) ``[x, x']`` -> (B, k, H, W)
(:func:`~segrenorm.models.conditioning.translate_with_partner`; k is 1, or the slices of a
2.5-D context stack), so a tiled translation can wrap it exactly as it wraps the method's own
row (each tile's partner is the partner's tile at the same place).

Example:
    >>> control_name("segrenorm"), control_method("segrenorm (wrong seg)")
    ('segrenorm (wrong seg)', 'segrenorm')
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from segrenorm.errors import InputError
from segrenorm.evaluate.data import as_stacks
from segrenorm.evaluate.methods import translator_slices

__all__ = [
    "CONTROL_KIND",
    "CONTROL_SUFFIX",
    "control_method",
    "control_name",
    "partner_stacks",
    "wrong_segmentation_slices",
]

#: The kind of a control row in ``results["methods"]``.
CONTROL_KIND = "control"
#: Appended to a method's name to name its wrong-segmentation control.
CONTROL_SUFFIX = " (wrong seg)"


def control_name(method: str) -> str:
    """The name of ``method``'s wrong-segmentation control row.

    Args:
        method: the conditioned translator's row name.
    """
    return f"{method}{CONTROL_SUFFIX}"


def control_method(name: str) -> str | None:
    """The method a control row belongs to, or None for a name that is not a control's.

    Args:
        name: a row name.
    """
    if name.endswith(CONTROL_SUFFIX) and len(name) > len(CONTROL_SUFFIX):
        return name[: -len(CONTROL_SUFFIX)]
    return None


def partner_stacks(images: np.ndarray, partner: np.ndarray) -> np.ndarray:
    """Each slice (or context stack) with its partner's as more channels: (N, 2k, H, W).

    Args:
        images: (N, H, W) slices or (N, k, H, W) context stacks.
        partner: (N,) row of each slice's partner.

    Raises:
        InputError: images of another rank, or a partner list of another length or out of
            range.
    """
    stacks = as_stacks(images, None, "the wrong-segmentation control")  # (N, k, H, W)
    partner = np.asarray(partner)
    n = len(stacks)
    if partner.shape != (n,) or (n and (partner.min() < 0 or partner.max() >= n)):
        raise InputError(
            f"the wrong-segmentation control needs one partner row in [0, {n}) per slice, "
            f"got {partner.shape[0] if partner.ndim == 1 else partner.shape} rows "
            f"(use partner_rows({n}, seed))"
        )
    return np.concatenate([stacks, stacks[partner]], axis=1)


def wrong_segmentation_slices(
    translate_pair: Callable[[torch.Tensor], torch.Tensor],
    images: np.ndarray,
    masks: np.ndarray,
    partner: np.ndarray,
    *,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    keep: np.ndarray | None = None,
) -> np.ndarray:
    """The control's slices: each slice translated with its partner's segmentation.

    Args:
        translate_pair: (B, 2k, H, W) ``[x, x']`` -> (B, 1 or k, H, W), e.g.
            ``functools.partial(translate_with_partner, model)``, possibly tiled.
        images: (N, H, W) held-out slices or (N, k, H, W) context stacks, what the method's
            own row was translated from.
        masks: (N, H, W) foreground; background stays -1.
        partner: (N,) partner row of each slice (:func:`partner_rows`).
        batch_size: slices per forward pass.
        device: where the translator lives.
        keep: where the translation is kept (see
            :func:`~segrenorm.evaluate.methods.translator_slices`); None: ``masks``.

    Returns:
        (N, H, W) float32 slices, row-aligned with ``images``.

    Raises:
        ConfigError: a batch size below 1.
        InputError: shapes that do not fit (see :func:`partner_stacks`).
    """
    pairs = partner_stacks(images, partner)
    return translator_slices(
        translate_pair, pairs, masks, batch_size=batch_size, device=device, keep=keep
    )
