"""The lesion lens in the report: tables, quality checks, CSV rows and the lesion insets."""

from __future__ import annotations

import base64
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from segrenorm.evaluate.data import EvalData
from segrenorm.evaluate.lesion_lens import LesionLens
from segrenorm.evaluate.suite import EvaluationArtifacts
from segrenorm.report.checks import quality_checks
from segrenorm.report.lesion_panel import lesion_figures, pick_lesions
from segrenorm.report.lesions import lesion_checks, lesion_csv_rows, lesion_tables
from segrenorm.report.render import csv_rows, render_html, render_markdown
from segrenorm.report.tables import tables
from tests.evaluate.test_lesions import write_lesion_cache


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, tiny_kit: SimpleNamespace) -> SimpleNamespace:
    """Results of the lesion lens on hand-made predictions, two segmentor seeds.

    segrenorm: the truth (nothing removed or hallucinated); cyclegan: the truth plus a
    hallucinated column (3 blobs); hist-match: nothing (4 lesions removed); none: the truth
    with one blob in seed 1. segrenorm's slices are the source's; ``inverted``'s lesions are
    darker than their NAWM.
    """
    root = tmp_path_factory.mktemp("lesion-report") / "cache"
    data = EvalData.from_cache(write_lesion_cache(root, tiny_kit.write_cache))
    truth = data.source.labels
    blob = truth.copy()
    blob[:, 0, 8] = 1
    inverted = data.source.images.copy()
    inverted[truth == 1] = -0.4
    slices = {"none": data.source.images, "hist-match": data.source.images,
              "cyclegan": data.source.images, "segrenorm": data.source.images,
              "inverted": inverted}  # fmt: skip
    seeds = [
        {"none": truth, "hist-match": 0 * truth, "cyclegan": blob, "segrenorm": truth,
         "inverted": truth},
        {"none": blob, "hist-match": 0 * truth, "cyclegan": blob, "segrenorm": truth,
         "inverted": truth},
    ]  # fmt: skip
    lens = LesionLens.for_data(data, slices)
    assert lens is not None
    for seed, predictions in enumerate(seeds):
        lens.add_seed(seed, {"target": data.target.labels, **predictions})
    results: dict[str, Any] = {
        "cache": str(root), "direction": "AB", "sites": {"source": "1.5T", "target": "3T"},
        "class_names": ["background", "lesion"], "n_slices": {"source": 9, "target": 9},
        "methods": {"none": "baseline", "hist-match": "baseline", "cyclegan": "translator",
                    "segrenorm": "translator", "inverted": "translator"},
        "lesions": lens.results(),
    }  # fmt: skip
    artifacts = EvaluationArtifacts(harmonized=slices, target_predictions=seeds[0], sample_rows=[0])
    return SimpleNamespace(data=data, results=results, artifacts=artifacts)


def _table(results: dict[str, Any], heading: str) -> dict[str, list[str]]:
    found = [t for t in lesion_tables(results) if t[0] == heading]
    assert found, [t[0] for t in lesion_tables(results)]
    _, _, header, rows = found[0]
    return {"header": header, **{row[0]: row for row in rows}}


def test_the_detection_table_shows_counts_dice_and_volume_with_their_seed_spread(
    study: SimpleNamespace,
) -> None:
    table = _table(study.results, "Lesion-wise fidelity: detection and volume")
    assert table["header"][1:4] == ["TP (detected)", "FN (removed)", "FP (hallucinated)"]
    assert table["header"][5] == "volume |Δ| (mm³)"
    assert table["target→segrenorm"][1:5] == ["4.0 ± 0.0", "0.0 ± 0.0", "0.0 ± 0.0",
                                              "1.000 ± 0.000"]  # fmt: skip
    assert table["target→cyclegan"][3] == "3.0 ± 0.0"
    assert table["target→hist-match"][2] == "4.0 ± 0.0"
    assert table["target→hist-match"][6] == "-1.000 ± 0.000"  # every lesion volume lost
    # none: 0 then 3 hallucinated blobs (sample std of [0, 3] = 2.12).
    assert table["target→source (no harmonization)"][3] == "1.5 ± 2.1"
    assert table["target→target (in-domain)"][1] == "4.0 ± 0.0"


