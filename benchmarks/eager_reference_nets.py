"""The networks of the eager reference (:mod:`eager_reference`), written the obvious way.

Every class mirrors one of ``segrenorm.models.nn`` with the same parameter keys, so that a
translator's state dict loads into them strictly; none of the package's speed rewrites is
used (see :mod:`eager_reference` for the list).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from segrenorm.config.schema import ModelConfig

__all__ = [
    "FiLMNorm",
    "ReferenceDiscriminator",
    "ReferenceExtractor",
    "ReferenceGenerator",
    "ReferenceSegNet",
    "ResidualBlock",
]

# The architecture's constants, restated here so that a change in the package shows up as
# a difference in the tests rather than being copied silently.
SLOPE = 0.2  # leaky ReLU of every block, the generator head and the discriminators
CLAMP = 1.0 - 1e-3  # the residual output's clamp before atanh
NORM_EPS = 1e-5  # instance norm
EMBED_EPS = 1e-6  # the embedding's standardisation


def _width(base: int, level: int) -> int:
    return base * min(2**level, 8)


def _up(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")  # (B, C, 2H, 2W)


class FiLMNorm(nn.Module):
    """Instance norm without parameters, then ``x_hat * (1 + gamma(f)) + beta(f)``.

    Args:
        channels: feature channels.
        embed_dim: size of the embedding ``f``.
    """

    def __init__(self, channels: int, embed_dim: int) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False, eps=NORM_EPS)
        self.gamma = nn.Linear(embed_dim, channels)
        self.beta = nn.Linear(embed_dim, channels)
        self.enabled = True  # False: plain instance norm (the trainer's FiLM warm-up)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        x_hat = self.norm(x)
        if not self.enabled:
            return x_hat
        gamma = self.gamma(emb)[:, :, None, None]  # (B, C, 1, 1)
        return x_hat * (1.0 + gamma) + self.beta(emb)[:, :, None, None]


class ResidualBlock(nn.Module):
    """conv3x3, norm, lrelu, conv3x3, norm, plus a (1x1 conv + norm) shortcut, then lrelu.

    Args:
        in_ch: input channels.
        out_ch: output channels; the shortcut is the identity when they are equal.
        embed_dim: None for affine instance norm (baselines, seg nets), else :class:`FiLMNorm`.
    """

    def __init__(self, in_ch: int, out_ch: int, embed_dim: int | None = None) -> None:
        super().__init__()
        self.conditioned = embed_dim is not None

        def norm() -> nn.Module:
            if embed_dim is None:
                return nn.InstanceNorm2d(out_ch, affine=True, eps=NORM_EPS)
            return FiLMNorm(out_ch, embed_dim)

        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
        self.norm1 = norm()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.norm2 = norm()
        self.skip = nn.Conv2d(in_ch, out_ch, 1, bias=False) if in_ch != out_ch else None
        self.skip_norm = norm() if in_ch != out_ch else None

    def _norm(self, norm: nn.Module, x: Tensor, emb: Tensor | None) -> Tensor:
        return norm(x, emb) if self.conditioned else norm(x)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        h = F.leaky_relu(self._norm(self.norm1, self.conv1(x), emb), SLOPE)
        h = self._norm(self.norm2, self.conv2(h), emb)
        shortcut = x
        if self.skip is not None and self.skip_norm is not None:
            shortcut = self._norm(self.skip_norm, self.skip(x), emb)
        return F.leaky_relu(h + shortcut, SLOPE)


class ReferenceGenerator(nn.Module):
    """The residual U-Net generator: plain (``model.embed_dim`` unused) or renormalised.

    Args:
        m: the model shapes.
        embed_dim: None for the baselines' generator, else the FiLM embedding size.
        channels: image channels in and out.
    """

    def __init__(self, m: ModelConfig, embed_dim: int | None, channels: int) -> None:
        super().__init__()
        self.residual_output = m.residual_output
        w = [_width(m.ngf, i) for i in range(m.n_downsample)]
        self.head = nn.Conv2d(channels, m.ngf, 4, stride=2, padding=1)
        self.encoder = nn.ModuleList(
            ResidualBlock(m.ngf if i == 0 else w[i - 1], w[i], embed_dim) for i in range(len(w))
        )
        self.downs = nn.ModuleList(nn.Conv2d(c, c, 4, stride=2, padding=1) for c in w[:-1])
        self.middle = nn.ModuleList(
            ResidualBlock(w[-1], w[-1], embed_dim) for _ in range(m.n_middle_blocks)
        )
        self.decoder = nn.ModuleList(
            ResidualBlock(w[i + 1] + w[i], w[i], embed_dim) for i in reversed(range(len(w) - 1))
        )
        self.tail = nn.Conv2d(m.ngf, channels, 3, padding=1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        h = F.leaky_relu(self.head(x), SLOPE)  # (B, ngf, H/2, W/2)
        skips = []
        for i, block in enumerate(self.encoder):
            if i > 0:
                h = self.downs[i - 1](h)
            h = block(h, emb)
            skips.append(h)
        skips.pop()  # the deepest encoder output goes on as h
        for block in self.middle:
            h = block(h, emb)
        for block in self.decoder:
            h = block(torch.cat([_up(h), skips.pop()], dim=1), emb)
        delta = self.tail(_up(h))  # (B, channels, H, W)
        if self.residual_output:
            return torch.tanh(torch.atanh(x.clamp(-CLAMP, CLAMP)) + delta)
        return torch.tanh(delta)


class ReferenceSegNet(nn.Module):
    """The segmentation U-Net: max-pool encoder, upsample-and-concatenate decoder, 1x1 head.

    Args:
        m: the model shapes (``seg_ngf``, ``seg_depth``).
        n_classes: output classes.
        channels: image channels.
    """

    def __init__(self, m: ModelConfig, n_classes: int, channels: int) -> None:
        super().__init__()
        w = [_width(m.seg_ngf, i) for i in range(m.seg_depth + 1)]
        self.encoder = nn.ModuleList(
            ResidualBlock(channels if i == 0 else w[i - 1], w[i]) for i in range(len(w))
        )
        self.decoder = nn.ModuleList(
            ResidualBlock(w[i + 1] + w[i], w[i]) for i in reversed(range(len(w) - 1))
        )
        self.head = nn.Conv2d(w[0], n_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        h = x
        for i, block in enumerate(self.encoder):
            h = block(F.max_pool2d(h, 2) if i > 0 else h)
            skips.append(h)
        skips.pop()
        for block in self.decoder:
            h = block(torch.cat([_up(h), skips.pop()], dim=1))
        return self.head(h)  # (B, n_classes, H, W)


class ReferenceExtractor(nn.Module):
    """Four {conv3x3, 2x average pool, ReLU} stages, adaptive pooling, an MLP, standardisation.

    Args:
        m: the model shapes (``ngf``, ``embed_dim``, ``extractor_grid``, ``embed_norm``).
        n_classes: input probability maps.
    """

    def __init__(self, m: ModelConfig, n_classes: int) -> None:
        super().__init__()
        self.n_classes, self.grid, self.normalize = n_classes, m.extractor_grid, m.embed_norm
        w = [n_classes] + [m.ngf * 2**i for i in range(4)]
        self.convs = nn.ModuleList(nn.Conv2d(w[i], w[i + 1], 3, padding=1) for i in range(4))
        self.mlp = nn.Sequential(
            nn.Linear(w[-1] * self.grid**2, m.embed_dim),
            nn.ReLU(),
            nn.Linear(m.embed_dim, m.embed_dim),
        )

    def forward(self, probs: Tensor) -> Tensor:
        h = probs - 1.0 / self.n_classes if self.normalize else probs
        for conv in self.convs:
            h = conv(h)
            rows, cols = h.shape[-2:]
            if rows >= 2 and cols >= 2 and rows % 2 == 0 and cols % 2 == 0:
                h = F.avg_pool2d(h, 2)
            else:  # odd or tiny sides pool adaptively, never below 1
                h = F.adaptive_avg_pool2d(h, (max(1, rows // 2), max(1, cols // 2)))
            h = F.relu(h)
        z = self.mlp(F.adaptive_avg_pool2d(h, self.grid).flatten(1))  # (B, embed_dim)
        if not self.normalize:
            return z
        centred = z - z.mean(dim=1, keepdim=True)
        return centred / torch.sqrt(centred.pow(2).mean(dim=1, keepdim=True) + EMBED_EPS)


class ReferenceDiscriminator(nn.Module):
    """Least-squares PatchGAN with torch's spectral norm on every convolution.

    Args:
        m: the model shapes (``ndf``, ``disc_layers``).
        channels: image channels.
    """

    def __init__(self, m: ModelConfig, channels: int) -> None:
        super().__init__()
        w = [channels] + [m.ndf * min(2**i, 8) for i in range(m.disc_layers + 1)]
        convs = [nn.Conv2d(w[i], w[i + 1], 4, stride=2, padding=1) for i in range(len(w) - 2)]
        convs += [nn.Conv2d(w[-2], w[-1], 4, padding=1), nn.Conv2d(w[-1], 1, 4, padding=1)]
        self.convs = nn.ModuleList(spectral_norm(conv) for conv in convs)

    def forward(self, x: Tensor) -> Tensor:
        h = x
        for i, conv in enumerate(self.convs):
            h = conv(h)
            if i < len(self.convs) - 1:
                h = F.leaky_relu(h, SLOPE)
        return h  # (B, 1, H', W')
