"""Semantic extractor: segmentation probabilities -> one embedding f(m) per image.

The embedding must be O(1) and differ between images from the first step, or FiLM starts
from constants and the extractor learns nothing (an N(0, 0.02) draw through its six
unnormalised layers gives rms ~1e-5). Two things see to it: He/Kaiming weights, and (with
``normalize``) probabilities centred at ``1 / n_classes`` and an embedding standardised over
its dimension. Every layer is then positively homogeneous, so the standardised embedding
depends on the *pattern* of the segmentation, not on how confident it is: even the near-
uniform softmax of an untrained segmentation net gives unit-rms, image-dependent embeddings.
"""

from __future__ import annotations

import typing

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segrenorm.errors import InputError
from segrenorm.models.nn.init import KAIMING, init_weights, mark_init

__all__ = ["EMBED_EPS", "SemanticExtractor", "spread_kernel", "standardize_embedding"]

N_STAGES = 4
#: Added to the embedding's variance before standardising (an all-zero embedding stays 0).
EMBED_EPS = 1e-6


def standardize_embedding(z: Tensor, eps: float = EMBED_EPS) -> Tensor:
    """Zero mean and unit variance over the embedding dimension, per image (no parameters).

    Written with mean and variance (not ``layer_norm``) so that every exporter takes it.

    Args:
        z: embeddings (B, D).
        eps: added to the variance.

    Returns:
        (B, D) standardised embeddings: rms 1 unless ``z`` is constant.
    """
    centred = z - z.mean(dim=1, keepdim=True)
    return centred / torch.sqrt(centred.pow(2).mean(dim=1, keepdim=True) + eps)


def _halve(x: Tensor) -> Tensor:
    """2x average pooling that never shrinks a side below 1 (small crops pool adaptively)."""
    if _even(x):
        return F.avg_pool2d(x, 2)
    h, w = x.shape[-2:]
    return F.adaptive_avg_pool2d(x, (max(1, h // 2), max(1, w // 2)))


def _even(x: Tensor) -> bool:
    h, w = x.shape[-2:]
    return h >= 2 and w >= 2 and h % 2 == 0 and w % 2 == 0


def _conv_halve(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """``_halve(conv(x))`` for a 3x3 'same' convolution.

    On even sides, 2x2 average pooling after a 3x3 convolution is one 4x4 stride-2
    convolution whose kernel is the 3x3 kernel spread over a 2x2 box (each output mixes
    the same 16 input pixels with the same weights): the same function at 4/9 of the
    multiply-adds, without the full-resolution intermediate. Equal up to float rounding.
    """
    if not _even(x):
        return _halve(conv(x))
    return F.conv2d(x, spread_kernel(conv.weight), conv.bias, stride=2, padding=1)


def spread_kernel(weight: Tensor) -> Tensor:
    """Each 3x3 kernel spread over a 2x2 box of 1/4s (a full 2D convolution): 4x4 kernels.

    Tap (i, j) of the result sums the taps (k, l) of the 3x3 kernel with k in {i - 1, i} and
    l in {j - 1, j}, each weighted 1/4: a separable map written as one small matrix product.
    (As a convolution of the O*C kernels with the box, oneDNN ran it as O*C one-channel
    images: 20% of a ``cpu``-preset training step.)

    Args:
        weight: (O, C, 3, 3) kernels.

    Returns:
        (O, C, 4, 4) kernels.
    """
    rows = torch.arange(4, device=weight.device)[:, None]
    cols = torch.arange(3, device=weight.device)[None, :]
    taps = ((cols == rows) | (cols == rows - 1)).to(weight.dtype) * 0.5  # (4, 3)
    # (9, 16): tap (k, l) -> tap (i, j), weight taps[i, k] * taps[j, l]; one matrix product.
    spread = (taps[:, None, :, None] * taps[None, :, None, :]).permute(2, 3, 0, 1).reshape(9, 16)
    out_ch, in_ch = weight.shape[:2]
    return (weight.reshape(out_ch * in_ch, 9) @ spread).view(out_ch, in_ch, 4, 4)


class SemanticExtractor(nn.Module):
    """Four {3x3 conv, 2x average pool, ReLU} stages, an adaptive pool and an MLP.

    Widths grow ngf -> 2ngf -> 4ngf -> 8ngf with the generator's ngf, so the extractor
    stays a small fraction of the generator's cost at every model size.

    Args:
        n_classes: input channels (one probability map per class).
        ngf: width of the first stage.
        embed_dim: size of the output embedding.
        grid: side of the adaptive average pool before the MLP.
        kaiming_init: He/Kaiming normal weights (False: the shared N(0, 0.02) draw).
        normalize: centre the probabilities at ``1 / n_classes`` and standardise the
            embedding over its dimension (:func:`standardize_embedding`).

    Example:
        >>> import torch
        >>> ext = SemanticExtractor(n_classes=4, ngf=4, embed_dim=16, grid=2)
        >>> emb = ext(torch.rand(3, 4, 32, 32).softmax(dim=1))
        >>> emb.shape, round(emb.pow(2).mean().item(), 3)
        (torch.Size([3, 16]), 1.0)
    """

    def __init__(
        self,
        *,
        n_classes: int,
        ngf: int,
        embed_dim: int,
        grid: int = 2,
        kaiming_init: bool = True,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.embed_dim = embed_dim
        self.grid = grid
        self.normalize = normalize
        widths = [n_classes] + [ngf * 2**i for i in range(N_STAGES)]
        self.convs = nn.ModuleList(
            nn.Conv2d(widths[i], widths[i + 1], kernel_size=3, padding=1) for i in range(N_STAGES)
        )
        self.mlp = nn.Sequential(
            nn.Linear(widths[-1] * grid * grid, embed_dim),
            nn.ReLU(inplace=True),
            nn.Linear(embed_dim, embed_dim),
        )
        if kaiming_init:
            for layer in self.modules():
                if isinstance(layer, nn.Conv2d | nn.Linear):
                    mark_init(layer, KAIMING)
        init_weights(self)

    def centre(self, probs: Tensor) -> Tensor:
        """The extractor's input: ``probs - 1 / n_classes`` with ``normalize``, else ``probs``."""
        return probs - 1.0 / self.n_classes if self.normalize else probs

    def finish(self, pooled: Tensor) -> Tensor:
        """The MLP, then the standardisation with ``normalize``: (B, 8ngf*grid*grid) -> (B, D)."""
        z = self.mlp(pooled)
        return standardize_embedding(z) if self.normalize else z

    def forward(self, probs: Tensor) -> Tensor:
        """Embed segmentation probabilities.

        Args:
            probs: softmax probabilities (B, n_classes, H, W); any H, W >= 1.

        Returns:
            Embeddings (B, embed_dim).
        """
        if probs.dim() != 4 or probs.shape[1] != self.n_classes:
            raise InputError(
                f"SemanticExtractor expects probabilities (B, {self.n_classes}, H, W), got "
                f"{tuple(probs.shape)}: pass softmax(segmentation logits)."
            )
        h = self.centre(probs)
        for conv in typing.cast("list[nn.Conv2d]", self.convs):
            h = F.relu(_conv_halve(h, conv), inplace=True)  # relu(halve(conv(h)))
        h = F.adaptive_avg_pool2d(h, self.grid)  # (B, 8ngf, grid, grid)
        return self.finish(h.flatten(1))  # (B, embed_dim)
