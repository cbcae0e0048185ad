"""Residual blocks shared by the generators and segmentation nets.

Both block kinds take ``forward(x, emb=None)`` so that the plain (baseline) and the
renormalised generator run one code path; the plain block ignores ``emb``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segrenorm.errors import InputError
from segrenorm.models.nn.norm_act import norm_act, use_fused
from segrenorm.models.nn.renorm import FILM_INIT_STD, SegRenorm
from segrenorm.models.nn.upsample import upsample_cat_conv

__all__ = ["RenormResBlock", "ResBlock", "conv3x3", "down_conv", "upsample2x"]

LRELU_SLOPE = 0.2


def conv3x3(in_ch: int, out_ch: int, *, bias: bool = False) -> nn.Conv2d:
    """3x3 'same' convolution; no bias by default because a norm follows and removes it.

    Args:
        in_ch: input channels.
        out_ch: output channels.
        bias: add a learned bias.
    """
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=bias)


def down_conv(in_ch: int, out_ch: int) -> nn.Conv2d:
    """4x4 stride-2 convolution that halves H and W (even sizes).

    Args:
        in_ch: input channels.
        out_ch: output channels.
    """
    return nn.Conv2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1)


def upsample2x(x: Tensor) -> Tensor:
    """Nearest-neighbour 2x upsampling: (B, C, H, W) -> (B, C, 2H, 2W)."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


class ResBlock(nn.Module):
    """conv3x3 -> InstanceNorm(affine) -> act -> conv3x3 -> InstanceNorm, plus shortcut, act.

    The baselines' block. It uses the same leaky ReLU (slope 0.2) as
    :class:`RenormResBlock` by default, so that baseline and method differ only in
    the conditioning; pass ``negative_slope=0`` for the ReLU of the paper's Fig. 3.

    Args:
        in_ch: input channels.
        out_ch: output channels; when it differs from ``in_ch`` the shortcut is a
            1x1 convolution followed by a norm.
        negative_slope: leaky ReLU slope (0 gives ReLU).
    """

    def __init__(self, in_ch: int, out_ch: int, *, negative_slope: float = LRELU_SLOPE) -> None:
        super().__init__()
        self.negative_slope = negative_slope
        self.conv1 = conv3x3(in_ch, out_ch)
        self.norm1 = nn.InstanceNorm2d(out_ch, affine=True)
        self.conv2 = conv3x3(out_ch, out_ch)
        self.norm2 = nn.InstanceNorm2d(out_ch, affine=True)
        self.skip: nn.Conv2d | None = None
        self.skip_norm: nn.InstanceNorm2d | None = None
        if in_ch != out_ch:
            self.skip = nn.Conv2d(in_ch, out_ch, kernel_size=1, bias=False)
            self.skip_norm = nn.InstanceNorm2d(out_ch, affine=True)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        """Apply the block.

        Args:
            x: features (B, in_ch, H, W).
            emb: ignored; accepted so plain and renorm blocks are interchangeable.

        Returns:
            (B, out_ch, H, W) features.
        """
        shortcut = self.skip(x) if self.skip is not None else x
        return self._finish(self.conv1(x), shortcut)

    def forward_up(self, low: Tensor, skip: Tensor, emb: Tensor | None = None) -> Tensor:
        """``forward(cat([upsample2x(low), skip], 1))``, without building that input.

        The convolutions that read the concatenation run the ``low`` part at low
        resolution (see :mod:`segrenorm.models.nn.upsample`); equal up to float rounding.

        Args:
            low: decoder features (B, C1, H, W).
            skip: encoder features (B, C2, 2H, 2W), C1 + C2 = in_ch.
            emb: ignored.

        Returns:
            (B, out_ch, 2H, 2W) features.
        """
        if self.skip is None:
            return self.forward(torch.cat([upsample2x(low), skip], dim=1))
        h = upsample_cat_conv(low, skip, self.conv1)
        return self._finish(h, upsample_cat_conv(low, skip, self.skip))

    def _finish(self, h: Tensor, shortcut: Tensor) -> Tensor:
        """Norm, act, second conv and norm on conv1's output ``h``; add the shortcut; act."""
        if use_fused(h):  # the same function in fewer passes (models/nn/norm_act.py)
            b, slope = h.shape[0], self.negative_slope
            h = self.conv2(norm_act(h, *_affine(self.norm1, b), slope=slope, eps=self.norm1.eps))
            if self.skip_norm is not None:
                sn = self.skip_norm
                shortcut = norm_act(shortcut, *_affine(sn, b), eps=sn.eps)
            scale, shift = _affine(self.norm2, b)
            return norm_act(h, scale, shift, residual=shortcut, slope=slope, eps=self.norm2.eps)
        h = F.leaky_relu(self.norm1(h), self.negative_slope, inplace=True)
        h = self.norm2(self.conv2(h))
        if self.skip_norm is not None:
            shortcut = self.skip_norm(shortcut)
        return F.leaky_relu(h + shortcut, self.negative_slope, inplace=True)


