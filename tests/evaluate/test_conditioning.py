"""Conditioning sensitivity: hand computations on a translator of known embedding dependence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from segrenorm.config.schema import LossConfig, ModelConfig, TranslatorKind
from segrenorm.errors import ConfigError, InputError
from segrenorm.evaluate.conditioning import partner_rows, slice_conditioning
from segrenorm.models.conditioning import (
    ConditioningSums,
    conditioning_sensitivity,
    conditioning_sums,
    embed_batch,
)
from segrenorm.models.translator import Translator

SIZES = {"ngf": 4, "ndf": 4, "n_downsample": 2, "n_middle_blocks": 1, "seg_ngf": 4,
         "seg_depth": 2, "embed_dim": 8}  # fmt: skip
SCALE = 0.1  # the stub generator's G(x | f) = x + SCALE * f[0]
SHARPNESS = 3.0  # the stub segmenter's class-1 logit is SHARPNESS * x


pytestmark = pytest.mark.usefixtures("seeded_torch")


class _Segmenter(nn.Module):
    """Logits (0, SHARPNESS * x): the class-1 probability is sigmoid(SHARPNESS * x)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([torch.zeros_like(x), SHARPNESS * x], dim=1)


class _Extractor(nn.Module):
    """f = (mean class-1 probability, 0, ...): one number per image."""

    embed_dim = 8

    def forward(self, probs: Tensor) -> Tensor:
        f = torch.zeros(probs.shape[0], self.embed_dim)
        f[:, 0] = probs[:, 1].mean(dim=(1, 2))
        return f


class _Generator(nn.Module):
    """G(x | f) = x + SCALE * f[0]: the output moves with the embedding, and only with it."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return x + SCALE * emb[:, 0, None, None, None]


def _model(kind: TranslatorKind = TranslatorKind.SEGRENORM, **changes: object) -> Translator:
    cfg = ModelConfig(translator=kind, **{**SIZES, **changes})  # type: ignore[arg-type]
    return Translator(cfg, n_classes=2, loss=LossConfig()).eval()


def _known() -> Translator:
    """A segrenorm translator whose AB networks are the stubs above."""
    model = _model()
    model.seg_a, model.extractor_ab, model.gen_ab = _Segmenter(), _Extractor(), _Generator()  # type: ignore[assignment]
    return model


def _embedding(x: np.ndarray) -> np.ndarray:
    """The stubs' f[0] per image, by hand."""
    return (1.0 / (1.0 + np.exp(-SHARPNESS * x.astype(np.float64)))).mean(axis=(1, 2))


def _images(n: int = 5, side: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (n, side, side)).astype(np.float32) * np.linspace(0.2, 1, n)[
        :, None, None
    ].astype(np.float32)
    masks = rng.random((n, side, side)) < np.linspace(0.2, 0.9, n)[:, None, None]
    return images, masks


def _hand_ratio(f: np.ndarray, partner: np.ndarray, pixels: np.ndarray) -> float:
    # |G(x|f) - G(x|f')| = SCALE |f - f'| and |G(x|f) - x| = SCALE |f| at every pixel.
    return float((pixels * np.abs(f - f[partner])).sum() / (pixels * np.abs(f)).sum())


def test_batch_figure_matches_the_hand_computation() -> None:
    images, masks = _images()
    x = torch.from_numpy(images)[:, None]
    figure = conditioning_sensitivity(_known(), x, torch.from_numpy(masks), "AB", shift=2)
    assert figure is not None
    f, pixels = _embedding(images), masks.sum(axis=(1, 2))
    partner = (np.arange(5) - 2) % 5  # rolled by 2: slice i gets the embedding of i - 2
    assert figure["sensitivity"] == pytest.approx(_hand_ratio(f, partner, pixels), rel=1e-5)
    change = SCALE * (pixels * np.abs(f - f[partner])).sum() / pixels.sum()
    assert figure["change"] == pytest.approx(change, rel=1e-5)
    assert figure["translation"] == pytest.approx(SCALE * (pixels * f).sum() / pixels.sum(), 1e-5)
    assert figure["pixels"] == int(masks.sum())


