"""Checkpoint files: safe loading, clear errors, resolving run directories, rebuilding.

Writing and resuming are tested in tests/training/test_state.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from segrenorm.config.build import config_from_dict
from segrenorm.config.schema import Config
from segrenorm.errors import CheckpointError, InputError
from segrenorm.models.checkpoint import (
    FORMAT_VERSION,
    load_checkpoint,
    load_translator,
    resolve_checkpoint,
)
from segrenorm.models.translator import Translator
from segrenorm.training.state import build_checkpoint, save_checkpoint


def tiny_config(**model: Any) -> Config:
    return config_from_dict(
        {
            "name": "tiny",
            "model": {"ngf": 4, "ndf": 4, "n_downsample": 2, "n_middle_blocks": 1,
                      "seg_ngf": 4, "seg_depth": 2, "embed_dim": 8, **model},
            "data": {"crop_size": 32, "batch_size": 2, "n_classes": 3},
        }
    )  # fmt: skip


class _Stream:
    def __init__(self) -> None:
        self.state: dict[str, int] = {"epoch": 2, "position": 5}

    def state_dict(self) -> dict[str, int]:
        return dict(self.state)


def make_payload(config: Config | None = None, step: int = 7) -> dict[str, Any]:
    """A real checkpoint dict: translator, one Adam with state, one LambdaLR."""
    config = config or tiny_config()
    model = Translator.from_config(config)
    params = model.parameter_groups()["gen"]
    opt = torch.optim.Adam(params, lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    sched.step()
    return build_checkpoint(
        config=config,
        cache_info={"path": "/cache", "n_classes": 3},
        model=model,
        optimizers={"gen": opt},
        schedulers={"gen": sched},
        step=step,
        data_stream=_Stream().state_dict(),
    )


@pytest.fixture(scope="module")
def payload() -> dict[str, Any]:
    return make_payload()


def test_save_and_load_round_trip(payload: dict[str, Any], tmp_path: Path) -> None:
    path = save_checkpoint(payload, tmp_path / "sub" / "ck.pt")
    loaded = load_checkpoint(path)
    assert loaded["format_version"] == FORMAT_VERSION and loaded["step"] == 7
    assert loaded["data_stream"] == {"epoch": 2, "position": 5}
    assert loaded["config"] == tiny_config().to_dict()
    assert all(torch.equal(loaded["model"][k], v) for k, v in payload["model"].items())
    assert loaded["optimizers"]["gen"]["state"][0]["exp_avg"].abs().sum() > 0
    assert not list(path.parent.glob("*.tmp"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"checkpoint .*nope\.pt does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_truncated_file(payload: dict[str, Any], tmp_path: Path) -> None:
    path = save_checkpoint(payload, tmp_path / "ck.pt")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"ck\.pt is truncated or corrupt \(RuntimeError"):
        load_checkpoint(path)


def test_arbitrary_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "thing": _Stream()}, path)
    with pytest.raises(
        CheckpointError, match=r"evil\.pt holds Python objects .* refuses to unpickle"
    ):
        load_checkpoint(path)


def test_other_format_version(payload: dict[str, Any], tmp_path: Path) -> None:
    path = save_checkpoint({**payload, "format_version": 99}, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match=r"new\.pt has checkpoint format_version 99; .*"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=f"reads version {FORMAT_VERSION}"):
        load_checkpoint(path)


def test_missing_keys_and_non_dicts(payload: dict[str, Any], tmp_path: Path) -> None:
    partial = {k: v for k, v in payload.items() if k not in ("model", "rng")}
    path = save_checkpoint(partial, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match=r"partial\.pt lacks the key\(s\) model, rng"):
        load_checkpoint(path)
    torch.save(torch.zeros(2), tmp_path / "tensor.pt")
    with pytest.raises(CheckpointError, match=r"tensor\.pt holds a Tensor, not a segrenorm"):
        load_checkpoint(tmp_path / "tensor.pt")


def test_resolve_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(InputError, match=r"run holds no checkpoint \(checkpoints/last\.pt"):
        resolve_checkpoint(run)
    (run / "checkpoints" / "last.pt").write_bytes(b"x")
    (run / "final.pt").write_bytes(b"x")
    assert resolve_checkpoint(run) == run / "checkpoints" / "last.pt"
    assert resolve_checkpoint(run, prefer=("final.pt", "last.pt")) == run / "final.pt"


def test_load_translator_rebuilds_from_its_own_config(
    payload: dict[str, Any], tmp_path: Path
) -> None:
    save_checkpoint(payload, tmp_path / "run" / "final.pt")
    translator, config = load_translator(tmp_path / "run")
    assert config == tiny_config() and not translator.training
    state = translator.state_dict()
    assert all(torch.equal(state[k], v) for k, v in payload["model"].items())
    assert translator.translate(torch.zeros(1, 1, 32, 32)).shape == (1, 1, 32, 32)


def test_load_translator_with_foreign_weights(payload: dict[str, Any], tmp_path: Path) -> None:
    other = Translator.from_config(tiny_config(ngf=8)).state_dict()
    path = save_checkpoint({**payload, "model": other}, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match=r"mixed\.pt: the stored weights do not fit"):
        load_translator(path)
    bad_config = {**payload["config"], "model": {**payload["config"]["model"], "ngf": -1}}
    path = save_checkpoint({**payload, "config": bad_config}, tmp_path / "cfg.pt")
    with pytest.raises(CheckpointError, match=r"cfg\.pt: its stored config is not valid"):
        load_translator(path)
