"""2.5-D harmonization: k-slice stacks along the view, edge slices repeated, centre kept."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import segrenorm.harmonize.harmonizer as harmonizer_module
from segrenorm.errors import ConfigError, InputError
from segrenorm.export.exporter import TOLERANCE, export_model
from segrenorm.harmonize.fusion import translate_view
from segrenorm.harmonize.harmonizer import Harmonizer
from segrenorm.models.checkpoint import load_translator
from segrenorm.models.inference import ConditionedGenerator

Phantom = Callable[..., Path]


@pytest.fixture(scope="module")
def context_model(tmp_path_factory: pytest.TempPathFactory, tiny_kit: SimpleNamespace) -> Path:
    path = tmp_path_factory.mktemp("ctx") / "k3.pt"
    return Path(tiny_kit.save_checkpoint(path, identity=False, context_slices=3))


def hand_view(translate: Callable[[torch.Tensor], torch.Tensor], volume: np.ndarray,
              axis: int, k: int, stride: int) -> np.ndarray:  # fmt: skip
    """Slice by slice along ``axis``: the stack of z-k//2 .. z+k//2 (clipped), padded with -1
    to the stride, translated alone; its centre output cropped back."""
    moved = np.moveaxis(volume, axis, 0)
    n, h, w = moved.shape
    ph, pw = -(-h // stride) * stride, -(-w // stride) * stride
    top, left = (ph - h) // 2, (pw - w) // 2
    out = np.empty_like(moved)
    for z in range(n):
        picks = [min(max(z + o, 0), n - 1) for o in range(-(k // 2), k // 2 + 1)]
        stack = np.full((1, k, ph, pw), -1.0, np.float32)
        stack[0, :, top : top + h, left : left + w] = moved[picks]
        with torch.no_grad():
            y = translate(torch.from_numpy(stack))
        out[z] = y[0, y.shape[1] // 2, top : top + h, left : left + w].numpy()
    return np.moveaxis(out, 0, axis)


@pytest.mark.parametrize(("view", "axis"), [("axial", 2), ("coronal", 1)])
def test_translate_view_with_k3_equals_hand_built_stacks(
    context_model: Path, view: str, axis: int
) -> None:
    translator, _ = load_translator(context_model)
    module = ConditionedGenerator(translator, "AB").eval()
    rng = np.random.default_rng(1)
    volume = np.clip(rng.normal(0, 0.5, (9, 10, 7)), -1, 1).astype(np.float32)
    got = translate_view(module, volume, view, stride=4, batch_size=3, context=3)
    want = hand_view(module, volume, axis, 3, 4)
    np.testing.assert_allclose(got, want, atol=2e-6)
    # The neighbours matter: the same model fed single-slice stacks gives another volume.
    flat = translate_view(
        lambda x: module(x.repeat(1, 3, 1, 1)), volume, view, stride=4, batch_size=3
    )
    assert np.abs(flat - got).max() > 1e-4


def test_translate_view_keeps_the_centre_of_k_outputs() -> None:
    volume = np.linspace(-1, 1, 5 * 4 * 3, dtype=np.float32).reshape(4, 3, 5)
    seen: list[tuple[int, ...]] = []

    def spy(x: torch.Tensor) -> torch.Tensor:  # all k channels back, each plus its index
        seen.append(tuple(x.shape))
        return x + torch.arange(3.0).reshape(1, 3, 1, 1) * 10

    out = translate_view(spy, volume, "axial", stride=1, batch_size=5, context=3)
    np.testing.assert_allclose(out, volume + 10.0)  # the centre channel, index 1
    assert seen == [(5, 3, 4, 3)]
    with pytest.raises(ConfigError, match=r"context_slices=2 must be an odd number"):
        translate_view(spy, volume, "axial", stride=1, context=2)
    with pytest.raises(InputError, match=r"must give \(B, 1, H, W\) or \(B, 3, H, W\)"):
        translate_view(lambda x: x[:, :2], volume, "axial", stride=1, context=3)


def test_k3_checkpoint_round_trips_through_harmonize(
    context_model: Path, write_phantom: Phantom, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_phantom()
    harmonizer = Harmonizer.load(context_model, batch_size=4)
    assert harmonizer.primary.translator.context_slices == 3
    out = harmonizer.harmonize(path).data
    assert out.shape == (20, 24, 16) and np.isfinite(out).all()
    calls: list[int] = []

    def by_hand(
        translate: Callable[[torch.Tensor], torch.Tensor],
        scaled: np.ndarray,
        view: str,
        *,
        stride: int,
        context: int,
        foreground: np.ndarray | None = None,
        **_: object,
    ) -> np.ndarray:
        calls.append(context)
        result = hand_view(translate, scaled, {"axial": 2}[view], context, stride)
        if foreground is not None:  # slices without foreground stay background
            empty = ~np.moveaxis(foreground, 2, 0).reshape(scaled.shape[2], -1).any(axis=1)
            np.moveaxis(result, 2, 0)[empty] = -1.0
        return result

    monkeypatch.setattr(harmonizer_module, "translate_view", by_hand)
    again = Harmonizer.load(context_model, batch_size=4).harmonize(path).data
    assert calls == [3]
    np.testing.assert_allclose(out, again, rtol=1e-5, atol=1e-3)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_k3_export_takes_stacks_and_returns_the_centre(context_model: Path, tmp_path: Path) -> None:
    checks = export_model(context_model, tmp_path / "exp", shape=(16, 24), formats=["torchscript"])
    assert all(c.ok for c in checks)
    info = json.loads((tmp_path / "exp" / "translator_AB.json").read_text())
    assert info["input"]["shape"] == ["batch", 3, 16, 24]
    assert info["output"]["shape"] == ["batch", 1, 16, 24]
    assert info["context_slices"]["count"] == 3 and info["context_slices"]["centre"] == 1
    translator, _ = load_translator(context_model)
    x = torch.linspace(-1, 1, 2 * 3 * 16 * 24).reshape(2, 3, 16, 24).sin()
    scripted = torch.jit.load(str(tmp_path / "exp" / "translator_AB.pt"))
    want = translator.translate(x)[:, 1:2].detach().numpy()
    np.testing.assert_allclose(scripted(x).detach().numpy(), want, atol=TOLERANCE)
