"""Translation generators G and F: a residual U-Net, plain or segmentation-renormalised."""

from __future__ import annotations

import typing

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segrenorm.errors import InputError
from segrenorm.models.nn.blocks import LRELU_SLOPE, RenormResBlock, ResBlock, down_conv
from segrenorm.models.nn.init import init_weights, mark_zero_init
from segrenorm.models.nn.renorm import FILM_INIT_STD
from segrenorm.models.nn.segnet import check_image_batch, level_width
from segrenorm.models.nn.upsample import upsample_conv

__all__ = ["Generator"]

# atanh(+-(1 - 1e-3)) is about +-3.8: finite, and the identity error stays below 1e-3.
CLAMP = 1.0 - 1e-3


class Generator(nn.Module):
    """Residual U-Net generator (the paper's Fig. 4 C).

    Layout for ``n_downsample = d``: a 4x4 stride-2 conv head (ngf); encoder blocks at
    widths ``ngf * min(2**i, 8)`` for i = 0..d-1 with 4x4 stride-2 convs between them
    (d stride-2 stages in all, the head included); ``n_middle_blocks`` blocks at the
    bottleneck; d-1 decoder blocks over ``[nearest-2x-upsampled, skip]`` back down to ngf;
    a final nearest 2x upsampling and a 3x3 conv tail.

    With ``residual_output`` the output is ``tanh(atanh(clamp(x)) + tail)`` and the tail
    starts at zero, so the generator starts as the identity; otherwise ``tanh(tail)``.

    Args:
        ngf: width after the head.
        n_downsample: stride-2 stages d; H and W must be multiples of ``2**d``.
        n_middle_blocks: residual blocks at the bottleneck.
        embed_dim: None builds the plain baseline generator (ResBlocks); an int builds
            the renormalised one (RenormResBlocks) that needs an embedding in ``forward``.
        residual_output: start as the identity (see above).
        film_init_std: initial std of the FiLM gamma/beta for a unit-rms embedding (see
            :class:`~segrenorm.models.nn.renorm.SegRenorm`); 0 zeroes the heads.
        channels: image channels (in and out).

    Example:
        >>> import torch
        >>> gen = Generator(ngf=4, n_downsample=2, embed_dim=8)
        >>> gen(torch.zeros(2, 1, 16, 16), torch.zeros(2, 8)).shape
        torch.Size([2, 1, 16, 16])
    """

    def __init__(
        self,
        *,
        ngf: int = 64,
        n_downsample: int = 4,
        n_middle_blocks: int = 2,
        embed_dim: int | None = None,
        residual_output: bool = True,
        film_init_std: float = FILM_INIT_STD,
        channels: int = 1,
    ) -> None:
        super().__init__()
        if n_downsample < 1:
            raise InputError(f"Generator n_downsample={n_downsample} must be >= 1.")
        self.n_downsample = n_downsample
        self.embed_dim = embed_dim
        self.residual_output = residual_output
        self.channels = channels

        def block(in_ch: int, out_ch: int) -> nn.Module:
            if embed_dim is None:
                return ResBlock(in_ch, out_ch)
            return RenormResBlock(in_ch, out_ch, embed_dim, film_init_std=film_init_std)

        widths = [level_width(ngf, i) for i in range(n_downsample)]
        self.head = down_conv(channels, ngf)
        self.encoder = nn.ModuleList(
            [block(ngf, widths[0])]
            + [block(widths[i - 1], widths[i]) for i in range(1, n_downsample)]
        )
        # Downsampling keeps the width; the following block widens.
        self.downs = nn.ModuleList(down_conv(widths[i], widths[i]) for i in range(n_downsample - 1))
        self.middle = nn.ModuleList(block(widths[-1], widths[-1]) for _ in range(n_middle_blocks))
        self.decoder = nn.ModuleList(
            block(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(n_downsample - 1))
        )
        self.tail = nn.Conv2d(ngf, channels, kernel_size=3, padding=1)
        if residual_output:
            mark_zero_init(self.tail)
        init_weights(self)

    @property
    def stride(self) -> int:
        """H and W must be multiples of this (``2**n_downsample``)."""
        return int(2**self.n_downsample)

    @property
    def conditioned(self) -> bool:
        """True for the renormalised generator, which needs an embedding."""
        return self.embed_dim is not None

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        """Translate a batch.

        Args:
            x: images (B, channels, H, W) in [-1, 1], H and W multiples of :attr:`stride`.
            emb: semantic embeddings (B, embed_dim) for the renormalised generator;
                ignored by the plain one.

        Returns:
            Translated images (B, channels, H, W) in (-1, 1).
        """
        check_image_batch(x, self.channels, self.stride, "Generator")
        if self.conditioned and emb is None:
            raise InputError(
                "this Generator is segmentation-renormalised: pass the embedding emb "
                f"(B, {self.embed_dim}) from the semantic extractor."
            )
        h = F.leaky_relu(self.head(x), LRELU_SLOPE, inplace=True)  # (B, ngf, H/2, W/2)
        skips: list[Tensor] = []
        for i, block in enumerate(self.encoder):
            if i > 0:
                h = self.downs[i - 1](h)
            h = block(h, emb)
            skips.append(h)
        skips.pop()  # the deepest encoder output continues as h
        for block in self.middle:
            h = block(h, emb)
        for block in typing.cast("list[ResBlock | RenormResBlock]", self.decoder):
            h = block.forward_up(h, skips.pop(), emb)  # block(cat([upsample2x(h), skip]))
        delta = upsample_conv(h, self.tail)  # self.tail(upsample2x(h)): (B, channels, H, W)
        if self.residual_output:
            return torch.tanh(torch.atanh(x.clamp(-CLAMP, CLAMP)) + delta)
        return torch.tanh(delta)
