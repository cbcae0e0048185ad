"""Killed, not corrupted: ``kill -9`` a ``prepare``, a ``train`` and a ``harmonize`` mid-way.

Each test starts ``python -m segrenorm ...`` on tiny inputs, waits for evidence that the
command is mid-way (a subject sliced into the hidden build folder, a first checkpoint, a
first output volume), freezes it with SIGSTOP, checks that it is still running and that the
evidence still holds (so the kill lands mid-way, whatever the machine's load), and SIGKILLs
it. Then nothing left at a final path may look valid unless it is whole, a rerun must
complete, and no temporary of the dead process may survive the rerun. The assertions hold
wherever the kill lands; the inputs are sized so that "mid-way" leaves about a second of
work, many times the polling latency even on a busy machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import segrenorm
from segrenorm.atomic import temporary_dir
from segrenorm.data.manifest import open_manifest
from segrenorm.data.slice_cache import SliceCache
from segrenorm.errors import CacheError
from segrenorm.models.checkpoint import load_checkpoint
from segrenorm.volumes.readwrite import load_image

Phantom = Callable[..., Path]

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGSTOP and SIGKILL are POSIX")

#: Longest wait for a command to reach its mid-way evidence, or to finish a rerun.
PATIENCE_S = 120.0


def _command(args: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``python -m segrenorm ARGS`` on one thread, its output going to ``log``."""
    src = str(Path(segrenorm.__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1",
           "PYTHONPATH": src}  # fmt: skip
    with log.open("wb") as sink:  # a file, not a pipe: a full pipe would stall the child
        return subprocess.Popen(
            [sys.executable, "-m", "segrenorm", *args], env=env, stdout=sink, stderr=sink
        )


def _run(args: Sequence[str], log: Path) -> str:
    """Run a command to its end, check that it succeeded and return its output."""
    proc = _command(args, log)
    proc.wait(timeout=PATIENCE_S)
    output = log.read_text(errors="replace")
    assert proc.returncode == 0, output[-3000:]
    return output


def _kill_midway(proc: subprocess.Popen[bytes], midway: Callable[[], bool], log: Path) -> None:
    """SIGKILL ``proc`` while ``midway()`` holds, and check that it did hold when it died.

    The process is frozen (SIGSTOP) first: it writes nothing more, so the evidence checked
    while it is frozen is the state it is killed in.
    """
    deadline = time.monotonic() + PATIENCE_S
    while not midway():
        if proc.poll() is not None:
            pytest.fail(
                f"it ended (exit {proc.returncode}) before it was mid-way:\n{log.read_text()}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"not mid-way after {PATIENCE_S:.0f} s:\n{log.read_text()}")
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGSTOP)
    alive = proc.poll() is None
    still_midway = midway()
    proc.kill()  # SIGKILL, which also ends a stopped process
    proc.wait(timeout=PATIENCE_S)
    assert alive, f"it ended before the kill:\n{log.read_text()}"
    assert still_midway, "it moved past the mid-way evidence before it was frozen"
    assert proc.returncode == -signal.SIGKILL


def _hidden(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith("."))


def _dead_temporaries(folder: Path, pid: int) -> list[Path]:
    """The temporaries in ``folder`` named after process ``pid`` (see segrenorm.atomic)."""
    return [p for p in _hidden(folder) if f"-{pid}." in p.name and p.name.endswith(".tmp")]


def _plant_partial(target: Path, pid: int, data: bytes) -> Path:
    """Leave what a write of ``target`` by process ``pid`` leaves when killed: a hidden folder
    named after ``pid`` holding a partial file (made with this process's name, then renamed).

    The kill lands inside a write only now and then; this makes the rerun's cleaning certain
    to be tested.
    """
    mine = temporary_dir(target)
    stale = mine.rename(mine.with_name(mine.name.replace(f"-{os.getpid()}.", f"-{pid}.")))
    (stale / target.name).write_bytes(data)
    return stale


# --------------------------------------------------------------------------- prepare


def _assert_cache_whole(cache: Path) -> None:
    """Every array of ``cache`` loads completely and has the rows its manifest promises."""
    manifest = open_manifest(cache)
    opened = SliceCache.open(cache)
    for key in manifest["sites"]:
        rows = sum(s["n_slices"] for s in manifest["subjects"] if s["site"] == key)
        for name in ("images", "labels", "masks", "slices"):
            array = np.load(cache / key / f"{name}.npy")  # whole file into memory
            assert array.shape[0] == rows, (key, name)
    assert opened.path == cache


def test_prepare_killed_midway_leaves_no_cache_and_a_rerun_completes(
    write_phantom: Phantom, tmp_path: Path
) -> None:
    # 2 x 8 subjects of 40x48x32 voxels with full-resolution N4: ~1 s of slicing remains
    # when the first subject is done.
    for site, offset in (("a", 0), ("b", 100)):
        for i in range(8):
            write_phantom(
                f"sub-{site}{i:02d}.nii.gz",
                shape=(40, 48, 32),
                folder=tmp_path / site,
                seed=offset + i,
            )
    cache = tmp_path / "cache"
    args = ["prepare", "--site-a", str(tmp_path / "a"), "--site-b", str(tmp_path / "b"),
            "--out", str(cache), "--pad-multiple", "8", "--bias-shrink", "1",
            "--quiet"]  # fmt: skip

    def slicing() -> bool:  # a subject is done and the work folder is not yet removed
        return any(tmp_path.glob(".cache.*/_work/*_keep.npy"))

    killed = _command(args, tmp_path / "killed.log")
    _kill_midway(killed, slicing, tmp_path / "killed.log")
    assert not cache.exists()  # the cache appears by one rename, after its manifest
    leftovers = _hidden(tmp_path)
    assert leftovers == _dead_temporaries(tmp_path, killed.pid) and len(leftovers) == 1
    with pytest.raises(CacheError, match=r"has no manifest\.json: it is incomplete"):
        open_manifest(leftovers[0])

    _run(args, tmp_path / "rerun.log")
    _assert_cache_whole(cache)
    assert _hidden(tmp_path) == []  # the dead run's partial cache was cleaned, not piled up

    # Killing a replacement (--overwrite) mid-way leaves the old cache as it was.
    before = {p: p.read_bytes() for p in sorted(cache.rglob("*")) if p.is_file()}
    replacing = _command([*args, "--overwrite"], tmp_path / "replacing.log")
    _kill_midway(replacing, slicing, tmp_path / "replacing.log")
    assert {p: p.read_bytes() for p in sorted(cache.rglob("*")) if p.is_file()} == before
    _assert_cache_whole(cache)
    for leftover in _hidden(tmp_path):
        with pytest.raises(CacheError, match=r"has no manifest\.json"):
            open_manifest(leftover)


# --------------------------------------------------------------------------- train

#: 4 + 4 decay steps of a tiny translator, a kept checkpoint after every step, the cpu
#: preset's weight average and a consistency warm-up that spans the kill: ~0.8 s of
#: training remains when the kill is due.
TRAIN_STEPS = 8


def _train_overrides(tiny_kit: SimpleNamespace) -> list[str]:
    return [
        *[f"model.{key}={value}" for key, value in tiny_kit.model.items()],
        "data.crop_size=32", "data.batch_size=2",
        f"optim.iterations={TRAIN_STEPS - 4}", "optim.decay_iterations=4",
        "optim.consistency_warmup=5", "run.checkpoint_every=1",
        f"run.keep_checkpoints={TRAIN_STEPS}", "run.log_every=1", "run.image_every=0",
        "run.device=cpu", "run.amp=off",
    ]  # fmt: skip


def _weights(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    payload = load_checkpoint(path)
    return {"model": payload["model"], "ema": payload["ema"]}


def _same_weights(a: Path, b: Path) -> bool:
    p, q = _weights(a), _weights(b)
    return all(
        p[part].keys() == q[part].keys()
        and all(torch.equal(p[part][k], q[part][k]) for k in p[part])
        for part in p
    )


def test_train_killed_midway_resumes_to_the_uninterrupted_weights(
    tmp_path: Path, tiny_kit: SimpleNamespace
) -> None:
    from segrenorm.config.load import load_config
    from segrenorm.training.trainer import train

    cache = tiny_kit.cache(tmp_path / "cache")
    overrides = _train_overrides(tiny_kit)
    args = ["train", "--config", "cpu", "--data", str(cache), "--out", str(tmp_path / "runs"),
            "--no-progress", *tiny_kit.flags("--set", overrides)]  # fmt: skip
    run = tmp_path / "runs" / "00000-cpu-segrenorm"
    checkpoints = run / "checkpoints"

    def training() -> bool:  # two steps saved, the run not finished
        return (checkpoints / "step-0000002.pt").is_file() and not (run / "final.pt").exists()

    killed = _command(args, tmp_path / "killed.log")
    _kill_midway(killed, training, tmp_path / "killed.log")
    # Every checkpoint at a final name loads completely and holds the step it is named for.
    saved = {p.name: load_checkpoint(p)["step"] for p in checkpoints.glob("*.pt")}
    assert not (run / "final.pt").exists()
    assert all(step == int(name[5:12]) for name, step in saved.items() if name != "last.pt")
    resumed_from = saved["last.pt"]  # 1 when the kill lands between step-2 and last.pt
    assert 1 <= resumed_from < TRAIN_STEPS and max(saved.values()) <= resumed_from + 1
    assert all(p.name.endswith(".tmp") for p in _hidden(checkpoints))  # partial saves only
    last = (checkpoints / "last.pt").read_bytes()
    _plant_partial(checkpoints / "last.pt", killed.pid, last[: len(last) // 2])

    output = _run(["train", "--resume", str(run), "--no-progress"], tmp_path / "resume.log")
    assert str(run) in output
    assert load_checkpoint(run / "final.pt")["step"] == TRAIN_STEPS
    for folder in (run, checkpoints):
        assert _dead_temporaries(folder, killed.pid) == [], folder
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == list(range(1, TRAIN_STEPS + 1))
    record = json.loads((run / "config.json").read_text())
    assert [r["step"] for r in record["resumes"]] == [resumed_from]

    # The same run without the kill, in this process: equal weights and averages from the
    # first checkpoint after the resume point to the end.
    config = load_config("cpu", overrides=overrides)
    straight = train(config, cache, tmp_path / "straight", progress=False)
    for step in range(resumed_from + 1, TRAIN_STEPS + 1):
        name = f"step-{step:07d}.pt"
        assert _same_weights(checkpoints / name, straight / "checkpoints" / name), step
    assert _same_weights(run / "final.pt", straight / "final.pt")


# --------------------------------------------------------------------------- harmonize


def test_harmonize_killed_midway_leaves_only_whole_outputs(
    write_phantom: Phantom, tmp_path: Path, tiny_kit: SimpleNamespace
) -> None:
    model = tiny_kit.save_checkpoint(tmp_path / "model.pt", identity=False)
    # 8 volumes of 64x64x48 voxels: ~1 s of harmonizing remains after the first.
    inputs = [write_phantom(f"s{i:02d}.nii.gz", shape=(64, 64, 48), seed=i) for i in range(8)]
    out = tmp_path / "out"
    args = ["harmonize", str(tmp_path / "in"), "--model", str(model), "--out", str(out),
            "--device", "cpu", "--no-progress"]  # fmt: skip

    def harmonizing() -> bool:  # a first output written, the last one not yet
        return (out / inputs[0].name).exists() and not (out / inputs[-1].name).exists()

    killed = _command(args, tmp_path / "killed.log")
    _kill_midway(killed, harmonizing, tmp_path / "killed.log")
    finished = sorted(p for p in out.iterdir() if not p.name.startswith("."))
    assert 1 <= len(finished) < len(inputs)
    assert {p.name for p in finished} <= {p.name for p in inputs}
    # Each output at its final name is whole: it loads and equals a fresh harmonization.
    harmonizer = segrenorm.Harmonizer.load(model, device="cpu")
    for path in finished:
        written = load_image(path)
        expected = harmonizer.harmonize(tmp_path / "in" / path.name)
        assert written.geometry.shape == expected.geometry.shape
        np.testing.assert_allclose(written.geometry.affine, expected.geometry.affine)
        np.testing.assert_allclose(written.data, expected.data, rtol=1e-5, atol=1e-4)
    assert _hidden(out) == _dead_temporaries(out, killed.pid)  # a partial write, if any
    unfinished = inputs[-1].name
    _plant_partial(out / unfinished, killed.pid, (out / finished[0].name).read_bytes()[:999])

    output = _run([*args, "--skip-existing"], tmp_path / "rerun.log")
    done = len(inputs) - len(finished)
    assert f"{len(inputs)} file(s): {done} harmonized, {len(finished)} skipped, 0 failed" in output
    assert sorted(p.name for p in out.iterdir()) == [p.name for p in inputs]  # nothing hidden
    for path in inputs:
        assert load_image(out / path.name).geometry.shape == (64, 64, 48)
