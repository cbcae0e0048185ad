"""2.5-D translators: k-slice stacks in and out, the centre slice for inference."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from segrenorm.config.schema import LossConfig, ModelConfig
from segrenorm.data.datasets import UnpairedSliceDataset
from segrenorm.errors import ConfigError, InputError
from segrenorm.models.checkpoint import load_translator
from segrenorm.models.conditioning import conditioning_sums, embed_batch
from segrenorm.models.inference import ConditionedGenerator, image_batch
from segrenorm.models.translator import Translator
from segrenorm.training.objective import discriminator_step, generator_step
from segrenorm.training.trainer import train

KINDS = ("cyclegan", "s-cyclegan", "semgan", "segrenorm")


def _stacks(batch: int = 2, k: int = 3, side: int = 16, seed: int = 0) -> torch.Tensor:
    """Distinct channels in (-0.9, 0.9): an identity that mixed channels would show."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((batch, k, side, side), generator=gen) * 1.8 - 0.9


@pytest.mark.parametrize("kind", KINDS)
def test_k3_translator_starts_as_the_identity_on_every_channel(
    kind: str, tiny_kit: SimpleNamespace, seeded_torch: None
) -> None:
    config = tiny_kit.config(kind, data={"context_slices": 3})
    model = Translator.from_config(config).eval()
    assert model.context_slices == 3 and model.centre == 1
    assert model.gen_ab.head.in_channels == 3 and model.gen_ab.tail.out_channels == 3
    assert model.disc_a.channels == 3
    x = _stacks()
    for direction in ("AB", "BA"):
        y = model.translate(x, direction)
        assert y.shape == x.shape
        assert float((y - x).abs().max()) < 1e-3  # tanh(atanh(x) + 0) up to the clamp
    if model.seg_a is not None:
        assert model.segment(x, "A").shape == (2, 4, 16, 16)
    centre = ConditionedGenerator(model, "AB").eval()
    with torch.no_grad():
        out = centre(x)
    assert out.shape == (2, 1, 16, 16)
    torch.testing.assert_close(out, model.translate(x)[:, 1:2])


def test_k3_random_translator_uses_the_neighbours(
    tiny_kit: SimpleNamespace, seeded_torch: None
) -> None:
    config = tiny_kit.config(model={"residual_output": False, "film_init_std": 0.03},
                             data={"context_slices": 3})  # fmt: skip
    model = Translator.from_config(config).eval()
    x = _stacks()
    moved = x.clone()
    moved[:, 0] = -x[:, 0]  # change only the neighbour below
    centre = ConditionedGenerator(model, "AB").eval()
    with torch.no_grad():
        assert float((centre(x) - centre(moved)).abs().max()) > 1e-4


def test_translator_refuses_even_context_and_wrong_channels(tiny_kit: SimpleNamespace) -> None:
    with pytest.raises(ConfigError, match=r"context_slices=2 must be an odd number of slices >= 1"):
        Translator(ModelConfig(), n_classes=4, loss=LossConfig(), context_slices=2)
    model = Translator.from_config(tiny_kit.config(data={"context_slices": 3}))
    with pytest.raises(InputError, match=r"expects a batch \(B, 3, H, W\), got \(2, 1, 16, 16\)"):
        model.translate(torch.zeros(2, 1, 16, 16))


def test_k3_objective_on_dataset_batches(
    tiny_kit: SimpleNamespace, tiny_cache: Path, seeded_torch: None
) -> None:
    model = Translator.from_config(tiny_kit.config(data={"context_slices": 3}))
    data = UnpairedSliceDataset(tiny_cache, crop_size=32, context_slices=3)
    items = [data[i] for i in range(2)]
    batch = {key: torch.stack([item[key] for item in items]) for key in items[0]}
    assert batch["a"].shape == (2, 3, 32, 32) and batch["a_label"].shape == (2, 32, 32)
    total, terms, outputs = generator_step(model, batch)
    assert outputs["fake_b"].shape == (2, 3, 32, 32) and outputs["rec_a"].shape == (2, 3, 32, 32)
    assert outputs["seg_a"].shape == (2, 32, 32)
    total.backward()
    assert all(bool(torch.isfinite(v)) for v in terms.values())
    d_total, _ = discriminator_step(model, batch, outputs)
    assert bool(torch.isfinite(d_total))
    flat = {**batch, "a": batch["a"][:, 1:2]}
    with pytest.raises(InputError, match=r"batch\['a'\] expects a batch \(B, 3, H, W\)"):
        generator_step(model, flat)


def test_conditioning_of_stacks_is_taken_on_the_centre(
    tiny_kit: SimpleNamespace, seeded_torch: None
) -> None:
    config = tiny_kit.config(model={"residual_output": False}, data={"context_slices": 3})
    model = Translator.from_config(config).eval()
    x = _stacks(batch=3)
    masks = torch.zeros(3, 16, 16, dtype=torch.bool)
    masks[:, 4:12, 4:12] = True
    own = embed_batch(model, x)
    assert own is not None
    other = own.roll(1, dims=0)
    sums = conditioning_sums(model, x, masks, own, other)
    with torch.no_grad():  # by hand: channel 1 only, inside the masks
        a, b = model.gen_ab(x, own)[:, 1], model.gen_ab(x, other)[:, 1]
    change = float((a - b).abs()[masks].sum())
    moved = float((a - x[:, 1]).abs()[masks].sum())
    assert sums.pixels == int(masks.sum())
    assert sums.change == pytest.approx(change, rel=1e-5)
    assert sums.translation == pytest.approx(moved, rel=1e-5)
    with pytest.raises(InputError, match="do not match the images"):
        conditioning_sums(model, x, torch.ones(3, 3, 16, 16), own, other)


def test_k3_training_run_stores_and_rebuilds_k(
    tiny_kit: SimpleNamespace, tiny_cache: Path, tmp_path: Path
) -> None:
    config = tiny_kit.config(data={"context_slices": 3}, run={"image_every": 1})
    run = train(config, tiny_cache, tmp_path / "runs", progress=False, max_steps=2)
    translator, loaded = load_translator(run, "cpu")
    assert loaded.data.context_slices == 3 and translator.context_slices == 3
    assert translator.seg_a is not None and translator.seg_a.in_channels == 3
    assert any((run / "images").glob("*.png"))  # the grids draw the centre slices
    x = _stacks(side=32)
    assert translator.translate(x).shape == (2, 3, 32, 32)
    assert np.isfinite(translator.translate(x).numpy()).all()


def test_image_batch_restrides_a_single_channel(
    tiny_kit: SimpleNamespace, seeded_torch: None
) -> None:
    images = np.random.default_rng(0).uniform(-1, 1, (3, 16, 16)).astype(np.float32)
    picked = images[:, None][np.array([0, 1, 2])]  # NumPy strides its size-1 axis by 4 bytes
    assert picked.strides[1] == 4
    batch = image_batch(picked)
    assert batch.stride() == (256, 256, 16, 1)
    assert np.shares_memory(batch.numpy(), np.ascontiguousarray(picked))
    config = tiny_kit.config(model={"residual_output": False})
    model = Translator.from_config(config).eval()
    with torch.inference_mode():  # the same kernels as the (B, 1, H, W) batch of old
        plain = model.translate(torch.from_numpy(images[:, None]))
        assert torch.equal(model.translate(batch), plain)
