"""The quality targets: each verdict from hand-computed numbers, at and around its threshold."""

from __future__ import annotations

from typing import Any

import pytest

from segrenorm.report.checks import check_lines, quality_checks, verdict

KID = "segrenorm: KID to target ≤ 0.25× source-vs-target KID"
GAP = "segrenorm: target segmentor recovers ≥ 80% of the Dice gap, every class"
PAIRED = "segrenorm: paired SSIM above none and histogram"
ROBUST = "segrenorm: robustness curve above cyclegan's (SSIM AUC)"


def _results(**changes: Any) -> dict[str, Any]:
    """Results with every section the checks read; KID ratio 0.008 / 0.04 = 0.2."""
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


def test_every_target_is_stated_with_its_measured_numbers() -> None:
    assert quality_checks(_results()) == [
        {"target": KID, "measured": "8.00e-3 vs 40.00e-3 (ratio 0.200)", "passed": True},
        {"target": GAP, "measured": "csf 0.90, gm 0.85", "passed": True},
        {"target": PAIRED, "measured": "segrenorm 0.4500, none 0.3000, histogram 0.4000",
         "passed": True},
        {"target": ROBUST, "measured": "0.8000 vs 0.7000", "passed": True},
    ]  # fmt: skip


@pytest.mark.parametrize(("ratio", "passed"), [(0.25, True), (0.2501, False), (0.9, False)])
def test_kid_target_is_a_ratio_of_at_most_a_quarter(ratio: float, passed: bool) -> None:
    dist = {
        "source_vs_target": {"kid_mean": 0.04},
        "methods": {"segrenorm": {"kid_mean": 0.04 * ratio, "kid_ratio": ratio}},
    }
    (check,) = quality_checks(
        _results(distribution=dist, segmentation=None, paired=None, robustness={})
    )
    assert check["passed"] is passed
    assert check["measured"] == f"{40 * ratio:.2f}e-3 vs 40.00e-3 (ratio {ratio:.3f})"


@pytest.mark.parametrize(
    ("values", "measured", "passed"),
    [
        ([0.0, 0.8, 0.8], "csf 0.80, gm 0.80", True),  # the threshold itself passes
        ([0.0, 0.9, 0.79], "csf 0.90, gm 0.79", False),  # one class short is a miss
        ([0.0, None, 0.85], "csf –, gm 0.85", True),  # an undefined class is not held against
        ([0.0, float("nan"), 0.5], "csf –, gm 0.50", False),
        ([0.0, None, float("nan")], "csf –, gm –", False),  # nothing defined: no pass
    ],
)
def test_gap_recovery_needs_every_defined_class(
    values: list[float | None], measured: str, passed: bool
) -> None:
    seg = {"class_names": ["bg", "csf", "gm"], "gap_recovery": {"segrenorm": values}}
    (check,) = quality_checks(
        _results(distribution=None, segmentation=seg, paired=None, robustness={})
    )
    assert (check["target"], check["measured"], check["passed"]) == (GAP, measured, passed)


def test_paired_ssim_must_beat_every_classical_method_strictly() -> None:
    tie = {"none": {"ssim": 0.3}, "histogram": {"ssim": 0.45}, "segrenorm": {"ssim": 0.45}}
    checks = quality_checks(_results(paired={"methods": tie}))
    assert checks[2]["passed"] is False
    # A classical method that was not evaluated is neither shown nor required.
    alone = {"none": {"ssim": 0.3}, "segrenorm": {"ssim": 0.31}}
    check = quality_checks(_results(paired={"methods": alone}))[2]
    assert check["target"] == "segrenorm: paired SSIM above none"
    assert (check["measured"], check["passed"]) == ("segrenorm 0.3100, none 0.3000", True)


def test_robustness_must_beat_the_reference_strictly() -> None:
    level = {"segrenorm": {"ssim_auc": 0.7}, "cyclegan": {"ssim_auc": 0.7}}
    check = quality_checks(_results(robustness=level))[3]
    assert (check["target"], check["measured"], check["passed"]) == (
        ROBUST,
        "0.7000 vs 0.7000",
        False,
    )


def test_targets_without_their_inputs_are_left_out() -> None:
    targets = [c["target"] for c in quality_checks(_results(paired=None, robustness={}))]
    assert targets == [KID, GAP]
    no_cyclegan = {"segrenorm": {"ssim_auc": 0.8}}
    assert [c["target"] for c in quality_checks(_results(robustness=no_cyclegan))][-1] == PAIRED
    assert quality_checks(_results(), method="semgan") == []
    assert quality_checks({"methods": {"segrenorm": "translator"}}) == []


def test_verdict_and_terminal_lines() -> None:
    assert verdict({"passed": True}) == "PASS"
    assert verdict({"passed": False}) == "MISSED"
    worse = _results(robustness={"segrenorm": {"ssim_auc": 0.6}, "cyclegan": {"ssim_auc": 0.7}})
    assert check_lines(worse) == [
        f"PASS: {KID}: 8.00e-3 vs 40.00e-3 (ratio 0.200)",
        f"PASS: {GAP}: csf 0.90, gm 0.85",
        f"PASS: {PAIRED}: segrenorm 0.4500, none 0.3000, histogram 0.4000",
        f"MISSED: {ROBUST}: 0.6000 vs 0.7000",
    ]
