"""Export-only forms of the networks' layers: traceable equivalents and one ONNX rule.

Some pieces of the training networks do not trace or export as written, so export swaps in
equivalent forms while it traces (:func:`portable_layers`), and the exported graphs are
checked against the originals by :mod:`segrenorm.export.exporter`: the renorm layers' fused
batch-folded kernel becomes instance norm followed by the affine map, and the decoders'
low-resolution phase convolutions become upsample-then-convolve. :func:`register_atanh`
gives the TorchScript-based ONNX exporter the ``atanh`` rule it lacks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from segrenorm.models.nn import renorm, upsample

__all__ = ["portable_layers", "register_atanh"]


def register_atanh(opset: int) -> None:
    """Map ``aten::atanh`` (the identity-start generator's output) to ONNX ``Atanh``.

    ONNX has had ``Atanh`` since opset 9, but the TorchScript-based exporter has no rule
    for it.
    """
    from torch.onnx import register_custom_op_symbolic

    register_custom_op_symbolic("aten::atanh", lambda g, x: g.op("Atanh", x), opset)


def _portable_modulated_norm(x: Tensor, scale: Tensor, shift: Tensor, eps: float = 1e-5) -> Tensor:
    """Instance norm, then the per-sample affine map: the unfused form of the renorm layer."""
    normed = torch.nn.functional.instance_norm(x, eps=eps)  # (B, C, H, W)
    return normed * scale[:, :, None, None] + shift[:, :, None, None]


@contextmanager
def portable_layers() -> Iterator[None]:
    """Swap the networks' hand-written kernels for traceable equivalents while exporting.

    * The renorm layers fold the batch into the channels of one ``batch_norm`` call; the
      TorchScript-based ONNX exporter needs that channel count to be static, which a
      dynamic batch axis rules out: instance norm and the affine map are used instead.
    * The decoders convolve nearest-upsampled features by phases at the low resolution,
      scattering them with a Python ``autograd.Function`` that tracing cannot record and
      with kernels computed from the weights that the ONNX exporter cannot shape: the
      direct upsample-then-convolve path (same function) is used instead.

    The exported graphs are checked against the original PyTorch model.
    """
    original_norm = renorm.modulated_instance_norm
    renorm.modulated_instance_norm = _portable_modulated_norm
    original_fits = upsample.fits_phase_conv
    upsample.fits_phase_conv = _never  # upsample_conv / upsample_cat_conv then run directly
    try:
        yield
    finally:
        renorm.modulated_instance_norm = original_norm
        upsample.fits_phase_conv = original_fits


def _never(conv: nn.Conv2d) -> bool:
    return False
