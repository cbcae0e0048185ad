"""The lesion lens in the report: pocket-wise tables per class, quality checks and CSV rows.

Reads ``results["lesions"]`` (:mod:`segrenorm.evaluate.lesion_lens`) through
:func:`~segrenorm.evaluate.lesion_lens.lesion_results`, so a ``results.json`` written before
fluid (one class at the top) reads as before; results without it (T1 caches) get no table,
check or row. Each pocket class gets its own two tables with the same columns: MS lesions
under "Lesion-wise fidelity", retinal fluid under "Fluid-pocket fidelity (IRF)" and so on.
Figures averaged over segmentor seeds show their seed spread beside them (``mean ± std``,
sample std) when the downstream lens had several.

Example:
    >>> lesion_tables({})
    []
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from segrenorm.evaluate.downstream import seed_mean_std
from segrenorm.evaluate.lesion_lens import lesion_results
from segrenorm.report.controls import Table
from segrenorm.report.spread import format_spread

__all__ = ["LEARNED_RIVALS", "lesion_checks", "lesion_csv_rows", "lesion_tables"]

#: Learned baselines the quality method must remove and hallucinate fewer lesions than.
LEARNED_RIVALS = ("cyclegan", "s-cyclegan", "semgan")


@dataclass(frozen=True)
class _Words:
    """How the report names one pocket class (or all of them) and the tissue around it."""

    one: str  # "lesion", "IRF pocket"
    many: str  # "lesions", "IRF pockets"
    heading: str  # "Lesion-wise fidelity", "Fluid-pocket fidelity (IRF)"
    tissue: str  # "NAWM" (normal-appearing white matter), "retina"


def _words(names: Sequence[str], modality: str) -> _Words:
    if all(n.lower() == "lesion" for n in names):
        return _Words("lesion", "lesions", "Lesion-wise fidelity", "NAWM")
    joined = "/".join(names)
    tissue = "retina" if modality == "oct" else "tissue"
    return _Words(f"{joined} pocket", f"{joined} pockets", f"Fluid-pocket fidelity ({joined})",
                  tissue)  # fmt: skip


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


def _detection(lesions: Mapping[str, Any], entry: Mapping[str, Any], w: _Words) -> Table | None:
    detection = entry.get("detection") or {}
    if not detection:
        return None
    unit = lesions.get("volume_unit", "voxels")
    header = ["segmentor→images", "TP (detected)", "FN (removed)", "FP (hallucinated)",
              f"per-{w.one.split()[-1]} Dice", f"volume |Δ| ({unit})", "volume Δ / true",
              "volume r"]  # fmt: skip
    entries = [("target→target (in-domain)", detection["target"])]
    entries += [(_row_label(n), row) for n, row in detection["methods"].items()]
    rows = [
        [label, _cell(r["tp"], 1), _cell(r["fn"], 1), _cell(r["fp"], 1),
         _cell(r["lesion_dice"], 3), _cell(r["volume_abs_error"], 1),
         _cell(r["volume_rel_error"], 3), _cell(r["volume_correlation"], 3)]
        for label, r in entries
    ]  # fmt: skip
    n = entry.get("n_lesions", {})
    subjects = lesions.get("n_subjects", {})
    note = (
        f"{w.many.capitalize() if w.one == 'lesion' else w.many} are 3D connected components "
        f"({lesions.get('connectivity', 26)}-connectivity on the voxel grid) of each held-out "
        "subject's slices stacked in slice order. The target segmentor (trained post hoc on "
        f"the target site only) detects a true {w.one} when it labels at least "
        f"{lesions.get('detection_fraction', 0.1):.0%} of its voxels; FN: the others "
        "(removed); FP: predicted components overlapping no true one (hallucinated). "
        f"Per-{w.one.split()[-1]} Dice: each true {w.one} against the prediction within "
        f"{lesions.get('dice_margin', 2)} voxels of it (other ones excluded), mean over "
        f"them. Volume: each subject's total {w.one} volume, predicted minus true (mean |Δ|, "
        "mean Δ / true) and Pearson r over subjects. "
        f"{n.get('source', '?')} source {w.many} in {subjects.get('source', '?')} subjects, "
        f"{n.get('target', '?')} target {w.many} in {subjects.get('target', '?')}."
        + _seed_words(lesions)
    )
    return (f"{w.heading}: detection and volume", note, header, rows)


def _ratio(stats: Mapping[str, Any]) -> str:
    return format_spread(stats.get("ratio_mean"), stats.get("ratio_std"), 3)


def _contrast(lesions: Mapping[str, Any], entry: Mapping[str, Any], w: _Words) -> Table | None:
    contrast = entry.get("contrast") or {}
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
    shell = lesions.get("shell", lesions.get("nawm_shell", 2))
    around = (
        "the normal-appearing white matter around it"
        if w.tissue == "NAWM"
        else f"the {w.tissue} around it"
    )
    note = (
        f"{w.one.capitalize() if w.one == 'lesion' else w.one}-to-{w.tissue} contrast ratio: "
        f"each true {w.one}'s median intensity over that of {around}, a shell of {shell} "
        "voxels outside every pocket and inside the foreground, on the [-1, 1] scale mapped to "
        "[0, 1]; mean ± std (and median) over them. Δ to target: the mean ratio minus the "
        f"target scanner's own. Inversions: {w.many} brighter than their {w.tissue} on the "
        "source image and darker on the harmonized one, or the reverse (of those with a "
        "shell). Images only: no segmentor is involved."
    )
    first = "lesion" if w.one == "lesion" else w.one.split()[0]
    header = ["images", f"{first}/{w.tissue} ratio", "median", "Δ to target", "inversions"]
    heading = "lesion contrast" if w.one == "lesion" else "contrast"
    return (f"{w.heading}: {heading}", note, header, rows)


def lesion_tables(results: Mapping[str, Any]) -> list[Table]:
    """The pocket-wise tables, two per pocket class; none for results without a lesion lens.

    Args:
        results: the evaluation results.

    Returns:
        Per class in class order: its detection table, then its contrast table.
    """
    lesions = lesion_results(results.get("lesions"))
    out: list[Table] = []
    for name, entry in (lesions.get("classes") or {}).items():
        w = _words([name], str(lesions.get("modality", "mri")))
        out += [t for t in (_detection(lesions, entry, w), _contrast(lesions, entry, w)) if t]
    return out


def _summed(entries: Sequence[Mapping[str, Any]], method: str, key: str) -> dict[str, Any]:
    """A method's count summed over pocket classes, seed by seed: ``{"mean", "seed_std"}``."""
    figures = [e["detection"]["methods"][method][key] for e in entries]
    if len(figures) == 1:
        return dict(figures[0])
    per_seed = [sum(v) for v in zip(*(f["per_seed"] for f in figures), strict=True)]
    mean, std = seed_mean_std(per_seed)
    return {"mean": mean, "seed_std": std}


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
        "target": f"{method}: fewer {words} ({key.upper()}) than {against} (0 passes)",
        "measured": f"{shown} vs {counts[best]:.1f} ({best}, fewest of {len(rivals)} compared)",
        "passed": bool(passed),
    }


