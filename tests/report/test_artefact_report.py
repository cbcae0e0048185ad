"""The OCT report: the "Background artefacts" table, the omitted-rows note and the fluid
classes in the downstream tables, from a hand-written 4-class result."""

from __future__ import annotations

import html
from typing import Any

from segrenorm.report.artefacts import artefact_tables, omitted_note
from segrenorm.report.render import csv_rows, render_html, render_markdown
from segrenorm.report.tables import tables

FLUID = ["background", "IRF", "SRF", "PED"]
REASON = "OCT has no bias field for N4 to correct; prepare refuses N4 on OCT"


def _energies(column: float, row: float, *, ratios: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "column_mean": column, "column_std": column / 10, "row_mean": row, "row_std": row / 10,
        "total_mean": column + row, "total_std": (column + row) / 10, "n_slices": 6,
    }  # fmt: skip
    if ratios:  # over the target's: 2e-4, 3e-4 and 5e-4
        for name, value in (("column", column), ("row", row), ("total", column + row)):
            out[f"{name}_ratio"] = value / {"column": 2e-4, "row": 3e-4, "total": 5e-4}[name]
    return out


def _seg_row(dice: list[float]) -> dict[str, Any]:
    return {
        "dice": {"mean": [0.99, *dice], "std": [0.0, 0.01, 0.02, 0.03]},
        "iou": {"mean": [0.98, *[d - 0.1 for d in dice]], "std": [0.0, 0.01, 0.02, 0.03]},
        "generalized_dice": {"mean": sum(dice) / 3, "std": 0.01},
    }


def _results() -> dict[str, Any]:
    return {
        "sites": {"source": "Cirrus", "target": "Spectralis"},
        "n_slices": {"source": 6, "target": 6},
        "n_subjects": {"source": 2, "target": 2},
        "cache": "cache/",
        "modality": "oct",
        "omitted_baselines": {"n4-histogram": REASON, "n4-denoise-histogram": REASON},
        "methods": {"none": "baseline", "histogram": "baseline", "cyclegan": "translator"},
        "class_names": FLUID,
        "segmentation": {
            "class_names": FLUID,
            "rows": {
                "source→source": _seg_row([0.71, 0.62, 0.55]),
                "target→target": _seg_row([0.70, 0.60, 0.54]),
                "target→none": _seg_row([0.63, 0.41, 0.34]),
                "target→cyclegan": _seg_row([0.66, 0.45, 0.48]),
            },
            "gap_recovery": {"none": [None, 0.0, 0.0, 0.0], "cyclegan": [None, 0.375, 0.19, 0.67]},
            "dice_gap": {"mean": [None, 0.08, 0.21, 0.21]},
        },
        "artefacts": {
            "settings": {"margin": 4, "max_period": 16.0, "min_pixels": 8},
            "target": _energies(2e-4, 3e-4),
            "methods": {
                "none": _energies(1e-4, 1e-4, ratios=True),
                "histogram": _energies(1e-4, 1e-4, ratios=True),
                "cyclegan": _energies(4e-4, 9e-4, ratios=True),
            },
        },
    }


def test_the_artefact_table_shows_each_method_against_the_target() -> None:
    [(heading, note, header, rows)] = artefact_tables(_results())
    assert heading == "Background artefacts"
    assert header[1:4] == ["column stripes", "row stripes", "total"]
    assert rows[0] == ["target scanner (own held-out slices)", "2.00 ± 0.20", "3.00 ± 0.30",
                       "5.00 ± 0.50", "1.000", "1.000", "1.000"]  # fmt: skip
    # cyclegan: 4e-4 and 9e-4, x 10^4; ratios 4/2, 9/3 and 13/5.
    assert rows[3] == ["cyclegan", "4.00 ± 0.40", "9.00 ± 0.90", "13.00 ± 1.30",
                       "2.000", "3.000", "2.600"]  # fmt: skip
    assert rows[1][0] == "none (source as is)" and rows[1][-1] == "0.400"
    assert "dilated by 4 pixels" in note and "periods under 16.0 pixels" in note
    assert note.endswith("Above the target's total: cyclegan.")
    assert artefact_tables({"sites": {}}) == []  # MRI results: no table
    flat = _results()
    flat["artefacts"]["target"] = _energies(0.0, 3e-4)  # no column structure in the target
    assert artefact_tables(flat)[0][3][0][4:] == ["–", "1.000", "1.000"]
    nan = float("nan")
    flat["artefacts"]["methods"]["cut"] = {
        **{k: nan for k in _energies(1.0, 1.0, ratios=True)}, "blank_background": True,
    }  # fmt: skip
    [(_, note, _, rows)] = artefact_tables(flat)
    assert rows[-1] == ["cut", "–", "–", "–", "–", "–", "–"]
    assert note.endswith("kept inside the retina only): cut.")


def test_the_html_report_has_the_oct_sections() -> None:
    page = html.unescape(render_html(_results(), {}, "OCT"))
    assert "<h2>Background artefacts</h2>" in page
    assert "<td>cyclegan</td><td>4.00 ± 0.40</td><td>9.00 ± 0.90</td>" in page
    # The fluid classes head the per-class Dice, IoU and recovery tables.
    for title in ("Dice (Table V)", "IoU (Table V)"):
        assert f"<h2>Downstream segmentation: {title}</h2>" in page
    assert page.count("<th>IRF</th><th>SRF</th><th>PED</th>") >= 3
    assert "<td>target→cyclegan</td><td>0.660 ± 0.010</td><td>0.450 ± 0.020</td>" in page
    assert "<td>0.480 ± 0.030</td><td>0.530 ± 0.010</td></tr>" in page  # PED, generalized
    assert (
        "Classical rows left out: n4-histogram, n4-denoise-histogram (OCT has no bias field"
    ) in page


def test_markdown_and_csv_carry_the_numbers() -> None:
    results = _results()
    text = render_markdown(results, {}, "OCT")
    assert "## Background artefacts" in text
    assert "| histogram | 1.00 ± 0.10 | 1.00 ± 0.10 | 2.00 ± 0.20 | 0.500 | 0.333 | 0.400 |" in text
    rows = csv_rows(results)
    assert ("artefacts", "target", "row_mean", "", 3e-4) in rows
    assert ("artefacts", "cyclegan", "total_ratio", "", 13e-4 / 5e-4) in rows
    assert len([r for r in rows if r[0] == "artefacts"]) == 7 + 3 * 10
    headings = [t[0] for t in tables({k: v for k, v in results.items() if k != "artefacts"})]
    assert "Background artefacts" not in headings
    assert omitted_note({}) == ""
