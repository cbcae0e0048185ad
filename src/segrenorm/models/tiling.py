"""Translate slices in tiles of the training crop size, so inference sees what training saw.

A translator trained on ``c x c`` random crops learned its instance-norm statistics and its
segmentation embedding on ``c x c`` windows. Run on a whole slice, both are computed over a
larger window (more background, more anatomy) and the output drifts. :func:`tiled_translation`
wraps a batch translation so that it runs on overlapping ``tile x tile`` windows (MONAI's
sliding-window inference) and blends the overlaps with a Gaussian importance window, which
down-weights each tile's borders. :func:`inference_tile` is the one rule that picks the tile
side for ``segrenorm harmonize`` and for the translator rows of ``segrenorm evaluate``.

Example:
    >>> import torch
    >>> fn = tiled_translation(lambda x: 2 * x[:, :1] + 1, 32, stride=4)
    >>> fn(torch.zeros(2, 1, 48, 80)).shape
    torch.Size([2, 1, 48, 80])
    >>> inference_tile(64, (112, 128), "auto", stride=4), inference_tile(0, (112, 128), "auto")
    (64, None)
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Sequence

import torch

from segrenorm.config.schema import Config
from segrenorm.errors import ConfigError

__all__ = ["TILE_CHOICES", "inference_tile", "parse_tiles", "tiled_translation"]

#: The named choices of ``--tiles`` (an integer tile side is the third kind).
TILE_CHOICES: tuple[str, ...] = ("auto", "none")
#: Background of the ``[-1, 1]`` slices: what tiles hanging over a slice's edge are padded with.
BACKGROUND = -1.0
#: A translation of a batch: (B, C, h, w) -> (B, C_out, h, w).
BatchFn = Callable[[torch.Tensor], torch.Tensor]


def parse_tiles(value: str | int | None, option: str = "--tiles") -> str | int:
    """Validate a tiling choice: ``"auto"``, ``"none"`` or a positive tile side.

    Args:
        value: ``"auto"``, ``"none"`` (None means ``"none"``), an int or a decimal string.
        option: the option's name, for messages.

    Raises:
        ConfigError: anything else, or a side below 1.
    """
    if value is None:
        return "none"
    if isinstance(value, str):
        text = value.strip().lower()
        if text in TILE_CHOICES:
            return text
        if not text.lstrip("+").isdigit():
            raise ConfigError(
                f"{option} {value!r} is unknown: use auto (the training crop size when the "
                "model trained on crops), none (whole slices) or a tile side in pixels, e.g. 64"
            )
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{option} {value!r} must be auto, none or a tile side of at least 1")
    return value


def _check_tile(tile: int, stride: int, option: str) -> int:
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 1:
        raise ConfigError(f"{option} {tile!r} must be a tile side of at least 1 pixel")
    if stride < 1:
        raise ConfigError(f"the translator stride {stride} must be at least 1")
    if tile % stride:
        fit = max(stride, (tile // stride) * stride)
        raise ConfigError(
            f"{option} {tile} is not a multiple of the translator's stride {stride}: use a "
            f"multiple of {stride}, e.g. {fit}"
        )
    return tile


def inference_tile(
    training: Config | int,
    slice_shape: Sequence[int] | None,
    choice: str | int | None = "auto",
    *,
    stride: int | None = None,
) -> int | None:
    """The tile side to translate slices with, or None for whole slices.

    ``"auto"`` follows the training: the crop size when the model trained on crops smaller
    than the slice (on either side), None when it trained on whole slices
    (``data.crop_size: 0``) or on crops covering the slice. ``"none"`` is whole slices. An
    integer is that side, checked against the stride (None again when the slice fits in
    one tile: then there is nothing to blend).

    Args:
        training: the run's :class:`Config` (its ``data.crop_size`` and model stride) or a
            training crop size (0: whole slices).
        slice_shape: (H, W) of the padded slices to translate; None when not known yet (the
            tile is then returned as if the slice were larger; :func:`tiled_translation`
            translates a slice no larger than the tile whole anyway).
        choice: ``"auto"``, ``"none"`` or a tile side (see :func:`parse_tiles`).
        stride: the translator's stride; taken from ``training`` when it is a Config.

    Raises:
        ConfigError: an unknown choice, a side below 1 or not a multiple of the stride.
    """
    chosen = parse_tiles(choice)
    if isinstance(training, Config):
        crop, stride = training.data.crop_size, training.model.stride
    else:
        crop = training
    stride = 1 if stride is None else stride
    if chosen == "none":
        return None
    if chosen == "auto":
        if crop <= 0:
            return None
        tile = _check_tile(crop, stride, "the training crop size")
    else:
        tile = _check_tile(int(chosen), stride, "--tiles")
    if slice_shape is not None and all(int(side) <= tile for side in slice_shape):
        return None
    return tile


def tiled_translation(
    fn: BatchFn,
    tile: int | None,
    *,
    overlap: float = 0.5,
    sw_batch_size: int = 16,
    stride: int = 1,
) -> BatchFn:
    """Wrap a batch translation so that it runs on overlapping square tiles.

    The wrapped function takes (B, C, H, W) (any C: the translator's input channels) and
    returns what ``fn`` returns per tile, (B, C_out, H, W), as the Gaussian-weighted average
    of the overlapping tiles' outputs (MONAI's ``sliding_window_inference``,
    ``mode="gaussian"``, sigma = tile / 8). Tiles start every ``tile * (1 - overlap)``
    pixels, the last one flush with the far edge; a side shorter than the tile is padded
    with -1 (the background). A slice no larger than the tile on both sides goes to ``fn``
    directly.

    Args:
        fn: (B, C, tile, tile) -> (B, C_out, tile, tile), e.g. a conditioned generator.
        tile: the tile side (a multiple of ``stride``); None returns ``fn`` itself.
        overlap: fraction of a tile shared with its neighbour, in [0, 1).
        sw_batch_size: tiles per call of ``fn``; bounds memory.
        stride: the translator's stride.

    Raises:
        ConfigError: a tile below 1 or not a multiple of ``stride``, an overlap outside
            [0, 1), or a tile batch below 1.
    """
    if tile is None:
        return fn
    side = _check_tile(tile, stride, "the tile side")
    if not 0.0 <= overlap < 1.0:
        raise ConfigError(f"tile overlap {overlap} must lie in [0, 1), e.g. 0.5")
    if isinstance(sw_batch_size, bool) or sw_batch_size < 1:
        raise ConfigError(f"tiles per forward pass {sw_batch_size} must be at least 1")

    def translate(x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ConfigError(f"tiled translation needs a (B, C, H, W) batch, got {tuple(x.shape)}")
        if x.shape[-2] <= side and x.shape[-1] <= side:
            return fn(x)
        # Imported here: the command line's help must not pay for MONAI.
        from monai.inferers import sliding_window_inference

        out = sliding_window_inference(
            x,
            roi_size=(side, side),
            sw_batch_size=sw_batch_size,
            predictor=fn,
            overlap=overlap,
            mode="gaussian",
            padding_mode="constant",
            cval=BACKGROUND,
        )
        return typing.cast(torch.Tensor, out).as_subclass(torch.Tensor)  # (B, C_out, H, W)

    return translate
