"""The report's Markdown, HTML and CSV rows from a small hand-written result."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from segrenorm.report.render import csv_rows, render_html, render_markdown


def _results() -> dict[str, Any]:
    return {
        "sites": {"source": "ScannerA", "target": "ScannerB"},
        "n_slices": {"source": 12, "target": 10},
        "n_subjects": {"source": 3, "target": 2},
        "cache": "cache/",
        "methods": {"none": "baseline", "segrenorm": "translator"},
        "paired": {
            "n_subjects": 2,
            "n_slices": 8,
            "methods": {
                "none": {"ssim": 0.3, "ssim_std": 0.01, "psnr": 20.0, "psnr_std": 1.0,
                         "mae": 0.2, "mae_std": 0.02},
                "segrenorm": {"ssim": 0.45, "ssim_std": 0.02, "psnr": 24.5, "psnr_std": 0.5,
                              "mae": 0.1, "mae_std": 0.01},
            },
        },
        "robustness": {
            "segrenorm": {"sigma": [0.0, 0.1], "ssim": [0.9, 0.7], "mse": [0.01, 0.03],
                          "ssim_auc": 0.8, "mse_auc": 0.02},
        },
    }  # fmt: skip


def test_markdown_has_the_checks_and_the_tables() -> None:
    text = render_markdown(_results(), {"kid": Path("out/kid.png")}, "A title")
    lines = text.splitlines()
    assert lines[0] == "# A title"
    assert lines[2].startswith("Harmonizing ScannerA (source) to ScannerB (target). Held-out")
    assert "12 source (3 subjects), 10 target (2 subjects). Cache: cache/." in lines[2]
    assert (
        "| segrenorm: paired SSIM above the strongest classical pipeline | 0.4500 vs 0.3000 "
        "(none, highest of 1 classical) | PASS |"
    ) in lines
    assert (
        "| segrenorm: paired PSNR above the strongest classical pipeline | 24.50 vs 20.00 "
        "(none, highest of 1 classical) | PASS |"
    ) in lines
    # The paired table names its strongest classical row; no N4 note without N4 rows.
    assert any(line.endswith("Strongest classical row: SSIM none, PSNR none.") for line in lines)
    assert "N4-corrected" not in text
    assert "| method | SSIM | PSNR (dB) | MAE |" in lines
    assert "| segrenorm | 0.4500 ± 0.0200 | 24.50 ± 0.50 | 0.1000 ± 0.0100 |" in lines
    assert "| segrenorm | 0.900 | 0.700 | 0.800 | 0.0200 |" in lines
    assert "![kid](kid.png)" in lines  # linked by file name, beside report.md


def test_html_escapes_and_embeds(tmp_path: Path) -> None:
    png = tmp_path / "kid.png"
    png.write_bytes(b"\x89PNG fake")
    page = render_html(_results(), {"kid": png}, "<A & B>")
    assert page.startswith("<!DOCTYPE html>") and page.endswith("</body></html>\n")
    assert "<title>&lt;A &amp; B&gt;</title>" in page
    assert "<td class='pass'>PASS</td>" in page
    assert "src='data:image/png;base64,iVBORyBmYWtl'" in page


def test_csv_rows_hold_every_number() -> None:
    rows = csv_rows(_results())
    assert ("robustness", "segrenorm", "ssim@sigma=0.1", "", 0.7) in rows
    assert ("robustness", "segrenorm", "mse_auc", "", 0.02) in rows
    assert ("paired", "none", "psnr_std", "", 1.0) in rows
    assert len(rows) == 2 * 6 + 2 * 2 + 2  # paired, curve points, AUCs
    seg = {"class_names": ["bg", "csf"], "rows": {}, "gap_recovery": {"segrenorm": [None, 0.5]}}
    gap = csv_rows({"segmentation": seg})
    assert gap[0][:4] == ("segmentation", "segrenorm", "gap_recovery", "bg")
    assert math.isnan(gap[0][4]) and gap[1] == (
        "segmentation",
        "segrenorm",
        "gap_recovery",
        "csf",
        0.5,
    )


def test_the_intro_says_which_classical_rows_saw_n4_corrected_inputs() -> None:
    results = {**_results(), "n4_corrected_baselines": ["n4-histogram", "n4-denoise-histogram"]}
    intro = render_markdown(results, {}, "t").splitlines()[2]
    assert intro.endswith(
        "Classical rows on N4-corrected source volumes: n4-histogram, n4-denoise-histogram."
    )
    page = render_html(results, {}, "t")
    assert "Classical rows on N4-corrected source volumes: n4-histogram" in page


def test_the_intro_says_which_sites_labels_are_pseudo_labels() -> None:
    assert "pseudo-labels" not in render_markdown(_results(), {}, "t")
    results = {**_results(), "pseudo_labels": {"source": "gmm"}}
    intro = render_markdown(results, {}, "t").splitlines()[2]
    assert intro.endswith(
        "The source site's labels are gmm pseudo-labels (prepare --auto-labels): Dice on them "
        "measures agreement with that labeller, not with true labels."
    )


def test_the_distribution_table_names_the_lowest_classical_kid() -> None:
    from segrenorm.report.tables import tables

    results = {**_results(), "methods": {"none": "baseline", "histogram": "baseline",
                                         "segrenorm": "translator"}}  # fmt: skip
    scores = {"kid_std": 0.001, "fid": 1.0, "fid_ratio": 1.0, "kid_ratio": 1.0}
    results["distribution"] = {
        "kid_subsets": 10, "kid_subset_size": 4, "feature_dim": 8,
        "methods": {"none": {**scores, "kid_mean": 0.04}, "histogram": {**scores, "kid_mean": 0.01},
                    "segrenorm": {**scores, "kid_mean": 0.001}},
    }  # fmt: skip
    (note,) = [n for heading, n, _, _ in tables(results) if heading.startswith("Distribution")]
    assert note.endswith("Strongest classical row (lowest KID): histogram.")


def test_the_clean_truth_has_its_own_table_and_csv_rows() -> None:
    from segrenorm.report.tables import tables

    results = _results()
    stats = {"ssim_std": 0.0, "psnr_std": 0.0, "mae_std": 0.0}
    results["paired"]["methods"]["none"]["clean"] = {
        **stats,
        "ssim": 0.5,
        "psnr": 22.0,
        "mae": 0.15,
    }
    results["paired"]["methods"]["segrenorm"]["clean"] = {
        **stats,
        "ssim": 0.6,
        "psnr": 25.0,
        "mae": 0.08,
    }
    results["paired"]["clean"] = {
        "n_subjects": 2,
        "n_slices": 8,
        "target": {**stats, "ssim": 0.7, "psnr": 26.0, "mae": 0.05},
    }
    (clean,) = [t for t in tables(results) if t[0] == "Paired ground truth: clean target render"]
    _, note, header, rows = clean
    assert header == ["method", "SSIM", "PSNR (dB)", "MAE"]
    assert [r[0] for r in rows] == ["none", "segrenorm", "target scan itself"]
    assert rows[1] == ["segrenorm", "0.6000 ± 0.0000", "25.00 ± 0.00", "0.0800 ± 0.0000"]
    assert "(2 subjects, 8 slice pairs)" in note
    assert note.endswith("Strongest classical row: SSIM none, PSNR none.")
    csv = csv_rows(results)
    assert ("paired-clean", "segrenorm", "psnr", "", 25.0) in csv
    assert ("paired", "segrenorm", "psnr", "", 24.5) in csv
    # Without clean scores there is no such table.
    assert all(not t[0].endswith("clean target render") for t in tables(_results()))
