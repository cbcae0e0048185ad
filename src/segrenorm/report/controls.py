"""The wrong-segmentation control's table: what each lens loses without the right segmentation.

For every control row ``NAME (wrong seg)`` (:mod:`segrenorm.evaluate.controls`) the table
puts its scores next to its method's on every lens the two share (paired truth, clean paired
truth, KID and FID, target→method Generalized Dice, Dice-gap recovery per class) and says in
words how much the control lost: a positive loss is the part of the score the right
segmentation was responsible for; "unchanged" means the conditioning did nothing on that
lens. Recovery losses inside the segmentor-seed spread are called a tie
(:mod:`segrenorm.report.spread`).

Example:
    >>> lost(0.5, 0.4, higher=True, digits=2)
    'lost 0.10 (20.0%)'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from segrenorm.evaluate.controls import CONTROL_KIND, control_method
from segrenorm.report.spread import format_spread, recovery, recovery_difference

__all__ = ["control_tables", "lost"]

#: One table: ``(heading, note, header, rows)``, every cell a string.
Table = tuple[str, str, list[str], list[list[str]]]


def lost(method: float, control: float, *, higher: bool, digits: int = 4) -> str:
    """How much worse the control scores than its method, in words.

    Args:
        method: the method's score.
        control: the control's score.
        higher: whether higher is better.
        digits: decimals shown.
    """
    loss = (method - control) if higher else (control - method)
    if loss == 0:
        return "unchanged"
    share = f" ({abs(loss) / abs(method):.1%})" if method else ""
    word = "lost" if loss > 0 else "gained"
    return f"{word} {abs(loss):.{digits}f}{share}"


def _scalar_rows(results: Mapping[str, Any], method: str, control: str) -> list[list[str]]:
    rows = []
    paired = (results.get("paired") or {}).get("methods", {})
    sources = [("paired", paired)]
    clean = {n: v["clean"] for n, v in paired.items() if v.get("clean")}
    sources.append(("paired (clean truth)", clean))
    for label, scores in sources:
        if method not in scores or control not in scores:
            continue
        for metric, name, digits, higher in (("ssim", "SSIM", 4, True), ("psnr", "PSNR", 2, True),
                                             ("mae", "MAE", 4, False)):  # fmt: skip
            a, b = float(scores[method][metric]), float(scores[control][metric])
            rows.append([f"{label} {name}", f"{a:.{digits}f}", f"{b:.{digits}f}",
                         lost(a, b, higher=higher, digits=digits)])  # fmt: skip
    dist = (results.get("distribution") or {}).get("methods", {})
    if method in dist and control in dist:
        a, b = 1e3 * float(dist[method]["kid_mean"]), 1e3 * float(dist[control]["kid_mean"])
        rows.append(["KID ×10³", f"{a:.2f}", f"{b:.2f}", lost(a, b, higher=False, digits=2)])
        a, b = float(dist[method]["fid"]), float(dist[control]["fid"])
        rows.append(["FID", f"{a:.2f}", f"{b:.2f}", lost(a, b, higher=False, digits=2)])
    return rows


def _segmentation_rows(results: Mapping[str, Any], method: str, control: str) -> list[list[str]]:
    seg = results.get("segmentation") or {}
    rows = []
    gd = {k: (seg.get("rows") or {}).get(f"target→{k}", {}).get("generalized_dice")
          for k in (method, control)}  # fmt: skip
    if gd[method] and gd[control] and None not in (gd[method]["mean"], gd[control]["mean"]):
        a, b = float(gd[method]["mean"]), float(gd[control]["mean"])
        rows.append([f"generalized Dice (target→{method})", f"{a:.3f}", f"{b:.3f}",
                     lost(a, b, higher=True, digits=3)])  # fmt: skip
    if method not in seg.get("gap_recovery", {}) or control not in seg["gap_recovery"]:
        return rows
    for index, name in enumerate(seg["class_names"]):
        if index == 0:
            continue
        (mine, sa), (theirs, sb) = recovery(seg, method, index), recovery(seg, control, index)
        if mine is None or theirs is None:
            continue
        words = lost(mine, theirs, higher=True, digits=2)
        found = recovery_difference(seg, method, control, index)
        if found is not None and found[1] is not None:
            spread = found[1]
            words += (
                f": a tie, within the segmentor-seed spread {spread:.2f}"
                if found[2]
                else f", beyond the segmentor-seed spread {spread:.2f}"
            )
        cells = [format_spread(mine, sa), format_spread(theirs, sb)]
        rows.append([f"Dice gap recovery, {name}", *cells, words])
    return rows


def control_tables(results: Mapping[str, Any]) -> list[Table]:
    """One table per wrong-segmentation control row of the results.

    Args:
        results: the evaluation results.
    """
    out: list[Table] = []
    for name, kind in results.get("methods", {}).items():
        method = control_method(name)
        if kind != CONTROL_KIND or method is None or method not in results["methods"]:
            continue
        rows = _scalar_rows(results, method, name) + _segmentation_rows(results, method, name)
        if not rows:
            continue
        note = (
            f"'{name}' translates each held-out source slice x with the segmentation embedding "
            f"of another held-out slice x′, G(x | f(x′)), where '{method}' uses its own, "
            "G(x | f(x)); x′ is the partner the conditioning-sensitivity figure uses. 'lost' is "
            f"how much worse the control scores (share of {method}'s score): what the right "
            "segmentation contributes to each lens. 'unchanged' everywhere would mean the "
            "conditioning does nothing."
        )
        header = ["lens", method, name, "lost without the right segmentation"]
        out.append((f"Wrong-segmentation control: {method}", note, header, rows))
    return out
