"""The evaluation report's tables, as plain strings.

:func:`tables` lays the results out like the paper (Table IV: distribution distances;
Table V: segmentation of source, target and harmonized source; Fig. 9 as numbers) plus the
paired ground-truth table, the lesion-wise and (OCT) background-artefact tables; both
Markdown and HTML reports use them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from segrenorm.report.artefacts import artefact_tables
from segrenorm.report.controls import Table, control_tables
from segrenorm.report.lesions import lesion_tables
from segrenorm.report.spread import (
    compare_recoveries,
    dice_gap,
    format_spread,
    recovery,
    seed_count,
)

__all__ = ["classical_rows", "format_number", "strongest", "tables"]


def format_number(value: float | None, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals; a dash for a missing or NaN value.

    Args:
        value: the number, or None.
        digits: decimals shown.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def classical_rows(results: Mapping[str, Any]) -> list[str]:
    """The classical methods of the results (kind ``"baseline"``), in report order.

    Args:
        results: the evaluation results.
    """
    return [name for name, kind in results.get("methods", {}).items() if kind == "baseline"]


def strongest(
    scores: Mapping[str, Mapping[str, Any]],
    rows: Sequence[str],
    metric: str,
    *,
    higher: bool = True,
) -> str | None:
    """The row of ``rows`` with the best ``metric`` in ``scores`` (the first one on a tie).

    Rows whose score is NaN (undefined) are passed over; None when no row has a score.

    Args:
        scores: method -> its scores.
        rows: the candidate methods.
        metric: the score compared.
        higher: whether higher is better.
    """
    found = [
        (float(scores[n][metric]), k, n)
        for k, n in enumerate(rows)
        if n in scores and not math.isnan(float(scores[n][metric]))
    ]
    if not found:
        return None
    best = (
        max(found, key=lambda t: (t[0], -t[1]))
        if higher
        else min(found, key=lambda t: (t[0], t[1]))
    )
    return best[2]


def _pm(mean: float | None, std: float | None, digits: int = 3) -> str:
    if mean is None:
        return "–"
    return f"{format_number(mean, digits)} ± {format_number(std, digits)}"


def _distribution(results: Mapping[str, Any]) -> Table | None:
    dist = results.get("distribution")
    if not dist:
        return None
    rows = []
    for name, s in dist["methods"].items():
        label = "none (source vs target)" if name == "none" else name
        rows.append([
            label, _pm(1e3 * s["kid_mean"], 1e3 * s["kid_std"], 2), format_number(s["kid_ratio"]),
            format_number(s["fid"], 2), format_number(s["fid_ratio"]),
        ])  # fmt: skip
    note = (
        f"KID (×10³, mean ± std over {dist['kid_subsets']} subsets of "
        f"{dist['kid_subset_size']}) and FID against the held-out target slices, in the "
        f"{dist['feature_dim']}-d bottleneck of a multitask autoencoder trained on both sites. "
        "Lower is better; ratios are to no harmonization."
    )
    best = strongest(dist["methods"], classical_rows(results), "kid_mean", higher=False)
    if best is not None:
        note += f" Strongest classical row (lowest KID): {best}."
    header = ["method", "KID ×10³", "KID / none", "FID", "FID / none"]
    return ("Distribution distance (Table IV)", note, header, rows)


def _row_label(name: str) -> str:
    return "target→source (no harmonization)" if name == "target→none" else name


def _segmentation(results: Mapping[str, Any]) -> list[Table]:
    seg = results.get("segmentation")
    if not seg:
        return []
    classes = list(seg["class_names"])[1:]
    out: list[Table] = []
    for metric, title in (("dice", "Dice"), ("iou", "IoU")):
        rows = []
        for name, row in seg["rows"].items():
            stats = row[metric]
            cells = [_pm(stats["mean"][c], stats["std"][c]) for c in range(1, len(classes) + 1)]
            if metric == "dice":  # the Generalized Dice Score has no IoU counterpart here
                gd = row["generalized_dice"]
                cells.append(_pm(gd["mean"], gd["std"]))
            rows.append([_row_label(name), *cells])
        note = (
            f"{title} per class (mean ± std over subjects, each subject's slices as one "
            "volume). Segmentors trained post hoc on one site's training slices; "
            "'target→X' applies the target segmentor to X, scored against the source labels."
            f"{_seed_note(seg)}"
        )
        header = ["segmentor→images", *classes]
        if metric == "dice":
            header.append("generalized Dice")
        out.append((f"Downstream segmentation: {title} (Table V)", note, header, rows))
    indices = range(1, len(classes) + 1)
    rec_rows = [["Dice gap (source→source − target→source)",
                 *[format_spread(*dice_gap(seg, c), digits=3) for c in indices]]]  # fmt: skip
    rec_rows += [
        [name, *[format_spread(*recovery(seg, name, c)) for c in indices]]
        for name in seg["gap_recovery"]
    ]
    n = seed_count(seg)
    note = (
        "Share of the Dice gap between target→source and source→source that the target "
        "segmentor recovers on harmonized source (1 = all of it, 0 = none, < 0 = worse), "
        f"computed per segmentor seed: mean ± std over {n} seed{'s' if n > 1 else ''} "
        "(sample std). The first row is the gap itself."
    )
    out.append(("Dice gap recovery", note, ["method", *classes], rec_rows))
    versus = _recovery_differences(results, seg, classes)
    if versus is not None:
        out.append(versus)
    return out


def _seed_note(seg: Mapping[str, Any]) -> str:
    n = seed_count(seg)
    if n < 2:
        return ""
    return (
        f" Each figure is the mean over {n} segmentor seeds; results.json holds each seed's "
        "figure ('per_seed') and their spread ('seed_std')."
    )


def _recovery_differences(
    results: Mapping[str, Any], seg: Mapping[str, Any], classes: Sequence[str]
) -> Table | None:
    """Each method's recovery against the first translator's, tie or beyond seed spread."""
    kinds = results.get("methods", {})
    reference = next((n for n, k in kinds.items() if k == "translator"), None)
    if reference is None or reference not in seg["gap_recovery"]:
        return None
    others = [n for n in seg["gap_recovery"] if n not in (reference, "none")]
    if not others:
        return None
    rows = [
        [name, *[compare_recoveries(seg, reference, name, c) for c in range(1, len(classes) + 1)]]
        for name in others
    ]
    note = (
        f"{reference}'s Dice gap recovery minus each other method's, per class. A difference "
        "smaller than the larger of the two segmentor-seed spreads (sample std over seeds) "
        "is a tie: the segmentor's seed alone could produce it."
    )
    header = ["compared with", *classes]
    return (f"Dice gap recovery: {reference} against the others", note, header, rows)


def _robustness(results: Mapping[str, Any]) -> Table | None:
    robust = results.get("robustness")
    if not robust:
        return None
    sigmas = next(iter(robust.values()))["sigma"]
    rows = []
    for name, c in robust.items():
        cells = [format_number(v) for v in c["ssim"]]
        rows.append(
            [name, *cells, format_number(c.get("ssim_auc")), format_number(c.get("mse_auc"), 4)]
        )
    header = ["method", *[f"SSIM σ={s:g}" for s in sigmas], "SSIM AUC", "MSE AUC"]
    note = (
        "SSIM of F(G(x) + n) against x inside the source foreground for Gaussian noise n of "
        "standard deviation σ on G(x); AUC = mean over the σ range (SSIM: higher, MSE: lower "
        "is more robust)."
    )
    return ("Robustness to noise (Fig. 9a)", note, header, rows)


def _paired_rows(scores: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    return [
        [name, _pm(s["ssim"], s["ssim_std"], 4), _pm(s["psnr"], s["psnr_std"], 2),
         _pm(s["mae"], s["mae_std"], 4)]
        for name, s in scores.items()
    ]  # fmt: skip


def _strongest_note(results: Mapping[str, Any], scores: Mapping[str, Any]) -> str:
    classical = classical_rows(results)
    best = {m: strongest(scores, classical, m) for m in ("ssim", "psnr")}
    if best["ssim"] is None:
        return ""
    return f" Strongest classical row: SSIM {best['ssim']}, PSNR {best['psnr']}."


def _paired(results: Mapping[str, Any]) -> list[Table]:
    paired = results.get("paired")
    if not paired:
        return []
    header = ["method", "SSIM", "PSNR (dB)", "MAE"]
    inside = "inside the brain (target labels > 0)"
    if results.get("modality") == "oct":  # the retina, not a brain; say what was scored
        inside = f"inside the {paired.get('mask', 'target labels > 0')}"
    note = (
        f"Harmonized source against the same subject's true target scan ({paired['n_subjects']} "
        f"held-out subjects, {paired['n_slices']} slice pairs), {inside}, [-1, 1] scale; "
        "mean ± std over subjects."
    )
    note += _strongest_note(results, paired["methods"])
    out: list[Table] = [("Paired ground truth", note, header, _paired_rows(paired["methods"]))]
    clean = {n: v["clean"] for n, v in paired["methods"].items() if v.get("clean")}
    extent = paired.get("clean")
    if clean and extent:
        rows = _paired_rows(clean)
        rows.append(_paired_rows({"target scan itself": extent["target"]})[0])
        note = (
            "The same against each subject's noise-free, bias-free render on the target scanner "
            f"({extent['n_subjects']} subjects, {extent['n_slices']} slice pairs), {inside}. "
            "'target scan itself' scores the noisy target scan: a method that reproduced the "
            "scan exactly would score that."
        )
        note += _strongest_note(results, clean)
        out.append(("Paired ground truth: clean target render", note, header, rows))
    return out


def _conditioning(results: Mapping[str, Any]) -> Table | None:
    figures = results.get("conditioning")
    if not figures:
        return None
    rows = []
    for name, f in figures.items():
        if f is None:
            rows.append([name, "not conditioned", "–", "–"])
            continue
        cells = [format_number(f["sensitivity"], 4), format_number(f["change"], 4)]
        rows.append([name, *cells, format_number(f["translation"], 4)])
    note = (
        "Sensitivity = change / translation: the change is the mean |G(x | f(x)) − G(x | f(x′))| "
        "and the translation the mean |G(x) − x| inside the source foreground, each held-out "
        "slice x given the embedding of another one x′ ([-1, 1] scale). 0: the segmentation "
        "conditioning changes nothing. Only segrenorm is conditioned on an embedding."
    )
    header = ["method", "sensitivity", "change", "translation"]
    return ("Conditioning sensitivity", note, header, rows)


def tables(results: Mapping[str, Any]) -> list[Table]:
    """Every table of the report as ``(heading, note, header, rows)`` of strings.

    Args:
        results: the evaluation results.
    """
    found: list[Table | None] = [
        *_paired(results),
        _distribution(results),
        *_segmentation(results),
        _robustness(results),
        _conditioning(results),
        *lesion_tables(results),
        *artefact_tables(results),
        *control_tables(results),
    ]
    return [t for t in found if t is not None]
