"""Losses on hand-made tensors with hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from segrenorm.errors import InputError
from segrenorm.training.losses import cycle_l1, lsgan_d, lsgan_g, weighted_ce


def test_lsgan_d() -> None:
    real = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # (real - 1)^2: 0, 1, 0, 0 -> mean 0.25
    fake = torch.tensor([0.0, 1.0, 2.0])  # fake^2: 0, 1, 4 -> mean 5/3
    out = lsgan_d(real, fake)
    assert out.dim() == 0
    assert out.item() == pytest.approx(0.5 * (0.25 + 5.0 / 3.0))
    assert lsgan_d(torch.ones(4), torch.zeros(2)).item() == 0.0


def test_lsgan_g() -> None:
    out = lsgan_g(torch.tensor([1.0, 3.0, -1.0, 1.0]))  # 0, 4, 4, 0
    assert out.dim() == 0 and out.item() == pytest.approx(2.0)


def test_weighted_ce_hand_computed() -> None:
    # Pixel 0: logits (0, 0), target 0 -> -log(1/2). Pixel 1: logits (0, log 3), target 1
    # -> -log(3/4). Weights (1, 3): (1 * log 2 + 3 * log(4/3)) / (1 + 3).
    logits = torch.tensor([[[[0.0, 0.0]], [[0.0, math.log(3.0)]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[0, 1]]])  # (1, 1, 2)
    out = weighted_ce(logits, target, torch.tensor([1.0, 3.0]))
    assert out.dim() == 0
    assert out.item() == pytest.approx((math.log(2.0) + 3.0 * math.log(4.0 / 3.0)) / 4.0)
    unweighted = weighted_ce(logits, target, torch.ones(2))
    assert unweighted.item() == pytest.approx((math.log(2.0) + math.log(4.0 / 3.0)) / 2.0)


def test_cycle_l1() -> None:
    x = torch.tensor([0.0, 1.0, -1.0, 0.5]).view(1, 1, 2, 2)
    rec = torch.tensor([0.5, 1.0, 0.0, 0.5]).view(1, 1, 2, 2)
    out = cycle_l1(x, rec)
    assert out.dim() == 0 and out.item() == pytest.approx(0.375)


def test_losses_carry_gradients() -> None:
    pred = torch.zeros(3, requires_grad=True)
    lsgan_g(pred).backward()
    assert pred.grad is not None
    torch.testing.assert_close(pred.grad, torch.full((3,), -2.0 / 3.0))


def test_weighted_ce_rejects_bad_input() -> None:
    logits = torch.zeros(2, 3, 4, 4)
    with pytest.raises(InputError, match=r"target \(B, H, W\) of matching size.*\(2, 4, 5\)"):
        weighted_ce(logits, torch.zeros(2, 4, 5, dtype=torch.long), torch.ones(3))
    with pytest.raises(InputError, match=r"got \(2,\) class weights for 3 classes"):
        weighted_ce(logits, torch.zeros(2, 4, 4, dtype=torch.long), torch.ones(2))
    with pytest.raises(InputError, match=r"int64 class indices, got torch.float32"):
        weighted_ce(logits, torch.zeros(2, 4, 4), torch.ones(3))


def test_cycle_l1_rejects_mismatch() -> None:
    with pytest.raises(InputError, match=r"\(1, 1, 4, 4\) and reconstructions \(1, 1, 4, 2\)"):
        cycle_l1(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 2))
