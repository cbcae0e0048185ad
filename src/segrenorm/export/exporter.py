"""Export one translation direction as TorchScript and ONNX, checked against PyTorch.

The exported graph is the whole conditioned translation of one direction: the segmentation
net of the input's site, the semantic extractor and the renormalised generator,
``G(x | S(x))`` (plain CycleGAN translators export their generator alone). Its input is a
batch of preprocessed slices ``(B, 1, H, W)`` in ``[-1, 1]``; the batch axis is dynamic,
``H`` and ``W`` are fixed at export time (the extractor's pooling depends on them). A 2.5-D
model (``data.context_slices = k > 1``) takes ``(B, k, H, W)`` stacks of a slice and its
neighbours along the slice axis (the slice at the centre, edge slices repeated past the
volume's ends) and returns the translated centre slice ``(B, 1, H, W)``; the sidecar says so.
A JSON sidecar records the preprocessing and the target site's intensity scale so that the
exported model can be used without segrenorm.

Example:
    >>> paths = export_model("runs/00000-cpu-segrenorm", "exported/")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from segrenorm.atomic import atomic_path, write_text_atomic
from segrenorm.errors import ConfigError, InputError, SegrenormError
from segrenorm.export.portable import portable_layers, register_atanh
from segrenorm.models.inference import ConditionedGenerator
from segrenorm.vocabulary import check_direction

__all__ = [
    "EXPORT_FORMATS",
    "TOLERANCE",
    "ExportCheck",
    "check_onnx",
    "check_torchscript",
    "export_model",
    "export_onnx",
    "export_torchscript",
]

log = logging.getLogger(__name__)

EXPORT_FORMATS = ("torchscript", "onnx")
#: Largest tolerated difference between an export and PyTorch, on outputs in [-1, 1].
TOLERANCE = 1e-4


@dataclass(frozen=True)
class ExportCheck:
    """How closely an exported model reproduces PyTorch.

    Args:
        fmt: ``"torchscript"`` or ``"onnx"``.
        path: the exported file.
        max_abs_diff: largest absolute difference over the check batches.
        batch_sizes: batch sizes checked (the batch axis is dynamic).
    """

    fmt: str
    path: Path
    max_abs_diff: float
    batch_sizes: tuple[int, ...]

    @property
    def ok(self) -> bool:
        """Whether the difference is within :data:`TOLERANCE`."""
        return self.max_abs_diff <= TOLERANCE


def _example(shape: tuple[int, int], batch: int, seed: int = 0, channels: int = 1) -> Tensor:
    """Smooth pseudo-images in [-1, 1] with a dark border, like padded slices."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((batch, channels, *shape), generator=gen) * 2 - 1
    x = torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2) * 3
    x[..., :2, :] = -1.0
    x[..., :, :2] = -1.0
    return x.clamp(-1.0, 1.0)


