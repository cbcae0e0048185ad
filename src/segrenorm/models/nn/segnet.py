"""Segmentation nets S and Q: a residual U-Net ending in per-class logits."""

from __future__ import annotations

import typing

import torch.nn.functional as F
from torch import Tensor, nn

from segrenorm.errors import InputError
from segrenorm.models.nn.blocks import ResBlock
from segrenorm.models.nn.init import init_weights

__all__ = ["SegUNet", "check_image_batch", "level_width"]


def level_width(base: int, level: int, cap: int = 8) -> int:
    """Channels at a U-Net level: ``base * min(2**level, cap)``.

    Args:
        base: width at level 0.
        level: 0 at full resolution, +1 per halving.
        cap: largest multiple of ``base``.
    """
    return base * min(2**level, cap)


def check_image_batch(x: Tensor, channels: int, stride: int, what: str) -> None:
    """Raise :class:`InputError` unless ``x`` is (B, channels, H, W) with H, W divisible.

    Args:
        x: the batch.
        channels: expected channel count.
        stride: H and W must be multiples of this.
        what: the network's name, for the message.
    """
    if x.dim() != 4 or x.shape[1] != channels:
        raise InputError(f"{what} expects a batch (B, {channels}, H, W), got {tuple(x.shape)}.")
    h, w = x.shape[-2:]
    if h % stride or w % stride or h == 0 or w == 0:
        raise InputError(
            f"{what} needs H and W divisible by its stride {stride}, got {h}x{w}: pad or crop "
            f"the image to a multiple of {stride}."
        )


class SegUNet(nn.Module):
    """Residual U-Net: max-pool encoder, nearest-upsampling decoder with skip concatenation.

    Widths are ``ngf * min(2**level, 8)``; the final 1x1 convolution gives class logits.

    Args:
        n_classes: output classes (background included).
        ngf: width at full resolution.
        depth: number of 2x downsamplings; H and W must be multiples of ``2**depth``.
        in_channels: image channels.

    Example:
        >>> import torch
        >>> net = SegUNet(n_classes=3, ngf=4, depth=2)
        >>> net(torch.zeros(2, 1, 16, 16)).shape
        torch.Size([2, 3, 16, 16])
    """

    def __init__(
        self, *, n_classes: int, ngf: int = 32, depth: int = 4, in_channels: int = 1
    ) -> None:
        super().__init__()
        if depth < 1:
            raise InputError(f"SegUNet depth={depth} must be >= 1.")
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.depth = depth
        widths = [level_width(ngf, i) for i in range(depth + 1)]
        self.encoder = nn.ModuleList([ResBlock(in_channels, widths[0])])
        self.encoder.extend(ResBlock(widths[i - 1], widths[i]) for i in range(1, depth + 1))
        self.decoder = nn.ModuleList(
            ResBlock(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(depth))
        )
        self.head = nn.Conv2d(widths[0], n_classes, kernel_size=1)
        init_weights(self)

    @property
    def stride(self) -> int:
        """H and W must be multiples of this."""
        return int(2**self.depth)

    def forward(self, x: Tensor) -> Tensor:
        """Segment a batch.

        Args:
            x: images (B, in_channels, H, W), H and W multiples of :attr:`stride`.

        Returns:
            Logits (B, n_classes, H, W).
        """
        check_image_batch(x, self.in_channels, self.stride, "SegUNet")
        skips: list[Tensor] = []
        h = x
        for i, block in enumerate(self.encoder):
            if i > 0:
                h = F.max_pool2d(h, 2)
            h = block(h)
            skips.append(h)
        skips.pop()  # the bottleneck output is h itself
        for block in typing.cast("list[ResBlock]", self.decoder):
            h = block.forward_up(h, skips.pop())  # block(cat([upsample2x(h), skip]))
        return self.head(h)  # (B, n_classes, H, W)
