"""Resolving a training invocation: a new run's options, or a resumed run's checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from segrenorm.config.load import load_config
from segrenorm.errors import ConfigError
from segrenorm.training.resolve import resolve_training


def test_a_new_run_needs_config_data_and_out(tmp_path: Path) -> None:
    plan = resolve_training(config="cpu", data="cache", out=tmp_path, overrides=["run.seed=3"])
    assert plan.config == load_config("cpu", overrides=["run.seed=3"])
    assert (plan.cache, plan.out, plan.resume) == (Path("cache"), tmp_path, None)
    with pytest.raises(ConfigError, match="--config is required"):
        resolve_training(data="cache", out=tmp_path)
    with pytest.raises(ConfigError, match="--data is required"):
        resolve_training(config="cpu", out=tmp_path)
    with pytest.raises(ConfigError, match="--out is required"):
        resolve_training(config="cpu", data="cache")


def test_a_resumed_run_defaults_to_its_checkpoint(tiny_checkpoints: dict[str, Path]) -> None:
    ckpt = tiny_checkpoints["identity"]
    plan = resolve_training(resume=ckpt, overrides=["optim.iterations=7"])
    assert plan.config.name == "tiny" and plan.config.optim.iterations == 7
    assert plan.cache == ckpt.parent / "no-such-cache"
    assert (plan.out, plan.resume) == (ckpt.parent, ckpt)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) optim\.nope"):
        resolve_training(resume=ckpt, overrides=["optim.nope=1"])
    with pytest.raises(ConfigError, match=r"data\.crop_size=30 is not divisible"):
        resolve_training(resume=ckpt, overrides=["data.crop_size=30"])
