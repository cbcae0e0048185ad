"""The evaluation suite end to end on the tiny study: numbers, report files and the CLI."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from segrenorm.cli import main
from segrenorm.errors import ConfigError, InputError
from segrenorm.evaluate.data import EvalData
from segrenorm.evaluate.pipeline import evaluate_cache, evaluation_config
from segrenorm.evaluate.suite import EvaluationConfig, MethodInput, run_evaluation
from segrenorm.harmonize.files import harmonize_files
from segrenorm.harmonize.harmonizer import Harmonizer
from segrenorm.report.tables import quality_checks


@pytest.fixture(scope="module")
def evaluated(
    eval_study: SimpleNamespace,
    eval_kit: SimpleNamespace,
    tiny_checkpoints: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> SimpleNamespace:
    """One evaluation of baselines, a run given in memory and the same run's volumes."""
    out = tmp_path_factory.mktemp("evaluated")
    data = EvalData.from_cache(eval_study.cache)
    tests = [
        e["image"] for e in data.cache.manifest["subjects"]
        if e["site"] == "A" and e["split"] == "test"
    ]  # fmt: skip
    harmonize_files(Harmonizer.load(tiny_checkpoints["random"]), tests, out / "harmonized")
    paths, results = evaluate_cache(
        eval_study.cache, out / "report",
        models={"segrenorm": tiny_checkpoints["random"], "cyclegan": tiny_checkpoints["identity"]},
        harmonized={"segrenorm": out / "harmonized"},
        config=eval_kit.evaluation(),
    )  # fmt: skip
    return SimpleNamespace(paths=paths, results=results, data=data, out=out)


def test_every_lens_reports_every_method(evaluated: SimpleNamespace) -> None:
    r = evaluated.results
    names = ["none", "zscore", "histogram", "nyul", "denoise-histogram", "segrenorm", "cyclegan"]
    assert list(r["methods"]) == names
    assert r["methods"]["segrenorm"] == "translator"
    assert list(r["distribution"]["methods"]) == names
    none = r["distribution"]["methods"]["none"]
    assert none["kid_ratio"] == pytest.approx(1.0) and none == r["distribution"]["source_vs_target"]
    rows = r["segmentation"]["rows"]
    assert list(rows) == ["source→source", "target→target", *[f"target→{n}" for n in names]]
    assert len(rows["target→segrenorm"]["dice"]["mean"]) == 4
    recovery = r["segmentation"]["gap_recovery"]
    assert all(v == 0.0 or np.isnan(v) for v in recovery["none"])
    assert set(r["robustness"]) == {"segrenorm", "cyclegan"}
    assert r["robustness"]["cyclegan"]["sigma"] == [0.0, 0.25, 0.5]
    paired = r["paired"]
    assert paired["n_subjects"] == 2 and set(paired["methods"]) == set(names)
    assert set(paired["methods"]["none"]["subjects"]) == {"t0", "t1"}
    hist = r["histograms"]
    assert set(hist["classes"]) == {"csf", "gm", "wm"}
    assert set(hist["classes"]["gm"]) == {"target", *names}


def test_identity_translator_scores_like_no_harmonization(evaluated: SimpleNamespace) -> None:
    paired = evaluated.results["paired"]["methods"]
    # cyclegan here is the untrained identity-start checkpoint: G(x) = x up to 1e-3.
    assert paired["cyclegan"]["mae"] == pytest.approx(paired["none"]["mae"], abs=2e-3)


def test_report_files(evaluated: SimpleNamespace) -> None:
    paths = evaluated.paths
    assert {p.name for p in paths.folder.iterdir()} >= {
        "report.html", "report.md", "results.json", "results.csv",
        "panel.png", "sensitivity.png", "histograms.png", "kid.png",
    }  # fmt: skip
    page = paths.html.read_text()
    # Self-contained: figures embedded, nothing fetched from elsewhere.
    assert page.count("data:image/png;base64,") == 4
    assert not re.search(r"(src|href)=['\"](http|//|[^'\"d])", page)
    markdown = paths.markdown.read_text()
    for heading in ("Paired ground truth", "Distribution distance", "Dice (Table V)",
                    "Dice gap recovery", "Robustness to noise", "Quality targets"):  # fmt: skip
        assert heading in markdown and heading in page
    assert "![panel](panel.png)" in markdown
    dice_part, iou_part = markdown.split("## Downstream segmentation: IoU")
    assert "generalized Dice |" in dice_part.split("## Downstream segmentation: Dice")[1]
    assert "generalized Dice" not in iou_part.split("## Dice gap recovery")[0]
    record = json.loads(paths.json.read_text())
    assert record["runs"]["segrenorm"].endswith("random.pt")
    assert record["evaluation_config"]["robustness_slices"] == 6
    assert [c["target"].split(":")[0] for c in record["quality_checks"]] == ["segrenorm"] * 4
    with paths.csv.open() as handle:
        rows = list(csv.DictReader(handle))
    sections = {row["section"] for row in rows}
    assert sections == {"distribution", "segmentation", "robustness", "paired"}
    dice = [r for r in rows if r["method"] == "source→source" and r["metric"] == "dice_mean"]
    assert [r["class"] for r in dice] == ["background", "csf", "gm", "wm"]


