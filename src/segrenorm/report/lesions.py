"""The lesion lens in the report: "Lesion-wise fidelity" tables, quality checks and CSV rows.

Reads ``results["lesions"]`` (:mod:`segrenorm.evaluate.lesion_lens`); results without it
(T1 caches) get no table, check or row. Figures averaged over segmentor seeds show their
seed spread beside them (``mean ± std``, sample std) when the downstream lens had several.

Example:
    >>> lesion_tables({})
    []
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from segrenorm.report.controls import Table
from segrenorm.report.spread import format_spread

__all__ = ["LEARNED_RIVALS", "lesion_checks", "lesion_csv_rows", "lesion_tables"]

#: Learned baselines the quality method must remove and hallucinate fewer lesions than.
LEARNED_RIVALS = ("cyclegan", "s-cyclegan")


def _cell(figure: Mapping[str, Any] | None, digits: int) -> str:
    if not figure:
        return "–"
    return format_spread(figure.get("mean"), figure.get("seed_std"), digits)


def _row_label(name: str) -> str:
    return "target→source (no harmonization)" if name == "none" else f"target→{name}"


def _seed_words(lesions: Mapping[str, Any]) -> str:
    n = len(lesions.get("segmentor_seeds") or [])
    if n < 2:
        return " One segmentor seed: no seed spread."
    return f" Mean ± sample std over {n} segmentor seeds."


def _detection(lesions: Mapping[str, Any]) -> Table | None:
    detection = lesions.get("detection") or {}
    if not detection:
        return None
    unit = lesions.get("volume_unit", "voxels")
    header = ["segmentor→images", "TP (detected)", "FN (removed)", "FP (hallucinated)",
              "per-lesion Dice", f"volume |Δ| ({unit})", "volume Δ / true", "volume r"]  # fmt: skip
    entries = [("target→target (in-domain)", detection["target"])]
    entries += [(_row_label(n), row) for n, row in detection["methods"].items()]
    rows = [
        [label, _cell(r["tp"], 1), _cell(r["fn"], 1), _cell(r["fp"], 1),
         _cell(r["lesion_dice"], 3), _cell(r["volume_abs_error"], 1),
         _cell(r["volume_rel_error"], 3), _cell(r["volume_correlation"], 3)]
        for label, r in entries
    ]  # fmt: skip
    n = lesions.get("n_lesions", {})
    note = (
        f"Lesions are 3D connected components ({lesions.get('connectivity', 26)}-connectivity) "
        "of each held-out subject's slices stacked in slice order. The target segmentor "
        "(trained post hoc on the target site only) detects a true lesion when it labels at "
        f"least {lesions.get('detection_fraction', 0.1):.0%} of its voxels; FN: the others "
        "(removed); FP: predicted components overlapping no true lesion (hallucinated). "
        "Per-lesion Dice: each true lesion against the prediction within "
        f"{lesions.get('dice_margin', 2)} voxels of it (other lesions excluded), mean over "
        "lesions. Volume: each subject's total lesion volume, predicted minus true (mean |Δ|, "
        "mean Δ / true) and Pearson r over subjects. "
        f"{n.get('source', '?')} source lesions in {lesions['n_subjects']['source']} subjects, "
        f"{n.get('target', '?')} target lesions in {lesions['n_subjects']['target']}."
        + _seed_words(lesions)
    )
    return ("Lesion-wise fidelity: detection and volume", note, header, rows)


def _ratio(stats: Mapping[str, Any]) -> str:
    return format_spread(stats.get("ratio_mean"), stats.get("ratio_std"), 3)


def _contrast(lesions: Mapping[str, Any]) -> Table | None:
    contrast = lesions.get("contrast") or {}
    if not contrast:
        return None
    own = contrast["target"]
    rows = [["target scanner (its held-out scans)", _ratio(own),
             format_spread(own.get("ratio_median"), None, 3), "–", "–"]]  # fmt: skip
    for name, s in contrast["methods"].items():
        label = "none (source, before harmonization)" if name == "none" else name
        gap = s.get("ratio_gap")
        rows.append([
            label, _ratio(s), format_spread(s.get("ratio_median"), None, 3),
            "–" if gap is None else f"{gap:+.3f}", f"{s['inversions']} of {s['n_compared']}",
        ])  # fmt: skip
    note = (
        "Lesion-to-NAWM contrast ratio: each true lesion's median intensity over that of the "
        f"normal-appearing white matter around it, a shell of {lesions.get('nawm_shell', 2)} "
        "voxels outside every lesion and inside the foreground, on the [-1, 1] scale mapped to "
        "[0, 1]; mean ± std (and median) over lesions. Δ to target: the mean ratio minus the "
        "target scanner's own. Inversions: lesions brighter than their NAWM on the source "
        "image and darker on the harmonized one, or the reverse (of the lesions with a NAWM "
        "shell). Images only: no segmentor is involved."
    )
    header = ["images", "lesion/NAWM ratio", "median", "Δ to target", "inversions"]
    return ("Lesion-wise fidelity: lesion contrast", note, header, rows)


def lesion_tables(results: Mapping[str, Any]) -> list[Table]:
    """The "Lesion-wise fidelity" tables; none for results without a lesion lens.

    Args:
        results: the evaluation results.
    """
    lesions = results.get("lesions")
    if not lesions:
        return []
    return [t for t in (_detection(lesions), _contrast(lesions)) if t is not None]


def _fewer(
    rows: Mapping[str, Any], method: str, rivals: Sequence[str], key: str, words: str
) -> dict[str, Any]:
    mine = rows[method][key]["mean"]
    counts = {n: rows[n][key]["mean"] for n in rivals}
    best = min(counts, key=lambda n: (counts[n], list(counts).index(n)))
    passed = mine is not None and (mine == 0 or all(mine < v for v in counts.values()))
    shown = format_spread(mine, rows[method][key].get("seed_std"), 1)
    against = "every classical pipeline" + "".join(f", {n}" for n in LEARNED_RIVALS if n in rivals)
    return {
        "target": f"{method}: fewer {words} lesions ({key.upper()}) than {against} (0 passes)",
        "measured": f"{shown} vs {counts[best]:.1f} ({best}, fewest of {len(rivals)} compared)",
        "passed": bool(passed),
    }


def lesion_checks(
    results: Mapping[str, Any], method: str, classical: Sequence[str]
) -> list[dict[str, Any]]:
    """The lesion targets of ``method``: fewer removed and hallucinated lesions, no inversion.

    Removed (FN) and hallucinated (FP) lesion counts, means over segmentor seeds, must be
    below those of every classical row and of CycleGAN and S-CycleGAN where they were
    evaluated (a count of 0 passes: nothing is fewer); no lesion's contrast may invert.

    Args:
        results: the evaluation results.
        method: the method the targets are about.
        classical: the classical rows it is compared with.
    """
    lesions = results.get("lesions") or {}
    rows = (lesions.get("detection") or {}).get("methods", {})
    checks = []
    if method in rows:
        rivals = [n for n in [*classical, *LEARNED_RIVALS] if n in rows and n != method]
        rivals = list(dict.fromkeys(rivals))
        if rivals:
            checks.append(_fewer(rows, method, rivals, "fn", "removed"))
            checks.append(_fewer(rows, method, rivals, "fp", "hallucinated"))
    contrast = (lesions.get("contrast") or {}).get("methods", {})
    if method in contrast:
        s = contrast[method]
        checks.append({
            "target": f"{method}: zero lesion contrast inversions",
            "measured": f"{s['inversions']} of {s['n_compared']} lesions inverted",
            "passed": s["inversions"] == 0,
        })  # fmt: skip
    return checks


def lesion_csv_rows(results: Mapping[str, Any]) -> list[tuple[str, str, str, str, float]]:
    """Every lesion figure as ``(section, method, metric, class, value)`` rows.

    Args:
        results: the evaluation results.
    """
    lesions = results.get("lesions")
    if not lesions:
        return []
    cls = str(lesions.get("class_name", "lesion"))
    seeds = lesions.get("segmentor_seeds") or []
    out: list[tuple[str, str, str, str, float]] = []
    detection = lesions.get("detection") or {}
    named = [("target→target", detection["target"])] if detection else []
    named += list(detection.get("methods", {}).items())
    for name, row in named:
        for key, figure in row.items():
            if key == "per_subject":
                continue
            for stat in ("mean", "seed_std"):
                out.append(("lesions", name, f"{key}_{stat}", cls, _num(figure[stat])))
            for seed, value in zip(seeds, figure["per_seed"], strict=False):
                out.append(("lesions", name, f"{key}@seed={seed}", cls, _num(value)))
    contrast = lesions.get("contrast") or {}
    named = [("target", contrast["target"])] if contrast else []
    named += list(contrast.get("methods", {}).items())
    for name, stats in named:
        for key, value in stats.items():
            out.append(("lesion-contrast", name, key, cls, _num(value)))
    return out


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)