def lesion_checks(
    results: Mapping[str, Any], method: str, classical: Sequence[str]
) -> list[dict[str, Any]]:
    """The lesion targets of ``method``: fewer removed and hallucinated pockets, no inversion.

    Removed (FN) and hallucinated (FP) counts, summed over the pocket classes (IRF, SRF and
    PED together on fluid) and averaged over segmentor seeds, must be below those of every
    classical row and of CycleGAN and S-CycleGAN where they were evaluated (a count of 0
    passes: nothing is fewer); no pocket's contrast may invert.

    Args:
        results: the evaluation results.
        method: the method the targets are about.
        classical: the classical rows it is compared with.

    Returns:
        The checks as ``{"target", "measured", "passed"}``; none without a lesion lens.
    """
    lesions = lesion_results(results.get("lesions"))
    classes = lesions.get("classes") or {}
    w = _words(list(classes), str(lesions.get("modality", "mri")))
    found = [e for e in classes.values() if (e.get("detection") or {}).get("methods")]
    checks = []
    if found and all(method in e["detection"]["methods"] for e in found):
        names = [n for n in [*classical, *LEARNED_RIVALS] if n != method]
        rivals = [n for n in dict.fromkeys(names) if all(n in e["detection"]["methods"]
                                                         for e in found)]  # fmt: skip
        if rivals:
            rows = {n: {k: _summed(found, n, k) for k in ("fn", "fp")} for n in [method, *rivals]}
            checks.append(_fewer(rows, method, rivals, "fn", f"removed {w.many}"))
            checks.append(_fewer(rows, method, rivals, "fp", f"hallucinated {w.many}"))
    contrast = [(e.get("contrast") or {}).get("methods", {}) for e in classes.values()]
    if contrast and all(method in c for c in contrast):
        inverted = sum(int(c[method]["inversions"]) for c in contrast)
        compared = sum(int(c[method]["n_compared"]) for c in contrast)
        checks.append({
            "target": f"{method}: zero {w.one} contrast inversions",
            "measured": f"{inverted} of {compared} {w.many} inverted",
            "passed": inverted == 0,
        })  # fmt: skip
    return checks


def lesion_csv_rows(results: Mapping[str, Any]) -> list[tuple[str, str, str, str, float]]:
    """Every lesion figure as ``(section, method, metric, class, value)`` rows.

    Args:
        results: the evaluation results.

    Returns:
        ``lesions`` rows (detection, per seed and over seeds) and ``lesion-contrast`` rows,
        each pocket class under its own name.
    """
    lesions = lesion_results(results.get("lesions"))
    seeds = lesions.get("segmentor_seeds") or []
    out: list[tuple[str, str, str, str, float]] = []
    for cls, entry in (lesions.get("classes") or {}).items():
        detection = entry.get("detection") or {}
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
        contrast = entry.get("contrast") or {}
        named = [("target", contrast["target"])] if contrast else []
        named += list(contrast.get("methods", {}).items())
        for name, stats in named:
            for key, value in stats.items():
                out.append(("lesion-contrast", name, key, cls, _num(value)))
    return out


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)
