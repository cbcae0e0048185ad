"""Weight initialisation shared by every network: N(0, 0.02), zero biases, opt-in zeros.

Layers that must start at zero (FiLM heads, so renorm starts as instance norm; the
generator's tail, so it starts as the identity) are *marked* instead of being zeroed
once: a later :func:`init_weights` over an enclosing network then keeps them at zero,
whatever order the networks are built and initialised in.
"""

from __future__ import annotations

from torch import nn

__all__ = ["INIT_STD", "init_weights", "mark_zero_init"]

INIT_STD = 0.02
_ZERO_FLAG = "_segrenorm_zero_init"
_INIT_TYPES = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


def mark_zero_init(layer: nn.Module) -> nn.Module:
    """Flag ``layer`` so that :func:`init_weights` sets its weight and bias to zero.

    Args:
        layer: a convolution or linear layer.

    Returns:
        The same layer, for use inline in constructors.
    """
    setattr(layer, _ZERO_FLAG, True)
    return layer


def init_weights(root: nn.Module, std: float = INIT_STD) -> None:
    """Draw conv and linear weights from N(0, std) and zero their biases, in place.

    Affine normalisation layers get weight 1 and bias 0; layers flagged with
    :func:`mark_zero_init` get zeros. Call this before wrapping layers with spectral
    norm, whose parametrisation hides the raw weight.

    Args:
        root: the network (every sub-module is visited).
        std: standard deviation of the normal draw.
    """
    for module in root.modules():
        if isinstance(module, _INIT_TYPES):
            if getattr(module, _ZERO_FLAG, False):
                nn.init.zeros_(module.weight)
            else:
                nn.init.normal_(module.weight, 0.0, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.InstanceNorm2d | nn.BatchNorm2d | nn.GroupNorm):
            if module.weight is not None:
                nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
