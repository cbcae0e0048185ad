"""The wrong-segmentation control: G(x | f(x')) can differ from G(x | f(x)); x' = x is G(x)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from segrenorm.config.schema import LossConfig, ModelConfig, TranslatorKind
from segrenorm.errors import InputError
from segrenorm.evaluate.conditioning import partner_rows
from segrenorm.evaluate.controls import (
    control_method,
    control_name,
    partner_stacks,
    wrong_segmentation_slices,
)
from segrenorm.evaluate.methods import translator_slices
from segrenorm.models.conditioning import is_conditioned, translate_with_partner
from segrenorm.models.nn.renorm import SegRenorm
from segrenorm.models.translator import Translator

SIZES = {"ngf": 4, "ndf": 4, "n_downsample": 2, "n_middle_blocks": 1, "seg_ngf": 4,
         "seg_depth": 2, "embed_dim": 8}  # fmt: skip

pytestmark = pytest.mark.usefixtures("seeded_torch")


def _model(kind: TranslatorKind = TranslatorKind.SEGRENORM, *, film: float = 0.0) -> Translator:
    """A tiny translator; ``film`` > 0 redraws every FiLM head with that weight std."""
    cfg = ModelConfig(translator=kind, residual_output=False, **SIZES)  # type: ignore[arg-type]
    model = Translator(cfg, n_classes=3, loss=LossConfig()).eval()
    if film:
        for layer in model.modules():
            if isinstance(layer, SegRenorm):
                for head in (layer.gamma, layer.beta):
                    torch.nn.init.normal_(head.weight, 0.0, film)
    return model


def _slices(n: int = 6, side: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Slices whose anatomy differs from one to the next (a disc of growing radius)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:side, :side] - (side - 1) / 2
    radius = np.hypot(yy, xx)
    images = np.stack([np.where(radius < 2 + k, 0.8 - 0.1 * k, -1.0) for k in range(n)])
    images = (images + rng.normal(0, 0.05, images.shape)).clip(-1, 1).astype(np.float32)
    return images, images > -0.9


def _own_row(model: Translator, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    return translator_slices(lambda x: model.translate(x, "AB"), images, masks, batch_size=4)


def _control(model: Translator, images: np.ndarray, masks: np.ndarray, partner: np.ndarray):  # type: ignore[no-untyped-def]
    pair = functools.partial(translate_with_partner, model, direction="AB")
    return wrong_segmentation_slices(pair, images, masks, partner, batch_size=4)


def test_the_slice_as_its_own_partner_gives_exactly_the_method_row() -> None:
    model = _model(film=0.5)
    images, masks = _slices()
    same = _control(model, images, masks, np.arange(len(images)))
    np.testing.assert_array_equal(same, _own_row(model, images, masks))
    x = torch.from_numpy(images[:3, None])
    assert torch.equal(translate_with_partner(model, torch.cat([x, x], 1)), model.translate(x))


def test_large_film_heads_make_the_control_differ_from_the_method() -> None:
    model = _model(film=0.5)
    images, masks = _slices()
    own = _own_row(model, images, masks)
    control = _control(model, images, masks, partner_rows(len(images), seed=0))
    change = np.abs(control - own)[masks]
    assert change.mean() > 1e-2, change.mean()  # the conditioning moves the output
    assert np.all(control[~masks] == -1.0)  # background kept
    # Zero FiLM heads: the embedding cannot act, the control equals the method row.
    flat = _model(film=0.0)
    for layer in flat.modules():
        if isinstance(layer, SegRenorm):
            for head in (layer.gamma, layer.beta):
                torch.nn.init.zeros_(head.weight)
                torch.nn.init.zeros_(head.bias)
    np.testing.assert_allclose(
        _control(flat, images, masks, partner_rows(len(images))), _own_row(flat, images, masks),
        atol=1e-6,
    )  # fmt: skip


def test_the_partner_is_the_embedding_source_only() -> None:
    # G(x | f(x')) is G of x with x''s embedding: the pair's second channel feeds only S.
    model = _model(film=0.5)
    images, _ = _slices()
    x, other = torch.from_numpy(images[:2, None]), torch.from_numpy(images[2:4, None])
    gen, seg, extractor = model.route("AB")
    assert seg is not None
    want = gen(x, model.embed(extractor, seg(other)))
    got = translate_with_partner(model, torch.cat([x, other], 1))
    assert torch.equal(got, want) and got.shape == (2, 1, 16, 16)


def test_partner_stacks_put_the_partner_after_the_slice() -> None:
    images = np.arange(3 * 2 * 2, dtype=np.float32).reshape(3, 2, 2)
    pairs = partner_stacks(images, np.array([2, 0, 1]))
    assert pairs.shape == (3, 2, 2, 2)
    np.testing.assert_array_equal(pairs[:, 0], images)
    np.testing.assert_array_equal(pairs[:, 1], images[[2, 0, 1]])
    stacks = np.stack([images, images + 100, images + 200], axis=1)  # (3, k=3, 2, 2)
    both = partner_stacks(stacks, np.array([1, 2, 0]))
    assert both.shape == (3, 6, 2, 2)
    np.testing.assert_array_equal(both[:, 3:], stacks[[1, 2, 0]])


def test_bad_inputs_are_refused() -> None:
    images, _ = _slices(n=3)
    with pytest.raises(InputError, match=r"one partner row in \[0, 3\) per slice, got 2 rows"):
        partner_stacks(images, np.array([1, 0]))
    with pytest.raises(InputError, match=r"partner_rows\(3, seed\)"):
        partner_stacks(images, np.array([1, 2, 3]))
    with pytest.raises(
        InputError, match=r"\(N, H, W\) slices or \(N, k, H, W\) stacks, got \(3, 16\)"
    ):
        partner_stacks(images[:, 0], np.array([1, 2, 0]))
    model = _model(film=0.5)
    x = torch.from_numpy(images[:, None])
    with pytest.raises(InputError, match=r"translate_with_partner expects a batch \(B, 2, H, W\)"):
        translate_with_partner(model, x)
    plain = _model(TranslatorKind.S_CYCLEGAN)
    assert is_conditioned(model) and not is_conditioned(plain)
    with pytest.raises(
        InputError, match="translator s-cyclegan is not conditioned on an embedding"
    ):
        translate_with_partner(plain, torch.cat([x, x], 1))


def test_control_names_round_trip() -> None:
    assert control_name("segrenorm-s0") == "segrenorm-s0 (wrong seg)"
    assert control_method(control_name("segrenorm-s0")) == "segrenorm-s0"
    assert control_method("segrenorm") is None and control_method(" (wrong seg)") is None
