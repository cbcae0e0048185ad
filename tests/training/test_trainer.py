"""Tests for the trainer and ``segrenorm train``: run directory, exact resume, stops, errors."""

from __future__ import annotations

import json
import os
import re
import signal
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from segrenorm.cli import main
from segrenorm.config.load import load_config
from segrenorm.errors import ConfigError
from segrenorm.models.checkpoint import load_checkpoint, load_translator
from segrenorm.models.translator import Translator
from segrenorm.training import step as training_step
from segrenorm.training.optim import build_optimizers, lr_factor
from segrenorm.training.trainer import StepInfo, TrainingDiverged, TrainingInterrupted, train


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Any:
    """Tiny tensors on a shared 2-core machine: extra intra-op threads only spin (15x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def params_of(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def stop_at(step: int) -> Any:
    def callback(info: StepInfo) -> None:
        if info.step == step:
            raise KeyboardInterrupt

    return callback


def test_lr_factor_constant_then_linear_to_zero(tiny_kit: SimpleNamespace) -> None:
    factor = lr_factor(tiny_kit.config().optim)  # 4 constant, 2 decay
    assert [factor(s) for s in range(7)] == [1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.0]


def test_cyclegan_has_no_seg_optimizer(tiny_kit: SimpleNamespace) -> None:
    config = tiny_kit.config("cyclegan")
    optimizers = build_optimizers(Translator.from_config(config), config.optim)
    assert sorted(optimizers) == ["disc", "gen"]
    assert optimizers["disc"].param_groups[0]["lr"] == config.optim.lr_disc
    assert optimizers["gen"].param_groups[0]["betas"] == (0.5, 0.999)


def test_run_directory_layout_and_log(
    tiny_cache: Path, tmp_path: Path, tiny_kit: SimpleNamespace
) -> None:
    run_dir = train(tiny_kit.config(), tiny_cache, tmp_path / "runs", progress=False)
    assert run_dir.name == "00000-tiny-segrenorm"
    record = json.loads((run_dir / "config.json").read_text())
    assert record["config"] == tiny_kit.config().to_dict()
    assert record["cache"] == str(tiny_cache.resolve())
    assert {"segrenorm", "torch", "numpy", "python"} <= set(record["versions"])
    entries = read_log(run_dir)
    assert [e["step"] for e in entries] == [1, 2, 3, 4, 5, 6]
    assert {"gen_total", "cycle_a", "seg_real_a", "disc_total", "disc_b"} <= set(
        entries[0]["losses"]
    )
    # Rates used by each step: constant for 4 steps, then 0.5x (step 6 uses factor(5)).
    assert [e["lr"]["gen"] for e in entries] == [2e-4] * 5 + [1e-4]
    assert [e["film"] for e in entries] == [False, False, True, True, True, True]
    # The conditioning sensitivity of the logged batch: 0 while FiLM is held off.
    cond = [e["conditioning"] for e in entries]
    assert all(set(c) == {"AB", "BA"} for c in cond)
    assert [c["AB"] for c in cond[:2]] == [0.0, 0.0] and [c["BA"] for c in cond[:2]] == [0.0, 0.0]
    assert all(c["AB"] > 0 and c["BA"] > 0 for c in cond[2:]), cond
    assert all(e["it_per_s"] > 0 for e in entries)
    assert sorted(p.name for p in (run_dir / "images").iterdir()) == [
        "step-000003.png",
        "step-000006.png",
    ]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "last.pt",
        "step-0000006.pt",  # keep_checkpoints=1 removed step 2 and 4
    ]
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert not list(run_dir.rglob("*.tmp"))
    translator, config = load_translator(run_dir)
    assert config == tiny_kit.config() and not translator.training
    final = params_of(run_dir / "final.pt")
    assert all(torch.equal(final[k], v) for k, v in translator.state_dict().items())
    assert translator.translate(torch.zeros(1, 1, 32, 32)).shape == (1, 1, 32, 32)
    again = train(tiny_kit.config(), tiny_cache, tmp_path / "runs", progress=False, max_steps=1)
    assert again.name == "00001-tiny-segrenorm"
    assert load_checkpoint(again / "final.pt")["step"] == 1


def test_resume_continues_exactly(
    tiny_cache: Path, tmp_path: Path, tiny_kit: SimpleNamespace
) -> None:
    # log_every=2 and a stop at step 3: the log window spans the interruption too; the
    # weight average and the consistency warm-up must carry over as well.
    config = tiny_kit.config(
        run={"log_every": 2}, optim={"ema_decay": 0.9, "consistency_warmup": 4}
    )
    seen: dict[str, dict[int, dict[str, float]]] = {"straight": {}, "split": {}}

    def recorder(key: str) -> Any:
        def callback(info: StepInfo) -> None:
            seen[key][info.step] = dict(info.losses)

        return callback

    straight = train(config, tiny_cache, tmp_path / "a", callbacks=[recorder("straight")])
    with pytest.raises(TrainingInterrupted, match=r"interrupted at step 3.*--resume"):
        train(config, tiny_cache, tmp_path / "b", callbacks=[recorder("split"), stop_at(3)])
    split = next((tmp_path / "b").iterdir())
    assert load_checkpoint(split / "checkpoints" / "last.pt")["step"] == 3
    assert not (split / "final.pt").exists()
    resumed = train(config, tiny_cache, tmp_path / "c", resume=split, callbacks=[recorder("split")])
    assert resumed == split and not (tmp_path / "c").exists()
    assert sorted(seen["split"]) == [1, 2, 3, 4, 5, 6]
    for step in (4, 5, 6):
        assert seen["split"][step] == seen["straight"][step], step  # exact floats
    first, second = read_log(straight), read_log(resumed)
    assert [e["step"] for e in second] == [2, 4, 6]
    assert [e["losses"] for e in first] == [e["losses"] for e in second]
    p, q = params_of(straight / "final.pt"), params_of(resumed / "final.pt")
    assert all(torch.equal(p[k], q[k]) for k in p)
    ema_p = load_checkpoint(straight / "final.pt")["ema"]
    ema_q = load_checkpoint(resumed / "final.pt")["ema"]
    assert ema_p.keys() == ema_q.keys() and all(torch.equal(ema_p[k], ema_q[k]) for k in ema_p)
    resumes = json.loads((split / "config.json").read_text())["resumes"]
    assert [r["step"] for r in resumes] == [3]


def test_weight_average_is_what_inference_loads(
    tiny_cache: Path, tmp_path: Path, tiny_kit: SimpleNamespace
) -> None:
    run_dir = train(tiny_kit.config(optim={"ema_decay": 0.9}), tiny_cache, tmp_path, progress=False)
    payload = load_checkpoint(run_dir / "final.pt")
    assert not any(k.startswith(("disc_a.", "disc_b.")) for k in payload["ema"])
    assert any(k.startswith("gen_ab.") for k in payload["ema"])
    averaged, _ = load_translator(run_dir)
    raw, _ = load_translator(run_dir, average=False)
    key = next(k for k in payload["ema"] if k.startswith("gen_ab.") and k.endswith("weight"))
    assert torch.equal(averaged.state_dict()[key], payload["ema"][key])
    assert torch.equal(raw.state_dict()[key], payload["model"][key])
    assert not torch.equal(payload["ema"][key], payload["model"][key])
    with pytest.raises(ConfigError, match=r"optim\.ema_decay=1\.0 must lie in \[0, 1\)"):
        tiny_kit.config(optim={"ema_decay": 1.0}).validate()


def test_resume_with_other_model_config_is_refused(
    tiny_cache: Path, tmp_path: Path, tiny_kit: SimpleNamespace
) -> None:
    run_dir = train(tiny_kit.config(), tiny_cache, tmp_path, progress=False, max_steps=1)
    other = tiny_kit.config(model={"ngf": 8})
    with pytest.raises(ConfigError, match=r"cannot resume .*model\.ngf: checkpoint 4, given 8"):
        train(other, tiny_cache, tmp_path, resume=run_dir, progress=False)


def test_sigterm_stops_after_the_step_and_saves(
    tiny_cache: Path, tmp_path: Path, tiny_kit: SimpleNamespace
) -> None:
    def send(info: StepInfo) -> None:
        if info.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted, match="interrupted at step 3") as caught:
        train(tiny_kit.config(), tiny_cache, tmp_path, progress=False, callbacks=[send])
    # The signal arrived during step 2's callbacks; the flag stops the loop after step 3.
    assert load_checkpoint(caught.value.run_dir / "checkpoints" / "last.pt")["step"] == 3
    assert signal.getsignal(signal.SIGTERM) is before


def test_nan_loss_stops_and_keeps_last_good_checkpoint(
    tiny_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_kit: SimpleNamespace
) -> None:
    original = training_step.generator_half  # the trainer builds the step from its halves
    calls = {"n": 0}

    def poisoned(model: Translator, batch: dict[str, torch.Tensor], direction: str) -> Any:
        total, terms, outputs = original(model, batch, direction)
        if direction == "BA":  # the half holding cycle_b
            calls["n"] += 1
            if calls["n"] == 3:
                terms["cycle_b"] = terms["cycle_b"] * float("nan")
                total = total * float("nan")
        return total, terms, outputs

    monkeypatch.setattr(training_step, "generator_half", poisoned)
    with pytest.raises(TrainingDiverged, match=r"loss cycle_b became nan at step 3.*step 2\)"):
        train(tiny_kit.config(), tiny_cache, tmp_path, progress=False)
    run_dir = next(tmp_path.iterdir())
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert last["step"] == 2
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert not (run_dir / "final.pt").exists()


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["data.n_classes=3"], r"data\.n_classes=3 but the cache .* has n_classes=4"),
        (["data.crop_size=64"], r"data\.crop_size=64 is larger than the cache's slices 40x40"),
        (["model.translator=pix2pix"], r"model\.translator='pix2pix' is unknown"),
        (["data.crop_size=30"], r"data\.crop_size=30 is not divisible by the network's stride 4"),
    ],
)
def test_bad_configs_are_rejected(
    tiny_cache: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    overrides: list[str],
    match: str,
) -> None:
    args = ["train", "--config", "cpu", "--data", str(tiny_cache), "--out", str(tmp_path)]
    for item in ["model.n_downsample=2", "model.seg_depth=2", "data.crop_size=32", *overrides]:
        args += ["--set", item]
    assert main([*args, "--dry-run"]) == 2
    assert not list(tmp_path.iterdir())
    err = capsys.readouterr().err
    assert err.startswith("segrenorm train: error: ")
    assert re.search(match, err), err


def test_train_api_rejects_class_mismatch(
    tiny_cache: Path, tmp_path: Path, tiny_kit: SimpleNamespace
) -> None:
    with pytest.raises(ConfigError, match=r"data\.n_classes=2 but the cache .* n_classes=4"):
        train(tiny_kit.config(data={"n_classes": 2}), tiny_cache, tmp_path, progress=False)
    with pytest.raises(ConfigError, match=r"max_steps=0 must be >= 1"):
        train(tiny_kit.config(), tiny_cache, tmp_path, max_steps=0)


def test_cli_dry_run_prints_config(tiny_cache: Path, tmp_path: Path, capsys: Any) -> None:
    code = main(["train", "--config", "cpu", "--data", str(tiny_cache), "--out", str(tmp_path),
                 "--set", "data.crop_size=32", "--dry-run"])  # fmt: skip
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == load_config("cpu", overrides=["data.crop_size=32"]).to_dict()
    assert not list(tmp_path.iterdir())


def test_cli_requires_config_data_and_out(tmp_path: Path, capsys: Any) -> None:
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "--config is required" in capsys.readouterr().err
    assert main(["train", "--config", "cpu", "--out", str(tmp_path)]) == 2
    assert "--data is required" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nope")]) == 2
    assert f"checkpoint {tmp_path / 'nope'} does not exist" in capsys.readouterr().err


def test_cli_interrupt_then_resume_from_run_dir(
    tiny_cache: Path,
    tmp_path: Path,
    capsys: Any,
    monkeypatch: pytest.MonkeyPatch,
    tiny_kit: SimpleNamespace,
) -> None:
    yaml_file = tmp_path / "tiny.yaml"
    yaml_file.write_text(json.dumps(tiny_kit.config().to_dict()))
    from segrenorm.training.runlog import RunLog

    original = RunLog.log

    def interrupting(self: RunLog, step: int, *args: Any, **kwargs: Any) -> Any:
        entry = original(self, step, *args, **kwargs)
        if step == 2:
            raise KeyboardInterrupt
        return entry

    monkeypatch.setattr(RunLog, "log", interrupting)
    args = ["train", "--config", str(yaml_file), "--data", str(tiny_cache), "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "runs")]) == 130
    run_dir = tmp_path / "runs" / "00000-tiny-segrenorm"
    assert f"--resume {run_dir}" in capsys.readouterr().err
    monkeypatch.setattr(RunLog, "log", original)
    # No --config, --data or --out: all come from the run's checkpoint.
    assert main(["train", "--resume", str(run_dir), "--iterations", "4", "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == str(run_dir)
    assert load_checkpoint(run_dir / "final.pt")["step"] == 4
    assert [e["step"] for e in read_log(run_dir)] == [1, 2, 3, 4]


def test_semgan_without_dropout_warns_that_it_is_s_cyclegan(
    tiny_cache: Path, tiny_kit: SimpleNamespace, tmp_path: Path
) -> None:
    semgan = tiny_kit.config("semgan")
    with pytest.warns(UserWarning, match=r"semantic_dropout=0 trains exactly S-CycleGAN"):
        train(semgan, tiny_cache, tmp_path / "a", progress=False, max_steps=1)
    with_dropout = tiny_kit.config("semgan", data={"semantic_dropout": 0.5})
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        train(with_dropout, tiny_cache, tmp_path / "b", progress=False, max_steps=1)


def test_crop_size_zero_trains_on_whole_slices(
    tiny_cache: Path, tiny_kit: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shapes: list[tuple[int, ...]] = []
    original = training_step.generator_half

    def recording(model: Any, batch: Any, direction: str) -> Any:
        shapes.append(tuple(batch["a"].shape))
        return original(model, batch, direction)

    monkeypatch.setattr(training_step, "generator_half", recording)
    whole = tiny_kit.config(data={"crop_size": 0}, run={"image_every": 0})
    train(whole, tiny_cache, tmp_path, progress=False, max_steps=1)
    assert shapes and all(shape[-2:] == (40, 40) for shape in shapes)  # the cache's slices


def test_whole_slices_off_the_stride_are_refused(
    tiny_cache: Path, tiny_kit: SimpleNamespace, tmp_path: Path
) -> None:
    deep = tiny_kit.config(model={"n_downsample": 4}, data={"crop_size": 0})  # stride 16
    with pytest.raises(ConfigError, match=r"data\.crop_size=0 trains on whole slices, but the "
                       r"cache's slices 40x40 .* not multiples of the network's stride 16: "
                       r"prepare the cache with --pad-multiple 16"):  # fmt: skip
        train(deep, tiny_cache, tmp_path, progress=False, max_steps=1)
