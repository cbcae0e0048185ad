"""The fused instance norm + affine + residual + leaky ReLU kernel against its PyTorch composition.

The kernel is built by ``make venv`` (or on first use); these tests fail where it cannot be
built, unless ``SEGRENORM_FUSED=0`` says the machine runs without it.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from segrenorm.models.nn import blocks
from segrenorm.models.nn.blocks import RenormResBlock, ResBlock
from segrenorm.models.nn.generator import Generator
from segrenorm.models.nn.norm_act import (
    fused_kernel,
    kernel_status,
    norm_act,
    reference_norm_act,
    use_fused,
)
from segrenorm.models.nn.renorm import modulated_instance_norm

pytestmark = pytest.mark.skipif(
    os.environ.get("SEGRENORM_FUSED") == "0", reason="SEGRENORM_FUSED=0: the kernel is off"
)


def test_the_kernel_is_built_and_used() -> None:
    assert fused_kernel() is not None, kernel_status()
    assert "in use" in kernel_status()
    assert use_fused(torch.zeros(1, 2, 3, 3))
    assert use_fused(torch.zeros(2, 3, 4, 4).contiguous(memory_format=torch.channels_last))
    assert not use_fused(torch.zeros(1, 2, 3, 3, dtype=torch.float16))
    assert not use_fused(torch.zeros(1, 2, 6, 6)[:, :, ::2])  # neither layout


def _by_hand(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
    return (x - mean) / torch.sqrt(var + 1e-5) * scale[:, :, None, None] + shift[:, :, None, None]


def _run(fn, x, scale, shift, residual, slope, channels_last):  # type: ignore[no-untyped-def]
    x = x.clone()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    leaves = [x.requires_grad_(), scale.clone().requires_grad_(), shift.clone().requires_grad_()]
    res = residual.clone().requires_grad_() if residual is not None else None
    y = fn(leaves[0], leaves[1], leaves[2], residual=res, slope=slope)
    grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    y.backward(grad)
    grads = [t.grad for t in leaves] + ([res.grad] if res is not None else [])
    return [y.detach(), *grads]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 8, 9, 4), (3, 16, 8, 8)])
@pytest.mark.parametrize("slope", [0.2, 0.0, None])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_equals_the_composition(
    dtype: torch.dtype,
    shape: tuple[int, int, int, int],
    slope: float | None,
    with_residual: bool,
    channels_last: bool,
) -> None:
    gen = torch.Generator().manual_seed(0)
    b, c = shape[:2]
    # A large mean against the spread: the variance must not cancel.
    x = torch.randn(shape, generator=gen, dtype=dtype) * 3 + 20
    scale = 1 + 0.3 * torch.randn(b, c, generator=gen, dtype=dtype)
    shift = torch.randn(b, c, generator=gen, dtype=dtype)
    residual = torch.randn(shape, generator=gen, dtype=dtype) if with_residual else None
    fused = _run(norm_act, x, scale, shift, residual, slope, channels_last)
    ref = _run(reference_norm_act, x, scale, shift, residual, slope, False)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    for got, want in zip(fused, ref, strict=True):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol * max(1.0, want.abs().max()))
    assert fused[0].is_contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format
    )


def test_forward_by_hand() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 6, 5, generator=gen, dtype=torch.float64)
    scale = torch.rand(2, 4, generator=gen, dtype=torch.float64) + 0.5
    shift = torch.randn(2, 4, generator=gen, dtype=torch.float64)
    residual = torch.randn(2, 4, 6, 5, generator=gen, dtype=torch.float64)
    z = _by_hand(x, scale, shift) + residual
    expected = torch.where(z > 0, z, 0.2 * z)
    got = norm_act(x, scale, shift, residual=residual, slope=0.2)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_gradcheck_in_double() -> None:
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    scale = (torch.rand(2, 3, generator=gen, dtype=torch.float64) + 0.5).requires_grad_()
    shift = torch.randn(2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    res = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, s, t, r: norm_act(a, s, t, residual=r, slope=0.2), (x, scale, shift, res)
    )


def test_channels_last_batch_of_one_keeps_right_gradients() -> None:
    # torch 2.13 gets this wrong through an aliasing reshape; modulated_instance_norm copies.
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, 8, 9, 4, generator=gen, dtype=torch.float64)
    scale = torch.rand(1, 8, generator=gen, dtype=torch.float64) + 0.5
    shift = torch.randn(1, 8, generator=gen, dtype=torch.float64)
    grads = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        leaf = x.clone().contiguous(memory_format=fmt).requires_grad_()
        modulated_instance_norm(leaf, scale, shift).backward(x.cos())
        grads.append(leaf.grad)
    by_hand = x.clone().requires_grad_()
    _by_hand(by_hand, scale, shift).backward(x.cos())
    torch.testing.assert_close(grads[0], by_hand.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(grads[1], by_hand.grad, rtol=0, atol=1e-12)


def _grads(out: torch.Tensor, module: torch.nn.Module, *inputs: torch.Tensor) -> list[torch.Tensor]:
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=out.dtype)
    params = [*inputs, *module.parameters()]
    return list(torch.autograd.grad((out * weight).sum(), params))


@pytest.mark.parametrize("kind", ["plain", "renorm", "renorm-widen", "generator"])
def test_networks_compute_the_same_with_and_without_the_kernel(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 6, 8, 8, dtype=torch.float64, requires_grad=True)
    emb = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    module: torch.nn.Module
    if kind == "plain":
        module = ResBlock(6, 4).double()
    elif kind.startswith("renorm"):
        module = RenormResBlock(6, 6 if kind == "renorm" else 4, 5, film_init_std=0.5).double()
    else:
        module = Generator(ngf=4, n_downsample=2, embed_dim=5, film_init_std=0.5).double()
        x = torch.randn(2, 1, 16, 16, dtype=torch.float64, requires_grad=True)
        with torch.no_grad():  # a non-zero tail, so the output depends on every block
            module.tail.weight.normal_(0.0, 0.5)
    inputs = (x,) if kind == "plain" else (x, emb)  # the plain block ignores emb
    fused = module(x, emb)
    fused_grads = _grads(fused, module, *inputs)
    monkeypatch.setattr(blocks, "use_fused", lambda h: False)
    plain = module(x, emb)
    plain_grads = _grads(plain, module, *inputs)
    torch.testing.assert_close(fused, plain, rtol=0, atol=1e-10)
    for got, want in zip(fused_grads, plain_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


def test_bad_shapes_are_refused_with_a_message() -> None:
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(RuntimeError, match=r"scale must be \(B, C\) = \(2, 3\)"):
        norm_act(x, torch.ones(2, 4), torch.zeros(2, 4))
    with pytest.raises(RuntimeError, match="shift must match scale"):
        norm_act(x, torch.ones(2, 3), torch.zeros(3, 2))


def test_the_reference_is_plain_instance_norm_with_unit_affine() -> None:
    x = torch.randn(3, 4, 5, 6)
    ones, zeros = torch.ones(3, 4), torch.zeros(3, 4)
    expected = F.leaky_relu(F.instance_norm(x), 0.1)
    torch.testing.assert_close(norm_act(x, ones, zeros, slope=0.1), expected, atol=1e-5, rtol=0)
