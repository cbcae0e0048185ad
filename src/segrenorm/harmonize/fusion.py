"""Slice-batched translation of a whole volume along one or more axes, and 3D consistency.

A 2D translator sees one slice at a time, so a volume is cut into slices along a plane,
translated ``batch_size`` slices at a time (memory is bounded by the batch, not by the
volume) and restacked. Multi-view fusion repeats that along several planes and averages
the restacked volumes, which damps the slice-to-slice flicker a single view leaves along
its through-plane axis. :func:`interslice_jump` measures that flicker.

A 2.5-D translator (``context_slices = k > 1``) is given each slice with its k - 1
neighbours along the view as channels, the volume's edge slices repeated past its ends
(the rule of :mod:`segrenorm.data.context`, here with every slice of the volume
available), and the translated centre slice is kept.

Example:
    >>> fn = lambda x: translator.translate(x, "AB")  # doctest: +SKIP
    >>> out = translate_view(fn, scaled, "axial", stride=translator.stride)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from segrenorm.data.context import check_context, context_positions
from segrenorm.errors import ConfigError, InputError
from segrenorm.models.inference import image_batch
from segrenorm.vocabulary import SLICE_AXES
from segrenorm.volumes.spatial import (
    pad_to_shape,
    resolve_slice_axis,
    round_up,
    slice_volume,
    unpad,
)

__all__ = ["interslice_jump", "parse_views", "translate_view"]

#: Called after each slice batch with (slices done, slices in the view).
BatchCallback = Callable[[int, int], None]
#: A batch translation: (B, k, H, W) in [-1, 1] -> (B, 1 or k, H, W) in [-1, 1], no
#: gradients; with k output channels the centre one is kept.
TranslateFn = Callable[[torch.Tensor], torch.Tensor]


def parse_views(views: str | Sequence[str] | None, default: str) -> tuple[str, ...]:
    """Validate a list of slice planes (``"axial,coronal"`` or a sequence); ``None``: default.

    Args:
        views: plane names, comma-separated or as a sequence; duplicates are dropped.
        default: the plane used when ``views`` is None or empty (the training axis).

    Raises:
        ConfigError: an unknown plane name.
    """
    if views is None:
        names = [default]
    elif isinstance(views, str):
        names = [v.strip() for v in views.split(",") if v.strip()]
    else:
        names = [str(v).strip() for v in views]
    names = names or [default]
    unknown = [v for v in names if v not in SLICE_AXES]
    if unknown:
        raise ConfigError(
            f"unknown view(s) {', '.join(map(repr, unknown))}: use a comma-separated list of "
            f"{', '.join(SLICE_AXES)}"
        )
    return tuple(dict.fromkeys(names))


def translate_view(
    translate: TranslateFn,
    scaled: np.ndarray,
    view: str,
    *,
    stride: int,
    batch_size: int = 16,
    foreground: np.ndarray | None = None,
    device: torch.device | str = "cpu",
    on_batch: BatchCallback | None = None,
    fixed_batch: bool = False,
    context: int = 1,
) -> np.ndarray:
    """Translate a canonical ``[-1, 1]`` volume slice by slice along ``view``.

    Slices are padded with -1 (the background of the training slices) to a multiple of the
    translator's stride, translated ``batch_size`` at a time and cropped back. Slices without
    any foreground voxel are not translated: they stay -1 (background).

    Args:
        translate: the batch translation, e.g. ``lambda x: translator.translate(x, "AB")``.
        scaled: (X, Y, Z) float32 canonical volume in [-1, 1].
        view: slice plane name (see ``SLICE_AXES``).
        stride: slice sides are padded to a multiple of this (the translator's stride).
        batch_size: slices per forward pass; bounds the activation memory.
        foreground: optional boolean (X, Y, Z) mask used to skip empty slices.
        device: where the translator lives.
        on_batch: progress callback.
        fixed_batch: pad a last, partial batch with background slices to ``batch_size``
            (a compiled model then sees one shape and compiles once).
        context: slices per input stack (the model's ``context_slices``, odd): each slice
            goes in with its neighbours along ``view``, edge slices repeated.

    Returns:
        The translated (X, Y, Z) float32 volume in [-1, 1].

    Raises:
        ConfigError: a batch size below 1, or an even or non-positive ``context``.
        InputError: a volume that is not 3D or has a side of 1 voxel in the slice plane, or a
            translation that returns neither 1 nor ``context`` channels.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size {batch_size} must be at least 1")
    check_context(context)
    if scaled.ndim != 3:
        raise InputError(f"translate_view needs a 3D volume, got shape {scaled.shape}")
    axis = resolve_slice_axis(view)
    slices = slice_volume(scaled, axis)  # (n, H, W) view of the volume
    n, height, width = slices.shape
    if height < 2 or width < 2:
        raise InputError(
            f"{view} slices of this volume are {height}x{width} voxels: too thin to translate; "
            "the volume is effectively 2D along this plane (pick another --views)"
        )
    shape = (round_up(height, stride), round_up(width, stride))
    todo = np.arange(n)
    if foreground is not None:
        has_fg = slice_volume(foreground, axis).reshape(n, -1).any(axis=1)
        todo = np.flatnonzero(has_fg)
    # Rows are written straight into the output volume through a slice view: no restacking.
    volume = np.full(scaled.shape, -1.0, dtype=np.float32)
    out = slice_volume(volume, axis)  # (n, H, W) view of ``volume``
    target = torch.device(device)
    stacks = context_positions(np.arange(n), context)  # (n, k) slice indices
    # One padded batch for the whole view, filled in place batch after batch (its border stays
    # -1, the background); the padding rule is pad_to_shape's, so inputs are what they were.
    pads = pad_to_shape(np.empty((0, height, width), np.float32), shape, -1.0)[1]
    (top, _), (left, _) = pads
    rows_per_batch = batch_size if fixed_batch else max(1, min(batch_size, todo.size))
    buffer = np.full((rows_per_batch, context, *shape), -1.0, dtype=np.float32)
    for start in range(0, todo.size, batch_size):
        rows = todo[start : start + batch_size]
        for i, row in enumerate(rows):
            for j, index in enumerate(stacks[row]):
                buffer[i, j, top : top + height, left : left + width] = slices[index]
        if fixed_batch and rows.size < batch_size:
            buffer[rows.size :] = -1.0  # background slices fill the last batch
        x = image_batch(buffer if fixed_batch else buffer[: rows.size])  # (b, k, H', W')
        with torch.inference_mode():
            y = translate(x.to(target))[: rows.size]  # (b, 1 or k, H', W')
        if y.dim() != 4 or y.shape[1] not in (1, context):
            raise InputError(
                f"the translation returned {tuple(y.shape)} for {tuple(x.shape)} stacks: it must "
                f"give (B, 1, H, W) or (B, {context}, H, W)"
            )
        out[rows] = unpad(y[:, y.shape[1] // 2].float().cpu().numpy(), pads)  # the centre
        if on_batch is not None:
            on_batch(int(min(start + batch_size, todo.size)), int(todo.size))
    return volume


def interslice_jump(volume: np.ndarray, axis: str | int, mask: np.ndarray | None = None) -> float:
    """Mean absolute intensity step between adjacent slices along ``axis``.

    Compare a harmonized volume's value with its input's (the ratio is 1 when translation
    adds no flicker) or with the true target's on simulated paired data.

    Args:
        volume: (X, Y, Z) intensities.
        axis: the through-plane axis (a plane name or index).
        mask: optional boolean foreground; a step counts when both voxels are inside.

    Raises:
        InputError: a volume with fewer than 2 slices along ``axis`` or an empty mask.
    """
    index = resolve_slice_axis(axis)
    data = np.moveaxis(np.asarray(volume, dtype=np.float64), index, 0)
    if data.shape[0] < 2:
        raise InputError(f"interslice_jump needs at least 2 slices along axis {axis!r}")
    steps = np.abs(np.diff(data, axis=0))
    if mask is None:
        return float(steps.mean())
    inside = np.moveaxis(np.asarray(mask, dtype=bool), index, 0)
    both = inside[1:] & inside[:-1]
    if not both.any():
        raise InputError("interslice_jump: the mask holds no pair of adjacent voxels")
    return float(steps[both].mean())
