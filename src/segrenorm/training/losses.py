"""Training losses: least-squares GAN, weighted cross-entropy, L1 cycle consistency.

Every loss takes tensors and returns a 0-d tensor (a mean over every element).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from segrenorm.errors import InputError

__all__ = ["cycle_l1", "lsgan_d", "lsgan_g", "weighted_ce"]


def lsgan_d(real_pred: Tensor, fake_pred: Tensor) -> Tensor:
    """Least-squares discriminator loss ``0.5 * (mean((real - 1)^2) + mean(fake^2))``.

    Args:
        real_pred: discriminator scores on real images, any shape.
        fake_pred: scores on translated images, any shape.
    """
    return 0.5 * ((real_pred - 1.0).square().mean() + fake_pred.square().mean())


def lsgan_g(fake_pred: Tensor) -> Tensor:
    """Least-squares generator loss ``mean((fake - 1)^2)``.

    Args:
        fake_pred: discriminator scores on translated images, any shape.
    """
    return (fake_pred - 1.0).square().mean()


def weighted_ce(logits: Tensor, target: Tensor, class_weights: Tensor) -> Tensor:
    """Class-weighted cross-entropy (``torch.nn.functional.cross_entropy`` with ``weight``).

    The mean divides by the summed weights of the target pixels, as torch does.

    Args:
        logits: (B, C, H, W) unnormalised scores.
        target: (B, H, W) int64 class indices in [0, C).
        class_weights: (C,) weights.
    """
    if logits.dim() != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
        raise InputError(
            f"weighted_ce expects logits (B, C, H, W) and target (B, H, W) of matching size, "
            f"got {tuple(logits.shape)} and {tuple(target.shape)}."
        )
    if class_weights.shape != (logits.shape[1],):
        raise InputError(
            f"weighted_ce got {tuple(class_weights.shape)} class weights for "
            f"{logits.shape[1]} classes: give one weight per class."
        )
    if target.dtype != torch.long:
        raise InputError(
            f"weighted_ce target must be int64 class indices, got {target.dtype}: "
            "convert label maps with .long()."
        )
    return F.cross_entropy(logits, target, weight=class_weights.to(logits.dtype))


def cycle_l1(x: Tensor, x_rec: Tensor) -> Tensor:
    """Mean absolute error between an image and its reconstruction.

    Args:
        x: original images (B, C, H, W).
        x_rec: reconstructions of the same shape.
    """
    if x.shape != x_rec.shape:
        raise InputError(
            f"cycle_l1 got images {tuple(x.shape)} and reconstructions {tuple(x_rec.shape)}: "
            "shapes must match."
        )
    return (x - x_rec).abs().mean()
