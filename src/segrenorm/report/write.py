"""The evaluation report: tables and figures as HTML and Markdown, numbers as JSON and CSV.

:func:`write_report` turns the output of :func:`segrenorm.evaluate.suite.run_evaluation`
into a folder a user can open, archive or parse::

    REPORT/
      report.html      self-contained (figures embedded), opens in any browser
      report.md        the same tables, figures linked
      results.json     every number, per subject where there is one
      results.csv      one row per (section, method, metric, class) value
      panel.png  sensitivity.png  histograms.png  kid.png  (lesions.png: a lesion class)

Every file is written atomically. The quality targets (:func:`quality_checks`) are part of
the report, each with the measured numbers, whether they pass or not.

Example:
    >>> paths = write_report("report/", results, artifacts, data)  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segrenorm.atomic import write_json_atomic, write_text_atomic
from segrenorm.report.checks import quality_checks
from segrenorm.report.render import csv_rows, render_html, render_markdown

if TYPE_CHECKING:
    from segrenorm.evaluate.data import EvalData
    from segrenorm.evaluate.suite import EvaluationArtifacts

__all__ = ["ReportPaths", "write_report"]


@dataclass(frozen=True)
class ReportPaths:
    """Where a report's files are.

    Args:
        folder: the report folder.
        html: the self-contained HTML report.
        markdown: the Markdown report.
        json: every number.
        csv: the numbers as long-format rows.
        figures: figure name -> PNG path.
    """

    folder: Path
    html: Path
    markdown: Path
    json: Path
    csv: Path
    figures: dict[str, Path]


def _figures(
    folder: Path, results: Mapping[str, Any], artifacts: EvaluationArtifacts, data: EvalData
) -> dict[str, Path]:
    from segrenorm.report import figures as rf
    from segrenorm.report.lesion_panel import lesion_figures

    figures: dict[str, Path] = {}
    if artifacts.sample_rows:
        row = artifacts.sample_rows[0]
        src_pos, tgt_pos = data.paired_rows()
        paired = {int(s): int(t) for s, t in zip(src_pos, tgt_pos, strict=True)}
        target_row = paired.get(row, len(data.target) // 2)
        figures["panel"] = rf.qualitative_panel(
            folder / "panel.png",
            source=data.source.images[row],
            target=data.target.images[target_row],
            harmonized={k: v[row] for k, v in artifacts.harmonized.items()},
            predictions={k: artifacts.target_predictions[k][row] for k in artifacts.harmonized},
            class_names=data.class_names,
            titles=(data.source.name, data.target.name),
            oct=str(data.cache.manifest.get("modality", "mri")) == "oct",
        )  # fmt: skip
    if results.get("robustness"):
        figures["sensitivity"] = rf.sensitivity_curves(
            folder / "sensitivity.png", results["robustness"]
        )
    if results.get("histograms"):
        figures["histograms"] = rf.tissue_histograms(
            folder / "histograms.png", results["histograms"], methods=list(results["methods"])
        )
    if results.get("distribution"):
        figures["kid"] = rf.kid_bars(folder / "kid.png", results["distribution"])
    figures.update(lesion_figures(folder, artifacts, data))  # caches with a lesion class only
    return figures


def write_report(
    folder: str | Path,
    results: Mapping[str, Any],
    artifacts: EvaluationArtifacts,
    data: EvalData,
    *,
    title: str = "segrenorm evaluation",
    extra: Mapping[str, Any] | None = None,
) -> ReportPaths:
    """Write the report folder (see the module docstring).

    Args:
        folder: created if needed; files in it with the report's names are replaced.
        results: from :func:`~segrenorm.evaluate.suite.run_evaluation`.
        artifacts: its arrays, for the figures.
        data: the evaluation data.
        title: the report's title.
        extra: more JSON-ready fields stored in ``results.json`` (e.g. runs, timings).
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    figures = _figures(out, results, artifacts, data)
    record = {**results, **(extra or {}), "quality_checks": quality_checks(results)}
    json_path = write_json_atomic(out / "results.json", _jsonable(record))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("section", "method", "metric", "class", "value"))
    writer.writerows(csv_rows(results))
    csv_path = write_text_atomic(out / "results.csv", buffer.getvalue())
    md_path = write_text_atomic(out / "report.md", render_markdown(results, figures, title))
    html_path = write_text_atomic(out / "report.html", render_html(results, figures, title))
    return ReportPaths(out, html_path, md_path, json_path, csv_path, figures)


def _jsonable(value: Any) -> Any:
    """NaN and infinities as strings (JSON has no literal for them); tuples as lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_jsonable(v) for v in value]
    return value
