"""Evaluating a 2.5-D translator: held-out k-slice stacks from the cache, centre kept."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from segrenorm.errors import InputError
from segrenorm.evaluate.conditioning import slice_conditioning
from segrenorm.evaluate.data import EvalData
from segrenorm.evaluate.methods import translator_slices
from segrenorm.evaluate.robustness import noise_sensitivity
from segrenorm.models.checkpoint import load_translator
from segrenorm.workflows.evaluate import evaluate_cache


@pytest.fixture(scope="module")
def k3_model(tmp_path_factory: pytest.TempPathFactory, tiny_kit: SimpleNamespace) -> Path:
    path = tmp_path_factory.mktemp("ctx-eval") / "k3.pt"
    return Path(tiny_kit.save_checkpoint(path, identity=False, context_slices=3))


def hand_stacks(data: EvalData, k: int) -> np.ndarray:
    """Each held-out source row's stack, read from the manifest and slices.npy directly."""
    cache, site = data.cache, data.source.site
    index = np.load(cache.path / site / "slices.npy")
    images = np.load(cache.path / site / "images.npy")
    out = np.empty((len(data.source), k, *cache.slice_shape), np.float32)
    for j, row in enumerate(data.source.rows):
        subject, z = index[row]
        mine = np.flatnonzero(index[:, 0] == subject)  # this subject's rows
        held = index[mine, 1]
        for c, offset in enumerate(range(-(k // 2), k // 2 + 1)):
            step = -1 if offset > 0 else 1
            want = z + offset
            while want not in held:  # walk back toward the centre slice
                want += step
            out[j, c] = images[mine[int(np.flatnonzero(held == want)[0])]]
    return out


def test_source_stacks_follow_the_neighbour_rule(eval_study: SimpleNamespace) -> None:
    data = EvalData.from_cache(eval_study.cache)
    stacks = data.source_stacks(3)
    assert stacks.shape == (len(data.source), 3, *data.cache.slice_shape)
    np.testing.assert_array_equal(stacks[:, 1], data.source.images)
    np.testing.assert_array_equal(stacks, hand_stacks(data, 3))
    np.testing.assert_array_equal(data.source_stacks(1)[:, 0], data.source.images)
    assert not np.array_equal(stacks[:, 0], stacks[:, 1])  # neighbours really differ


def test_translator_slices_keep_the_centre_of_stacks(eval_study: SimpleNamespace) -> None:
    data = EvalData.from_cache(eval_study.cache)
    stacks = data.source_stacks(3)

    def translate(x: torch.Tensor) -> torch.Tensor:  # channel c -> x_c + 10 c
        return x + torch.arange(3.0).reshape(1, 3, 1, 1) * 10

    out = translator_slices(translate, stacks, data.source.masks, batch_size=5)
    masks = data.source.masks
    np.testing.assert_allclose(out[masks], data.source.images[masks] + 10.0)
    assert np.all(out[~masks] == -1.0)
    with pytest.raises(
        InputError,
        match=r"got \(20, 3, 4, 24\) and \(20, 24, 24\) \(a 2.5-D translator: "
        r"\(N, k, H, W\) stacks over \(N, H, W\) masks",
    ):
        translator_slices(translate, stacks[:, :, :4], masks)


def test_robustness_and_conditioning_read_stacks(
    eval_study: SimpleNamespace, k3_model: Path
) -> None:
    data = EvalData.from_cache(eval_study.cache)
    translator, _ = load_translator(k3_model)
    stacks, masks = data.source_stacks(3)[:6], data.source.masks[:6]
    curves = noise_sensitivity(translator, stacks, masks, sigmas=(0.0, 0.5), batch_size=4)
    # sigma 0 by hand: F(G(x)) of the stacks, scored on the centre slice inside the masks.
    with torch.no_grad():
        x = torch.from_numpy(stacks)
        rec = translator.translate(translator.translate(x, "AB"), "BA")[:, 1].numpy()
    mse = float(((rec.astype(np.float64) - stacks[:, 1]) ** 2)[masks].mean())
    assert curves["mse"][0] == pytest.approx(mse, rel=1e-5)
    figure = slice_conditioning(translator, stacks, masks, batch_size=4)
    assert figure is not None and figure["slices"] == 6 and figure["sensitivity"] > 0
    with pytest.raises(InputError, match=r"\(N, k, H, W\) stacks over \(N, H, W\) masks\)"):
        noise_sensitivity(translator, stacks, masks[:, :4])
    with pytest.raises(InputError, match=r"got \(6, 3, 24, 24\) and \(5, 24, 24\)"):
        slice_conditioning(translator, stacks, masks[:5])


def test_evaluate_cache_translates_k3_stacks(
    eval_study: SimpleNamespace, eval_kit: SimpleNamespace, k3_model: Path, tmp_path: Path
) -> None:
    _, results = evaluate_cache(
        eval_study.cache, tmp_path / "report", models={"k3": k3_model}, baselines=["none"],
        config=eval_kit.evaluation(),
    )  # fmt: skip
    data = EvalData.from_cache(eval_study.cache)
    translator, _ = load_translator(k3_model)
    with torch.no_grad():
        centre = translator.translate(torch.from_numpy(hand_stacks(data, 3)))[:, 1].numpy()
    slices = np.where(data.source.masks, centre, -1.0).astype(np.float32)
    want = eval_kit.paired(data, slices)
    got = results["paired"]["methods"]["k3"]
    for key in ("ssim", "psnr", "mae"):
        assert got[key] == pytest.approx(want[key], rel=1e-5), key
    assert results["conditioning"]["k3"]["sensitivity"] > 0
    assert results["robustness"]["k3"]["ssim"]
