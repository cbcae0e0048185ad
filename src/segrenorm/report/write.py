"""The evaluation report: tables and figures as HTML and Markdown, numbers as JSON and CSV.

:func:`write_report` turns the output of :func:`segrenorm.evaluate.suite.run_evaluation`
into a folder a user can open, archive or parse::

    REPORT/
      report.html      self-contained (figures embedded), opens in any browser
      report.md        the same tables, figures linked
      results.json     every number, per subject where there is one
      results.csv      one row per (section, method, metric, class) value
      panel.png  sensitivity.png  histograms.png  kid.png

Every file is written atomically. The quality targets (:func:`quality_checks`) are part of
the report, each with the measured numbers, whether they pass or not.

Example:
    >>> paths = write_report("report/", results, artifacts, data)  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segrenorm.atomic import write_json_atomic, write_text_atomic
from segrenorm.report.tables import quality_checks, tables, verdict

if TYPE_CHECKING:
    from segrenorm.evaluate.data import EvalData
    from segrenorm.evaluate.suite import EvaluationArtifacts

__all__ = ["ReportPaths", "csv_rows", "render_html", "render_markdown", "write_report"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1100px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0 1.4em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}
th{background:#f3f3f3} .pass{color:#1a7f37;font-weight:600} .fail{color:#c0392b;font-weight:600}
img{max-width:100%;border:1px solid #ddd;margin:.4em 0} .note{color:#555;font-size:13px}
"""


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
    return figures


_CAPTIONS = {
    "panel": "Qualitative panel: each method's harmonized slice and the target segmentor's "
    "labels on it, next to the input and the target scan.",
    "kid": "KID of each method's harmonized slices against the target site.",
    "histograms": "Intensity densities per tissue (source labels): target (black), source "
    "as is (dashed) and each method.",
    "sensitivity": "Robustness (paper Fig. 9a): reconstruction of F(G(x) + n) against x.",
}


def render_markdown(results: Mapping[str, Any], figures: Mapping[str, Path], title: str) -> str:
    """The report as Markdown; figures are linked by file name.

    Args:
        results: the evaluation results.
        figures: figure name -> PNG path (same folder as the Markdown file).
        title: the report's title.
    """
    lines = [f"# {title}", "", _intro(results), ""]
    checks = quality_checks(results)
    if checks:
        lines += ["## Quality targets", "", "| target | measured | result |", "|---|---|---|"]
        for c in checks:
            lines.append(f"| {c['target']} | {c['measured']} | {verdict(c)} |")
        lines.append("")
    for heading, note, header, rows in tables(results):
        lines += [f"## {heading}", "", note, ""]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines.append("")
    for name, path in figures.items():
        lines += [f"![{name}]({path.name})", "", f"*{_CAPTIONS.get(name, name)}*", ""]
    return "\n".join(lines)


def render_html(results: Mapping[str, Any], figures: Mapping[str, Path], title: str) -> str:
    """The report as one self-contained HTML page (figures embedded as base64 PNG).

    Args:
        results: the evaluation results.
        figures: figure name -> PNG path.
        title: the report's title.
    """
    e = html.escape
    body = [f"<h1>{e(title)}</h1>", f"<p class='note'>{e(_intro(results))}</p>"]
    checks = quality_checks(results)
    if checks:
        body.append("<h2>Quality targets</h2><table><tr><th>target</th><th>measured</th>"
                    "<th>result</th></tr>")  # fmt: skip
        for c in checks:
            cell = f"<td class='{'pass' if c['passed'] else 'fail'}'>{verdict(c)}</td>"
            body.append(f"<tr><td>{e(c['target'])}</td><td>{e(c['measured'])}</td>{cell}</tr>")
        body.append("</table>")
    for heading, note, header, rows in tables(results):
        body.append(f"<h2>{e(heading)}</h2><p class='note'>{e(note)}</p><table>")
        body.append("<tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
        for r in rows:
            body.append("<tr>" + "".join(f"<td>{e(v)}</td>" for v in r) + "</tr>")
        body.append("</table>")
    for name, path in figures.items():
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        body.append(
            f"<h2>{e(name)}</h2><img alt='{e(name)}' src='data:image/png;base64,{data}'>"
            f"<p class='note'>{e(_CAPTIONS.get(name, name))}</p>"
        )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )


def _intro(results: Mapping[str, Any]) -> str:
    sites, n = results["sites"], results["n_slices"]
    subjects = results.get("n_subjects", {})
    return (
        f"Harmonizing {sites['source']} (source) to {sites['target']} (target). Held-out "
        f"slices: {n['source']} source ({subjects.get('source', '?')} subjects), "
        f"{n['target']} target ({subjects.get('target', '?')} subjects). Cache: "
        f"{results['cache']}. Intensities on the cache's [-1, 1] scale."
    )


def csv_rows(results: Mapping[str, Any]) -> list[tuple[str, str, str, str, float]]:
    """Every number as ``(section, method, metric, class, value)``.

    Args:
        results: the evaluation results.
    """
    rows: list[tuple[str, str, str, str, float]] = []
    dist = results.get("distribution") or {}
    for name, scores in dist.get("methods", {}).items():
        for metric, value in scores.items():
            rows.append(("distribution", name, metric, "", float(value)))
    seg = results.get("segmentation") or {}
    classes = seg.get("class_names", [])
    for row_name, row in seg.get("rows", {}).items():
        for metric in ("dice", "iou"):
            for stat in ("mean", "std"):
                for c, value in enumerate(row[metric][stat]):
                    cls = classes[c] if c < len(classes) else str(c)
                    rows.append(("segmentation", row_name, f"{metric}_{stat}", cls, _num(value)))
        for stat in ("mean", "std"):
            rows.append(("segmentation", row_name, f"generalized_dice_{stat}", "",
                         _num(row["generalized_dice"][stat])))  # fmt: skip
    for name, values in seg.get("gap_recovery", {}).items():
        for c, value in enumerate(values):
            cls = classes[c] if c < len(classes) else str(c)
            rows.append(("segmentation", name, "gap_recovery", cls, _num(value)))
    for name, curve in (results.get("robustness") or {}).items():
        for metric in ("mse", "ssim"):
            for sigma, value in zip(curve["sigma"], curve[metric], strict=True):
                rows.append(("robustness", name, f"{metric}@sigma={sigma:g}", "", float(value)))
            if f"{metric}_auc" in curve:
                rows.append(
                    ("robustness", name, f"{metric}_auc", "", float(curve[f"{metric}_auc"]))
                )
    paired = results.get("paired") or {}
    for name, scores in paired.get("methods", {}).items():
        for metric in ("ssim", "psnr", "mae", "ssim_std", "psnr_std", "mae_std"):
            rows.append(("paired", name, metric, "", float(scores[metric])))
    return rows


def _num(value: float | None) -> float:
    return math.nan if value is None else float(value)


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
