"""The evaluation's quality targets: each stated with its measured numbers and a verdict.

:func:`quality_checks` lists the targets the paper's translator should meet (KID ratio to no
harmonization, KID and paired SSIM and PSNR better than the *strongest* classical pipeline on
that lens, Dice-gap recovery, robustness above CycleGAN), each with the numbers measured,
the classical row it was measured against, and whether it passed. The Dice-gap recovery is
the mean over segmentor seeds: every class but GM and WM must reach 80%; GM and WM pass
too when the Dice gap itself is smaller than its segmentor-seed spread,
and the check says so in words ("within segmentor-seed noise"). The report, the
``evaluate`` and ``compare`` commands and the demo show them.

Example:
    >>> check = {"target": "t", "measured": "m", "passed": False}
    >>> verdict(check)
    'MISSED'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from segrenorm.report.lesions import lesion_checks
from segrenorm.report.spread import dice_gap, format_spread, recovery, seed_count
from segrenorm.report.tables import classical_rows, strongest

__all__ = [
    "GAP_RECOVERY_TARGET",
    "KID_RATIO_TARGET",
    "NOISE_TOLERANT_CLASSES",
    "QUALITY_METHOD",
    "check_lines",
    "quality_checks",
    "verdict",
]

#: The method the quality targets are about (the paper's translator).
QUALITY_METHOD = "segrenorm"
#: KID ratio and Dice-gap recovery the targets ask for.
KID_RATIO_TARGET = 0.25
GAP_RECOVERY_TARGET = 0.8
#: Classes (lower case) whose gap target is also met when the Dice gap itself is within
#: segmentor-seed noise; every other class must reach the recovery target itself.
NOISE_TOLERANT_CLASSES = ("gm", "wm")


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
    classical: Sequence[str] | None = None,
    reference: str = "cyclegan",
) -> list[dict[str, Any]]:
    """The quality targets for ``method``, each with its measured numbers.

    Each lens with a classical counterpart compares ``method`` with the *strongest*
    classical row on that lens (lowest KID; highest paired SSIM and PSNR, against the noisy
    target scan and, where the results have it, the clean target render) and names it.
    Targets whose inputs are absent (no paired data, no CycleGAN run) are left out.

    Args:
        results: the evaluation results.
        method: the method the targets are about.
        classical: the classical rows to beat; by default every method of kind
            ``"baseline"`` in ``results["methods"]``.
        reference: the method whose robustness curve must be beaten.
    """
    if method not in results.get("methods", {}):
        return []
    rows = [c for c in (classical_rows(results) if classical is None else classical) if c != method]
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
        best = strongest(dist["methods"], rows, "kid_mean", higher=False)
        if best is not None:
            other = dist["methods"][best]["kid_mean"]
            checks.append(_check(
                f"{method}: KID to target below the strongest classical pipeline",
                f"{1e3 * s['kid_mean']:.2f}e-3 vs {1e3 * other:.2f}e-3 ({best}, lowest of "
                f"{_count(dist['methods'], rows)} classical)",
                bool(s["kid_mean"] < other),
            ))  # fmt: skip
    seg = results.get("segmentation")
    if seg and method in seg["gap_recovery"]:
        checks += _gap_checks(seg, method)
    paired = results.get("paired")
    if paired and method in paired["methods"]:
        noisy = paired["methods"]
        clean = {n: v["clean"] for n, v in noisy.items() if v.get("clean")}
        for truth, scores in (("", noisy), (" (clean truth)", clean)):
            if method not in scores:
                continue
            for metric, label, digits in (("ssim", "SSIM", 4), ("psnr", "PSNR", 2)):
                best = strongest(scores, rows, metric)
                if best is None:
                    continue
                mine, other = float(scores[method][metric]), float(scores[best][metric])
                checks.append(_check(
                    f"{method}: paired {label}{truth} above the strongest classical pipeline",
                    f"{mine:.{digits}f} vs {other:.{digits}f} ({best}, highest of "
                    f"{_count(scores, rows)} classical)",
                    bool(mine > other),
                ))  # fmt: skip
    robust = results.get("robustness") or {}
    if method in robust and reference in robust:
        a, b = robust[method]["ssim_auc"], robust[reference]["ssim_auc"]
        checks.append(_check(
            f"{method}: robustness curve above {reference}'s (SSIM AUC)",
            f"{a:.4f} vs {b:.4f}",
            bool(a > b),
        ))  # fmt: skip
    checks += lesion_checks(results, method, rows)  # results with a lesion lens only
    checks += _artefact_checks(results, method)  # OCT results only
    return checks


def _artefact_checks(results: Mapping[str, Any], method: str) -> list[dict[str, Any]]:
    """Background stripe energy no higher than the target scanner's own (OCT, issue 13).

    Absent without an artefact lens or without ``method`` in it. A method whose background
    could not be measured (all -1: translated inside the retina only) fails, saying so; a
    target whose own energy is 0 is compared in absolute energy (the ratio is undefined).
    """
    lens = results.get("artefacts") or {}
    scores = (lens.get("methods") or {}).get(method)
    if not scores:
        return []
    target = f"{method}: background artefact energy no higher than the target scanner's own"
    if scores.get("blank_background"):
        return [_check(target, "not measurable: its background is all -1 (kept inside the "
                       "retina only)", False)]  # fmt: skip
    ratio = scores.get("total_ratio")
    if ratio is not None and ratio == ratio:  # not NaN
        return [_check(target, f"{float(ratio):.2f}x the target's", bool(float(ratio) <= 1.0))]
    mine = float(scores.get("total_mean", float("nan")))
    own = float((lens.get("target") or {}).get("total_mean", float("nan")))
    if not (mine == mine and own == own):
        return [_check(target, "not measurable: no background energy to compare", False)]
    return [_check(target, f"{mine:.3g} vs the target's {own:.3g}", bool(mine <= own))]


def _seeds(seg: Mapping[str, Any]) -> str:
    n = seed_count(seg)
    return f" ({n} segmentor seeds)" if n > 1 else ""


def _gap_checks(seg: Mapping[str, Any], method: str) -> list[dict[str, Any]]:
    """The Dice-gap targets: strict for most classes, noise-aware for GM and WM."""
    names = list(seg["class_names"])
    strict = [c for c in range(1, len(names)) if names[c].lower() not in NOISE_TOLERANT_CLASSES]
    tolerant = [c for c in range(1, len(names)) if names[c].lower() in NOISE_TOLERANT_CLASSES]
    checks = []
    if strict:
        cells, defined = [], []
        for c in strict:
            mean, std = recovery(seg, method, c)
            cells.append(f"{names[c]} {format_spread(mean, std)}")
            if mean is not None:
                defined.append(mean)
        listed = ", ".join(names[c] for c in strict)
        checks.append(_check(
            f"{method}: target segmentor recovers ≥ {GAP_RECOVERY_TARGET:.0%} of the Dice gap "
            f"({listed})",
            ", ".join(cells) + _seeds(seg),
            bool(defined) and all(v >= GAP_RECOVERY_TARGET for v in defined),
        ))  # fmt: skip
    if tolerant:
        verdicts = [_tolerant(seg, method, c) for c in tolerant]
        judged = [ok for _, ok in verdicts if ok is not None]
        listed = ", ".join(names[c] for c in tolerant)
        checks.append(_check(
            f"{method}: target segmentor recovers ≥ {GAP_RECOVERY_TARGET:.0%} of the Dice gap "
            f"({listed}), or the Dice gap itself is within segmentor-seed noise",
            "; ".join(text for text, _ in verdicts) + _seeds(seg),
            bool(judged) and all(judged),
        ))  # fmt: skip
    return checks


def _tolerant(seg: Mapping[str, Any], method: str, c: int) -> tuple[str, bool | None]:
    """One GM/WM class: its recovery, and whether it meets the target or is within noise.

    Within noise: the Dice gap itself (source→source − target→source) is smaller than its
    seed spread.
    None: nothing defined to judge.
    """
    name = seg["class_names"][c]
    mean, std = recovery(seg, method, c)
    gap, gap_std = dice_gap(seg, c)
    shown = f"{name} {format_spread(mean, std)}"
    if mean is not None and mean >= GAP_RECOVERY_TARGET:
        return shown, True
    if gap is not None and gap_std is not None and abs(gap) < gap_std:
        return (
            f"{shown}: within segmentor-seed noise, the Dice gap itself "
            f"({format_spread(gap, gap_std, 3)}) is smaller than its seed spread",
            True,
        )
    if mean is None:
        return shown, None
    # A recovery short of the target by less than its own spread is not a pass: three seeds
    # estimate the spread poorly, and the issue allows only a gap that is itself noise.
    short = GAP_RECOVERY_TARGET - mean
    return f"{shown}: {short:.2f} short of {GAP_RECOVERY_TARGET:.0%}", False


def _count(scores: Mapping[str, Any], rows: Sequence[str]) -> int:
    return sum(1 for n in rows if n in scores)
