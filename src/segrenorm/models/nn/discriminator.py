"""PatchGAN discriminators D_X and D_Y with spectral norm on every convolution."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from segrenorm.errors import InputError
from segrenorm.models.nn.blocks import LRELU_SLOPE
from segrenorm.models.nn.init import init_weights

__all__ = ["PatchDiscriminator", "patch_receptive_field"]

KERNEL = 4


def patch_receptive_field(n_layers: int) -> int:
    """Side of the input patch seen by one output pixel of :class:`PatchDiscriminator`.

    Two stride-1 4x4 convolutions (7 pixels) preceded by ``n_layers`` stride-2 4x4
    convolutions, each mapping a field r to 2r + 2: 34 for n_layers = 2, 70 for 3.

    Args:
        n_layers: stride-2 convolutions.
    """
    field = 2 * KERNEL - 1
    for _ in range(n_layers):
        field = 2 * field + (KERNEL - 2)
    return field


class PatchDiscriminator(nn.Module):
    """Least-squares PatchGAN: real/fake scores per patch, no sigmoid.

    ``n_layers`` stride-2 4x4 convolutions (ndf, 2ndf, ... capped at 8ndf), one stride-1
    4x4 convolution, a 1-channel stride-1 4x4 output convolution; leaky ReLU 0.2; spectral
    norm on every convolution and no other normalisation, so real and fake images can
    share one batch.

    Args:
        ndf: width of the first convolution.
        n_layers: stride-2 convolutions (2 gives a 34x34 receptive field).
        channels: image channels.

    Example:
        >>> import torch
        >>> disc = PatchDiscriminator(ndf=4, n_layers=2)
        >>> disc(torch.zeros(2, 1, 32, 32)).shape
        torch.Size([2, 1, 6, 6])
    """

    def __init__(self, *, ndf: int = 64, n_layers: int = 2, channels: int = 1) -> None:
        super().__init__()
        if n_layers < 1:
            raise InputError(f"PatchDiscriminator n_layers={n_layers} must be >= 1.")
        self.channels = channels
        self.n_layers = n_layers
        widths = [channels] + [ndf * min(2**i, 8) for i in range(n_layers + 1)]
        convs = [
            nn.Conv2d(widths[i], widths[i + 1], KERNEL, stride=2, padding=1)
            for i in range(n_layers)
        ]
        convs.append(nn.Conv2d(widths[-2], widths[-1], KERNEL, stride=1, padding=1))
        convs.append(nn.Conv2d(widths[-1], 1, KERNEL, stride=1, padding=1))
        self.convs = nn.ModuleList(convs)
        # Initialise the raw weights first: the parametrisation hides them afterwards.
        init_weights(self)
        for conv in self.convs:
            spectral_norm(conv)

    @property
    def receptive_field(self) -> int:
        """Side of the input patch behind one output score."""
        return patch_receptive_field(self.n_layers)

    def forward(self, x: Tensor) -> Tensor:
        """Score patches.

        Args:
            x: images (B, channels, H, W) with H / 2**n_layers >= 3 (and the same for W).

        Returns:
            Scores (B, 1, H', W'), H' = H / 2**n_layers - 2 for H divisible by 2**n_layers.
        """
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise InputError(
                f"PatchDiscriminator expects (B, {self.channels}, H, W), got {tuple(x.shape)}."
            )
        h = x
        last = len(self.convs) - 1
        for i, conv in enumerate(self.convs):
            h = conv(h)
            if i < last:
                h = F.leaky_relu(h, LRELU_SLOPE, inplace=True)
        return h
