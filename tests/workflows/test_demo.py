"""``segrenorm demo`` and ``segrenorm compare`` at toy scale: every stage, files, reuse."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from segrenorm.cli import main
from segrenorm.config.load import load_config
from segrenorm.config.schema import TranslatorKind
from segrenorm.errors import ConfigError
from segrenorm.evaluate.data import EvalData, slices_from_volumes
from segrenorm.workflows.compare import SEMGAN_DROPOUT, compare, translator_config


def test_demo_runs_every_stage_and_reuses_them(
    tiny_kit: SimpleNamespace,
    eval_kit: SimpleNamespace,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--subjects", "4",
            *tiny_kit.flags("--set", tiny_kit.train_set),
            *tiny_kit.flags("--eval-set", tiny_kit.eval_set)]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    printed, progress = captured.out, captured.err
    assert "paired ground truth" in printed and "segrenorm" in printed
    assert f"report: {out / 'report' / 'report.html'}" in printed
    for stage in ("simulating 4 subjects", "preparing", "training segrenorm", "train: step 4/4",
                  "harmonizing", "evaluate: post-hoc segmentors"):  # fmt: skip
        assert stage in progress, stage
    assert len(progress.splitlines()) < 40  # bounded progress output
    harmonized = sorted((out / "harmonized" / "segrenorm").iterdir())
    rows = (out / "data" / "subjects.csv").read_text().splitlines()
    tests = [r for r in rows if r.split(",")[4] == "test"]
    assert len(harmonized) == len(tests) // 2 >= 1
    results = json.loads((out / "report" / "results.json").read_text())
    assert results["harmonized_folders"]["segrenorm"].endswith("harmonized/segrenorm")
    assert results["class_names"] == ["background", "CSF", "GM", "WM"]
    # The paired numbers, recomputed from the files the demo wrote: its cache's held-out
    # target slices, and the harmonized volumes cut like the cache (or the source as is).
    data = EvalData.from_cache(out / "cache")
    folder = slices_from_volumes(data, out / "harmonized" / "segrenorm")
    assert not np.allclose(folder, data.source.images, atol=1e-3)  # the run did change them
    paired = results["paired"]
    for name, slices in (("none", data.source.images), ("segrenorm", folder)):
        want = eval_kit.paired(data, slices)
        assert paired["n_subjects"] == want["n_subjects"] == len(harmonized)
        assert paired["n_slices"] == want["n_slices"] > 0
        for key in ("ssim", "psnr", "mae"):
            assert paired["methods"][name][key] == pytest.approx(want[key], rel=1e-6), (name, key)
    # A second demo reuses every finished stage instead of redoing it.
    assert main(argv) == 0
    again = capsys.readouterr().err
    assert "reusing finished run" in again and "train: step" not in again
    assert len(list((out / "runs").iterdir())) == 1


def test_translator_configs_differ_only_in_the_translator() -> None:
    base = load_config("cpu")
    semgan = translator_config(base, TranslatorKind.SEMGAN)
    assert semgan.data.semantic_dropout == SEMGAN_DROPOUT
    cyclegan = translator_config(base, TranslatorKind.CYCLEGAN)
    assert cyclegan.model.translator is TranslatorKind.CYCLEGAN
    assert cyclegan.data.semantic_dropout == 0.0 and cyclegan.optim == base.optim


def test_compare_trains_each_translator_once(
    eval_study: SimpleNamespace,
    eval_kit: SimpleNamespace,
    tiny_kit: SimpleNamespace,
    tmp_path: Path,
) -> None:
    config = load_config("cpu", overrides=[*tiny_kit.train_set, "data.crop_size=24"])
    result = compare(
        eval_study.cache, tmp_path / "cmp", config,
        translators=["cyclegan", "segrenorm"], baselines=["histogram"],
        evaluation=eval_kit.evaluation(),
    )  # fmt: skip
    assert set(result.runs) == {"cyclegan", "segrenorm"}
    assert set(result.results["robustness"]) == {"cyclegan", "segrenorm"}
    record = json.loads(result.report.json.read_text())
    assert set(record["train_seconds"]) == {"cyclegan", "segrenorm"}
    assert any("robustness curve above cyclegan" in c["target"] for c in record["quality_checks"])
    again = compare(
        eval_study.cache, tmp_path / "cmp", config, translators=["cyclegan"],
        baselines=["histogram"], evaluation=eval_kit.evaluation(),
    )  # fmt: skip
    assert again.train_seconds == {"cyclegan": 0.0}
    with pytest.raises(ConfigError, match="unknown translator\\(s\\) 'pix2pix'"):
        compare(eval_study.cache, tmp_path / "x", config, translators=["pix2pix"])
    with pytest.raises(ConfigError, match="unknown baseline\\(s\\) 'n5-histogram'"):
        compare(eval_study.cache, tmp_path / "x", config, baselines=["n5-histogram"])
    assert not (tmp_path / "x").exists()  # refused before any training


def test_demo_passes_the_scanner_pair_to_the_simulation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import segrenorm.workflows.demo as demo

    seen: dict[str, object] = {}

    def fake_simulate(data: Path, **kwargs: object) -> Path:
        seen.update(kwargs)
        raise SystemExit(7)  # stop before training: only the simulation's arguments matter

    monkeypatch.setattr(demo, "simulate_t1", fake_simulate)
    with pytest.raises(SystemExit, match="7"):
        main(["demo", "--out", str(tmp_path / "d"), "--source", "1T", "--target", "7T"])
    assert seen["source"] == "1T" and seen["target"] == "7T" and seen["resolution"] == 2
    assert demo._name("profiles/mine.yaml") == "mine" and demo._name("1.5T") == "1.5T"