def _results(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "methods": {"none": "baseline", "histogram": "baseline", "segrenorm": "translator",
                    "cyclegan": "translator"},
        "distribution": {
            "source_vs_target": {"kid_mean": 0.04},
            "methods": {"segrenorm": {"kid_mean": 0.008, "kid_ratio": 0.2}},
        },
        "segmentation": {"class_names": ["bg", "csf", "gm"],
                         "gap_recovery": {"segrenorm": [0.0, 0.9, 0.85]}},
        "paired": {"methods": {"none": {"ssim": 0.3}, "histogram": {"ssim": 0.4},
                               "segrenorm": {"ssim": 0.45}}},
        "robustness": {"segrenorm": {"ssim_auc": 0.8}, "cyclegan": {"ssim_auc": 0.7}},
    }  # fmt: skip
    base.update(changes)
    return base


def test_quality_checks_pass_and_fail() -> None:
    checks = quality_checks(_results())
    assert [c["passed"] for c in checks] == [True, True, True, True]
    assert "ratio 0.200" in checks[0]["measured"] and "csf 0.90" in checks[1]["measured"]
    worse = _results(
        segmentation={"class_names": ["bg", "csf", "gm"],
                      "gap_recovery": {"segrenorm": [0.0, 0.9, 0.5]}},
        robustness={"segrenorm": {"ssim_auc": 0.6}, "cyclegan": {"ssim_auc": 0.7}},
    )  # fmt: skip
    assert [c["passed"] for c in quality_checks(worse)] == [True, False, True, False]
    # Without paired data or a CycleGAN run those targets are left out.
    assert len(quality_checks(_results(paired=None, robustness={}))) == 2
    assert quality_checks(_results(), method="semgan") == []


def test_method_checks(evaluated: SimpleNamespace, eval_kit: SimpleNamespace) -> None:
    data = evaluated.data
    good = MethodInput(data.source.images)
    with pytest.raises(ConfigError, match="needs the 'none' method"):
        run_evaluation(data, {"histogram": good}, eval_kit.evaluation())
    bad = MethodInput(data.source.images[:3])
    with pytest.raises(InputError, match="method 'short': harmonized slices"):
        run_evaluation(data, {"none": good, "short": bad}, eval_kit.evaluation())
    nan = MethodInput(np.full_like(data.source.images, np.nan))
    with pytest.raises(InputError, match="NaN or Inf"):
        run_evaluation(data, {"none": good, "broken": nan}, eval_kit.evaluation())


def test_evaluation_settings() -> None:
    config = evaluation_config(
        ["autoencoder.iterations=7", "sigmas=0,0.3", "robustness_slices=0", "segmentor.lr=0.01"]
    )
    assert config.autoencoder.iterations == 7 and config.sigmas == (0.0, 0.3)
    assert config.robustness_slices == 0 and config.segmentor.lr == 0.01
    assert config.with_seed(3).segmentor.seed == 3
    weights = evaluation_config(["segmentor.class_weights=[0.5,1,1,1]"]).segmentor.class_weights
    assert weights == (0.5, 1.0, 1.0, 1.0)
    with pytest.raises(ConfigError, match=r"'autoencoder\.depthh' is unknown"):
        evaluation_config(["autoencoder.depthh=2"])
    with pytest.raises(ConfigError, match="must look like field=value"):
        evaluation_config(["sigmas"])
    with pytest.raises(ConfigError, match="not a valid int"):
        evaluation_config(["kid_subsets=many"])
    with pytest.raises(ConfigError, match="names a section"):
        evaluation_config(["segmentor=3"])
    with pytest.raises(ConfigError, match="must be increasing"):
        EvaluationConfig(sigmas=(0.5, 0.1))


def test_evaluate_command(
    eval_study: SimpleNamespace,
    tiny_checkpoints: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tiny = ["--set", "autoencoder.width=4", "--set", "autoencoder.depth=2",
            "--set", "autoencoder.feature_dim=8", "--set", "autoencoder.iterations=4",
            "--set", "autoencoder.decay_iterations=0", "--set", "autoencoder.batch_size=8",
            "--set", "autoencoder.crop_size=none", "--set", "segmentor.ngf=4",
            "--set", "segmentor.depth=2", "--set", "segmentor.iterations=4",
            "--set", "robustness_slices=4", "--set", "kid_subsets=5"]  # fmt: skip
    out = tmp_path / "report"
    code = main(["evaluate", "--cache", str(eval_study.cache), "--out", str(out),
                 "--model", f"segrenorm={tiny_checkpoints['identity']}",
                 "--baselines", "histogram", *tiny])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.html'}" in printed
    assert "MISSED: segrenorm: paired SSIM above none and histogram" in printed
    assert json.loads((out / "results.json").read_text())["methods"] == {
        "none": "baseline",
        "histogram": "baseline",
        "segrenorm": "translator",
    }
    base = ["evaluate", "--cache", str(eval_study.cache), "--out", str(tmp_path / "x")]
    assert main([*base, "--model", "segrenorm"]) == 2
    assert "must look like NAME=PATH" in capsys.readouterr().err
    assert main([*base, "--model", f"histogram={tiny_checkpoints['identity']}"]) == 2
    assert "are baseline names" in capsys.readouterr().err
    assert main([*base, "--baselines", "none,magic"]) == 2
    assert "unknown baseline(s) 'magic'" in capsys.readouterr().err
    assert main([*base, "--set", "autoencoder.nope=1"]) == 2
    assert "'autoencoder.nope' is unknown" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*base, "--harmonized", f"mine={empty}", *tiny]) == 2
    assert "no harmonized volume for held-out subject" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "x", ignore_errors=True)
