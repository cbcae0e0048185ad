"""The evaluation report's tables and quality targets, as plain strings.

:func:`tables` lays the results out like the paper (Table IV: distribution distances;
Table V: segmentation of source, target and harmonized source; Fig. 9 as numbers) plus the
paired ground-truth table. :func:`quality_checks` states each quality target with the
measured numbers and whether it passed; both Markdown and HTML reports use them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["QUALITY_METHOD", "check_lines", "quality_checks", "tables", "verdict"]

#: The method the quality targets are about (the paper's translator).
QUALITY_METHOD = "segrenorm"
#: KID ratio and Dice-gap recovery the targets ask for.
KID_RATIO_TARGET = 0.25
GAP_RECOVERY_TARGET = 0.8

Table = tuple[str, str, list[str], list[list[str]]]


def _f(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _pm(mean: float | None, std: float | None, digits: int = 3) -> str:
    if mean is None:
        return "–"
    return f"{_f(mean, digits)} ± {_f(std, digits)}"


def _distribution(results: Mapping[str, Any]) -> Table | None:
    dist = results.get("distribution")
    if not dist:
        return None
    rows = []
    for name, s in dist["methods"].items():
        label = "none (source vs target)" if name == "none" else name
        rows.append([
            label, _pm(1e3 * s["kid_mean"], 1e3 * s["kid_std"], 2), _f(s["kid_ratio"]),
            _f(s["fid"], 2), _f(s["fid_ratio"]),
        ])  # fmt: skip
    note = (
        f"KID (×10³, mean ± std over {dist['kid_subsets']} subsets of "
        f"{dist['kid_subset_size']}) and FID against the held-out target slices, in the "
        f"{dist['feature_dim']}-d bottleneck of a multitask autoencoder trained on both sites. "
        "Lower is better; ratios are to no harmonization."
    )
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
        )
        header = ["segmentor→images", *classes]
        if metric == "dice":
            header.append("generalized Dice")
        out.append((f"Downstream segmentation: {title} (Table V)", note, header, rows))
    rec_rows = [
        [name, *[_f(v, 2) for v in values[1:]]] for name, values in seg["gap_recovery"].items()
    ]
    note = (
        "Share of the Dice gap between target→source and source→source that the target "
        "segmentor recovers on harmonized source (1 = all of it, 0 = none, < 0 = worse)."
    )
    out.append(("Dice gap recovery", note, ["method", *classes], rec_rows))
    return out


def _robustness(results: Mapping[str, Any]) -> Table | None:
    robust = results.get("robustness")
    if not robust:
        return None
    sigmas = next(iter(robust.values()))["sigma"]
    rows = []
    for name, c in robust.items():
        cells = [_f(v) for v in c["ssim"]]
        rows.append([name, *cells, _f(c.get("ssim_auc")), _f(c.get("mse_auc"), 4)])
    header = ["method", *[f"SSIM σ={s:g}" for s in sigmas], "SSIM AUC", "MSE AUC"]
    note = (
        "SSIM of F(G(x) + n) against x inside the source foreground for Gaussian noise n of "
        "standard deviation σ on G(x); AUC = mean over the σ range (SSIM: higher, MSE: lower "
        "is more robust)."
    )
    return ("Robustness to noise (Fig. 9a)", note, header, rows)


def _paired(results: Mapping[str, Any]) -> Table | None:
    paired = results.get("paired")
    if not paired:
        return None
    rows = []
    for name, s in paired["methods"].items():
        rows.append([
            name, _pm(s["ssim"], s["ssim_std"], 4), _pm(s["psnr"], s["psnr_std"], 2),
            _pm(s["mae"], s["mae_std"], 4),
        ])  # fmt: skip
    note = (
        f"Harmonized source against the same subject's true target scan ({paired['n_subjects']} "
        f"held-out subjects, {paired['n_slices']} slice pairs), inside the target foreground, "
        "[-1, 1] scale; mean ± std over subjects."
    )
    return ("Paired ground truth", note, ["method", "SSIM", "PSNR (dB)", "MAE"], rows)


def tables(results: Mapping[str, Any]) -> list[Table]:
    """Every table of the report as ``(heading, note, header, rows)`` of strings.

    Args:
        results: the evaluation results.
    """
    found: list[Table | None] = [
        _paired(results),
        _distribution(results),
        *_segmentation(results),
        _robustness(results),
    ]
    return [t for t in found if t is not None]


def _check(target: str, measured: str, passed: bool) -> dict[str, Any]:
    return {"target": target, "measured": measured, "passed": passed}


def verdict(check: Mapping[str, Any]) -> str:
    """``PASS`` or ``MISSED`` for one entry of :func:`quality_checks`."""
    return "PASS" if check["passed"] else "MISSED"


def check_lines(results: Mapping[str, Any]) -> list[str]:
    """The quality checks as terminal lines, ``PASS|MISSED: target: measured``.

    Args:
        results: the evaluation results.
    """
    return [f"{verdict(c)}: {c['target']}: {c['measured']}" for c in quality_checks(results)]


def quality_checks(
    results: Mapping[str, Any],
    *,
    method: str = QUALITY_METHOD,
    classical: Sequence[str] = ("none", "histogram"),
    reference: str = "cyclegan",
) -> list[dict[str, Any]]:
    """The quality targets for ``method``, each with its measured numbers.

    Targets whose inputs are absent (no paired data, no CycleGAN run) are left out.

    Args:
        results: the evaluation results.
        method: the method the targets are about.
        classical: methods whose paired SSIM must be beaten.
        reference: the method whose robustness curve must be beaten.
    """
    if method not in results.get("methods", {}):
        return []
    checks = []
    dist = results.get("distribution")
    if dist and method in dist["methods"]:
        s = dist["methods"][method]
        checks.append(_check(
            f"{method}: KID to target ≤ {KID_RATIO_TARGET}× source-vs-target KID",
            f"{1e3 * s['kid_mean']:.2f}e-3 vs {1e3 * dist['source_vs_target']['kid_mean']:.2f}e-3"
            f" (ratio {s['kid_ratio']:.3f})",
            bool(s["kid_ratio"] <= KID_RATIO_TARGET),
        ))  # fmt: skip
    seg = results.get("segmentation")
    if seg and method in seg["gap_recovery"]:
        values = seg["gap_recovery"][method][1:]
        names = seg["class_names"][1:]
        shown = ", ".join(f"{n} {_f(v, 2)}" for n, v in zip(names, values, strict=True))
        defined = [v for v in values if v is not None and not math.isnan(v)]
        checks.append(_check(
            f"{method}: target segmentor recovers ≥ {GAP_RECOVERY_TARGET:.0%} of the Dice gap, "
            "every class",
            shown,
            bool(defined) and all(v >= GAP_RECOVERY_TARGET for v in defined),
        ))  # fmt: skip
    paired = results.get("paired")
    if paired and method in paired["methods"]:
        scores = paired["methods"]
        others = [c for c in classical if c in scores]
        shown = ", ".join(f"{n} {scores[n]['ssim']:.4f}" for n in [method, *others])
        passed = all(scores[method]["ssim"] > scores[c]["ssim"] for c in others)
        checks.append(_check(f"{method}: paired SSIM above {' and '.join(others)}", shown, passed))
    robust = results.get("robustness") or {}
    if method in robust and reference in robust:
        a, b = robust[method]["ssim_auc"], robust[reference]["ssim_auc"]
        checks.append(_check(
            f"{method}: robustness curve above {reference}'s (SSIM AUC)",
            f"{a:.4f} vs {b:.4f}",
            bool(a > b),
        ))  # fmt: skip
    return checks
