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
    assert "| segrenorm: paired SSIM above none | segrenorm 0.4500, none 0.3000 | PASS |" in lines
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
