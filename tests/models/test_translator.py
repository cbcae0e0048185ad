"""The four translators: construction, steps, gradients, inference and short training."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import torch

from segrenorm.config.schema import LossConfig, ModelConfig, TranslatorKind, load_config
from segrenorm.errors import ConfigError, InputError
from segrenorm.models.nn import SegRenorm
from segrenorm.models.translator import Translator

KINDS = list(TranslatorKind)
N_CLASSES = 3
SEG_TERMS = {"seg_real_a", "seg_real_b", "seg_trans_ab", "seg_trans_ba"}
BASE_TERMS = {"gan_ab", "gan_ba", "cycle_a", "cycle_b"}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # Tiny models: a second intra-op thread only spins against the other workers.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(kind: TranslatorKind, **changes: object) -> ModelConfig:
    cfg = ModelConfig(
        translator=kind,
        ngf=4,
        ndf=4,
        n_downsample=2,
        n_middle_blocks=1,
        seg_ngf=4,
        seg_depth=2,
        embed_dim=8,
        extractor_grid=2,
    )
    return dataclasses.replace(cfg, **changes)  # type: ignore[arg-type]


def make(kind: TranslatorKind, loss: LossConfig | None = None, **changes: object) -> Translator:
    return Translator(tiny(kind, **changes), n_classes=N_CLASSES, loss=loss or LossConfig())


def make_batch(batch_size: int = 2, side: int = 32) -> dict[str, torch.Tensor]:
    # Blocky images whose intensity follows the label, so segmentation is learnable.
    labels = torch.randint(0, N_CLASSES, (2, batch_size, side // 8, side // 8))
    labels = labels.repeat_interleave(8, dim=-1).repeat_interleave(8, dim=-2)
    a = labels[0].float().unsqueeze(1) / N_CLASSES * 1.6 - 0.8
    b = 0.8 - labels[1].float().unsqueeze(1) / N_CLASSES * 1.6
    return {"a": a, "b": b, "a_label": labels[0], "b_label": labels[1]}


# -- construction -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_submodules_per_kind(kind: TranslatorKind) -> None:
    model = make(kind)
    assert model.kind is kind
    assert (model.seg_a is not None) == kind.uses_segmentation
    assert (model.seg_b is not None) == kind.uses_segmentation
    assert (model.extractor_ab is not None) == kind.renormalizes
    assert (model.extractor_ba is not None) == kind.renormalizes
    assert model.gen_ab.conditioned == kind.renormalizes
    prefixes = {key.split(".")[0] for key in model.state_dict()}
    expected = {"gen_ab", "gen_ba", "disc_a", "disc_b"}
    if kind.uses_segmentation:
        expected |= {"seg_a", "seg_b"}
    if kind.renormalizes:
        expected |= {"extractor_ab", "extractor_ba"}
    assert prefixes == expected  # class_weights is not persistent
    groups = model.parameter_groups()
    assert set(groups) == {"seg", "gen", "disc"}
    assert sum(len(g) for g in groups.values()) == len(list(model.parameters()))
    assert bool(groups["seg"]) == kind.uses_segmentation


def test_from_config_uses_data_classes() -> None:
    config = load_config("cpu", overrides=["data.n_classes=3", "model.translator=s-cyclegan"])
    model = Translator.from_config(config)
    assert model.kind is TranslatorKind.S_CYCLEGAN and model.n_classes == 3
    assert model.seg_a is not None and model.seg_a.head.out_channels == 3
    assert model.stride == config.model.stride
    torch.testing.assert_close(model.class_weights, torch.tensor([0.5, 0.5, 0.5]))


def test_bad_configs_raise() -> None:
    with pytest.raises(ConfigError, match=r"model\.translator='pix2pix' is unknown"):
        make("pix2pix")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="n_classes=1 must be >= 2"):
        Translator(tiny(TranslatorKind.CYCLEGAN), n_classes=1, loss=LossConfig())
    with pytest.raises(ConfigError, match="class_weights has 4 values"):
        make(TranslatorKind.SEGRENORM, LossConfig(class_weights=(0.1, 0.2, 0.3, 0.4)))
    ok = Translator(
        tiny(TranslatorKind.SEGRENORM), n_classes=2, loss=LossConfig(class_weights=(0.2, 0.8))
    )
    torch.testing.assert_close(ok.class_weights, torch.tensor([0.2, 0.8]))
    by_value = make("segrenorm")  # type: ignore[arg-type]
    assert by_value.kind is TranslatorKind.SEGRENORM


# -- one step -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_generator_and_discriminator_steps(kind: TranslatorKind) -> None:
    model = make(kind)
    batch = make_batch()
    total, terms, outputs = model.generator_step(batch)
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
    d_total, d_terms = model.discriminator_step(batch, outputs)
    assert d_total.dim() == 0 and torch.isfinite(d_total)
    assert set(d_terms) == {"disc_a", "disc_b"}
    assert d_total.item() == pytest.approx(0.5 * (d_terms["disc_a"] + d_terms["disc_b"]).item())


def test_total_is_the_weighted_sum() -> None:
    loss = LossConfig(gan=0.7, cycle=3.0, identity=2.0, seg_real=0.3, seg_translated=0.11)
    model = make(TranslatorKind.SEGRENORM, loss, residual_output=False)
    batch = make_batch()
    total, terms, _ = model.generator_step(batch)
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
    eased, _, _ = model.generator_step(batch)
    consistency = 3.0 * (terms["cycle_a"] + terms["cycle_b"]) + 2.0 * (
        terms["identity_a"] + terms["identity_b"]
    )
    full = expected - 3.0 * (terms["cycle_a"] + terms["cycle_b"])
    full = full - 2.0 * (terms["identity_a"] + terms["identity_b"])
    assert eased.item() == pytest.approx((full + 0.25 * consistency).item(), rel=1e-5)


def test_consistency_warmup_schedule() -> None:
    from segrenorm.config.schema import OptimConfig
    from segrenorm.training.trainer import consistency_scale

    ramp = OptimConfig(consistency_warmup=4)
    assert [consistency_scale(ramp, s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert consistency_scale(OptimConfig(), 0) == 1.0
    with pytest.raises(ConfigError, match=r"optim\.consistency_warmup=-1 is out of range"):
        load_config("cpu", overrides=["optim.consistency_warmup=-1"])


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_every_group(kind: TranslatorKind) -> None:
    model = make(kind, zero_init_film=False, residual_output=False)
    batch = make_batch()
    total, _, outputs = model.generator_step(batch)
    total.backward()
    groups = model.parameter_groups()
    for name in ("seg", "gen"):
        for p in groups[name]:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if groups[name]:
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in groups[name])
    # The generator loss leaves the discriminators untouched, and unfrozen afterwards.
    assert all(p.grad is None and p.requires_grad for p in groups["disc"])
    d_total, _ = model.discriminator_step(batch, outputs)
    d_total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in groups["disc"])


def test_zero_init_film_opens_after_one_step() -> None:
    # With zero FiLM heads the extractors get no gradient at first; after one update of
    # the heads they do, so zero-init delays conditioning instead of disabling it.
    model = make(TranslatorKind.SEGRENORM, residual_output=False)
    assert model.extractor_ab is not None
    batch = make_batch()
    opt = torch.optim.Adam([*model.parameter_groups()["gen"]], lr=1e-2)
    first = model.extractor_ab.convs[0]
    assert isinstance(first, torch.nn.Conv2d)
    total, _, _ = model.generator_step(batch)
    total.backward()
    assert first.weight.grad is not None and first.weight.grad.abs().sum() == 0
    opt.step()
    model.zero_grad()
    total, _, _ = model.generator_step(batch)
    total.backward()
    assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_short_training_lowers_cycle_loss(kind: TranslatorKind) -> None:
    model = make(kind, residual_output=False)
    groups = model.parameter_groups()
    opt_g = torch.optim.Adam([*groups["gen"], *groups["seg"]], lr=2e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(groups["disc"], lr=1e-3, betas=(0.5, 0.999))
    batch = make_batch()
    cycles: list[float] = []
    seg: list[float] = []
    for _ in range(20):
        opt_g.zero_grad(set_to_none=True)
        total, terms, outputs = model.generator_step(batch)
        total.backward()
        opt_g.step()
        opt_d.zero_grad(set_to_none=True)
        d_total, _ = model.discriminator_step(batch, outputs)
        d_total.backward()
        opt_d.step()
        cycles.append((terms["cycle_a"] + terms["cycle_b"]).item())
        if kind.uses_segmentation:
            seg.append((terms["seg_real_a"] + terms["seg_real_b"]).item())
    assert cycles[0] > 0.2
    assert min(cycles[-3:]) < 0.7 * cycles[0], cycles
    if seg:
        assert seg[-1] < seg[0], seg


# -- inference ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("direction", ["AB", "BA"])
def test_translate_starts_as_identity(kind: TranslatorKind, direction: str) -> None:
    model = make(kind).eval()
    x = torch.rand(3, 1, 16, 16) * 1.8 - 0.9
    out = model.translate(x, direction)
    assert out.shape == x.shape and not out.requires_grad
    torch.testing.assert_close(out, x, atol=1e-5, rtol=1e-5)


def test_translate_uses_the_segmentation_of_the_input() -> None:
    model = make(TranslatorKind.SEGRENORM, zero_init_film=False, residual_output=False).eval()
    assert model.seg_a is not None and model.extractor_ab is not None
    # N(0, 0.02) weights shrink the embedding to ~1e-7 through six layers; widen them so
    # that the dependence on S shows in float32.
    for layer in model.extractor_ab.modules():
        if isinstance(layer, torch.nn.Conv2d | torch.nn.Linear):
            torch.nn.init.normal_(layer.weight, 0.0, 0.5)
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    before = model.translate(x, "AB")
    torch.nn.init.normal_(model.seg_a.head.weight, 0.0, 1.0)  # change S only
    assert (model.translate(x, "AB") - before).abs().max() > 1e-4
    model.set_film_enabled(False)
    assert all(not m.enabled for m in model.modules() if isinstance(m, SegRenorm))
    off = model.translate(x, "AB")
    torch.nn.init.normal_(model.seg_a.head.weight, 0.0, 1.0)
    torch.testing.assert_close(model.translate(x, "AB"), off)  # FiLM off: S no longer matters
    model.set_film_enabled(True)
    assert all(m.enabled for m in model.modules() if isinstance(m, SegRenorm))


def test_segment() -> None:
    model = make(TranslatorKind.SEMGAN)
    x = torch.rand(2, 1, 16, 16)
    assert model.segment(x, "A").shape == (2, N_CLASSES, 16, 16)
    assert model.segment(x, "B").shape == (2, N_CLASSES, 16, 16)
    with pytest.raises(InputError, match="site='C' is unknown"):
        model.segment(x, "C")
    with pytest.raises(ConfigError, match="translator cyclegan has no segmentation nets"):
        make(TranslatorKind.CYCLEGAN).segment(x, "A")


def test_bad_inputs_raise() -> None:
    model = make(TranslatorKind.SEGRENORM)
    with pytest.raises(InputError, match="direction='XY' is unknown"):
        model.translate(torch.zeros(1, 1, 16, 16), "XY")
    with pytest.raises(InputError, match="divisible by its stride 4, got 18x16"):
        model.translate(torch.zeros(1, 1, 18, 16))
    with pytest.raises(InputError, match=r"expects a batch \(B, 1, H, W\), got \(16, 16\)"):
        model.translate(torch.zeros(16, 16))
    batch = make_batch()
    del batch["b_label"]
    with pytest.raises(InputError, match="batch lacks b_label"):
        model.generator_step(batch)
    cyclegan_batch = {"a": batch["a"], "b": torch.zeros(2, 1, 30, 32)}
    with pytest.raises(InputError, match=r"batch\['b'\] needs H and W divisible"):
        make(TranslatorKind.CYCLEGAN).generator_step(cyclegan_batch)
    with pytest.raises(InputError, match="missing \\['fake_b'\\]"):
        model.discriminator_step(make_batch(), {"fake_a": batch["a"]})
