"""The background-artefact lens in the report: a "Background artefacts" table and CSV rows.

Reads ``results["artefacts"]`` (:mod:`segrenorm.evaluate.artefacts`, OCT caches only);
results without it (MRI caches) get no table and no row. Also words the note on classical
rows a cache does not run (``results["omitted_baselines"]``).

Example:
    >>> artefact_tables({})
    []
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from segrenorm.report.controls import Table

__all__ = ["artefact_csv_rows", "artefact_tables", "omitted_note"]

#: The energies of each row, in column order.
_ENERGIES = ("column", "row", "total")


def _number(value: Any, digits: int) -> str:
    if value is None or not math.isfinite(float(value)):
        return "–"
    return f"{float(value):.{digits}f}"


def _pm(scores: Mapping[str, Any], energy: str) -> str:
    """``mean ± std`` of one energy, ×10⁴ (the energies are small squared intensities)."""
    mean, std = scores.get(f"{energy}_mean"), scores.get(f"{energy}_std")
    if mean is None or not math.isfinite(float(mean)):
        return "–"
    return f"{_number(1e4 * float(mean), 2)} ± {_number(1e4 * float(std or 0.0), 2)}"


def _label(name: str) -> str:
    return "none (source as is)" if name == "none" else name


def artefact_tables(results: Mapping[str, Any]) -> list[Table]:
    """The "Background artefacts" table, or nothing without ``results["artefacts"]``.

    Args:
        results: the evaluation results.

    Returns:
        ``[(heading, note, header, rows)]`` or ``[]``.
    """
    lens = results.get("artefacts")
    if not lens:
        return []
    target = lens["target"]
    # The target over itself: 1, or undefined where it has no structured energy at all.
    own = [_number(1.0 if float(target[f"{e}_mean"]) > 0 else None, 3) for e in _ENERGIES]
    rows = [["target scanner (own held-out slices)", *[_pm(target, e) for e in _ENERGIES], *own]]
    above, blank = [], []
    for name, scores in lens["methods"].items():
        if scores.get("blank_background"):
            blank.append(name)
        ratios = [_number(scores.get(f"{e}_ratio"), 3) for e in _ENERGIES]
        rows.append([_label(name), *[_pm(scores, e) for e in _ENERGIES], *ratios])
        ratio = scores.get("total_ratio")
        if ratio is not None and math.isfinite(float(ratio)) and float(ratio) > 1.0:
            above.append(name)
    settings = lens.get("settings", {})
    note = (
        "Energy (×10⁴, [-1, 1] scale, mean ± std over held-out slices) of structured stripes "
        "in each B-scan's background: inside the image, outside the retina mask dilated by "
        f"{settings.get('margin', '?')} pixels. Column stripes: the power of the column "
        "profile (mean of each column's background pixels; in a B-scan, bands at one depth) "
        f"at periods under {settings.get('max_period', '?')} pixels, less the floor white "
        "speckle of the measured variance would give; row stripes likewise for the row "
        "profile (stripes along A-scans, the vertical stripes of a B-scan drawn depth-down). "
        "Methods are measured in the source slice's background; ratios are to the target "
        "scanner's own background (at most 1: no more structure than the target has). "
        "Classical rows leave the background as the source has it."
    )
    note += (
        f" Above the target's total: {', '.join(above)}."
        if above
        else " No method is above the target's total."
    )
    if blank:
        note += (
            f" Not measured (background set to -1, the output kept inside the retina only): "
            f"{', '.join(blank)}."
        )
    header = ["method", "column stripes", "row stripes", "total",
              "column / target", "row / target", "total / target"]  # fmt: skip
    return [("Background artefacts", note, header, rows)]


def artefact_csv_rows(results: Mapping[str, Any]) -> list[tuple[str, str, str, str, float]]:
    """Every number of the artefact lens as ``(section, method, metric, class, value)``.

    Args:
        results: the evaluation results.

    Returns:
        Rows of section ``artefacts``; the target's own under method ``target``.
    """
    lens = results.get("artefacts")
    if not lens:
        return []
    rows: list[tuple[str, str, str, str, float]] = []
    for name, scores in [("target", lens["target"]), *lens["methods"].items()]:
        for metric, value in scores.items():
            if metric != "blank_background":
                rows.append(("artefacts", name, metric, "", float(value)))
    return rows


def omitted_note(results: Mapping[str, Any]) -> str:
    """A sentence naming the classical rows the cache does not run and why ('' for none).

    Args:
        results: the evaluation results.
    """
    omitted: Mapping[str, str] = results.get("omitted_baselines") or {}
    reasons: dict[str, list[str]] = {}
    for name, reason in omitted.items():
        reasons.setdefault(reason, []).append(name)
    return "".join(
        f" Classical rows left out: {', '.join(names)} ({reason})."
        for reason, names in reasons.items()
    )
