"""``segrenorm demo`` and ``segrenorm compare`` at toy scale: every stage, files, reuse."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from segrenorm.cli import main
from segrenorm.config.schema import TranslatorKind, load_config
from segrenorm.errors import ConfigError
from segrenorm.workflows.compare import SEMGAN_DROPOUT, compare, translator_config

TINY_TRAIN = [
    "model.ngf=4", "model.ndf=4", "model.n_downsample=2", "model.n_middle_blocks=1",
    "model.seg_ngf=4", "model.seg_depth=2", "model.embed_dim=8", "data.crop_size=32",
    "data.batch_size=2", "optim.iterations=3", "optim.decay_iterations=1",
    "run.checkpoint_every=0", "run.image_every=0", "run.device=cpu",
]  # fmt: skip
TINY_EVAL = [
    "autoencoder.width=4", "autoencoder.depth=2", "autoencoder.feature_dim=8",
    "autoencoder.iterations=3", "autoencoder.decay_iterations=0", "autoencoder.batch_size=8",
    "autoencoder.crop_size=32", "segmentor.ngf=4", "segmentor.depth=2",
    "segmentor.iterations=3", "robustness_slices=4", "kid_subsets=5",
]  # fmt: skip


def _flags(option: str, values: list[str]) -> list[str]:
    return [part for value in values for part in (option, value)]


def test_demo_runs_every_stage_and_reuses_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--subjects", "4",
            *_flags("--set", TINY_TRAIN), *_flags("--eval-set", TINY_EVAL)]  # fmt: skip
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
    tests = [r for r in rows if r.endswith(",test")]
    assert len(harmonized) == len(tests) // 2 >= 1
    results = json.loads((out / "report" / "results.json").read_text())
    assert results["harmonized_folders"]["segrenorm"].endswith("harmonized/segrenorm")
    assert results["class_names"] == ["background", "CSF", "GM", "WM"]
    assert results["paired"]["methods"]["segrenorm"]["ssim"] > 0
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
    eval_study: SimpleNamespace, eval_kit: SimpleNamespace, tmp_path: Path
) -> None:
    config = load_config("cpu", overrides=[*TINY_TRAIN, "data.crop_size=24"])
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
