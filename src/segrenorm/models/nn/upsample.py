"""Nearest 2x upsampling followed by a convolution, computed at the low resolution.

After nearest 2x upsampling, the 3x3 neighbourhood of an output pixel covers only 2x2
distinct input pixels, and which kernel taps fall on which of them depends only on the
output pixel's parity (its *phase*: row and column even or odd). So
``conv3x3(upsample2x(x))`` equals four 2x2 convolutions of ``x`` with summed kernel taps,
interleaved: the same function with 16 instead of 36 multiply-adds per input pixel and
output channel, and no upsampled tensor in memory. A 1x1 convolution commutes with the
upsampling outright. The U-Net decoders use this for their ``[upsampled, skip]`` inputs:
results match the direct computation up to float rounding (the summation order differs).

Example:
    >>> import torch
    >>> conv = torch.nn.Conv2d(3, 2, kernel_size=3, padding=1)
    >>> x = torch.randn(1, 3, 4, 4)
    >>> direct = conv(torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))
    >>> torch.allclose(upsample_conv(x, conv), direct, atol=1e-6)
    True
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = ["fits_phase_conv", "phase_kernels", "upsample_cat_conv", "upsample_conv"]

# _TAPS[p, a, i] = 1 when kernel row i of an output row with parity p lands on the a-th of
# the two input rows it covers (rows r - 1 + p and r + p of the padded input).
_TAPS = (((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)), ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0)))


def fits_phase_conv(conv: nn.Conv2d) -> bool:
    """True for the convolutions :func:`upsample_conv` handles: 3x3 'same' or 1x1, stride 1.

    Args:
        conv: a convolution.
    """
    if conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1:
        return False
    if conv.padding_mode != "zeros":
        return False
    return (conv.kernel_size, conv.padding) in (((3, 3), (1, 1)), ((1, 1), (0, 0)))


def _tap_matrix(weight: Tensor) -> Tensor:
    """(9, 16) matrix: kernel tap (i, j) -> phase tap (p, a, q, b), the outer product of _TAPS."""
    taps = torch.tensor(_TAPS, dtype=weight.dtype, device=weight.device).reshape(4, 3)
    return (taps[:, None, :, None] * taps[None, :, None, :]).permute(2, 3, 0, 1).reshape(9, 16)


def phase_kernels(weight: Tensor) -> Tensor:
    """The four 2x2 kernels that replace a 3x3 kernel after nearest 2x upsampling.

    Args:
        weight: (O, C, 3, 3) kernel.

    Returns:
        (4 * O, C, 2, 2) kernels, ordered by phase (row parity, column parity) then O.
    """
    out_ch, in_ch = weight.shape[:2]
    # One (O*C, 9) x (9, 16) product with the taps' outer product: cheaper to dispatch and to
    # differentiate than an einsum over the two tap tensors.
    mixed = weight.reshape(out_ch * in_ch, 9) @ _tap_matrix(weight)  # (O*C, (p, a, q, b))
    phases = mixed.view(out_ch, in_ch, 2, 2, 2, 2).permute(2, 4, 0, 1, 3, 5)  # (p, q, O, C, a, b)
    return phases.reshape(4 * out_ch, in_ch, 2, 2)


class _InterleavePhases(torch.autograd.Function):
    """Scatter the phase outputs of a padded 2x2 convolution into the 2x-upsampled grid.

    ``phases`` is (B, 4 * O, H + 1, W + 1); the output pixel (2i + p, 2j + q) takes
    ``phases[:, (2p + q) * O + o, i + p, j + q]``. When ``base`` (B, O, 2H, 2W) is given the
    phases are added to it in place (it must be a fresh tensor nothing else saved), which
    saves one pass over the output.
    """

    @staticmethod
    def forward(ctx: Any, phases: Tensor, base: Tensor | None) -> Tensor:
        n, four_o, hp, wp = phases.shape
        o, h, w = four_o // 4, hp - 1, wp - 1
        if base is None:
            out = phases.new_empty(n, o, h, 2, w, 2)
        else:
            ctx.mark_dirty(base)
            out = base.view(n, o, h, 2, w, 2)
        for p in range(2):
            for q in range(2):
                block = phases[:, (2 * p + q) * o : (2 * p + q + 1) * o, p : p + h, q : q + w]
                if base is None:
                    out[:, :, :, p, :, q] = block
                else:
                    out[:, :, :, p, :, q] += block
        ctx.phase_shape = phases.shape
        ctx.has_base = base is not None
        return base if base is not None else out.view(n, o, 2 * h, 2 * w)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        n, four_o, hp, wp = ctx.phase_shape
        o, h, w = four_o // 4, hp - 1, wp - 1
        grad6 = grad.reshape(n, o, h, 2, w, 2)
        # One row and one column of every phase block fall outside the image: zero there.
        grad_phases = grad.new_zeros(ctx.phase_shape)
        for p in range(2):
            for q in range(2):
                block = grad_phases[:, (2 * p + q) * o : (2 * p + q + 1) * o, p : p + h, q : q + w]
                block.copy_(grad6[:, :, :, p, :, q])
        return grad_phases, (grad if ctx.has_base else None)


class _AddUpsampled(torch.autograd.Function):
    """``base + upsample2x(small)`` (nearest), added in place into the fresh ``base``.

    Autograd's own version (a broadcasting add over two parity axes) reduces its gradient
    over those strided axes, which is several times slower than 2x2 sum pooling.
    """

    @staticmethod
    def forward(ctx: Any, base: Tensor, small: Tensor) -> Tensor:
        n, o, h, w = small.shape
        ctx.mark_dirty(base)
        base.view(n, o, h, 2, w, 2).add_(small[:, :, :, None, :, None])
        return base

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:
        return grad, F.avg_pool2d(grad, 2) * 4.0  # sum over each 2x2 block


def _phase_conv(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """The padded 2x2 phase convolution: (B, C, H, W) -> (B, 4 * O, H + 1, W + 1)."""
    bias4 = bias.repeat(4) if bias is not None else None
    # Zero padding 1 with a 2x2 kernel gives (H + 1) x (W + 1) outputs: every phase's window.
    return F.conv2d(x, phase_kernels(weight), bias4, padding=1)


def upsample_conv(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """``conv(upsample2x(x))`` for nearest 2x upsampling, computed at x's resolution.

    Args:
        x: features (B, C, H, W).
        conv: a convolution accepted by :func:`fits_phase_conv`; others run directly.

    Returns:
        (B, O, 2H, 2W).
    """
    if not fits_phase_conv(conv):
        return conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    if conv.kernel_size == (1, 1):
        return F.interpolate(conv(x), scale_factor=2.0, mode="nearest")
    return _InterleavePhases.apply(_phase_conv(x, conv.weight, conv.bias), None)


def upsample_cat_conv(low: Tensor, skip: Tensor, conv: nn.Conv2d) -> Tensor:
    """``conv(cat([upsample2x(low), skip], 1))`` without the upsampled or concatenated tensor.

    The kernel is split by input channels: the ``skip`` part runs at full resolution, the
    ``low`` part at low resolution (by phases for 3x3, before upsampling for 1x1), and the two
    are summed.

    Args:
        low: decoder features (B, C1, H, W).
        skip: encoder features (B, C2, 2H, 2W).
        conv: a convolution with C1 + C2 input channels accepted by :func:`fits_phase_conv`;
            others run on the concatenation directly.

    Returns:
        (B, O, 2H, 2W).
    """
    if not fits_phase_conv(conv):
        up = F.interpolate(low, scale_factor=2.0, mode="nearest")
        return conv(torch.cat([up, skip], dim=1))
    c_low = low.shape[1]
    weight = conv.weight
    base = F.conv2d(skip, weight[:, c_low:], conv.bias, padding=conv.padding)  # (B, O, 2H, 2W)
    if conv.kernel_size == (1, 1):
        return _AddUpsampled.apply(base, F.conv2d(low, weight[:, :c_low]))
    return _InterleavePhases.apply(_phase_conv(low, weight[:, :c_low], None), base)
