"""The evaluation report's tables, as plain strings.

:func:`tables` lays the results out like the paper (Table IV: distribution distances;
Table V: segmentation of source, target and harmonized source; Fig. 9 as numbers) plus the
paired ground-truth table; both Markdown and HTML reports use them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["Table", "format_number", "tables"]

#: One table: ``(heading, note, header, rows)``, every cell a string.
Table = tuple[str, str, list[str], list[list[str]]]


def format_number(value: float | None, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals; a dash for a missing or NaN value.

    Args:
        value: the number, or None.
        digits: decimals shown.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


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
        [name, *[format_number(v, 2) for v in values[1:]]]
        for name, values in seg["gap_recovery"].items()
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
