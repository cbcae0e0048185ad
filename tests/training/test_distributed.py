"""Tests for devices, gradient averaging, stop signals and a 2-process torchrun training run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist

import segrenorm
from segrenorm.config.build import config_from_dict
from segrenorm.config.schema import AmpMode
from segrenorm.errors import ConfigError
from segrenorm.training.distributed import (
    DistContext,
    ForcedAbort,
    StopSignals,
    all_reduce_gradients,
    autocast_dtype,
    broadcast_module,
    init_distributed,
    resolve_device,
)

NO_CUDA = not torch.cuda.is_available()


@pytest.fixture
def one_rank_group(tmp_path: Path) -> Iterator[None]:
    """A real gloo process group with a single rank, to exercise the collectives' plumbing."""
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_all_reduce_gradients_puts_every_value_back(one_rank_group: None) -> None:
    # With one real rank the sum is the identity, so claiming world_size=2 must halve every
    # gradient: this checks the flatten / split / copy-back across several small buckets.
    ctx = DistContext(world_size=2)
    params = [torch.nn.Parameter(torch.zeros(shape)) for shape in [(3, 4), (5,), (2, 2, 2), (7,)]]
    grads = [torch.randn(p.shape) for p in params]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    params[2].grad = None  # unused parameters keep no gradient
    all_reduce_gradients(params, ctx, bucket_bytes=40)
    for k, (p, g) in enumerate(zip(params, grads, strict=True)):
        if k == 2:
            assert p.grad is None
        else:
            assert p.grad is not None and torch.equal(p.grad, g / 2)


def test_broadcast_module_keeps_values_with_one_rank(one_rank_group: None) -> None:
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    broadcast_module(net, DistContext(world_size=2), bucket_bytes=16)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_single_process_context(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.enabled) == (0, 1, True, False)
    assert ctx.device == torch.device("cpu")


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"RANK": "0", "WORLD_SIZE": "two"}, r"WORLD_SIZE='two' must be an integer"),
        ({"RANK": "5", "WORLD_SIZE": "2"}, r"RANK=5 is outside 0\.\.1 \(WORLD_SIZE=2\)"),
    ],
)
def test_bad_rank_environment(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], match: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=match):
        init_distributed("cpu")


def test_devices_and_autocast() -> None:
    cpu = torch.device("cpu")
    assert resolve_device("cpu") == cpu
    assert autocast_dtype(AmpMode.OFF, cpu) is None
    assert autocast_dtype(AmpMode.AUTO, cpu) is None  # fp32 on CPU
    assert autocast_dtype(AmpMode.BF16, cpu) is torch.bfloat16
    with pytest.raises(ConfigError, match=r"run\.amp=fp16 needs a CUDA device, not cpu"):
        autocast_dtype(AmpMode.FP16, cpu)
    with pytest.raises(ConfigError, match=r"run\.device='tpu' is unknown"):
        resolve_device("tpu")


@pytest.mark.skipif(not NO_CUDA, reason="checks the message shown without a GPU")
def test_cuda_without_gpu_is_reported() -> None:
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"run\.device='cuda:1' but no CUDA device is visible"):
        resolve_device("cuda:1")


def test_stop_signals_first_requests_second_aborts() -> None:
    before = signal.getsignal(signal.SIGINT)
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested
        with pytest.raises(ForcedAbort, match="received twice"):
            os.kill(os.getpid(), signal.SIGINT)  # the handler runs at the next bytecode
    assert signal.getsignal(signal.SIGINT) is before


_WORKER = """
import hashlib, json, os, sys
from pathlib import Path
from segrenorm.config.build import config_from_dict
from segrenorm.training.trainer import train

config_file, cache, out, report = sys.argv[1:5]
config = config_from_dict(json.loads(Path(config_file).read_text()))
rank = int(os.environ["RANK"])

def record(info):
    if info.step == info.total:
        digest = hashlib.sha256()
        for name, tensor in sorted(info.model.state_dict().items()):
            digest.update(name.encode() + tensor.detach().contiguous().numpy().tobytes())
        Path(report, f"rank{rank}.json").write_text(json.dumps(
            {"sha": digest.hexdigest(), "world": info.world_size, "run_dir": str(info.run_dir)}))

run_dir = train(config, cache, out, progress=False, callbacks=[record])
Path(report, f"returned{rank}.txt").write_text(str(run_dir))
"""


def test_torchrun_two_cpu_ranks_stay_identical(
    tiny_cache: Path, tiny_kit: SimpleNamespace, tmp_path: Path
) -> None:
    config = config_from_dict(
        {
            "name": "ddp",
            "model": tiny_kit.model,
            "data": {"crop_size": 32, "batch_size": 1, "n_classes": 4},
            "optim": {"iterations": 3, "decay_iterations": 0},
            "run": {"log_every": 1, "image_every": 0, "checkpoint_every": 0, "device": "cpu",
                    "amp": "off"},
        }
    )  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    (tmp_path / "worker.py").write_text(textwrap.dedent(_WORKER))
    report = tmp_path / "report"
    report.mkdir()
    src = str(Path(segrenorm.__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": src}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--standalone", str(tmp_path / "worker.py"), str(tmp_path / "config.json"),
               str(tiny_cache), str(tmp_path / "runs"), str(report)]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((report / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    assert ranks[0]["sha"] == ranks[1]["sha"]  # bit-identical replicas after 3 steps
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and ranks[0]["run_dir"] == ranks[1]["run_dir"] == str(runs[0])
    assert (report / "returned1.txt").read_text() == str(runs[0])
    lines = (runs[0] / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]  # rank 0 alone logs
    assert (runs[0] / "final.pt").is_file()
