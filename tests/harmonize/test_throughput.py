"""Tests for folder throughput: overlapped files, the automatic slice batch, reused buffers."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from segrenorm.cli import main
from segrenorm.errors import ConfigError
from segrenorm.harmonize import batching
from segrenorm.harmonize.batching import FIXED_BATCH, parse_batch_size
from segrenorm.harmonize.files import harmonize_files
from segrenorm.harmonize.fusion import translate_view
from segrenorm.harmonize.harmonizer import HarmonizeOptions, Harmonizer
from segrenorm.harmonize.pipeline import run_overlapped
from segrenorm.models.inference import ConditionedGenerator
from segrenorm.volumes.spatial import pad_to_shape, slice_volume, unpad

Phantom = Callable[..., Path]


def _folder(write_phantom: Phantom, tmp_path: Path) -> list[Path]:
    good = [write_phantom("a.nii.gz"), write_phantom("c.nii.gz", seed=1)]
    broken = tmp_path / "in" / "b.nii.gz"
    broken.write_bytes(good[0].read_bytes()[:300])  # truncated download
    return [good[0], broken, good[1]]


def test_overlapped_outputs_are_bit_identical_to_sequential(
    tiny_checkpoints: dict[str, Path], write_phantom: Phantom, tmp_path: Path
) -> None:
    _folder(write_phantom, tmp_path)
    harmonizer = Harmonizer.load(tiny_checkpoints["random"])  # auto: one choice for both runs
    runs = {}
    for overlap in (False, True):
        calls: list[tuple[int, int, str]] = []
        out = tmp_path / f"out-{overlap}"
        results = harmonize_files(
            harmonizer, [tmp_path / "in"], out, overlap=overlap,
            on_file=lambda i, n, p, calls=calls: calls.append((i, n, p.name)),
        )  # fmt: skip
        runs[overlap] = (out, results, calls)
    (seq_out, seq, seq_calls), (ovl_out, ovl, ovl_calls) = runs[False], runs[True]
    assert [(r.input.name, r.status) for r in ovl] == [
        ("a.nii.gz", "ok"), ("b.nii.gz", "failed"), ("c.nii.gz", "ok")
    ]  # fmt: skip
    assert [(r.input, r.output and r.output.name, r.status, r.message) for r in ovl] == [
        (r.input, r.output and r.output.name, r.status, r.message) for r in seq
    ]
    assert "truncated or corrupt" in ovl[1].message
    assert ovl_calls == seq_calls == [(0, 3, "a.nii.gz"), (1, 3, "b.nii.gz"), (2, 3, "c.nii.gz")]
    assert sorted(p.name for p in ovl_out.iterdir()) == ["a.nii.gz", "c.nii.gz"]
    for name in ("a.nii.gz", "c.nii.gz"):
        a, b = nib.load(seq_out / name), nib.load(ovl_out / name)
        assert np.asarray(a.dataobj).tobytes() == np.asarray(b.dataobj).tobytes()
        assert a.header.binaryblock == b.header.binaryblock
    # --skip-existing and the refusal to overwrite hold in the overlapped path too.
    again = harmonize_files(harmonizer, [tmp_path / "in"], ovl_out, skip_existing=True)
    assert [r.status for r in again] == ["skipped", "failed", "skipped"]
    refused = harmonize_files(harmonizer, [tmp_path / "in"], ovl_out)
    assert [r.message.startswith("output exists") for r in refused] == [True, False, True]


def test_pipeline_overlaps_one_job_ahead_and_bounds_memory() -> None:
    live, peak, order = set(), [0], []
    lock = threading.Lock()
    main_thread = threading.current_thread()

    def read(job: int) -> None:
        assert threading.current_thread() is not main_thread
        with lock:
            live.add(job)
            peak[0] = max(peak[0], len(live))
            order.append(("read", job))

    def compute(job: int) -> None:
        assert threading.current_thread() is main_thread
        order.append(("compute", job))

    def write(job: int) -> None:
        assert threading.current_thread() is not main_thread
        with lock:
            live.discard(job)
            order.append(("write", job))

    done: list[int] = []
    run_overlapped(list(range(6)), read, compute, write, on_done=done.append)
    assert done == list(range(6)) and not live
    assert peak[0] <= 3  # the job computed, one read ahead, one being written
    for stage in ("read", "compute", "write"):
        assert [j for s, j in order if s == stage] == list(range(6))
    assert order.index(("read", 1)) < order.index(("compute", 1))

    def broken(job: int) -> None:
        if job == 2:
            raise KeyError("a bug")

    with pytest.raises(KeyError, match="a bug"):
        run_overlapped(list(range(5)), broken, compute, write)


def test_batch_size_is_parsed_and_validated(
    tiny_checkpoints: dict[str, Path], write_phantom: Phantom, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    assert parse_batch_size(" Auto ") == "auto" and parse_batch_size("8") == 8
    assert (
        HarmonizeOptions().batch_size == "auto" and HarmonizeOptions(batch_size="3").batch_size == 3
    )
    with pytest.raises(ConfigError, match=r"batch size 0 must be auto or a number of slices"):
        HarmonizeOptions(batch_size=0)
    with pytest.raises(ConfigError, match=r"batch size True must be auto"):
        HarmonizeOptions(batch_size=True)
    write_phantom()
    argv = ["harmonize", str(tmp_path / "in"), "--model", str(tiny_checkpoints["identity"]),
            "--out", str(tmp_path / "out"), "--no-progress"]  # fmt: skip
    assert main([*argv, "--batch-size", "0"]) == 2
    assert (
        "--batch-size 0 must be auto or a number of slices of at least 1" in capsys.readouterr().err
    )
    assert main([*argv, "--batch-size", "foo"]) == 2
    assert "--batch-size 'foo' is unknown: use auto" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main([*argv, "--batch-size", "auto"]) == 0
    assert "slice batch auto:" in capsys.readouterr().out  # the choice is in the notes


def test_memory_cap_by_hand() -> None:
    # 208x240 slices of width 64: 4 B * 208 * 240 * (4 * 64 + 2) = 51,517,440 B a slice.
    assert batching.batch_memory_cap((208, 240), 64) == 536_870_912 // 51_517_440 == 10
    assert batching.candidates_within(10) == (1, 2, 4, 8)
    # 40x40 slices of width 4 and 3-slice stacks: 4 * 1600 * (16 + 4) = 128,000 B a slice.
    assert batching.batch_memory_cap((40, 40), 4, context=3, budget=1_000_000) == 7
    assert batching.candidates_within(0) == (1,)
    with pytest.raises(ConfigError, match=r"positive sizes, got slice 0x240, width 64"):
        batching.batch_memory_cap((0, 240), 64)
    with pytest.raises(ConfigError, match="no slice batch was timed"):
        batching.pick_fastest([])


class FakeClock:
    """A clock that a fake model advances: ``cost(b)`` seconds per call of ``b`` slices."""

    def __init__(self, cost: Callable[[int], float]) -> None:
        self.now, self.cost = 0.0, cost
        self.calls: list[int] = []

    def __call__(self) -> float:
        return self.now

    def translate(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(int(x.shape[0]))
        self.now += self.cost(int(x.shape[0]))
        return x[:, :1]


def test_the_fastest_candidate_within_the_cap_is_chosen_once() -> None:
    batching.clear_batch_cache()
    # Overhead 0.1 s, then a working set that grows: slices/s 8.9, 15.6, 23.3, 26.0, 20.7
    # for 1, 2, 4, 8, 16; 16 gains nothing on 8, so 32 is never timed.
    clock = FakeClock(lambda b: 0.1 + 0.01 * b + 0.002 * b * b)
    choice = batching.choose_batch("m", clock.translate, (16, 16), channels=1, width=4, clock=clock)
    assert choice.batch == 8 and [b for b, _ in choice.rates] == [1, 2, 4, 8, 16]
    assert choice.rates[3][1] == pytest.approx(8 / 0.308)
    assert 32 not in clock.calls and choice.cap == batching.batch_memory_cap((16, 16), 4)
    again = batching.choose_batch("m", clock.translate, (16, 16), channels=1, width=4)
    assert again is choice and len(clock.calls) == 5 * 2  # warm-up + one timed call each
    # Larger is always faster, but the cap stops it at 8 (208x240, width 64: cap 10).
    flat = FakeClock(lambda b: 1.0)
    capped = batching.choose_batch(
        "wide", flat.translate, (208, 240), channels=1, width=64, clock=flat
    )
    assert capped.batch == 8 and capped.cap == 10 and max(flat.calls) == 8
    assert capped in batching.chosen_batches() and "slice batch auto: 8" in capped.note()
    # A plateau (time grows with the batch) stops at 2 and keeps 1: a tie goes to less memory.
    plateau = FakeClock(lambda b: 0.5 * b)
    rates = batching.time_candidates(plateau.translate, (8, 8), 1, (1, 2, 4), clock=plateau)
    assert rates == ((1, 2.0), (2, 2.0)) and batching.pick_fastest(rates) == 1
    # Past the time budget no larger batch is timed, even one still gaining.
    slow = FakeClock(lambda b: 3.0)
    rates = batching.time_candidates(slow.translate, (8, 8), 1, (1, 2, 4), clock=slow)
    assert [b for b, _ in rates] == [1, 2]  # 12 s spent after batch 2: over 10 s
    batching.clear_batch_cache()


def test_auto_batch_matches_fixed_batches_and_compile_keeps_the_fixed_batch(
    tiny_checkpoints: dict[str, Path], write_phantom: Phantom
) -> None:
    path = write_phantom()
    auto = Harmonizer.load(tiny_checkpoints["random"])
    out = auto.harmonize(path).data
    (choice,) = auto.batch_choices.values()
    assert choice.how == "timed" and choice.batch in batching.BATCH_CANDIDATES
    assert choice.batch <= choice.cap
    for batch in (1, 7):
        fixed = Harmonizer.load(tiny_checkpoints["random"], batch_size=batch)
        np.testing.assert_allclose(fixed.harmonize(path).data, out, rtol=1e-5, atol=1e-3)
        assert fixed.batch_for((24, 16)).how == "given"
    auto.compiled = True  # what compile=True sets (without paying for torch.compile here)
    compiled = auto.batch_for((24, 16))
    assert (compiled.batch, compiled.how) == (FIXED_BATCH, "compiled")  # never timed


def test_reused_batch_buffer_gives_what_fresh_padding_gave(
    tiny_checkpoints: dict[str, Path],
) -> None:
    from segrenorm.models.checkpoint import load_translator

    translator, _ = load_translator(tiny_checkpoints["random"], "cpu")
    module = ConditionedGenerator(translator, "AB").eval()
    rng = np.random.default_rng(0)
    volume = rng.uniform(-1, 1, (7, 10, 13)).astype(np.float32)
    volume[:, :, 4] = -1.0
    mask = volume > -1
    got = translate_view(module, volume, "axial", stride=4, batch_size=3, foreground=mask)
    # Today's loop, written out: each batch padded afresh with np.pad, then restacked.
    slices = slice_volume(volume, "axial")
    want = np.full(slices.shape, -1.0, np.float32)
    rows = [i for i in range(slices.shape[0]) if mask[:, :, i].any()]
    for start in range(0, len(rows), 3):
        chunk = rows[start : start + 3]
        padded, pads = pad_to_shape(slices[chunk][:, None], (8, 12), -1.0)
        with torch.inference_mode():
            y = module(torch.from_numpy(np.ascontiguousarray(padded)))
        want[chunk] = unpad(y[:, 0].numpy(), pads)
    assert np.array_equal(got, np.moveaxis(want, 0, 2))
    seen: list[np.ndarray] = []

    def spy(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.numpy().copy())
        return x

    translate_view(spy, volume, "axial", stride=4, batch_size=5, foreground=mask, fixed_batch=True)
    assert [s.shape[0] for s in seen] == [5, 5, 5]  # 12 slices with foreground
    assert np.all(seen[2][2:] == -1.0) and not np.all(seen[1][2:] == -1.0)  # tail refilled


@pytest.mark.parametrize(("cores", "overlapped"), [(2, False), (1, False), (4, True)])
def test_the_default_overlaps_only_with_more_than_two_cores(
    cores: int, overlapped: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from segrenorm.harmonize import files

    calls: list[str] = []
    monkeypatch.setattr(files.os, "cpu_count", lambda: cores)
    monkeypatch.setattr(files, "harmonize_overlapped", lambda *a, **k: calls.append("o") or [])
    monkeypatch.setattr(files, "harmonize_one", lambda *a, **k: calls.append("s"))
    monkeypatch.setattr(files, "plan_outputs", lambda i, o: [(Path("x"), Path("y"))] * 2)
    files.harmonize_files(object(), ["in"], tmp_path / "out")  # type: ignore[arg-type]
    assert calls == (["o"] if overlapped else ["s", "s"])
