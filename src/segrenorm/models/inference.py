"""The inference graph: one direction's seg net, extractor and generator as one module.

:class:`ConditionedGenerator` computes ``x -> G(x | S(x))``; harmonization runs it and export
traces it. With 2.5-D input its input is a stack of k neighbouring slices (B, k, H, W) and its
output the translated centre slice (B, 1, H, W): one harmonized slice from its context. For
the ONNX export the extractor's shape-derived adaptive pooling can be fixed as averaging
matrices for one slice size (:meth:`ConditionedGenerator.for_shape`); the other export-only
forms of the layers are in :mod:`segrenorm.export.portable`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from segrenorm.errors import ConfigError
from segrenorm.models.nn.extractor import SemanticExtractor, standardize_embedding
from segrenorm.models.translator import Translator
from segrenorm.vocabulary import check_direction

__all__ = ["ConditionedGenerator", "channels_last_call", "image_batch"]


def image_batch(array: np.ndarray) -> Tensor:
    """A (B, C, H, W) float32 array as a tensor with plain C-order strides, sharing its memory.

    NumPy may give a size-1 channel axis any stride (``images[:, None][rows]`` gives it one
    element); torch reads (B, 1, H, W) strides of (HW, 1, W, 1) as channels-last and picks
    other convolution kernels, whose sums round differently. Restriding keeps a k-slice
    stack of k = 1 bit for bit what the single-slice batch gave.

    Args:
        array: (B, C, H, W) float32 images (made C-contiguous first if needed).
    """
    flat = np.ascontiguousarray(array, dtype=np.float32)
    return torch.from_numpy(flat.reshape(-1)).view(flat.shape)


def channels_last_call(module: nn.Module) -> Callable[[Tensor], Tensor]:
    """``module`` with its weights and inputs channels-last (NHWC); outputs C-contiguous.

    The same function up to float rounding: on CPU oneDNN's convolutions and the fused norm
    kernel (``models/nn/norm_act.py``) run faster on that layout (BENCHMARKS.md, issue 14).
    The module's weights are converted in place.

    Args:
        module: a network taking and returning (B, C, H, W) tensors.
    """
    module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def run(x: Tensor) -> Tensor:
        return module(x.contiguous(memory_format=torch.channels_last)).contiguous()

    return run


def _pool_matrix(n_in: int, n_out: int) -> Tensor:
    """(n_out, n_in) averaging matrix of adaptive average pooling along one axis."""
    matrix = torch.zeros(n_out, n_in)
    for i in range(n_out):
        start, end = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


class _StaticPoolExtractor(nn.Module):
    """The semantic extractor with its pooling written as fixed matrices for one slice size.

    Adaptive average pooling over a rectangle is separable, so ``P_h @ x @ P_w^T`` gives the
    same values; unlike ``adaptive_avg_pool2d`` with shape-derived sizes it exports to ONNX
    with the TorchScript-based exporter. Shares the extractor's weights.
    """

    def __init__(self, extractor: SemanticExtractor, shape: tuple[int, int]) -> None:
        super().__init__()
        self.convs = extractor.convs
        self.mlp = extractor.mlp
        self.normalize = extractor.normalize  # centre the input, standardise the output
        self.offset = 1.0 / extractor.n_classes if extractor.normalize else 0.0
        height, width = shape
        sizes = []
        for _ in extractor.convs:  # each stage halves, never below 1 (see the extractor)
            sizes.append((max(1, height // 2), max(1, width // 2), height, width))
            height, width = sizes[-1][0], sizes[-1][1]
        sizes.append((extractor.grid, extractor.grid, height, width))
        for i, (out_h, out_w, in_h, in_w) in enumerate(sizes):
            self.register_buffer(f"pool_h{i}", _pool_matrix(in_h, out_h), persistent=False)
            self.register_buffer(f"pool_w{i}", _pool_matrix(in_w, out_w).T.contiguous(), False)

    def _pool(self, x: Tensor, i: int) -> Tensor:
        pool_h, pool_w = getattr(self, f"pool_h{i}"), getattr(self, f"pool_w{i}")
        return torch.matmul(torch.matmul(pool_h, x), pool_w)  # (B, C, out_h, out_w)

    def forward(self, probs: Tensor) -> Tensor:
        h = probs - self.offset  # (B, n_classes, H, W)
        for i, conv in enumerate(self.convs):
            h = torch.relu(self._pool(conv(h), i))
        h = self._pool(h, len(self.convs))  # (B, 8ngf, grid, grid)
        z = self.mlp(h.flatten(1))
        return standardize_embedding(z) if self.normalize else z


class ConditionedGenerator(nn.Module):
    """One direction of a translator as a single module: ``x -> G(x | S(x))``.

    Args:
        translator: a trained translator (its networks are shared, not copied).
        direction: ``"AB"`` (G, conditioned on S) or ``"BA"`` (F, conditioned on Q).
        static_shape: slice size (H, W) to specialise the extractor's pooling for (needed
            for the ONNX export); None keeps the size-agnostic extractor.
        seg_chunk: run the segmentation net and extractor on at most this many slices at a
            time (the full-resolution segmentation net dominates peak memory); None runs
            the whole batch at once.
    """

    def __init__(
        self,
        translator: Translator,
        direction: str = "AB",
        *,
        static_shape: tuple[int, int] | None = None,
        seg_chunk: int | None = None,
    ) -> None:
        super().__init__()
        self.direction = check_direction(direction)
        ab = direction == "AB"
        self.generator = translator.gen_ab if ab else translator.gen_ba
        seg = translator.seg_a if ab else translator.seg_b
        extractor = translator.extractor_ab if ab else translator.extractor_ba
        # Only the renormalised generator consumes the segmentation.
        self.segmenter = seg if extractor is not None else None
        self.extractor: nn.Module | None = extractor if seg is not None else None
        if self.extractor is not None and extractor is not None and static_shape is not None:
            self.extractor = _StaticPoolExtractor(extractor, static_shape)
        if seg_chunk is not None and seg_chunk < 1:
            raise ConfigError(f"seg_chunk {seg_chunk} must be at least 1")
        self.seg_chunk = seg_chunk
        self.stride = translator.stride
        self.channels = translator.context_slices  # k slices in
        self.centre = translator.centre  # the one slice out
        self.translator = [translator]  # a list: not registered twice as a submodule

    def forward(self, x: Tensor) -> Tensor:
        """Translate slices.

        Args:
            x: (B, k, H, W) images in [-1, 1] (k = :attr:`channels`: a slice and its
                neighbours, the slice at the centre), H and W multiples of :attr:`stride`.

        Returns:
            (B, 1, H, W) translated centre slices in (-1, 1).
        """
        if self.segmenter is None or self.extractor is None:
            out = self.generator(x)  # (B, k, H, W)
        else:
            step = x.shape[0] if self.seg_chunk is None else self.seg_chunk
            embeddings = [
                self.extractor(torch.softmax(self.segmenter(x[i : i + step]), dim=1))  # (b, E)
                for i in range(0, x.shape[0], step)
            ]
            emb = embeddings[0] if len(embeddings) == 1 else torch.cat(embeddings)
            out = self.generator(x, emb)  # (B, k, H, W)
        return out[:, self.centre : self.centre + 1]

    def for_shape(self, shape: tuple[int, int]) -> ConditionedGenerator:
        """The same networks with the extractor's pooling fixed for slices of ``shape``.

        Args:
            shape: slice size (H, W).
        """
        return ConditionedGenerator(self.translator[0], self.direction, static_shape=shape)
