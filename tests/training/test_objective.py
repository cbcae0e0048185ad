"""The training objective: generator and discriminator losses, their weights and gradients."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch

from segrenorm.config.schema import LossConfig, ModelConfig, TranslatorKind
from segrenorm.errors import InputError
from segrenorm.models.translator import Translator
from segrenorm.training.objective import discriminator_step, generator_step

KINDS = list(TranslatorKind)
N_CLASSES = 3
SEG_TERMS = {"seg_real_a", "seg_real_b", "seg_trans_ab", "seg_trans_ba"}
BASE_TERMS = {"gan_ab", "gan_ba", "cycle_a", "cycle_b"}

Make = Callable[..., Translator]


pytestmark = pytest.mark.usefixtures("seeded_torch")  # seed 0, one thread


@pytest.fixture
def make(tiny_kit: SimpleNamespace) -> Make:
    """``make(kind, loss=None, **model_changes)``: a tiny translator with 3 classes."""

    def build(
        kind: TranslatorKind, loss: LossConfig | None = None, **changes: object
    ) -> Translator:
        sizes = {**tiny_kit.model, "extractor_grid": 2, **changes}
        cfg = ModelConfig(translator=kind, **sizes)
        return Translator(cfg, n_classes=N_CLASSES, loss=loss or LossConfig())

    return build


def make_batch(batch_size: int = 2, side: int = 32) -> dict[str, torch.Tensor]:
    # Blocky images whose intensity follows the label, so segmentation is learnable.
    labels = torch.randint(0, N_CLASSES, (2, batch_size, side // 8, side // 8))
    labels = labels.repeat_interleave(8, dim=-1).repeat_interleave(8, dim=-2)
    a = labels[0].float().unsqueeze(1) / N_CLASSES * 1.6 - 0.8
    b = 0.8 - labels[1].float().unsqueeze(1) / N_CLASSES * 1.6
    return {"a": a, "b": b, "a_label": labels[0], "b_label": labels[1]}


@pytest.mark.parametrize("kind", KINDS)
def test_generator_and_discriminator_steps(make: Make, kind: TranslatorKind) -> None:
    model = make(kind)
    batch = make_batch()
    total, terms, outputs = generator_step(model, batch)
    assert total.dim() == 0 and torch.isfinite(total)
    expected = BASE_TERMS | (SEG_TERMS if kind.uses_segmentation else set())
    assert set(terms) == expected
    assert all(t.dim() == 0 and torch.isfinite(t) and not t.requires_grad for t in terms.values())
    image_keys = {"fake_b", "rec_a", "fake_a", "rec_b"}
    seg_keys = {"seg_a", "seg_b", "seg_fake_b", "seg_fake_a"} if kind.uses_segmentation else set()
    assert set(outputs) == image_keys | seg_keys
    for key in image_keys:
        assert outputs[key].shape == (2, 1, 32, 32) and not outputs[key].requires_grad
    for key in seg_keys:
        assert outputs[key].shape == (2, 32, 32) and outputs[key].dtype == torch.long
    d_total, d_terms = discriminator_step(model, batch, outputs)
    assert d_total.dim() == 0 and torch.isfinite(d_total)
    assert set(d_terms) == {"disc_a", "disc_b"}
    assert d_total.item() == pytest.approx(0.5 * (d_terms["disc_a"] + d_terms["disc_b"]).item())


def test_total_is_the_weighted_sum(make: Make) -> None:
    loss = LossConfig(gan=0.7, cycle=3.0, identity=2.0, seg_real=0.3, seg_translated=0.11)
    model = make(TranslatorKind.SEGRENORM, loss, residual_output=False)
    batch = make_batch()
    total, terms, _ = generator_step(model, batch)
    assert {"identity_a", "identity_b"} <= set(terms)
    expected = (
        0.7 * (terms["gan_ab"] + terms["gan_ba"])
        + 3.0 * (terms["cycle_a"] + terms["cycle_b"])
        + 2.0 * (terms["identity_a"] + terms["identity_b"])
        + 0.3 * (terms["seg_real_a"] + terms["seg_real_b"])
        + 0.11 * (terms["seg_trans_ab"] + terms["seg_trans_ba"])
    )
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    # The consistency warm-up scales the cycle and identity terms only.
    model.consistency_scale = 0.25
    eased, _, _ = generator_step(model, batch)
    consistency = 3.0 * (terms["cycle_a"] + terms["cycle_b"]) + 2.0 * (
        terms["identity_a"] + terms["identity_b"]
    )
    full = expected - 3.0 * (terms["cycle_a"] + terms["cycle_b"])
    full = full - 2.0 * (terms["identity_a"] + terms["identity_b"])
    assert eased.item() == pytest.approx((full + 0.25 * consistency).item(), rel=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_every_group(make: Make, kind: TranslatorKind) -> None:
    model = make(kind, residual_output=False)
    batch = make_batch()
    total, _, outputs = generator_step(model, batch)
    total.backward()
    groups = model.parameter_groups()
    for name in ("seg", "gen"):
        for p in groups[name]:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if groups[name]:
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in groups[name])
    # The generator loss leaves the discriminators untouched, and unfrozen afterwards.
    assert all(p.grad is None and p.requires_grad for p in groups["disc"])
    d_total, _ = discriminator_step(model, batch, outputs)
    d_total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in groups["disc"])


def test_zero_init_film_opens_after_one_step(make: Make) -> None:
    # With zero FiLM heads the extractors get no gradient at first; after one update of
    # the heads they do, so zero-init delays conditioning instead of disabling it.
    model = make(TranslatorKind.SEGRENORM, residual_output=False, film_init_std=0.0)
    assert model.extractor_ab is not None
    batch = make_batch()
    opt = torch.optim.Adam([*model.parameter_groups()["gen"]], lr=1e-2)
    first = model.extractor_ab.convs[0]
    assert isinstance(first, torch.nn.Conv2d)
    total, _, _ = generator_step(model, batch)
    total.backward()
    assert first.weight.grad is not None and first.weight.grad.abs().sum() == 0
    opt.step()
    model.zero_grad()
    total, _, _ = generator_step(model, batch)
    total.backward()
    assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_short_training_lowers_cycle_loss(make: Make, kind: TranslatorKind) -> None:
    model = make(kind, residual_output=False)
    groups = model.parameter_groups()
    opt_g = torch.optim.Adam([*groups["gen"], *groups["seg"]], lr=2e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(groups["disc"], lr=1e-3, betas=(0.5, 0.999))
    batch = make_batch()
    cycles: list[float] = []
    seg: list[float] = []
    for _ in range(20):
        opt_g.zero_grad(set_to_none=True)
        total, terms, outputs = generator_step(model, batch)
        total.backward()
        opt_g.step()
        opt_d.zero_grad(set_to_none=True)
        d_total, _ = discriminator_step(model, batch, outputs)
        d_total.backward()
        opt_d.step()
        cycles.append((terms["cycle_a"] + terms["cycle_b"]).item())
        if kind.uses_segmentation:
            seg.append((terms["seg_real_a"] + terms["seg_real_b"]).item())
    assert cycles[0] > 0.2
    assert min(cycles[-3:]) < 0.7 * cycles[0], cycles
    if seg:
        assert seg[-1] < seg[0], seg


def test_bad_batches_raise(make: Make) -> None:
    model = make(TranslatorKind.SEGRENORM)
    batch = make_batch()
    del batch["b_label"]
    with pytest.raises(InputError, match="batch lacks b_label"):
        generator_step(model, batch)
    cyclegan_batch = {"a": batch["a"], "b": torch.zeros(2, 1, 30, 32)}
    with pytest.raises(InputError, match=r"batch\['b'\] needs H and W divisible"):
        generator_step(make(TranslatorKind.CYCLEGAN), cyclegan_batch)
    with pytest.raises(InputError, match="missing \\['fake_b'\\]"):
        discriminator_step(model, make_batch(), {"fake_a": batch["a"]})