def test_slice_figure_pools_batches_over_a_random_cycle() -> None:
    images, masks = _images(n=7)
    figure = slice_conditioning(_known(), images, masks, batch_size=3, seed=4)
    assert figure is not None and figure["slices"] == 7
    partner = partner_rows(7, seed=4)
    expected = _hand_ratio(_embedding(images), partner, masks.sum(axis=(1, 2)))
    assert figure["sensitivity"] == pytest.approx(expected, rel=1e-5)
    # Batching does not change the pooled figure.
    whole = slice_conditioning(_known(), images, masks, batch_size=64, seed=4)
    assert whole is not None and whole["sensitivity"] == pytest.approx(expected, rel=1e-5)


def test_zero_film_heads_give_exactly_zero() -> None:
    # Renorm layers with zero heads ignore the embedding: the output cannot depend on it.
    model = _model(film_init_std=0.0, residual_output=False)
    images, masks = _images(n=4, side=16)
    figure = slice_conditioning(model, images, masks, batch_size=2)
    assert figure is not None
    assert figure["change"] == 0.0 and figure["sensitivity"] == 0.0
    assert figure["translation"] > 0


def test_default_initialisation_depends_on_the_embedding() -> None:
    model = _model(residual_output=False)
    images, masks = _images(n=4, side=16)
    figure = slice_conditioning(model, images, masks)
    assert figure is not None and figure["sensitivity"] > 1e-3


@pytest.mark.parametrize("kind", [TranslatorKind.CYCLEGAN, TranslatorKind.S_CYCLEGAN])
def test_unconditioned_translators_have_no_figure(kind: TranslatorKind) -> None:
    model = _model(kind)
    images, masks = _images(n=3, side=16)
    x = torch.from_numpy(images)[:, None]
    assert embed_batch(model, x) is None
    assert conditioning_sensitivity(model, x, torch.from_numpy(masks)) is None
    assert slice_conditioning(model, images, masks) is None
    own = torch.zeros(3, 8)
    with pytest.raises(InputError, match=f"translator {kind.value} is not conditioned"):
        conditioning_sums(model, x, torch.from_numpy(masks), own, own)


def test_empty_foreground_and_identity_output_have_no_ratio() -> None:
    sums = ConditioningSums()
    assert sums.as_dict() == {"sensitivity": None, "change": None, "translation": None,
                              "pixels": 0}  # fmt: skip
    pooled = ConditioningSums(1.0, 4.0, 10) + ConditioningSums(0.5, 2.0, 5)
    assert pooled.as_dict() == {"sensitivity": 0.25, "change": 0.1, "translation": 0.4,
                                "pixels": 15}  # fmt: skip
    images, _ = _images(n=3, side=16)
    empty = slice_conditioning(_known(), images, np.zeros(images.shape, bool))
    assert empty is not None and empty["sensitivity"] is None and empty["pixels"] == 0


def test_partner_rows_is_a_seeded_derangement() -> None:
    for n in (2, 3, 10):
        partner = partner_rows(n, seed=1)
        assert sorted(partner.tolist()) == list(range(n))
        assert not np.any(partner == np.arange(n))
    np.testing.assert_array_equal(partner_rows(10, seed=1), partner_rows(10, seed=1))
    with pytest.raises(InputError, match="needs at least 2 slices to swap embeddings, got 1"):
        partner_rows(1)


def test_bad_inputs_are_refused() -> None:
    model = _known()
    images, masks = _images(n=3, side=8)
    x, m = torch.from_numpy(images)[:, None], torch.from_numpy(masks)
    with pytest.raises(InputError, match=r"B >= 2 slices .* got \(1, 1, 8, 8\) and shift=1"):
        conditioning_sensitivity(model, x[:1], m[:1])
    with pytest.raises(InputError, match="shift=3"):
        conditioning_sensitivity(model, x, m, shift=3)
    with pytest.raises(InputError, match=r"foreground masks \(3, 4, 4\) do not match"):
        conditioning_sensitivity(model, x, m[:, :4, :4])
    with pytest.raises(InputError, match=r"other embeddings \(3, 5\) should be \(3, 8\)"):
        conditioning_sums(model, x, m, torch.zeros(3, 8), torch.zeros(3, 5))
    with pytest.raises(ConfigError, match="direction"):
        conditioning_sensitivity(model, x, m, "AA")
    with pytest.raises(InputError, match=r"images and masks of one shape, got \(3, 8, 8\)"):
        slice_conditioning(model, images, masks[:2])
    with pytest.raises(ConfigError, match="batch size 0 must be at least 1"):
        slice_conditioning(model, images, masks, batch_size=0)
    with pytest.raises(ConfigError, match="direction"):
        slice_conditioning(model, images, masks, direction="XY")