def _up(size: int, stride: int) -> int:
    return -(-size // stride) * stride


def _check_shape(module: ConditionedGenerator, shape: Sequence[int]) -> tuple[int, int]:
    if len(shape) != 2 or any(int(s) < 1 for s in shape):
        raise ConfigError(f"export shape {tuple(shape)} must be two positive sizes (H, W)")
    height, width = int(shape[0]), int(shape[1])
    if height % module.stride or width % module.stride:
        raise ConfigError(
            f"export shape {height}x{width} is not a multiple of the model's stride "
            f"{module.stride}: round it up, e.g. {_up(height, module.stride)}x"
            f"{_up(width, module.stride)}"
        )
    return height, width


def export_torchscript(
    module: ConditionedGenerator, path: str | Path, shape: Sequence[int]
) -> Path:
    """Trace ``module`` at slices of ``shape`` and save it as TorchScript, atomically.

    Args:
        module: the conditioned generator (eval mode, on CPU).
        path: the ``.pt`` file to write.
        shape: slice size (H, W) the trace is made with.
    """
    height, width = _check_shape(module, shape)
    module.eval()
    with torch.no_grad(), portable_layers(), warnings.catch_warnings():
        # The networks' input checks compare shapes in Python: fixed at trace time, as meant.
        # torch.jit is deprecated in favour of torch.export, whose files libtorch users cannot
        # load yet; TorchScript remains the format C++ deployments read.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        example = _example((height, width), 2, channels=module.channels)
        traced = torch.jit.trace(module, example, check_trace=False)
        with atomic_path(path) as tmp:
            torch.jit.save(traced, str(tmp))
    return Path(path)


def export_onnx(
    module: ConditionedGenerator, path: str | Path, shape: Sequence[int], *, opset: int = 17
) -> Path:
    """Export ``module`` to ONNX with a dynamic batch axis, atomically.

    Uses the TorchScript-based exporter (``dynamo=False``): a few seconds where the dynamo
    exporter took ~25 s on a tiny model. It cannot export pooling sizes computed from
    shapes, so the extractor is specialised to ``shape`` first (see :meth:`for_shape`).

    Args:
        module: the conditioned generator (eval mode, on CPU).
        path: the ``.onnx`` file to write.
        shape: slice size (H, W), fixed in the graph.
        opset: ONNX opset version.
    """
    height, width = _check_shape(module, shape)
    static = module.for_shape((height, width)).eval()
    example = _example((height, width), 2, channels=module.channels)

    register_atanh(opset)

    try:
        with (
            atomic_path(path) as tmp,
            torch.no_grad(),
            portable_layers(),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")  # tracer and symbolic notes on the shape checks
            torch.onnx.export(
                static,
                (example,),
                str(tmp),
                dynamo=False,
                input_names=["image"],
                output_names=["translated"],
                dynamic_axes={"image": {0: "batch"}, "translated": {0: "batch"}},
                opset_version=opset,
            )
    except (RuntimeError, torch.onnx.errors.OnnxExporterError) as exc:
        raise SegrenormError(
            f"ONNX export to {path} failed ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            "the TorchScript export (--format torchscript) may still work"
        ) from None
    return Path(path)


def _reference(module: ConditionedGenerator, x: Tensor) -> np.ndarray:
    with torch.no_grad():
        return module(x).numpy()


def check_torchscript(
    module: ConditionedGenerator,
    path: str | Path,
    shape: Sequence[int],
    batch_sizes: Sequence[int] = (1, 3),
) -> ExportCheck:
    """Compare a saved TorchScript export with ``module`` on fresh inputs.

    Args:
        module: the PyTorch module it was exported from.
        path: the ``.pt`` file.
        shape: slice size (H, W).
        batch_sizes: batch sizes to run (other than the traced one, to test the batch axis).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = torch.jit.load(str(path))
    worst = 0.0
    for i, batch in enumerate(batch_sizes):
        x = _example((int(shape[0]), int(shape[1])), batch, seed=i + 1, channels=module.channels)
        with torch.no_grad():
            got = loaded(x).numpy()
        worst = max(worst, float(np.abs(got - _reference(module, x)).max()))
    return ExportCheck("torchscript", Path(path), worst, tuple(batch_sizes))


def check_onnx(
    module: ConditionedGenerator,
    path: str | Path,
    shape: Sequence[int],
    batch_sizes: Sequence[int] = (1, 3),
) -> ExportCheck:
    """Run an ONNX export with onnxruntime (CPU) and compare it with ``module``.

    Args:
        module: the PyTorch module it was exported from.
        path: the ``.onnx`` file.
        shape: slice size (H, W).
        batch_sizes: batch sizes to run.

    Raises:
        ConfigError: onnxruntime is not installed.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError(
            "checking an ONNX export needs onnxruntime: pip install 'segrenorm[export]'"
        ) from None
    options = ort.SessionOptions()
    options.log_severity_level = 3  # warnings about unused initialisers are noise here
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    worst = 0.0
    for i, batch in enumerate(batch_sizes):
        x = _example((int(shape[0]), int(shape[1])), batch, seed=i + 1, channels=module.channels)
        (got,) = session.run(None, {name: x.numpy()})
        worst = max(worst, float(np.abs(np.asarray(got) - _reference(module, x)).max()))
    return ExportCheck("onnx", Path(path), worst, tuple(batch_sizes))


def export_model(
    model: str | Path,
    out_dir: str | Path,
    *,
    direction: str = "AB",
    formats: Sequence[str] = EXPORT_FORMATS,
    shape: Sequence[int] | None = None,
    overwrite: bool = False,
) -> list[ExportCheck]:
    """Export a trained checkpoint's direction and check every export against PyTorch.

    Writes ``<out_dir>/translator_<direction>.pt`` (TorchScript), ``...onnx`` and
    ``translator_<direction>.json`` (preprocessing facts and the target intensity scale).

    Args:
        model: a run directory or checkpoint file.
        out_dir: the folder to write into (created if needed).
        direction: ``"AB"`` or ``"BA"``.
        formats: any of ``"torchscript"``, ``"onnx"``.
        shape: slice size (H, W); default: the training cache's padded slice shape.
        overwrite: replace existing exports.

    Raises:
        ConfigError: unknown format or direction, or a bad shape.
        InputError: an export file exists and ``overwrite`` is False.
        SegrenormError: an export differs from PyTorch by more than :data:`TOLERANCE`.
    """
    from segrenorm.data.facts import TrainingFacts
    from segrenorm.models.checkpoint import load_checkpoint, load_translator, resolve_checkpoint
    from segrenorm.models.tiling import inference_tile

    unknown = [f for f in formats if f not in EXPORT_FORMATS]
    if unknown or not formats:
        raise ConfigError(
            f"export format(s) {unknown or list(formats)} unknown: use {', '.join(EXPORT_FORMATS)}"
        )
    check_direction(direction)
    file = resolve_checkpoint(model, prefer=("final.pt", "last.pt"))
    payload = load_checkpoint(file)
    facts = TrainingFacts.from_checkpoint(payload, file)
    translator, config = load_translator(file, "cpu")
    module = ConditionedGenerator(translator, direction).eval()
    if shape is None:
        stored = payload["cache_info"].get("slice_shape") or [config.data.crop_size] * 2
        shape = [-(-int(s) // module.stride) * module.stride for s in stored]
    shape = _check_shape(module, shape)
    out = Path(out_dir)
    stem = f"translator_{direction}"
    targets = {"torchscript": out / f"{stem}.pt", "onnx": out / f"{stem}.onnx"}
    sidecar = out / f"{stem}.json"
    wanted = [targets[f] for f in formats] + [sidecar]
    existing = [str(p) for p in wanted if p.exists()]
    if existing and not overwrite:
        raise InputError(
            f"{', '.join(existing)} already exist(s); pass overwrite (--overwrite) or choose "
            "another output folder"
        )
    checks: list[ExportCheck] = []
    for fmt in formats:
        if fmt == "torchscript":
            export_torchscript(module, targets[fmt], shape)
            checks.append(check_torchscript(module, targets[fmt], shape))
        else:
            export_onnx(module, targets[fmt], shape)
            checks.append(check_onnx(module, targets[fmt], shape))
    scaling = facts.target_scaling(direction)
    info: dict[str, Any] = {
        "checkpoint": str(file),
        "direction": direction,
        "target_site": facts.target_name(direction),
        "input": {
            "name": "image",
            "shape": ["batch", module.channels, *shape],
            "range": [-1, 1],
        },
        "output": {"name": "translated", "shape": ["batch", 1, *shape], "range": [-1, 1]},
        "context_slices": {
            "count": module.channels,
            "centre": module.centre,
            "rule": "channel j is slice z - centre + j along slice_axis; a slice past the "
            "volume's edge is replaced by the edge slice",
        },
        "tiles": {
            "harmonize_tile": inference_tile(config, shape, "auto"),
            "rule": "segrenorm harmonize translates whole slices by default; with --tiles auto "
            "it translates slices larger than harmonize_tile in overlapping square tiles of "
            "that side (half overlap, Gaussian blending, -1 padding: MONAI "
            "sliding_window_inference), the crop size the model trained on (null: whole "
            "slices). This graph translates what it is given.",
        },
        "preprocessing": {
            "orientation": "stored voxel order" if facts.modality == "oct" else "RAS",
            "slice_axis": facts.slice_axis,
            "spacing_mm": list(facts.spacing),
            "percentiles": list(facts.percentiles),
            # the upper percentile plus headroom times the percentile range maps to 1
            "headroom": facts.headroom,
            "foreground_mask": facts.use_mask,
            "modality": facts.modality,
            # What the modality changes (segrenorm.data.slicing.SliceRecipe): OCT volumes are
            # resampled with nearest neighbour, their foreground is the retina and their
            # background keeps its scaled values instead of -1.
            "image_resampling": "nearest" if facts.modality == "oct" else "linear",
            "background": "scaled and kept" if facts.modality == "oct" else -1.0,
            "bias_correction": facts.bias_correction.to_dict(),
            "pad_value": -1.0,
        },
        "target_scaling": scaling.to_dict(),
        "to_target_units": "x = (y + 1) / 2 * (high - low) + low",
        "checks": {c.fmt: {"max_abs_diff": c.max_abs_diff, "ok": c.ok} for c in checks},
    }
    write_text_atomic(sidecar, json.dumps(info, indent=2) + "\n")
    bad = [c for c in checks if not c.ok]
    if bad:
        details = ", ".join(f"{c.fmt} {c.max_abs_diff:.2e}" for c in bad)
        raise SegrenormError(
            f"export check failed: {details} exceed(s) the tolerance {TOLERANCE:g} "
            f"(files kept in {out} for inspection); report this with the checkpoint's config"
        )
    return checks
