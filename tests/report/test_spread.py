"""Segmentor-seed spread in the report: ± cells, ties, the control's losses, CSV rows."""

from __future__ import annotations

import math
from typing import Any

from segrenorm.report.controls import control_tables, lost
from segrenorm.report.render import csv_rows
from segrenorm.report.spread import compare_recoveries, format_spread, recovery_difference
from segrenorm.report.tables import tables

NAN = float("nan")


def _seg(**changes: Any) -> dict[str, Any]:
    """Two methods and a control over 3 seeds; gm of a and b differ by 0.05 < spread 0.1."""
    seg: dict[str, Any] = {
        "class_names": ["bg", "csf", "gm"],
        "segmentor_seeds": [0, 1, 2],
        "rows": {},
        "gap_recovery": {"none": [NAN, 0.0, 0.0], "a": [NAN, 0.9, 0.60],
                         "a (wrong seg)": [NAN, 0.5, 0.58], "b": [NAN, 0.6, 0.55]},
        "gap_recovery_seed_std": {"none": [NAN, 0.0, 0.0], "a": [NAN, 0.02, 0.1],
                                  "a (wrong seg)": [NAN, 0.03, 0.04], "b": [NAN, 0.05, 0.02]},
        "gap_recovery_per_seed": {"a": [[NAN, 0.88, 0.5], [NAN, 0.9, 0.6], [NAN, 0.92, 0.7]]},
        "dice_gap": {"mean": [None, 0.2, 0.01], "seed_std": [None, 0.01, 0.02],
                     "per_seed": [[None, 0.2, 0.0]] * 3},
    }  # fmt: skip
    seg.update(changes)
    return seg


def test_a_difference_inside_the_larger_spread_is_a_tie() -> None:
    seg = _seg()
    assert compare_recoveries(seg, "a", "b", 2) == "tie (+0.05, spread 0.10)"
    assert compare_recoveries(seg, "a", "b", 1) == "+0.30, beyond seed spread 0.05"
    assert recovery_difference(seg, "a", "b", 0) is None  # background: no recovery
    assert compare_recoveries(seg, "a", "b", 0) == "–"
    one = _seg(segmentor_seeds=[0], gap_recovery_seed_std={"a": [NAN] * 3, "b": [NAN] * 3})
    assert compare_recoveries(one, "a", "b", 2) == "+0.05 (no seed spread)"
    assert format_spread(0.5, None) == "0.50" and format_spread(None, 0.1) == "–"
    assert format_spread(0.51234, 0.01, 3) == "0.512 ± 0.010"


def test_the_recovery_table_shows_mean_and_seed_spread() -> None:
    results = {"methods": {"none": "baseline", "a": "translator", "a (wrong seg)": "control",
                           "b": "translator"}, "segmentation": _seg()}  # fmt: skip
    found = {heading: (note, header, rows) for heading, note, header, rows in tables(results)}
    note, header, rows = found["Dice gap recovery"]
    assert header == ["method", "csf", "gm"]
    assert rows[0] == ["Dice gap (source→source − target→source)", "0.200 ± 0.010",
                       "0.010 ± 0.020"]  # fmt: skip
    assert ["a", "0.90 ± 0.02", "0.60 ± 0.10"] in rows
    assert "mean ± std over 3 seeds" in note
    note, header, rows = found["Dice gap recovery: a against the others"]
    assert rows == [
        ["a (wrong seg)", "+0.40, beyond seed spread 0.03", "tie (+0.02, spread 0.10)"],
        ["b", "+0.30, beyond seed spread 0.05", "tie (+0.05, spread 0.10)"],
    ]
    assert "is a tie" in note


def test_the_control_table_says_what_each_lens_lost() -> None:
    paired = {"a": {"ssim": 0.5, "psnr": 20.0, "mae": 0.1},
              "a (wrong seg)": {"ssim": 0.4, "psnr": 20.0, "mae": 0.125}}  # fmt: skip
    dist = {"a": {"kid_mean": 0.002, "fid": 3.0}, "a (wrong seg)": {"kid_mean": 0.003, "fid": 2.5}}
    results = {
        "methods": {"none": "baseline", "a": "translator", "a (wrong seg)": "control"},
        "paired": {"methods": paired},
        "distribution": {"methods": dist},
        "segmentation": _seg(),
    }
    ((heading, note, header, rows),) = control_tables(results)
    assert heading == "Wrong-segmentation control: a"
    assert header == ["lens", "a", "a (wrong seg)", "lost without the right segmentation"]
    assert rows == [
        ["paired SSIM", "0.5000", "0.4000", "lost 0.1000 (20.0%)"],
        ["paired PSNR", "20.00", "20.00", "unchanged"],
        ["paired MAE", "0.1000", "0.1250", "lost 0.0250 (25.0%)"],  # lower is better
        ["KID ×10³", "2.00", "3.00", "lost 1.00 (50.0%)"],
        ["FID", "3.00", "2.50", "gained 0.50 (16.7%)"],
        ["Dice gap recovery, csf", "0.90 ± 0.02", "0.50 ± 0.03",
         "lost 0.40 (44.4%), beyond the segmentor-seed spread 0.03"],
        ["Dice gap recovery, gm", "0.60 ± 0.10", "0.58 ± 0.04",
         "lost 0.02 (3.3%): a tie, within the segmentor-seed spread 0.10"],
    ]  # fmt: skip
    assert "G(x | f(x′))" in note
    # A control whose method is not in the results, or a plain row, gets no table.
    assert control_tables({"methods": {"b (wrong seg)": "control", "a": "translator"}}) == []
    assert lost(0.0, -0.5, higher=True) == "lost 0.5000"  # no share of a zero score


def test_csv_rows_carry_the_seed_spread() -> None:
    row = {"dice": {"mean": [0.9, 0.8], "std": [0.01, 0.02], "seed_std": [None, 0.03]},
           "iou": {"mean": [0.8, 0.7], "std": [0.0, 0.0], "seed_std": [None, 0.01]},
           "generalized_dice": {"mean": 0.8, "std": 0.0, "seed_std": 0.04}}  # fmt: skip
    seg = _seg(class_names=["bg", "csf"], rows={"target→a": row},
               gap_recovery={"a": [NAN, 0.9]}, gap_recovery_seed_std={"a": [NAN, 0.02]},
               gap_recovery_per_seed={"a": [[NAN, 0.88], [NAN, 0.9], [NAN, 0.92]]},
               dice_gap={"mean": [None, 0.2], "seed_std": [None, 0.01]})  # fmt: skip
    rows = csv_rows({"segmentation": seg})
    assert ("segmentation", "target→a", "dice_seed_std", "csf", 0.03) in rows
    assert ("segmentation", "target→a", "generalized_dice_seed_std", "", 0.04) in rows
    assert ("segmentation", "a", "gap_recovery_seed_std", "csf", 0.02) in rows
    assert ("segmentation", "a", "gap_recovery@seed=2", "csf", 0.92) in rows
    assert ("segmentation", "source→source − target→source", "dice_gap_mean", "csf", 0.2) in rows
    bg = [r for r in rows if r[2] == "dice_seed_std" and r[3] == "bg"]
    assert len(bg) == 1 and math.isnan(bg[0][4])
