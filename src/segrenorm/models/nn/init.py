"""Weight initialisation shared by every network: N(0, 0.02), zero biases, per-layer marks.

Layers that need another draw are *marked* instead of being initialised once: a later
:func:`init_weights` over an enclosing network then keeps their draw, whatever order the
networks are built and initialised in. The marks used: zeros (the generator's tail, so it
starts as the identity), a small normal draw (FiLM heads, so renorm starts close to instance
norm while gradient still reaches the semantic extractor), and He/Kaiming draws (the
semantic extractor, whose six unnormalised layers would shrink an N(0, 0.02) signal to
~1e-5).
"""

from __future__ import annotations

import math
from typing import TypeVar

from torch import nn

from segrenorm.errors import InputError

__all__ = ["INIT_STD", "KAIMING", "init_weights", "mark_init", "mark_zero_init"]

INIT_STD = 0.02
#: The mark for He/Kaiming normal weights (fan-in, ReLU gain sqrt(2)).
KAIMING = "kaiming"
_MARK = "_segrenorm_init"
_INIT_TYPES = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
Layer = TypeVar("Layer", bound=nn.Module)


def mark_init(layer: Layer, draw: float | str) -> Layer:
    """Flag ``layer`` so that :func:`init_weights` draws its weight as ``draw`` says.

    Args:
        layer: a convolution or linear layer.
        draw: a standard deviation >= 0 for N(0, draw**2) weights (0 gives zeros), or
            :data:`KAIMING` for He normal weights (std sqrt(2 / fan_in)).

    Returns:
        The same layer, for use inline in constructors.

    Raises:
        InputError: ``draw`` is negative, not finite, or an unknown word.
    """
    if isinstance(draw, str):
        if draw != KAIMING:
            raise InputError(f"weight draw {draw!r} is unknown: use a std >= 0 or {KAIMING!r}.")
    elif not (math.isfinite(draw) and draw >= 0):
        raise InputError(f"weight std {draw} must be finite and >= 0.")
    setattr(layer, _MARK, draw)
    return layer


def mark_zero_init(layer: Layer) -> Layer:
    """Flag ``layer`` so that :func:`init_weights` sets its weight and bias to zero.

    Args:
        layer: a convolution or linear layer.

    Returns:
        The same layer, for use inline in constructors.
    """
    return mark_init(layer, 0.0)


def init_weights(root: nn.Module, std: float = INIT_STD) -> None:
    """Draw conv and linear weights from N(0, std) and zero their biases, in place.

    Affine normalisation layers get weight 1 and bias 0; layers flagged with
    :func:`mark_init` get their own draw. Call this before wrapping layers with spectral
    norm, whose parametrisation hides the raw weight.

    Args:
        root: the network (every sub-module is visited).
        std: standard deviation of the normal draw of unmarked layers.
    """
    for module in root.modules():
        if isinstance(module, _INIT_TYPES):
            draw = getattr(module, _MARK, std)
            if draw == KAIMING:
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            elif draw == 0:
                nn.init.zeros_(module.weight)
            else:
                nn.init.normal_(module.weight, 0.0, float(draw))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.InstanceNorm2d | nn.BatchNorm2d | nn.GroupNorm):
            if module.weight is not None:
                nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
