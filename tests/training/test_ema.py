"""The moving average of the inference weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segrenorm.errors import ConfigError
from segrenorm.training.ema import WeightAverage


class _Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gen_ab = nn.Linear(2, 2)
        self.disc_a = nn.Linear(2, 1)
        self.register_buffer("count", torch.tensor(0))


def test_average_follows_with_warm_start_and_skips_discriminators() -> None:
    model = _Pair()
    ema = WeightAverage(model, decay=0.9)
    assert set(ema.state_dict()) == {"gen_ab.weight", "gen_ab.bias", "count"}
    start = model.gen_ab.weight.detach().clone()
    with torch.no_grad():
        model.gen_ab.weight.add_(1.0)
        model.count.fill_(5)
    ema.update(model, step=0)  # warm start: decay min(0.9, 1/10) = 0.1
    torch.testing.assert_close(ema.state_dict()["gen_ab.weight"], start + 0.9)
    assert int(ema.state_dict()["count"]) == 5  # integers follow the model
    ema.update(model, step=1000)  # long run: decay 0.9
    torch.testing.assert_close(ema.state_dict()["gen_ab.weight"], start + 0.91)


def test_bad_decay_and_foreign_state() -> None:
    with pytest.raises(ConfigError, match=r"EMA decay 1\.5 must lie in"):
        WeightAverage(_Pair(), decay=1.5)
    ema = WeightAverage(_Pair(), decay=0.5)
    with pytest.raises(KeyError, match="do not match the model"):
        ema.load_state_dict({"gen_ab.weight": torch.zeros(2, 2)})
