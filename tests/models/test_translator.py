"""The four translators: construction, parameter groups, inference and segmentation.

Their training losses are tested in tests/training/test_objective.py.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from segrenorm.config.load import load_config
from segrenorm.config.schema import LossConfig, ModelConfig, TranslatorKind
from segrenorm.errors import ConfigError, InputError
from segrenorm.models.nn.renorm import SegRenorm
from segrenorm.models.translator import Translator

KINDS = list(TranslatorKind)
N_CLASSES = 3


pytestmark = pytest.mark.usefixtures("seeded_torch")  # seed 0, one thread


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
    # The default initialisation, untouched: the dependence on S shows from the start.
    model = make(TranslatorKind.SEGRENORM, residual_output=False).eval()
    assert model.seg_a is not None and model.extractor_ab is not None
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
    with pytest.raises(ConfigError, match="direction 'XY' is unknown"):
        model.translate(torch.zeros(1, 1, 16, 16), "XY")
    with pytest.raises(InputError, match="divisible by its stride 4, got 18x16"):
        model.translate(torch.zeros(1, 1, 18, 16))
    with pytest.raises(InputError, match=r"expects a batch \(B, 1, H, W\), got \(16, 16\)"):
        model.translate(torch.zeros(16, 16))
