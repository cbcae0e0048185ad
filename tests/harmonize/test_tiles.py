"""Tiled translation in harmonize and evaluate: one rule, one translation, options checked."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from segrenorm.cli import main
from segrenorm.errors import ConfigError
from segrenorm.evaluate.data import EvalData
from segrenorm.evaluate.methods import translator_slices
from segrenorm.harmonize.harmonizer import HarmonizeOptions, Harmonizer
from segrenorm.models.checkpoint import load_translator
from segrenorm.models.inference import ConditionedGenerator
from segrenorm.workflows import evaluate as evaluate_workflow


def _gaussian_blend(fn: Any, x: torch.Tensor, tile: int) -> torch.Tensor:
    """Half-overlapping tiles (last one flush), weighted by exp(-d^2 / 2 (tile/8)^2)."""
    h, w = x.shape[-2:]
    centre, sigma = (tile - 1) / 2, tile / 8
    g = torch.tensor([math.exp(-((i - centre) ** 2) / (2 * sigma**2)) for i in range(tile)])
    window = g[:, None] * g[None, :]
    window = window.clamp(min=max(float(window.min()), 1e-3))

    def starts(size: int) -> list[int]:
        return sorted({*range(0, size - tile + 1, tile // 2), size - tile})

    total, weight = torch.zeros(x.shape[0], 1, h, w), torch.zeros(h, w)
    for top in starts(h):
        for left in starts(w):
            y = fn(x[..., top : top + tile, left : left + tile])
            total[..., top : top + tile, left : left + tile] += y * window
            weight[top : top + tile, left : left + tile] += window
    return total / weight


def test_options_validate_tiles() -> None:
    assert HarmonizeOptions(tiles=" 16").tiles == 16
    assert HarmonizeOptions(tiles="NONE").tiles == "none"
    with pytest.raises(ConfigError, match=r"--tiles 'big' is unknown: use auto"):
        HarmonizeOptions(tiles="big")


def test_harmonizer_picks_tiles_by_the_rule(tiny_checkpoints: dict[str, Path]) -> None:
    checkpoint = tiny_checkpoints["random"]  # trained (saved) with 32x32 crops, stride 4
    tiles = {c: Harmonizer.load(checkpoint, tiles=c) for c in ("auto", "none", "16")}
    assert {c: h.tile_of(h.primary) for c, h in tiles.items()} == {
        "auto": 32, "none": None, "16": 16
    }  # fmt: skip
    with pytest.raises(ConfigError, match="--tiles 30 is not a multiple of the translator's"):
        Harmonizer.load(checkpoint, tiles=30)


def test_harmonizer_translates_gaussian_blended_tiles(tiny_checkpoints: dict[str, Path]) -> None:
    harmonizer = Harmonizer.load(tiny_checkpoints["random"], tiles=16)
    x = torch.rand(2, 1, 40, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    module = ConditionedGenerator(harmonizer.primary.translator).eval()
    with torch.inference_mode():
        got = harmonizer._translate["axial"](x)
        want = _gaussian_blend(module, x, 16)
        whole = module(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert (got - whole).abs().max() > 1e-3  # tiles change what the instance norms see


def test_a_volume_within_one_tile_is_translated_whole(
    tiny_checkpoints: dict[str, Path], write_phantom: Any
) -> None:
    volume = write_phantom()  # 20x24 axial slices: within the 32x32 training crop
    # One batch for both: the automatic batch may differ, and with it the float rounding.
    auto = Harmonizer.load(tiny_checkpoints["random"], tiles="auto", batch_size=16)
    whole = Harmonizer.load(tiny_checkpoints["random"], tiles="none", batch_size=16)
    np.testing.assert_array_equal(auto.harmonize(volume).data, whole.harmonize(volume).data)


def test_evaluate_rows_translate_as_harmonize_does(
    eval_study: SimpleNamespace,
    eval_kit: SimpleNamespace,
    tiny_checkpoints: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, Any] = {}

    def capture(
        data: Any, methods: dict[str, Any], config: Any, on_stage: Any, segmentors: Any
    ) -> Any:
        seen.update(methods)
        return {}, None

    monkeypatch.setattr(evaluate_workflow, "run_evaluation", capture)
    monkeypatch.setattr(evaluate_workflow, "write_report", lambda *args, **kwargs: None)
    checkpoint = tiny_checkpoints["random"]
    _, results = evaluate_workflow.evaluate_cache(
        eval_study.cache, tmp_path, models={"mine": checkpoint}, baselines=[],
        config=eval_kit.evaluation(), tiles="16",
    )  # fmt: skip
    assert results["tiles"] == {"choice": 16, "runs": {"mine": 16}}
    data = EvalData.from_cache(eval_study.cache)  # 24x24 slices: tiled by 16
    harmonize = Harmonizer.load(checkpoint, tiles=16)._translate["axial"]
    want = translator_slices(harmonize, data.source.images, data.source.masks, batch_size=3)
    np.testing.assert_allclose(seen["mine"].slices, want, atol=1e-5)
    translator, _ = load_translator(checkpoint)
    whole = translator_slices(
        lambda x: translator.translate(x, "AB"), data.source.images, data.source.masks
    )
    assert np.abs(seen["mine"].slices - whole).max() > 1e-3


@pytest.mark.parametrize("command", ["harmonize", "evaluate"])
def test_a_bad_tiles_value_is_named(
    command: str,
    tiny_checkpoints: dict[str, Path],
    eval_study: SimpleNamespace,
    write_phantom: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if command == "harmonize":
        argv = ["harmonize", str(write_phantom()), "--model", str(tiny_checkpoints["random"])]
    else:
        argv = ["evaluate", "--cache", str(eval_study.cache)]
    assert main([*argv, "--out", str(tmp_path / "out"), "--tiles", "big"]) == 2
    err = capsys.readouterr().err
    assert f"segrenorm {command}: error: --tiles 'big' is unknown: use auto" in err
    assert not (tmp_path / "out").exists()