class RenormResBlock(nn.Module):
    """Segmentation-renormalised residual block (the paper's Fig. 3, bottom).

    conv3x3 -> SegRenorm -> lrelu(0.2) -> conv3x3 -> SegRenorm, plus a shortcut
    (identity, or 1x1 conv + SegRenorm when widths differ), then lrelu(0.2).

    Args:
        in_ch: input channels.
        out_ch: output channels.
        embed_dim: size of the semantic embedding.
        film_init_std: initial std of the FiLM gamma/beta (see :class:`SegRenorm`; 0 zeroes
            the heads, so the block starts with instance norms).
    """

    def __init__(
        self, in_ch: int, out_ch: int, embed_dim: int, *, film_init_std: float = FILM_INIT_STD
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch)
        self.norm1 = SegRenorm(out_ch, embed_dim, film_init_std)
        self.conv2 = conv3x3(out_ch, out_ch)
        self.norm2 = SegRenorm(out_ch, embed_dim, film_init_std)
        self.skip: nn.Conv2d | None = None
        self.skip_norm: SegRenorm | None = None
        if in_ch != out_ch:
            self.skip = nn.Conv2d(in_ch, out_ch, kernel_size=1, bias=False)
            self.skip_norm = SegRenorm(out_ch, embed_dim, film_init_std)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        """Apply the block.

        Args:
            x: features (B, in_ch, H, W).
            emb: semantic embeddings (B, embed_dim); required.

        Returns:
            (B, out_ch, H, W) features.
        """
        emb = _require_emb(emb)
        shortcut = self.skip(x) if self.skip is not None else x
        return self._finish(self.conv1(x), shortcut, emb)

    def forward_up(self, low: Tensor, skip: Tensor, emb: Tensor | None = None) -> Tensor:
        """``forward(cat([upsample2x(low), skip], 1), emb)``, without building that input.

        The convolutions that read the concatenation run the ``low`` part at low
        resolution (see :mod:`segrenorm.models.nn.upsample`); equal up to float rounding.

        Args:
            low: decoder features (B, C1, H, W).
            skip: encoder features (B, C2, 2H, 2W), C1 + C2 = in_ch.
            emb: semantic embeddings (B, embed_dim); required.

        Returns:
            (B, out_ch, 2H, 2W) features.
        """
        emb = _require_emb(emb)
        if self.skip is None:
            return self.forward(torch.cat([upsample2x(low), skip], dim=1), emb)
        h = upsample_cat_conv(low, skip, self.conv1)
        return self._finish(h, upsample_cat_conv(low, skip, self.skip), emb)

    def _finish(self, h: Tensor, shortcut: Tensor, emb: Tensor) -> Tensor:
        """Renorm, act, second conv and renorm on conv1's output ``h``; add the shortcut; act."""
        if use_fused(h):  # the same function in fewer passes (models/nn/norm_act.py)
            n1, n2 = self.norm1, self.norm2
            h = self.conv2(norm_act(h, *n1.affine(h, emb), slope=LRELU_SLOPE, eps=n1.eps))
            if self.skip_norm is not None:
                sn = self.skip_norm
                shortcut = norm_act(shortcut, *sn.affine(shortcut, emb), eps=sn.eps)
            scale, shift = n2.affine(h, emb)
            return norm_act(h, scale, shift, residual=shortcut, slope=LRELU_SLOPE, eps=n2.eps)
        h = F.leaky_relu(self.norm1(h, emb), LRELU_SLOPE, inplace=True)
        h = self.norm2(self.conv2(h), emb)
        if self.skip_norm is not None:
            shortcut = self.skip_norm(shortcut, emb)
        return F.leaky_relu(h + shortcut, LRELU_SLOPE, inplace=True)


def _affine(norm: nn.InstanceNorm2d, batch: int) -> tuple[Tensor, Tensor]:
    """An affine instance norm's per-channel weight and bias as per-sample (B, C) maps."""
    assert norm.weight is not None and norm.bias is not None  # affine=True
    return norm.weight.expand(batch, -1), norm.bias.expand(batch, -1)


def _require_emb(emb: Tensor | None) -> Tensor:
    if emb is None:
        raise InputError(
            "RenormResBlock needs the semantic embedding (B, embed_dim): pass emb=..., "
            "or build a plain generator (embed_dim=None) for unconditioned use."
        )
    return emb
