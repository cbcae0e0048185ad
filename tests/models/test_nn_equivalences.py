"""Cheaper formulations in the networks equal the direct computation, gradients too.

Upsample-then-convolve at low resolution (decoders) and convolve-then-pool as one strided
convolution (semantic extractor).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segrenorm.models.nn.blocks import RenormResBlock, ResBlock, upsample2x
from segrenorm.models.nn.extractor import SemanticExtractor, _conv_halve, _halve, spread_kernel
from segrenorm.models.nn.generator import Generator
from segrenorm.models.nn.segnet import SegUNet
from segrenorm.models.nn.upsample import (
    fits_phase_conv,
    phase_kernels,
    upsample_cat_conv,
    upsample_conv,
)

pytestmark = pytest.mark.usefixtures("seeded_torch")  # seed 0, one thread


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def _grads(out: torch.Tensor, *tensors: torch.Tensor) -> list[torch.Tensor]:
    weights = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).view_as(out)
    return list(torch.autograd.grad((out * weights).sum(), tensors))


@pytest.mark.parametrize("kernel,bias", [(3, True), (3, False), (1, False), (1, True)])
def test_upsample_conv_matches_direct(kernel: int, bias: bool) -> None:
    conv = nn.Conv2d(5, 3, kernel, padding=kernel // 2, bias=bias).double()
    x = torch.randn(2, 5, 6, 7, dtype=torch.float64, requires_grad=True)
    direct = conv(_up(x))
    fast = upsample_conv(x, conv)
    assert fast.shape == (2, 3, 12, 14)
    torch.testing.assert_close(fast, direct, rtol=0, atol=1e-12)
    params = [x, conv.weight]
    for g_fast, g_direct in zip(_grads(fast, *params), _grads(direct, *params), strict=True):
        torch.testing.assert_close(g_fast, g_direct, rtol=0, atol=1e-11)


@pytest.mark.parametrize("kernel", [3, 1])
def test_upsample_cat_conv_matches_direct(kernel: int) -> None:
    conv = nn.Conv2d(4 + 3, 6, kernel, padding=kernel // 2, bias=False).double()
    low = torch.randn(2, 4, 5, 3, dtype=torch.float64, requires_grad=True)
    skip = torch.randn(2, 3, 10, 6, dtype=torch.float64, requires_grad=True)
    direct = conv(torch.cat([_up(low), skip], dim=1))
    fast = upsample_cat_conv(low, skip, conv)
    torch.testing.assert_close(fast, direct, rtol=0, atol=1e-12)
    params = [low, skip, conv.weight]
    for g_fast, g_direct in zip(_grads(fast, *params), _grads(direct, *params), strict=True):
        torch.testing.assert_close(g_fast, g_direct, rtol=0, atol=1e-11)


def test_phase_path_passes_gradcheck() -> None:
    conv = nn.Conv2d(2 + 2, 3, 3, padding=1).double()
    low = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    skip = torch.randn(1, 2, 6, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: upsample_cat_conv(a, b, conv), (low, skip))
    tail = nn.Conv2d(2, 3, 3, padding=1).double()
    assert torch.autograd.gradcheck(lambda a: upsample_conv(a, tail), (low,))


def test_other_convolutions_run_directly() -> None:
    strided = nn.Conv2d(3, 2, 3, stride=2, padding=1)
    dilated = nn.Conv2d(3, 2, 3, padding=2, dilation=2)
    valid = nn.Conv2d(3, 2, 3, padding=0)
    for conv in (strided, dilated, valid):
        assert not fits_phase_conv(conv)
        x = torch.randn(1, 3, 4, 4)
        torch.testing.assert_close(upsample_conv(x, conv), conv(_up(x)))
    cat_conv = nn.Conv2d(5, 2, 3, padding=0)
    low, skip = torch.randn(1, 3, 4, 4), torch.randn(1, 2, 8, 8)
    expected = cat_conv(torch.cat([_up(low), skip], dim=1))
    torch.testing.assert_close(upsample_cat_conv(low, skip, cat_conv), expected)


def test_phase_kernels_sum_the_taps() -> None:
    weight = torch.randn(2, 3, 3, 3)
    kernels = phase_kernels(weight).view(2, 2, 2, 3, 2, 2)
    # Every phase keeps the kernel's total: each tap lands on exactly one input pixel.
    totals = kernels.sum(dim=(-1, -2))
    torch.testing.assert_close(totals, weight.sum(dim=(-1, -2)).expand(2, 2, 2, 3))
    # Even rows and columns: kernel row/column 0 alone, rows/columns 1 and 2 together.
    torch.testing.assert_close(kernels[0, 0, :, :, 0, 0], weight[:, :, 0, 0])
    expected = weight[:, :, 1:, 1:].sum(dim=(-1, -2))
    torch.testing.assert_close(kernels[0, 0, :, :, 1, 1], expected)


@pytest.mark.parametrize("renorm", [False, True])
def test_block_forward_up_matches_forward_on_the_concatenation(renorm: bool) -> None:
    plain = ResBlock(6 + 4, 4)
    block = RenormResBlock(6 + 4, 4, embed_dim=5, film_init_std=0.5) if renorm else plain
    block = block.double()
    emb = torch.randn(2, 5, dtype=torch.float64)
    low = torch.randn(2, 6, 4, 4, dtype=torch.float64, requires_grad=True)
    skip = torch.randn(2, 4, 8, 8, dtype=torch.float64, requires_grad=True)
    direct = block(torch.cat([upsample2x(low), skip], dim=1), emb)
    fast = block.forward_up(low, skip, emb)
    torch.testing.assert_close(fast, direct, rtol=0, atol=1e-10)
    params = [low, skip, *block.parameters()]
    for g_fast, g_direct in zip(_grads(fast, *params), _grads(direct, *params), strict=True):
        torch.testing.assert_close(g_fast, g_direct, rtol=0, atol=1e-9)


def test_block_forward_up_with_identity_shortcut_falls_back() -> None:
    block = ResBlock(6, 6).double()
    low = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    skip = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    direct = block(torch.cat([upsample2x(low), skip], dim=1))
    torch.testing.assert_close(block.forward_up(low, skip), direct)


def test_renorm_block_forward_up_needs_the_embedding() -> None:
    block = RenormResBlock(6, 2, embed_dim=3)
    with pytest.raises(Exception, match="needs the semantic embedding"):
        block.forward_up(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 4, 4))


def test_networks_match_the_direct_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = Generator(ngf=4, n_downsample=3, embed_dim=6, residual_output=False).double()
    seg = SegUNet(n_classes=3, ngf=4, depth=3).double()
    for p in gen.parameters():  # leave the zero-initialised layers' identity start
        p.data.normal_(0.0, 0.3)
    x = torch.rand(2, 1, 16, 16, dtype=torch.float64) * 2 - 1
    emb = torch.randn(2, 6, dtype=torch.float64)
    fast_gen, fast_seg = gen(x, emb), seg(x)

    def direct_up(self: nn.Module, low: torch.Tensor, skip: torch.Tensor, e: object = None) -> Any:
        return self(torch.cat([upsample2x(low), skip], dim=1), e)

    monkeypatch.setattr(ResBlock, "forward_up", direct_up)
    monkeypatch.setattr(RenormResBlock, "forward_up", direct_up)
    monkeypatch.setattr(
        "segrenorm.models.nn.generator.upsample_conv", lambda h, c: c(upsample2x(h))
    )
    torch.testing.assert_close(fast_gen, gen(x, emb), rtol=0, atol=1e-10)
    torch.testing.assert_close(fast_seg, seg(x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("side", [(8, 6), (5, 4), (2, 2), (1, 1)])
def test_extractor_conv_then_pool_is_one_strided_conv(side: tuple[int, int]) -> None:
    conv = nn.Conv2d(3, 4, 3, padding=1).double()
    x = torch.randn(2, 3, *side, dtype=torch.float64, requires_grad=True)
    direct = _halve(conv(x))
    fast = _conv_halve(x, conv)
    torch.testing.assert_close(fast, direct, rtol=0, atol=1e-12)
    params = [x, *conv.parameters()]
    for g_fast, g_direct in zip(_grads(fast, *params), _grads(direct, *params), strict=True):
        torch.testing.assert_close(g_fast, g_direct, rtol=0, atol=1e-11)


def test_spread_kernel_by_hand() -> None:
    # A single tap at (row, col) of the 3x3 kernel covers rows row..row+1 and columns
    # col..col+1 of the 4x4 kernel, with 1/4 each.
    for row, col in [(0, 0), (1, 2), (2, 1)]:
        weight = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
        weight[0, 0, row, col] = 1.0
        expected = torch.zeros(4, 4, dtype=torch.float64)
        expected[row : row + 2, col : col + 2] = 0.25
        torch.testing.assert_close(spread_kernel(weight)[0, 0], expected, rtol=0, atol=0)


def test_extractor_matches_the_direct_stages() -> None:
    ext = SemanticExtractor(n_classes=3, ngf=2, embed_dim=5, grid=2).double()
    probs = torch.rand(2, 3, 32, 24, dtype=torch.float64).softmax(dim=1)
    h = probs - 1 / 3  # centred at the uniform distribution
    for conv in ext.convs:
        h = F.relu(_halve(conv(h)))
    z = ext.mlp(F.adaptive_avg_pool2d(h, 2).flatten(1))
    z = z - z.mean(dim=1, keepdim=True)
    expected = z / (z.pow(2).mean(dim=1, keepdim=True) + 1e-6).sqrt()
    torch.testing.assert_close(ext(probs), expected, rtol=0, atol=1e-12)
