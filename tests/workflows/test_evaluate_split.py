"""Tests of ``evaluate``'s choice of held-out split: val while tuning, test for the final table."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from segrenorm.cli import build_parser
from segrenorm.data.prepare import prepare_cache
from segrenorm.errors import ConfigError
from segrenorm.workflows.evaluate import evaluate_cache


@pytest.fixture(scope="module")
def val_cache(eval_study: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The evaluation study with its held-out subject t1 listed as val on both sites."""
    records = [replace(r, split="val") if r.subject == "t1" else r for r in eval_study.records]
    out = tmp_path_factory.mktemp("val-study") / "cache"
    names = ["background", "csf", "gm", "wm"]
    return prepare_cache(records, out, class_names=names, pad_multiple=8, progress=False)


@pytest.mark.parametrize(("split", "subject"), [("val", "t1"), ("test", "t0")])
def test_evaluate_scores_the_chosen_split_and_records_it(
    val_cache: Path, eval_kit: SimpleNamespace, tmp_path: Path, split: str, subject: str
) -> None:
    paths, results = evaluate_cache(
        val_cache, tmp_path / "report", baselines=["histogram"], config=eval_kit.evaluation(),
        split=split,
    )  # fmt: skip
    assert results["split"] == split
    assert json.loads(paths.json.read_text())["split"] == split
    assert results["n_subjects"] == {"source": 1, "target": 1}
    # The paired held-out subject exists on both sites in either split: every slice pairs.
    manifest = json.loads((val_cache / "manifest.json").read_text())
    slices = sum(s["n_slices"] for s in manifest["subjects"] if s["subject"] == subject)
    assert results["n_slices"] == {"source": slices // 2, "target": slices // 2}
    assert results["paired"]


def test_evaluate_refuses_other_splits(val_cache: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="evaluation split 'train' is unknown: use val"):
        evaluate_cache(val_cache, tmp_path / "report", split="train")
    parser = build_parser()
    assert parser.parse_args(["evaluate", "--cache", "c", "--out", "o"]).split == "test"
    chosen = parser.parse_args(["evaluate", "--cache", "c", "--out", "o", "--split", "val"])
    assert chosen.split == "val"
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate", "--cache", "c", "--out", "o", "--split", "all"])


def test_the_test_run_reuses_the_val_runs_segmentors(
    val_cache: Path, eval_kit: SimpleNamespace, tmp_path: Path
) -> None:
    """Segmentors train on the training split only: the val run's serve the test run, which
    scores exactly as one that trains its own."""
    store = tmp_path / "segmentors"
    config = eval_kit.evaluation(segmentor_seeds=2)
    run = {"baselines": ["histogram"], "config": config}
    _, val = evaluate_cache(val_cache, tmp_path / "val", split="val", segmentors=store, **run)
    _, test = evaluate_cache(val_cache, tmp_path / "test", split="test", segmentors=store, **run)
    _, fresh = evaluate_cache(val_cache, tmp_path / "fresh", split="test", **run)
    trained = val["segmentation"]["segmentor_store"]["trained"]
    assert len(set(trained)) == 4  # 2 seeds x (source, target)
    assert val["segmentation"]["segmentor_store"]["loaded"] == []
    assert sorted(p.name for p in store.iterdir()) == sorted(trained)
    assert test["segmentation"]["segmentor_store"] == {
        "folder": str(store),
        "loaded": trained,
        "trained": [],
    }
    assert "segmentor_store" not in fresh["segmentation"]
    reused = {k: v for k, v in test["segmentation"].items() if k != "segmentor_store"}
    assert json.dumps(reused, sort_keys=True) == json.dumps(fresh["segmentation"], sort_keys=True)
    parser = build_parser()
    parsed = parser.parse_args(["evaluate", "--cache", "c", "--out", "o", "--segmentors", "s"])
    assert parsed.segmentors == "s"
    assert parser.parse_args(["evaluate", "--cache", "c", "--out", "o"]).segmentors is None
