"""Leave-one-subject-out end to end: ``prepare --folds loso``, ``train --set data.fold=K``,
``evaluate --fold K`` and the refusal of a run trained on another fold."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from segrenorm.cli import main
from segrenorm.data.folds import LOSO, loso_folds, parse_folds
from segrenorm.data.listing import SubjectRecord
from segrenorm.data.prepare import prepare_cache
from segrenorm.data.slice_cache import SliceCache
from segrenorm.errors import CacheError, ConfigError
from segrenorm.evaluate.data import EvalData
from segrenorm.training.trainer import train
from segrenorm.workflows.evaluate import evaluate_cache
from tests.conftest import tiny_config

CLASSES = ["background", "csf", "gm", "wm"]


def _records(site: str, *names: str, group: str | None = None) -> list[SubjectRecord]:
    return [SubjectRecord(n, site, Path(f"/{site}/{n}.nii"), None, group=group) for n in names]


def test_loso_folds_by_hand() -> None:
    # Persons at both sites first (t0, t1: folds 0, 1), then each site's own by id.
    old = _records("old", "s2", "t1", "s0", "t0", "s1")
    new = _records("new", "t0", "s5", "t1", "s3")
    folds, n_folds = loso_folds([old, new])
    assert folds == [4, 1, 2, 0, 3, 0, 3, 1, 2]
    assert n_folds == 5
    # The sessions of one person share its fold; one site alone still gets one fold each.
    sessions = _records("a", "p_ses-1", "p_ses-2", group="p") + _records("a", "q")
    assert loso_folds([sessions]) == ([0, 0, 1], 2)


@pytest.mark.parametrize("text", ["0", "-1", "lo", "2.5"])
def test_bad_folds_values_are_refused(text: str) -> None:
    assert parse_folds("5") == 5 and parse_folds("LOSO") == LOSO
    with pytest.raises(ValueError):
        parse_folds(text)


def test_prepare_cli_refuses_a_bad_folds_value(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["prepare", "--csv", "x.csv", "--out", "c", "--folds", "zero"])
    assert caught.value.code == 2
    assert "'zero' is neither a number of folds (1 or more) nor loso" in capsys.readouterr().err


@pytest.fixture(scope="module")
def loso_cache(eval_study: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The evaluation study (old: s0-s2, new: s3-s5, t0 and t1 at both) in LOSO folds."""
    out = tmp_path_factory.mktemp("loso") / "cache"
    return prepare_cache(
        eval_study.records, out, class_names=CLASSES, pad_multiple=8, n_folds="loso",
        progress=False,
    )  # fmt: skip


def test_prepare_loso_gives_each_person_one_fold(loso_cache: Path) -> None:
    manifest = json.loads((loso_cache / "manifest.json").read_text())
    assert manifest["split"]["n_folds"] == 5 and manifest["split"]["folds"] == "loso"
    folds = {(s["site"], s["subject"]): s["fold"] for s in manifest["subjects"]}
    assert folds == {
        ("A", "s0"): 2, ("A", "s1"): 3, ("A", "s2"): 4, ("A", "t0"): 0, ("A", "t1"): 1,
        ("B", "s3"): 2, ("B", "s4"): 3, ("B", "s5"): 4, ("B", "t0"): 0, ("B", "t1"): 1,
    }  # fmt: skip
    # The listed splits are kept: the fixed split still serves the default run.
    splits = {s["subject"]: s["split"] for s in manifest["subjects"]}
    assert splits["t0"] == splits["t1"] == "test" and splits["s0"] == "train"


