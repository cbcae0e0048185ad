"""Training state in checkpoints: RNG round trips, atomic and rotating saves, resume checks."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from segrenorm.errors import ConfigError
from segrenorm.models.checkpoint import load_checkpoint
from segrenorm.training.state import (
    capture_rng_state,
    check_resume_config,
    restore_rng_state,
    save_checkpoint,
    save_rotating,
)


@pytest.fixture
def payload(tiny_checkpoints: dict[str, Path]) -> dict[str, Any]:
    """A real checkpoint dict (a tiny untrained translator) at step 7."""
    return {**load_checkpoint(tiny_checkpoints["random"]), "step": 7}


def test_rng_state_round_trip_through_a_safe_load(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)  # noqa: NPY002 - the global state is what checkpoints capture
    torch.manual_seed(3)
    torch.save({"rng": capture_rng_state()}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(3))  # noqa: NPY002
    random.seed(9)
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    again = (random.random(), np.random.rand(), torch.rand(3))  # noqa: NPY002
    assert again[:2] == expected[:2] and torch.equal(again[2], expected[2])


def test_failed_save_keeps_the_previous_file(
    payload: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save_checkpoint(payload, tmp_path / "last.pt")

    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({**payload, "step": 99}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 7
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_save_rotating_keeps_newest(payload: dict[str, Any], tmp_path: Path) -> None:
    for step in (2, 4, 6):
        last = save_rotating({**payload, "step": step}, tmp_path, step, keep=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["last.pt", "step-0000004.pt", "step-0000006.pt"]
    assert last.read_bytes() == (tmp_path / "step-0000006.pt").read_bytes()  # one serialisation
    assert load_checkpoint(last)["step"] == 6
    save_rotating({**payload, "step": 8}, tmp_path, 8, keep=0)
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 8
    assert not (tmp_path / "step-0000008.pt").exists()


def test_check_resume_config_lists_differences(tiny_kit: SimpleNamespace) -> None:
    saved = tiny_kit.config()
    check_resume_config(tiny_kit.config(), saved, "ck.pt")  # same: accepted
    # Optimisation settings and data.num_workers may change on resume.
    longer = tiny_kit.config(optim={"iterations": 40}, data={"num_workers": 2})
    check_resume_config(longer, saved, "ck.pt")
    with pytest.raises(ConfigError, match=r"model\.ngf: checkpoint 4, given 8; model\.ndf"):
        check_resume_config(tiny_kit.config(model={"ngf": 8, "ndf": 8}), saved, "ck.pt")
