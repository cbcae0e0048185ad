"""Optimisers and schedules: the one linear-decay schedule and the consistency warm-up."""

from __future__ import annotations

import pytest

from segrenorm.config.load import load_config
from segrenorm.config.schema import OptimConfig
from segrenorm.errors import ConfigError
from segrenorm.training.optim import consistency_scale, linear_decay, lr_factor


def test_linear_decay_is_constant_then_linear_to_zero() -> None:
    assert [linear_decay(s, constant=2, decay=4) for s in range(8)] == [
        1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0,
    ]  # fmt: skip
    assert [linear_decay(s, constant=1, decay=0) for s in range(4)] == [1.0] * 4
    # The trainer's schedule is the same function of its config.
    factor = lr_factor(OptimConfig(iterations=3, decay_iterations=2))
    assert [factor(s) for s in range(6)] == [1.0, 1.0, 1.0, 1.0, 0.5, 0.0]


def test_consistency_warmup_schedule() -> None:
    ramp = OptimConfig(consistency_warmup=4)
    assert [consistency_scale(ramp, s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert consistency_scale(OptimConfig(), 0) == 1.0
    with pytest.raises(ConfigError, match=r"optim\.consistency_warmup=-1 is out of range"):
        load_config("cpu", overrides=["optim.consistency_warmup=-1"])
