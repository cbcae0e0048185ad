"""The evaluation report's contents: Markdown, self-contained HTML and CSV rows.

:func:`render_markdown` and :func:`render_html` lay out the quality targets
(:mod:`segrenorm.report.checks`), the tables (:mod:`segrenorm.report.tables`) and the
figures; :func:`csv_rows` flattens every number. They return strings and rows:
:func:`segrenorm.report.write.write_report` writes them to files.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from segrenorm.report.artefacts import artefact_csv_rows, omitted_note
from segrenorm.report.checks import quality_checks, verdict
from segrenorm.report.lesions import lesion_csv_rows
from segrenorm.report.tables import tables

__all__ = ["csv_rows", "render_html", "render_markdown"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1100px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0 1.4em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}
th{background:#f3f3f3} .pass{color:#1a7f37;font-weight:600} .fail{color:#c0392b;font-weight:600}
img{max-width:100%;border:1px solid #ddd;margin:.4em 0} .note{color:#555;font-size:13px}
"""

_CAPTIONS = {
    "panel": "Qualitative panel: each method's harmonized slice and the target segmentor's "
    "labels on it, next to the input and the target scan.",
    "kid": "KID of each method's harmonized slices against the target site.",
    "histograms": "Intensity densities per tissue (source labels): target (black), source "
    "as is (dashed) and each method.",
    "lesions": "Lesion insets (as the paper's Fig. 6): held-out lesions on the source, each "
    "method and the target scanner; red: the true lesion, dashed cyan: the target segmentor's.",
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
        + _n4_note(results)
        + omitted_note(results)
        + _pseudo_label_note(results)
    )


def _pseudo_label_note(results: Mapping[str, Any]) -> str:
    pseudo = results.get("pseudo_labels") or {}
    return "".join(
        f" The {role} site's labels are {method} pseudo-labels (prepare --auto-labels): Dice "
        f"{'on' if role == 'source' else 'of segmentors trained on'} them measures agreement "
        "with that labeller, not with true labels."
        for role, method in sorted(pseudo.items())
    )


def _n4_note(results: Mapping[str, Any]) -> str:
    corrected = results.get("n4_corrected_baselines")
    if not corrected:
        return ""
    return f" Classical rows on N4-corrected source volumes: {', '.join(corrected)}."


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
    seeds = seg.get("segmentor_seeds") or []

    def per_class(name: str, metric: str, values: list[Any]) -> None:
        for c, value in enumerate(values):
            cls = classes[c] if c < len(classes) else str(c)
            rows.append(("segmentation", name, metric, cls, _num(value)))

    for row_name, row in seg.get("rows", {}).items():
        for metric in ("dice", "iou"):
            for stat in ("mean", "std", "seed_std"):
                if stat in row[metric]:
                    per_class(row_name, f"{metric}_{stat}", row[metric][stat])
        for stat in ("mean", "std", "seed_std"):
            if stat in row["generalized_dice"]:
                rows.append(("segmentation", row_name, f"generalized_dice_{stat}", "",
                             _num(row["generalized_dice"][stat])))  # fmt: skip
    for name, values in seg.get("gap_recovery", {}).items():
        per_class(name, "gap_recovery", values)
        per_class(name, "gap_recovery_seed_std", seg.get("gap_recovery_seed_std", {}).get(name, []))
        per_seed = seg.get("gap_recovery_per_seed", {}).get(name, [])
        for seed, seed_values in zip(seeds, per_seed, strict=False):  # absent: no rows
            per_class(name, f"gap_recovery@seed={seed}", seed_values)
    gap = seg.get("dice_gap") or {}
    for stat in ("mean", "seed_std"):
        per_class("source→source − target→source", f"dice_gap_{stat}", gap.get(stat, []))
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
            if "clean" in scores:  # against the clean (noise-free, bias-free) target render
                rows.append(("paired-clean", name, metric, "", float(scores["clean"][metric])))
    return rows + lesion_csv_rows(results) + artefact_csv_rows(results)


def _num(value: float | None) -> float:
    return math.nan if value is None else float(value)
