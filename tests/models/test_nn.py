"""Networks: shapes, renormalisation maths, initialisation and receptive field."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from segrenorm.errors import InputError
from segrenorm.models.nn.blocks import RenormResBlock, ResBlock
from segrenorm.models.nn.discriminator import PatchDiscriminator, patch_receptive_field
from segrenorm.models.nn.extractor import SemanticExtractor
from segrenorm.models.nn.generator import CLAMP, Generator
from segrenorm.models.nn.renorm import SegRenorm, modulated_instance_norm, set_film_enabled
from segrenorm.models.nn.segnet import SegUNet

pytestmark = pytest.mark.usefixtures("seeded_torch")  # seed 0, one thread


def _randomize_film(root: nn.Module, std: float = 0.5) -> None:
    for module in root.modules():
        if isinstance(module, SegRenorm):
            for head in (module.gamma, module.beta):
                nn.init.normal_(head.weight, 0.0, std)
                nn.init.normal_(head.bias, 0.0, std)


# -- shapes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "in_shape"),
    [
        ({"n_classes": 2, "ngf": 4, "depth": 1}, (2, 1, 8, 8)),
        ({"n_classes": 4, "ngf": 4, "depth": 2}, (1, 1, 32, 48)),
        ({"n_classes": 3, "ngf": 2, "depth": 4}, (2, 1, 32, 32)),
    ],
)
def test_segunet_shapes(kwargs: dict[str, int], in_shape: tuple[int, ...]) -> None:
    net = SegUNet(**kwargs)
    out = net(torch.randn(in_shape))
    assert out.shape == (in_shape[0], kwargs["n_classes"], *in_shape[2:])
    assert net.stride == 2 ** kwargs["depth"]


@pytest.mark.parametrize(
    ("kwargs", "in_shape"),
    [
        ({"n_classes": 4, "ngf": 4, "embed_dim": 16, "grid": 2}, (2, 4, 64, 64)),
        ({"n_classes": 2, "ngf": 2, "embed_dim": 8, "grid": 1}, (3, 2, 32, 48)),
        # Too small for four poolings: pools adaptively instead of crashing.
        ({"n_classes": 3, "ngf": 2, "embed_dim": 8, "grid": 2}, (1, 3, 8, 8)),
        ({"n_classes": 3, "ngf": 2, "embed_dim": 8, "grid": 2}, (2, 3, 5, 3)),
    ],
)
def test_extractor_shapes(kwargs: dict[str, Any], in_shape: tuple[int, ...]) -> None:
    ext = SemanticExtractor(**kwargs)
    out = ext(torch.rand(in_shape))
    assert out.shape == (in_shape[0], kwargs["embed_dim"])
    assert torch.isfinite(out).all()
    assert ext.convs[-1].out_channels == 8 * kwargs["ngf"]


@pytest.mark.parametrize("embed_dim", [None, 8])
@pytest.mark.parametrize(
    ("ngf", "n_downsample", "n_middle", "in_shape"),
    [
        (4, 1, 0, (2, 1, 8, 8)),
        (4, 2, 1, (2, 1, 32, 32)),
        (2, 3, 2, (1, 1, 32, 16)),
        (2, 5, 1, (1, 1, 64, 64)),  # widths cap at 8 * ngf
    ],
)
def test_generator_shapes(
    embed_dim: int | None, ngf: int, n_downsample: int, n_middle: int, in_shape: tuple[int, ...]
) -> None:
    gen = Generator(
        ngf=ngf, n_downsample=n_downsample, n_middle_blocks=n_middle, embed_dim=embed_dim
    )
    emb = None if embed_dim is None else torch.randn(in_shape[0], embed_dim)
    out = gen(torch.rand(in_shape) * 2 - 1, emb)
    assert out.shape == in_shape
    assert gen.stride == 2**n_downsample
    assert out.abs().max() < 1.0
    widths = [m.out_channels for m in gen.modules() if isinstance(m, nn.Conv2d)]
    assert max(widths) == ngf * min(2 ** (n_downsample - 1), 8)
    block = RenormResBlock if embed_dim else ResBlock
    assert sum(isinstance(m, block) for m in gen.modules()) == 2 * n_downsample - 1 + n_middle


@pytest.mark.parametrize(
    ("n_layers", "in_shape", "out_side"),
    [
        (1, (2, 1, 32, 32), 14),
        (2, (2, 1, 32, 32), 6),
        (2, (1, 1, 64, 48), 14),
        (3, (1, 1, 64, 64), 6),
    ],
)
def test_discriminator_shapes(n_layers: int, in_shape: tuple[int, ...], out_side: int) -> None:
    disc = PatchDiscriminator(ndf=4, n_layers=n_layers)
    out = disc(torch.randn(in_shape))
    assert out.shape[:3] == (in_shape[0], 1, out_side)
    assert all(hasattr(c, "parametrizations") for c in disc.convs)


# -- renormalisation ----------------------------------------------------------------------


def test_segrenorm_zero_init_is_instance_norm() -> None:
    norm = SegRenorm(6, 5, init_std=0.0)
    x = torch.randn(3, 6, 7, 9) * 4 + 2
    out = norm(x, torch.randn(3, 5))
    torch.testing.assert_close(out, F.instance_norm(x), atol=1e-5, rtol=1e-5)
    assert not any(p.count_nonzero() for p in norm.parameters())


def test_segrenorm_disabled_is_instance_norm_with_random_heads() -> None:
    norm = SegRenorm(6, 5, init_std=0.5)
    x, emb = torch.randn(3, 6, 7, 9), torch.randn(3, 5)
    assert not torch.allclose(norm(x, emb), F.instance_norm(x), atol=1e-3)
    assert set_film_enabled(norm, False) == 1
    torch.testing.assert_close(norm(x, emb), F.instance_norm(x), atol=1e-5, rtol=1e-5)
    set_film_enabled(norm, True)
    assert norm.enabled


def test_segrenorm_modulates_per_sample_and_channel() -> None:
    norm = SegRenorm(4, 3, init_std=0.5)
    _randomize_film(norm)
    x = torch.randn(1, 4, 6, 6).expand(2, -1, -1, -1).contiguous()  # same image twice
    emb = torch.randn(2, 3)
    out = norm(x, emb)
    assert not torch.allclose(out[0], out[1], atol=1e-3)
    gamma = emb @ norm.gamma.weight.T + norm.gamma.bias  # (2, 4)
    beta = emb @ norm.beta.weight.T + norm.beta.bias
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = x.var(dim=(2, 3), unbiased=False, keepdim=True)
    x_hat = (x - mean) / torch.sqrt(var + 1e-5)
    expected = x_hat * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # Channel c of sample n is exactly x_hat scaled by (1 + gamma_nc) and shifted by beta_nc.
    for n in range(2):
        for c in range(4):
            ref = x_hat[n, c] * (1 + gamma[n, c]) + beta[n, c]
            torch.testing.assert_close(out[n, c], ref, atol=1e-5, rtol=1e-5)


def test_modulated_instance_norm_channels_last() -> None:
    x = torch.randn(2, 3, 5, 5).to(memory_format=torch.channels_last)
    scale, shift = torch.rand(2, 3) + 0.5, torch.randn(2, 3)
    out = modulated_instance_norm(x, scale, shift)
    ref = F.instance_norm(x.contiguous()) * scale[..., None, None] + shift[..., None, None]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_zero_init_film_heads_still_learn() -> None:
    norm = SegRenorm(4, 3, init_std=0.0)
    out = norm(torch.randn(2, 4, 5, 5), torch.randn(2, 3))
    (out * torch.randn_like(out)).sum().backward()
    assert norm.gamma.weight.grad is not None and norm.gamma.weight.grad.abs().sum() > 0
    assert norm.beta.weight.grad is not None and norm.beta.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda n: n(torch.randn(2, 5, 4, 4), torch.randn(2, 3)), r"\(B, 4, H, W\)"),
        (lambda n: n(torch.randn(2, 4, 4, 4), torch.randn(3, 3)), r"embedding of shape \(2, 3\)"),
        (lambda n: n(torch.randn(2, 4, 4, 4), torch.randn(2, 7)), r"got \(2, 7\)"),
    ],
)
def test_segrenorm_rejects_bad_shapes(make: object, match: str) -> None:
    norm = SegRenorm(4, 3)
    with pytest.raises(InputError, match=match):
        make(norm)  # type: ignore[operator]


def test_blocks() -> None:
    x = torch.randn(2, 4, 8, 8)
    relu_block = ResBlock(4, 6, negative_slope=0.0)
    out = relu_block(x)
    assert out.shape == (2, 6, 8, 8) and out.min() >= 0
    torch.testing.assert_close(relu_block(x, torch.randn(2, 3)), out)  # emb is ignored
    renorm = RenormResBlock(4, 4, 3)
    assert renorm.skip is None and renorm(x, torch.randn(2, 3)).shape == x.shape
    with pytest.raises(InputError, match="needs the semantic embedding"):
        renorm(x)


# -- generator ----------------------------------------------------------------------------


@pytest.mark.parametrize("embed_dim", [None, 8])
def test_generator_residual_output_starts_as_identity(embed_dim: int | None) -> None:
    gen = Generator(ngf=4, n_downsample=2, embed_dim=embed_dim)
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    x[0, 0, 0, :2] = torch.tensor([-1.0, 1.0])  # the clamp only bites at the ends
    emb = None if embed_dim is None else torch.randn(2, embed_dim)
    out = gen(x, emb)
    torch.testing.assert_close(out, x.clamp(-CLAMP, CLAMP), atol=1e-5, rtol=1e-5)
    assert (out - x).abs().max() <= 1e-3 + 1e-6


def test_generator_plain_output_is_not_identity() -> None:
    gen = Generator(ngf=4, n_downsample=2, residual_output=False)
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    out = gen(x)
    assert (out - x).abs().mean() > 0.1
    assert gen.tail.weight.abs().sum() > 0


def test_generator_conditioning_changes_output() -> None:
    gen = Generator(ngf=4, n_downsample=2, embed_dim=8, residual_output=False)
    _randomize_film(gen, std=0.3)
    x = torch.rand(1, 1, 16, 16).expand(2, -1, -1, -1)
    out = gen(x, torch.randn(2, 8))
    assert (out[0] - out[1]).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda g: g(torch.zeros(1, 1, 12, 16), torch.zeros(1, 8)), r"divisible by its stride 8"),
        (lambda g: g(torch.zeros(1, 3, 16, 16), torch.zeros(1, 8)), r"\(B, 1, H, W\)"),
        (lambda g: g(torch.zeros(1, 1, 16, 16)), "pass the embedding"),
    ],
)
def test_generator_rejects_bad_input(call: object, match: str) -> None:
    gen = Generator(ngf=2, n_downsample=3, embed_dim=8)
    with pytest.raises(InputError, match=match):
        call(gen)  # type: ignore[operator]


def test_constructors_reject_bad_depths() -> None:
    with pytest.raises(InputError, match="n_downsample=0"):
        Generator(n_downsample=0)
    with pytest.raises(InputError, match="depth=0"):
        SegUNet(n_classes=2, depth=0)
    with pytest.raises(InputError, match="n_layers=0"):
        PatchDiscriminator(n_layers=0)


def test_other_nets_reject_bad_input() -> None:
    with pytest.raises(InputError, match=r"SegUNet needs H and W divisible by its stride 4"):
        SegUNet(n_classes=2, ngf=2, depth=2)(torch.zeros(1, 1, 10, 8))
    with pytest.raises(InputError, match=r"expects probabilities \(B, 3, H, W\)"):
        SemanticExtractor(n_classes=3, ngf=2, embed_dim=4)(torch.zeros(1, 2, 8, 8))
    with pytest.raises(InputError, match=r"PatchDiscriminator expects \(B, 1, H, W\)"):
        PatchDiscriminator(ndf=2)(torch.zeros(1, 3, 32, 32))


# -- initialisation -----------------------------------------------------------------------


def test_weight_init_std() -> None:
    gen = Generator(ngf=16, n_downsample=3, embed_dim=32, film_init_std=0.4)
    convs = [m for m in gen.modules() if isinstance(m, nn.Conv2d) and m is not gen.tail]
    weights = torch.cat([m.weight.detach().flatten() for m in convs])
    assert abs(weights.std().item() - 0.02) < 0.001 and abs(weights.mean().item()) < 0.001
    assert all(m.bias is None or not m.bias.count_nonzero() for m in convs)
    film = torch.cat(
        [m.gamma.weight.detach().flatten() for m in gen.modules() if isinstance(m, SegRenorm)]
    )
    assert abs(film.std().item() - 0.4 / 32**0.5) < 0.005  # gamma std 0.4 for unit-rms f
    assert not gen.tail.weight.count_nonzero()  # residual output: zero tail
    norms = [
        m
        for m in SegUNet(n_classes=2, ngf=4, depth=2).modules()
        if isinstance(m, nn.InstanceNorm2d)
    ]
    assert all(bool((n.weight == 1).all()) and not n.bias.count_nonzero() for n in norms)


def _raw_weight(conv: nn.Module) -> torch.Tensor:
    """The weight under a spectral-norm parametrisation."""
    original = getattr(conv.parametrizations, "weight").original  # noqa: B009
    assert isinstance(original, torch.Tensor)
    return original.detach()


def test_discriminator_init_and_spectral_norm() -> None:
    disc = PatchDiscriminator(ndf=16, n_layers=2)
    convs = [m for m in disc.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4 and all(parametrize.is_parametrized(c, "weight") for c in convs)
    raw = torch.cat([_raw_weight(c).flatten() for c in convs])
    assert abs(raw.std().item() - 0.02) < 0.002
    for _ in range(30):  # power iterations run in training-mode forwards
        disc(torch.randn(1, 1, 32, 32))
    disc.eval()
    conv = convs[1]
    sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
    assert abs(sigma.item() - 1.0) < 0.05


# -- receptive field ----------------------------------------------------------------------


def test_patch_receptive_field_formula() -> None:
    assert [patch_receptive_field(n) for n in (1, 2, 3)] == [16, 34, 70]


@pytest.mark.parametrize("n_layers", [1, 2])
def test_discriminator_receptive_field_measured(n_layers: int) -> None:
    disc = PatchDiscriminator(ndf=4, n_layers=n_layers).double().eval()
    x = torch.randn(1, 1, 96, 96, dtype=torch.float64, requires_grad=True)
    out = disc(x)
    h, w = out.shape[-2:]
    out[0, 0, h // 2, w // 2].backward()
    assert x.grad is not None
    support = x.grad[0, 0].abs() > 0
    rows = torch.nonzero(support.any(dim=1)).flatten()
    cols = torch.nonzero(support.any(dim=0)).flatten()
    expected = patch_receptive_field(n_layers)
    assert int(rows.max() - rows.min() + 1) == expected
    assert int(cols.max() - cols.min() + 1) == expected
    assert disc.receptive_field == expected