def test_the_contrast_table_compares_each_ratio_with_the_target_scanners(
    study: SimpleNamespace,
) -> None:
    table = _table(study.results, "Lesion-wise fidelity: lesion contrast")
    assert table["target scanner (its held-out scans)"][1] == "1.800 ± 0.000"
    assert table["none (source, before harmonization)"][1:5] == [
        "1.600 ± 0.000", "1.600", "-0.200", "0 of 4"]  # fmt: skip
    assert table["inverted"][4] == "4 of 4"
    assert table["inverted"][3] == "-1.200"  # 0.6 against 1.8


def test_the_checks_pass_and_miss_with_the_measured_numbers(study: SimpleNamespace) -> None:
    checks = {c["target"]: c for c in quality_checks(study.results)}
    removed = checks[
        "segrenorm: fewer removed lesions (FN) than every classical pipeline, cyclegan (0 passes)"
    ]
    assert removed["passed"] and removed["measured"] == (
        "0.0 ± 0.0 vs 0.0 (none, fewest of 3 compared)"
    )
    zero = checks["segrenorm: zero lesion contrast inversions"]
    assert zero["passed"] and zero["measured"] == "0 of 4 lesions inverted"
    # inverted's labels are the truth: no hallucinated lesion, which passes (nothing is fewer
    # than 0), while its inverted contrast misses.
    mine = {c["target"]: c for c in lesion_checks(study.results, "inverted", ["none"])}
    fp = mine["inverted: fewer hallucinated lesions (FP) than every classical pipeline, cyclegan "
               "(0 passes)"]  # fmt: skip
    assert fp["passed"]
    bad = mine["inverted: zero lesion contrast inversions"]
    assert not bad["passed"] and bad["measured"] == "4 of 4 lesions inverted"
    worse = lesion_checks(study.results, "cyclegan", ["none", "hist-match"])
    miss = next(c for c in worse if "hallucinated" in c["target"])
    assert not miss["passed"]
    assert miss["measured"] == "3.0 ± 0.0 vs 0.0 (hist-match, fewest of 2 compared)"


def test_csv_rows_carry_every_lesion_figure(study: SimpleNamespace) -> None:
    rows = csv_rows(study.results)
    assert ("lesions", "segrenorm", "tp_mean", "lesion", 4.0) in rows
    assert ("lesions", "none", "fp@seed=1", "lesion", 3.0) in rows
    assert ("lesions", "target→target", "fn_mean", "lesion", 0.0) in rows
    assert ("lesion-contrast", "inverted", "inversions", "lesion", 4.0) in rows
    assert len(lesion_csv_rows(study.results)) == sum(r[0].startswith("lesion") for r in rows)


def test_results_without_a_lesion_lens_get_no_table_check_or_row(study: SimpleNamespace) -> None:
    plain = {k: v for k, v in study.results.items() if k != "lesions"}
    assert lesion_tables(plain) == [] and lesion_csv_rows(plain) == []
    assert lesion_checks(plain, "segrenorm", ["none"]) == []
    assert not any(t[0].startswith("Lesion") for t in tables(plain))


def test_the_picked_lesions_are_each_subjects_largest_first(study: SimpleNamespace) -> None:
    data = study.data
    spots = pick_lesions(data.source, 1, 3)
    assert [(s.subject, s.voxels) for s in spots] == [("t0", 8), ("t1", 4), ("t1", 4)]
    assert int(data.source.index[spots[0].row]) == 1  # its first largest cross-section
    assert spots[0].window == (0, 16, 0, 16)  # the tiny slice is narrower than two MIN_HALF


def test_the_lesion_panel_is_drawn_and_embedded_in_the_report(
    study: SimpleNamespace, tmp_path: Path, tiny_kit: SimpleNamespace
) -> None:
    figures = lesion_figures(tmp_path, study.artifacts, study.data)
    png = figures["lesions"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from matplotlib.image import imread

    height, width = imread(png).shape[:2]
    assert width > 600 and height > 300  # 3 lesion rows, 6 columns
    page = render_html(study.results, figures, "t")
    assert base64.b64encode(png.read_bytes()).decode("ascii") in page
    assert "Lesion insets" in page and "Lesion-wise fidelity: lesion contrast" in page
    assert "## Lesion-wise fidelity: detection and volume" in render_markdown(
        study.results, figures, "t"
    )
    t1 = EvalData.from_cache(tiny_kit.cache(tmp_path / "t1"), split="train")
    plain = EvaluationArtifacts({"none": t1.source.images}, {}, [0])
    assert lesion_figures(tmp_path, plain, t1) == {}
