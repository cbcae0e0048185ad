"""Initialisation: an O(1), image-dependent embedding and small, non-zero FiLM heads."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segrenorm.config.build import build_dataclass
from segrenorm.config.load import load_config
from segrenorm.config.schema import LossConfig, ModelConfig
from segrenorm.errors import ConfigError, InputError
from segrenorm.models.nn.extractor import SemanticExtractor, standardize_embedding
from segrenorm.models.nn.init import KAIMING, init_weights, mark_init
from segrenorm.models.nn.renorm import FILM_INIT_STD, SegRenorm
from segrenorm.models.translator import Translator

#: The initialisation before issue 10, rebuilt through the config flags.
OLD_INIT = {"film_init_std": 0.0, "extractor_init": "normal", "embed_norm": False}
N_CLASSES = 4


pytestmark = pytest.mark.usefixtures("seeded_torch")  # seed 0, one thread


def _segmentations(side: int = 64) -> torch.Tensor:
    """Two different one-hot segmentations (2, 4, side, side): a disc of shells and stripes."""
    grid = torch.linspace(-1, 1, side)
    radius = torch.sqrt(grid[:, None] ** 2 + grid[None, :] ** 2)
    shells = (radius < 0.9).long() + (radius < 0.6).long() + (radius < 0.3).long()
    stripes = torch.where(radius < 0.9, 1 + (torch.arange(side) // 8 % 3)[None, :], 0)
    labels = torch.stack([shells, stripes.expand(side, side)])  # (2, side, side)
    return F.one_hot(labels, N_CLASSES).permute(0, 3, 1, 2).float()


def _model_config(preset: str, **changes: object) -> ModelConfig:
    return build_dataclass(ModelConfig, changes, base=load_config(preset).model)


@pytest.mark.parametrize("preset", ["cpu", "ixi"])
def test_embedding_is_unit_rms_and_differs_between_segmentations(preset: str) -> None:
    model = _model_config(preset)
    ext = Translator._extractor(model, N_CLASSES)
    with torch.no_grad():
        emb = ext(_segmentations())  # (2, embed_dim)
    rms = emb.pow(2).mean(dim=1).sqrt()
    assert ((rms >= 0.3) & (rms <= 3.0)).all(), rms
    spread = (emb[0] - emb[1]).pow(2).mean().sqrt()
    assert spread > 0.1, spread
    # Before: N(0, 0.02) through six unnormalised layers; rms ~1e-5 (cpu) to ~1e-3 (ixi).
    old = Translator._extractor(_model_config(preset, **OLD_INIT), N_CLASSES)
    with torch.no_grad():
        old_emb = old(_segmentations())
    assert old_emb.pow(2).mean().sqrt() < 0.01
    assert (old_emb[0] - old_emb[1]).pow(2).mean().sqrt() < 1e-3


def test_untrained_segmentation_still_gives_image_dependent_embeddings() -> None:
    # The route a generator sees: f(softmax(S(x))) with S as initialised (near-uniform output).
    config = load_config("cpu")
    model = Translator.from_config(config)
    assert model.seg_a is not None and model.extractor_ab is not None
    x = _segmentations().argmax(dim=1, keepdim=True).float() / 2 - 0.75  # two images
    with torch.no_grad():
        emb = model.embed(model.extractor_ab, model.seg_a(x))
    assert emb is not None
    assert 0.3 <= emb.pow(2).mean().sqrt() <= 3.0
    assert (emb[0] - emb[1]).pow(2).mean().sqrt() > 0.1


def test_standardize_embedding_by_hand() -> None:
    z = torch.tensor([[1.0, 2.0, 3.0, 6.0], [5.0, 5.0, 5.0, 5.0]])
    out = standardize_embedding(z, eps=1e-12)
    # Row 0: mean 3, deviations (-2, -1, 0, 3), mean square 14 / 4.
    torch.testing.assert_close(out[0], torch.tensor([-2.0, -1.0, 0.0, 3.0]) / math.sqrt(3.5))
    torch.testing.assert_close(out[1], torch.zeros(4))  # a constant embedding stays 0


def test_extractor_without_normalisation_is_the_plain_network() -> None:
    ext = SemanticExtractor(n_classes=3, ngf=2, embed_dim=5, normalize=False, kaiming_init=False)
    probs = torch.rand(2, 3, 16, 16).softmax(dim=1)
    assert ext.centre(probs) is probs
    pooled = torch.randn(2, 16 * 2 * 2)  # (B, 8ngf * grid * grid)
    torch.testing.assert_close(ext.finish(pooled), ext.mlp(pooled))
    first = ext.convs[0]
    assert isinstance(first, nn.Conv2d)
    assert first.weight.std().item() == pytest.approx(0.02, rel=0.3)  # the old draw


def test_kaiming_mark_draws_he_weights() -> None:
    layer = mark_init(nn.Linear(800, 400), KAIMING)
    plain = nn.Linear(800, 400)
    root = nn.Sequential(layer, plain)
    init_weights(root)
    assert layer.weight.std().item() == pytest.approx(math.sqrt(2 / 800), rel=0.02)
    assert plain.weight.std().item() == pytest.approx(0.02, rel=0.02)
    assert not layer.bias.count_nonzero() and not plain.bias.count_nonzero()
    # A later init over an enclosing network keeps the mark.
    init_weights(nn.Sequential(root))
    assert layer.weight.std().item() == pytest.approx(math.sqrt(2 / 800), rel=0.02)


@pytest.mark.parametrize(
    ("draw", "match"),
    [(-0.1, r"weight std -0.1 must be finite and >= 0"), (math.nan, "nan must be finite"),
     ("xavier", r"weight draw 'xavier' is unknown: use a std >= 0 or 'kaiming'")],
)  # fmt: skip
def test_mark_init_rejects_bad_draws(draw: float | str, match: str) -> None:
    with pytest.raises(InputError, match=match):
        mark_init(nn.Linear(2, 2), draw)


def test_film_heads_start_small_but_not_zero() -> None:
    norm = SegRenorm(256, 512)
    emb = standardize_embedding(torch.randn(64, 512))  # unit-rms embeddings, as the extractor's
    gamma, beta = norm.gamma(emb), norm.beta(emb)  # (64, 256)
    for head in (gamma, beta):
        assert head.std().item() == pytest.approx(FILM_INIT_STD, rel=0.05)
        assert 0.01 <= head.abs().mean().item() <= 0.05
    assert not norm.gamma.bias.count_nonzero() and not norm.beta.bias.count_nonzero()
    # Close to instance norm, but the embedding reaches the output, and gradient reaches f.
    x = torch.randn(64, 256, 4, 4)
    emb.requires_grad_(True)
    out = norm(x, emb)
    assert 0 < (out - F.instance_norm(x)).abs().mean() < 0.1
    out.pow(2).sum().backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0


def test_film_init_std_zero_keeps_the_old_zero_heads() -> None:
    norm = SegRenorm(6, 5, init_std=0.0)
    assert not any(p.count_nonzero() for p in norm.parameters())


@pytest.mark.parametrize("bad", [-0.1, math.inf])
def test_segrenorm_rejects_a_bad_init_std(bad: float) -> None:
    with pytest.raises(InputError, match=rf"SegRenorm init_std={bad} must be finite and >= 0"):
        SegRenorm(4, 3, init_std=bad)


@pytest.mark.parametrize(
    ("override", "match"),
    [("model.film_init_std=-0.01", r"model\.film_init_std=-0\.01 must lie in \[0, 1\]"),
     ("model.film_init_std=2", r"model\.film_init_std=2\.0 must lie in \[0, 1\]"),
     ("model.extractor_init=xavier",
      r"model\.extractor_init='xavier' is unknown: choose one of kaiming, normal"),
     ("model.embed_norm=maybe", r"model\.embed_norm='maybe' must be true or false")],
)  # fmt: skip
def test_config_rejects_bad_init_settings(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config("cpu", overrides=[override])


def test_presets_use_the_new_initialisation() -> None:
    for preset in ("cpu", "ixi"):
        m = load_config(preset).model
        assert (m.film_init_std, m.extractor_init.value, m.embed_norm) == (0.03, "kaiming", True)
    assert ModelConfig().film_init_std == FILM_INIT_STD  # the network's default is the config's
    model = Translator(
        _model_config("cpu", ngf=4, embed_dim=8, seg_ngf=4), n_classes=3, loss=LossConfig()
    )
    assert model.extractor_ab is not None and model.extractor_ab.normalize
    first = model.extractor_ab.convs[0]
    assert isinstance(first, nn.Conv2d)
    assert first.weight.std().item() == pytest.approx(math.sqrt(2 / (3 * 9)), rel=0.35)
