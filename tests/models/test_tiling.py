"""Tiled translation against a hand-written loop over tiles, and the tile-choice rule."""

from __future__ import annotations

import math

import pytest
import torch

from segrenorm.errors import ConfigError
from segrenorm.models.tiling import inference_tile, parse_tiles, tiled_translation


def _starts(size: int, tile: int, overlap: float) -> list[int]:
    """Tile origins along one side: every ``tile * (1 - overlap)``, the last flush right."""
    step = max(1, int(tile * (1 - overlap)))
    starts = list(range(0, size - tile + 1, step))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return starts


def _gaussian_window(tile: int) -> torch.Tensor:
    """MONAI's documented Gaussian importance map: sigma = tile / 8, floored at 1e-3."""
    centre, sigma = (tile - 1) / 2, tile * 0.125
    g = torch.tensor([math.exp(-((i - centre) ** 2) / (2 * sigma**2)) for i in range(tile)])
    window = g[:, None] * g[None, :]
    return window.clamp(min=max(float(window.min()), 1e-3))


def _by_hand(fn, x: torch.Tensor, tile: int, overlap: float = 0.5) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Pad short sides with -1 (centred), run every tile, average with the Gaussian weights."""
    h, w = x.shape[-2:]
    ph, pw = max(0, tile - h), max(0, tile - w)
    padded = torch.nn.functional.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=-1)
    big_h, big_w = padded.shape[-2:]
    window = _gaussian_window(tile)
    total, weight = None, torch.zeros(big_h, big_w)
    for top in _starts(big_h, tile, overlap):
        for left in _starts(big_w, tile, overlap):
            y = fn(padded[..., top : top + tile, left : left + tile])
            if total is None:
                total = torch.zeros(*y.shape[:2], big_h, big_w)
            total[..., top : top + tile, left : left + tile] += y * window
            weight[top : top + tile, left : left + tile] += window
    assert total is not None
    out = total / weight
    return out[..., ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w]


def _centred(x: torch.Tensor) -> torch.Tensor:
    """Depends on the tile: the first channel minus the last channel's mean over the tile."""
    return x[:, :1] - x[:, -1:].mean(dim=(-2, -1), keepdim=True)


def test_per_pixel_translation_is_exact() -> None:
    x = torch.rand(3, 1, 48, 80, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = tiled_translation(lambda t: 2 * t + 1, 32, stride=4)(x)
    torch.testing.assert_close(out, 2 * x + 1, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("shape", "tile", "overlap", "tiles_per_call"),
    [((2, 2, 48, 80), 32, 0.5, 16), ((1, 2, 64, 96), 32, 0.25, 3), ((2, 1, 24, 80), 32, 0.5, 2)],
)
def test_tile_dependent_translation_matches_a_loop_over_tiles(
    shape: tuple[int, ...], tile: int, overlap: float, tiles_per_call: int
) -> None:
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    fn = tiled_translation(_centred, tile, overlap=overlap, sw_batch_size=tiles_per_call, stride=4)
    out = fn(x)
    assert out.shape == (shape[0], 1, *shape[2:])
    torch.testing.assert_close(out, _by_hand(_centred, x, tile, overlap), atol=1e-5, rtol=0)
    # The tiles matter: whole-slice statistics give another answer.
    assert (out - _centred(x)).abs().max() > 1e-2


def test_output_channels_come_from_the_translation() -> None:
    x = torch.rand(2, 1, 40, 72, generator=torch.Generator().manual_seed(2))

    def three(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t, 2 * t, _centred(t)], dim=1)

    out = tiled_translation(three, 24, stride=8)(x)
    assert out.shape == (2, 3, 40, 72)
    torch.testing.assert_close(out, _by_hand(three, x, 24), atol=1e-5, rtol=0)


def test_a_slice_within_one_tile_goes_to_the_translation_whole() -> None:
    seen: list[tuple[int, ...]] = []

    def record(t: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(t.shape))
        return _centred(t)

    x = torch.rand(2, 2, 32, 24)
    out = tiled_translation(record, 32, stride=8)(x)
    assert seen == [(2, 2, 32, 24)]
    torch.testing.assert_close(out, _centred(x))
    assert tiled_translation(record, None) is record


def test_tiles_are_batched_by_sw_batch_size() -> None:
    sizes: list[int] = []

    def record(t: torch.Tensor) -> torch.Tensor:
        sizes.append(t.shape[0])
        return t

    tiled_translation(record, 16, sw_batch_size=4, stride=4)(torch.zeros(2, 1, 32, 32))
    assert sizes == [4, 4, 4, 4, 2]  # 9 tiles per slice x 2 slices, 4 at a time


@pytest.mark.parametrize(
    ("tile", "kwargs", "message"),
    [
        (0, {}, "must be a tile side of at least 1"),
        (30, {"stride": 4}, "30 is not a multiple of the translator's stride 4: use a multiple "
         "of 4, e.g. 28"),
        (32, {"overlap": 1.0}, "overlap 1.0 must lie in [0, 1)"),
        (32, {"sw_batch_size": 0}, "tiles per forward pass 0 must be at least 1"),
    ],
)  # fmt: skip
def test_bad_tiling_is_refused(tile: int, kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        tiled_translation(lambda t: t, tile, **kwargs)  # type: ignore[arg-type]
    assert message in str(caught.value)


def test_a_batch_that_is_not_4d_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"needs a \(B, C, H, W\) batch, got \(1, 64, 64\)"):
        tiled_translation(lambda t: t, 32)(torch.zeros(1, 64, 64))


def test_auto_follows_the_training(tiny_kit) -> None:  # type: ignore[no-untyped-def]
    assert inference_tile(64, (112, 128), "auto", stride=4) == 64
    assert inference_tile(112, (112, 128), "auto", stride=4) == 112  # cropped in width
    assert inference_tile(128, (112, 128), "auto", stride=4) is None  # crop covered the slice
    assert inference_tile(0, (112, 128), "auto", stride=4) is None  # whole-slice training
    assert inference_tile(64, None, "auto", stride=4) == 64
    assert inference_tile(64, (112, 128), "none", stride=4) is None
    assert inference_tile(64, (112, 128), None, stride=4) is None
    assert inference_tile(0, (112, 128), 48, stride=4) == 48
    assert inference_tile(64, (112, 128), "48", stride=4) == 48
    assert inference_tile(0, (48, 40), 48, stride=4) is None  # one tile: nothing to blend
    config = tiny_kit.config()  # crop 32, stride 4
    assert inference_tile(config, (40, 40), "auto") == config.data.crop_size == 32


def test_a_tile_off_the_stride_is_refused(tiny_kit) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as caught:
        inference_tile(tiny_kit.config(), (112, 128), 50)
    message = "--tiles 50 is not a multiple of the translator's stride 4: use a multiple of 4"
    assert message in str(caught.value) and "e.g. 48" in str(caught.value)


@pytest.mark.parametrize(
    ("value", "message"),
    [("big", "--tiles 'big' is unknown: use auto"), ("0", "--tiles 0 must be auto, none"),
     (-3, "--tiles -3 must be auto, none"), (True, "--tiles True must be auto, none")],
)  # fmt: skip
def test_parse_tiles_names_the_bad_value(value: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_tiles(value)  # type: ignore[arg-type]
    assert message in str(caught.value)


def test_parse_tiles_accepts_the_choices() -> None:
    assert [parse_tiles(v) for v in ("auto", " NONE ", "64", 32, None)] == [
        "auto", "none", 64, 32, "none"
    ]  # fmt: skip