def test_eval_data_of_a_fold_holds_out_its_subjects_and_trains_on_the_rest(
    loso_cache: Path,
) -> None:
    data = EvalData.from_cache(loso_cache, fold=2)
    assert set(data.source.subjects) == {"s0"} and set(data.target.subjects) == {"s3"}
    cache = SliceCache.open(loso_cache)
    train_rows = cache.rows("A", "train", 2)
    assert set(cache.subjects_of("A", train_rows)) == {"s1", "s2", "t0", "t1"}
    images, _ = data.train_slices("source")
    assert images.shape[0] == train_rows.size
    entries = {s["subject"]: s for s in cache.manifest["subjects"] if s["site"] == "A"}
    assert [n for n, e in sorted(entries.items()) if data.trains_on(e)] == ["s1", "s2", "t0", "t1"]
    # Without a fold, the fixed split: only listed training subjects train.
    fixed = EvalData.from_cache(loso_cache)
    assert [n for n, e in sorted(entries.items()) if fixed.trains_on(e)] == ["s0", "s1", "s2"]
    paired = EvalData.from_cache(loso_cache, fold=0)
    assert len(paired.paired_rows()[0]) == len(paired.source) > 0  # t0 on both scanners
    with pytest.raises(ConfigError, match="fold 5 is out of range: the cache"):
        EvalData.from_cache(loso_cache, fold=5)


def test_a_fold_that_splits_a_person_across_sites_is_refused(
    loso_cache: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(loso_cache, cache)
    manifest = json.loads((cache / "manifest.json").read_text())
    for entry in manifest["subjects"]:
        if entry["site"] == "B" and entry["subject"] == "t0":
            entry["fold"] = 3  # as an independent per-site draw may give it
    (cache / "manifest.json").write_text(json.dumps(manifest))
    message = "subject\\(s\\) t0 are at both sites in different folds, so fold 0 would train"
    with pytest.raises(CacheError, match=message):
        EvalData.from_cache(cache, fold=0)
    with pytest.raises(CacheError, match="prepare the cache with --folds loso"):
        EvalData.from_cache(cache, fold=3)
    assert len(EvalData.from_cache(cache, fold=2).source) > 0  # folds without t0 still work


@pytest.fixture(scope="module")
def fold_run(loso_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-step tiny run trained on fold 1 (everything but t1)."""
    config = tiny_config(
        data={"crop_size": 0, "fold": 1},
        optim={"iterations": 1, "decay_iterations": 0, "warmup_iterations": 0},
        run={"checkpoint_every": 0, "image_every": 0, "log_every": 1},
    )
    return train(config, loso_cache, tmp_path_factory.mktemp("fold-runs"))


def test_evaluate_scores_the_fold_a_run_was_trained_on(
    loso_cache: Path, fold_run: Path, eval_kit: SimpleNamespace, tmp_path: Path
) -> None:
    paths, results = evaluate_cache(
        loso_cache, tmp_path / "report", models={"segrenorm": fold_run}, baselines=["histogram"],
        config=eval_kit.evaluation(), fold=1,
    )  # fmt: skip
    assert results["fold"] == 1 and json.loads(paths.json.read_text())["fold"] == 1
    assert results["n_subjects"] == {"source": 1, "target": 1}  # t1 at each site
    cache = SliceCache.open(loso_cache)
    t1_rows = int(np.sum(cache.subjects_of("A", cache.rows("A", "all")) == "t1"))
    assert results["n_slices"]["source"] == t1_rows


def test_evaluate_refuses_a_run_of_another_fold(
    loso_cache: Path, fold_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = {"segrenorm": fold_run}
    with pytest.raises(ConfigError, match=r"trained with data\.fold=1, so it saw the subjects of"):
        evaluate_cache(loso_cache, tmp_path / "r", models=run, fold=2)
    with pytest.raises(ConfigError, match="the cache's test subjects included: score it on its"):
        evaluate_cache(loso_cache, tmp_path / "r", models=run)
    with pytest.raises(ConfigError, match="--fold 1 scores the fold's held-out subjects; folds"):
        evaluate_cache(loso_cache, tmp_path / "r", models=run, fold=1, split="val")
    argv = ["evaluate", "--cache", str(loso_cache), "--out", str(tmp_path / "r"), "--model",
            f"segrenorm={fold_run}", "--fold", "2"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "was trained with data.fold=1, so it saw the subjects of fold 2: score it with " in err
    assert "--fold 1, or train one for this fold with --set data.fold=2" in err
    assert not (tmp_path / "r").exists()
