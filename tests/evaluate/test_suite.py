"""The evaluation suite end to end on the tiny study: numbers, report files and the CLI."""

from __future__ import annotations

import csv
import functools
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from segrenorm.cli import main
from segrenorm.errors import ConfigError, InputError
from segrenorm.evaluate.conditioning import partner_rows
from segrenorm.evaluate.controls import wrong_segmentation_slices
from segrenorm.evaluate.data import EvalData, slices_from_volumes
from segrenorm.evaluate.distances import fid, kid
from segrenorm.evaluate.features import extract_features, train_autoencoder
from segrenorm.evaluate.methods import BASELINES
from segrenorm.evaluate.suite import MethodInput, run_evaluation
from segrenorm.harmonize.files import harmonize_files
from segrenorm.harmonize.harmonizer import Harmonizer
from segrenorm.models.checkpoint import load_translator
from segrenorm.models.conditioning import translate_with_partner
from segrenorm.workflows.evaluate import evaluate_cache


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


def _same(a: Any, b: Any) -> bool:
    """Equal JSON, NaN included (``nan != nan`` would fail a plain comparison)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _mean_dice(row: dict[str, Any]) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in row["dice"]["mean"]], np.float64)


@pytest.fixture(scope="module")
def controls(evaluated: SimpleNamespace, eval_kit: SimpleNamespace) -> SimpleNamespace:
    """The suite on two controls whose scores are known before it runs.

    ``identity`` is a copy of the source, so it must score exactly as ``none``; ``oracle``
    puts each held-out subject's true target slice (same subject, same slice index) in
    place of its source slice, so it must score as the target itself.
    """
    data = evaluated.data
    keys = {site: list(zip(part.subjects, part.index.tolist(), strict=True))
            for site, part in (("source", data.source), ("target", data.target))}  # fmt: skip
    pairs = np.asarray([keys["target"].index(key) for key in keys["source"]])
    oracle = data.target.images[pairs]
    methods = {
        "none": MethodInput(data.source.images),
        "identity": MethodInput(data.source.images.copy()),
        "oracle": MethodInput(oracle),
    }
    results, _ = run_evaluation(data, methods, eval_kit.evaluation())
    return SimpleNamespace(results=results, data=data, oracle=oracle, pairs=pairs)


def test_a_copy_of_the_source_scores_exactly_like_none(controls: SimpleNamespace) -> None:
    r = controls.results
    assert _same(r["paired"]["methods"]["identity"], r["paired"]["methods"]["none"])
    assert _same(r["distribution"]["methods"]["identity"], r["distribution"]["methods"]["none"])
    rows = r["segmentation"]["rows"]
    assert _same(rows["target→identity"], rows["target→none"])
    assert _same(
        r["segmentation"]["gap_recovery"]["identity"], r["segmentation"]["gap_recovery"]["none"]
    )
    for tissue in r["histograms"]["classes"].values():
        assert tissue["identity"] == tissue["none"]


def test_the_oracle_scores_as_the_target_itself(controls: SimpleNamespace) -> None:
    r, data = controls.results, controls.data
    paired = r["paired"]["methods"]["oracle"]
    assert paired["ssim"] == pytest.approx(1.0, abs=1e-12)
    assert paired["mae"] == 0.0 and paired["psnr"] == float("inf")
    # The study's held-out subjects have one anatomy on both scanners, so target→oracle (the
    # target segmentor on the target's own slices, scored against the source labels) is
    # target→target.
    assert np.array_equal(data.source.labels, data.target.labels[controls.pairs])
    rows = r["segmentation"]["rows"]
    for key in ("dice", "iou", "generalized_dice", "per_subject"):
        assert _same(rows["target→oracle"][key], rows["target→target"][key]), key
    # Features of the target slices themselves: the Gaussians coincide.
    assert r["distribution"]["methods"]["oracle"]["fid"] == pytest.approx(0.0, abs=1e-9)


def test_distances_are_kid_and_fid_of_the_autoencoder_features(
    controls: SimpleNamespace, eval_kit: SimpleNamespace
) -> None:
    # The autoencoder's training is deterministic for a seed: train it again here.
    config, data, dist = eval_kit.evaluation(), controls.data, controls.results["distribution"]
    model = train_autoencoder(
        data.train_slices("source")[0], data.train_slices("target")[0], config.autoencoder
    )
    target = extract_features(model, data.target.images, batch_size=config.batch_size)
    size = min(config.kid_subset_size, len(data.target) // 2, len(data.source) // 2)
    assert dist["kid_subset_size"] == size
    for name, slices in (("none", data.source.images), ("oracle", controls.oracle)):
        feats = extract_features(model, slices, batch_size=config.batch_size)
        want = kid(feats, target, n_subsets=config.kid_subsets, subset_size=size, seed=config.seed)
        got = dist["methods"][name]
        assert got["kid_mean"] == pytest.approx(want["mean"], rel=1e-9, abs=1e-12), name
        assert got["kid_std"] == pytest.approx(want["std"], rel=1e-9, abs=1e-12), name
        assert got["fid"] == pytest.approx(fid(feats, target), rel=1e-9, abs=1e-12), name
        assert got["kid_ratio"] == pytest.approx(
            got["kid_mean"] / dist["source_vs_target"]["kid_mean"]
        )
        assert got["fid_ratio"] == pytest.approx(got["fid"] / dist["source_vs_target"]["fid"])


def test_gap_recovery_follows_its_definition(
    evaluated: SimpleNamespace, controls: SimpleNamespace
) -> None:
    # Per segmentor seed, from that seed's rows; the reported figure is the mean over seeds.
    for r in (evaluated.results, controls.results):
        seg = r["segmentation"]
        rows, seeds = seg["rows"], seg["segmentor_seeds"]
        assert seeds == [0, 1, 2]  # the default: three segmentor pairs
        for k in range(len(seeds)):
            upper = _seed_dice(rows["source→source"], k)
            lower = _seed_dice(rows["target→none"], k)
            np.testing.assert_allclose(seg["dice_gap"]["per_seed"][k], upper - lower)
            for name in r["methods"]:
                with np.errstate(divide="ignore", invalid="ignore"):
                    want = (_seed_dice(rows[f"target→{name}"], k) - lower) / (upper - lower)
                want[~(upper - lower > 0)] = np.nan
                got = seg["gap_recovery_per_seed"][name][k]
                np.testing.assert_allclose(got, want, rtol=1e-12, err_msg=name)
        for name in r["methods"]:
            table = np.asarray(seg["gap_recovery_per_seed"][name], np.float64)  # (seeds, C)
            for c in range(table.shape[1]):
                kept = table[:, c][~np.isnan(table[:, c])]
                mean = kept.mean() if kept.size else np.nan
                std = kept.std(ddof=1) if kept.size > 1 else np.nan
                np.testing.assert_allclose(seg["gap_recovery"][name][c], mean, rtol=1e-12)
                np.testing.assert_allclose(seg["gap_recovery_seed_std"][name][c], std, rtol=1e-12)


def _seed_dice(row: dict[str, Any], k: int) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in row["dice"]["per_seed"][k]], np.float64)


def test_paired_scores_match_a_hand_computation(
    evaluated: SimpleNamespace, eval_kit: SimpleNamespace
) -> None:
    data, paired = evaluated.data, evaluated.results["paired"]
    folder = slices_from_volumes(data, evaluated.out / "harmonized")
    for name, slices in (("none", data.source.images), ("segrenorm", folder)):
        want = eval_kit.paired(data, slices)
        assert paired["n_slices"] == want["n_slices"] and paired["n_subjects"] == want["n_subjects"]
        for key in ("ssim", "psnr", "mae"):
            assert paired["methods"][name][key] == pytest.approx(want[key], rel=1e-6), (name, key)


def test_histograms_are_the_tissue_densities(evaluated: SimpleNamespace) -> None:
    data, hist = evaluated.data, evaluated.results["histograms"]
    edges = np.asarray(hist["edges"])
    assert edges[0] == -1.0 and edges[-1] == 1.0
    gm = 2  # background, csf, gm, wm
    source = data.source.images[(data.source.labels == gm) & data.source.masks]
    target = data.target.images[(data.target.labels == gm) & data.target.masks]
    np.testing.assert_allclose(
        hist["classes"]["gm"]["none"], np.histogram(source, edges, density=True)[0]
    )
    np.testing.assert_allclose(
        hist["classes"]["gm"]["target"], np.histogram(target, edges, density=True)[0]
    )


def test_robustness_at_sigma_zero_is_the_cycle_error(
    evaluated: SimpleNamespace, tiny_checkpoints: dict[str, Path]
) -> None:
    from skimage.metrics import structural_similarity

    data, curves = evaluated.data, evaluated.results["robustness"]
    # robustness_slices=6 slices spread evenly over the held-out source slices.
    rows = np.unique(np.linspace(0, len(data.source) - 1, 6).round().astype(np.int64))
    x, inside = data.source.images[rows], data.source.masks[rows]
    for name, checkpoint in (("segrenorm", "random"), ("cyclegan", "identity")):
        translator, _ = load_translator(tiny_checkpoints[checkpoint])
        with torch.inference_mode():
            cycle = translator.translate(
                translator.translate(torch.from_numpy(x[:, None]), "AB"), "BA"
            )
        back = cycle[:, 0].double().numpy()
        maps = [
            structural_similarity(a, b, data_range=2.0, gaussian_weights=True, sigma=1.5,
                                  use_sample_covariance=False, full=True)[1]
            for a, b in zip(x.astype(np.float64), back, strict=True)
        ]  # fmt: skip
        curve = curves[name]
        assert curve["sigma"][0] == 0.0
        assert curve["mse"][0] == pytest.approx(((back - x)[inside] ** 2).mean(), rel=1e-5), name
        assert curve["ssim"][0] == pytest.approx(np.stack(maps)[inside].mean(), rel=1e-5), name
        sigma, ssim = np.asarray(curve["sigma"]), np.asarray(curve["ssim"])
        area = np.sum((ssim[1:] + ssim[:-1]) / 2 * np.diff(sigma)) / (sigma[-1] - sigma[0])
        assert curve["ssim_auc"] == pytest.approx(area), name  # the curve's mean height
    assert curves["cyclegan"]["ssim"][0] > 0.99  # the identity-start checkpoint: F(G(x)) = x


def test_every_lens_reports_every_method(evaluated: SimpleNamespace) -> None:
    r = evaluated.results
    # Every classical pipeline by default; both tiny runs are segrenorm models, so each gets
    # its wrong-segmentation control, right after it.
    names = [*BASELINES, "segrenorm", "segrenorm (wrong seg)", "cyclegan", "cyclegan (wrong seg)"]
    assert list(r["methods"]) == names
    assert r["methods"]["segrenorm (wrong seg)"] == "control"
    # The cache was prepared with N4 (the default): every classical row saw corrected inputs.
    assert r["n4_corrected_baselines"] == list(BASELINES)
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
    # Conditioning: translator methods only; both tiny checkpoints are segrenorm models.
    assert set(r["conditioning"]) == {"segrenorm", "cyclegan"}
    assert r["conditioning"]["segrenorm"]["direction"] == "AB"
    assert r["conditioning"]["segrenorm"]["slices"] == len(evaluated.data.source)
    paired = r["paired"]
    assert paired["n_subjects"] == 2 and set(paired["methods"]) == set(names)
    assert set(paired["methods"]["none"]["subjects"]) == {"t0", "t1"}
    hist = r["histograms"]
    assert set(hist["classes"]) == {"csf", "gm", "wm"}
    assert set(hist["classes"]["gm"]) == {"target", *names}


def test_each_conditioned_run_gets_a_wrong_segmentation_control(
    evaluated: SimpleNamespace, eval_kit: SimpleNamespace, tiny_checkpoints: dict[str, Path]
) -> None:
    data, r, name = evaluated.data, evaluated.results, "segrenorm (wrong seg)"
    # The control's slices by hand: each held-out slice with its partner's segmentation.
    translator, _ = load_translator(tiny_checkpoints["random"])
    pair = functools.partial(translate_with_partner, translator, direction="AB")
    partner = partner_rows(len(data.source), eval_kit.evaluation().seed)
    slices = wrong_segmentation_slices(
        pair, data.source.images, data.source.masks, partner, batch_size=8
    )
    want = eval_kit.paired(data, slices)
    for key in ("ssim", "psnr", "mae"):
        assert r["paired"]["methods"][name][key] == pytest.approx(want[key], rel=1e-6), key
    # Every lens but robustness (and the conditioning figure, which is the method's).
    assert name in r["distribution"]["methods"] and name in r["segmentation"]["gap_recovery"]
    assert f"target→{name}" in r["segmentation"]["rows"]
    assert name not in r["robustness"] and name not in r["conditioning"]
    markdown = evaluated.paths.markdown.read_text()
    table = markdown.split("## Wrong-segmentation control: segrenorm")[1].split("## ")[0]
    assert (
        "| lens | segrenorm | segrenorm (wrong seg) | lost without the right segmentation |"
        in table
    )
    ssim = r["paired"]["methods"]["segrenorm"]["ssim"], r["paired"]["methods"][name]["ssim"]
    assert f"| paired SSIM | {ssim[0]:.4f} | {ssim[1]:.4f} | " in table
    assert "| Dice gap recovery, csf |" in table


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
                    "Dice gap recovery", "Robustness to noise", "Conditioning sensitivity",
                    "Quality targets", "Wrong-segmentation control: segrenorm",
                    "Dice gap recovery: segrenorm against the others"):  # fmt: skip
        assert heading in markdown and heading in page
    assert "![panel](panel.png)" in markdown
    dice_part, iou_part = markdown.split("## Downstream segmentation: IoU")
    assert "generalized Dice |" in dice_part.split("## Downstream segmentation: Dice")[1]
    assert "generalized Dice" not in iou_part.split("## Dice gap recovery")[0]
    record = json.loads(paths.json.read_text())
    assert record["runs"]["segrenorm"].endswith("random.pt")
    assert record["evaluation_config"]["robustness_slices"] == 6
    # KID ratio, KID / SSIM / PSNR against the strongest classical row, gap, robustness.
    assert [c["target"].split(":")[0] for c in record["quality_checks"]] == ["segrenorm"] * 7
    with paths.csv.open() as handle:
        rows = list(csv.DictReader(handle))
    sections = {row["section"] for row in rows}
    assert sections == {"distribution", "segmentation", "robustness", "paired"}
    dice = [r for r in rows if r["method"] == "source→source" and r["metric"] == "dice_mean"]
    assert [r["class"] for r in dice] == ["background", "csf", "gm", "wm"]


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


def test_evaluate_command(
    eval_study: SimpleNamespace,
    tiny_kit: SimpleNamespace,
    tiny_checkpoints: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The tiny budgets, with 4 iterations each and whole slices.
    more = ["autoencoder.iterations=4", "autoencoder.crop_size=none", "segmentor.iterations=4"]
    tiny = tiny_kit.flags("--set", [*tiny_kit.eval_set, *more])
    out = tmp_path / "report"
    code = main(["evaluate", "--cache", str(eval_study.cache), "--out", str(out),
                 "--model", f"segrenorm={tiny_checkpoints['identity']}",
                 "--baselines", "histogram", *tiny])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.html'}" in printed
    assert "segrenorm: paired SSIM above the strongest classical pipeline: " in printed
    assert "highest of 2 classical)" in printed  # none and histogram
    assert json.loads((out / "results.json").read_text())["methods"] == {
        "none": "baseline",
        "histogram": "baseline",
        "segrenorm": "translator",
        "segrenorm (wrong seg)": "control",
    }
    base = ["evaluate", "--cache", str(eval_study.cache), "--out", str(tmp_path / "x")]
    assert main([*base, "--model", "segrenorm"]) == 2
    assert "must look like NAME=PATH" in capsys.readouterr().err
    assert main([*base, "--model", f"histogram={tiny_checkpoints['identity']}"]) == 2
    assert "are baseline names" in capsys.readouterr().err
    assert main([*base, "--baselines", "none,magic"]) == 2
    assert "unknown baseline(s) 'magic'" in capsys.readouterr().err
    assert main([*base, "--set", "autoencoder.nope=1"]) == 2
    assert "unknown key(s) autoencoder.nope" in capsys.readouterr().err
    assert main([*base, "--set", "segmentor_seeds=0"]) == 2
    assert "evaluation segmentor_seeds=0 must be an integer >= 1" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*base, "--harmonized", f"mine={empty}", *tiny]) == 2
    assert "no harmonized volume for held-out subject" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "x", ignore_errors=True)
