"""Segmentor-seed spread in words: mean ± std cells, ties and "within segmentor-seed noise".

The segmentation lens reports each Dice-gap recovery as its mean over the post-hoc
segmentor seeds with the sample standard deviation over seeds
(:mod:`segrenorm.evaluate.downstream`). A difference smaller than that spread is not a
difference: two recoveries closer than the larger of their spreads are a **tie**, and a Dice
gap smaller than its spread is **within segmentor-seed noise**. Results without a
spread (one seed, or results written before seeds existed) get no such statement.

Example:
    >>> seg = {"class_names": ["bg", "csf"], "gap_recovery": {"a": [0.0, 0.75], "b": [0.0, 0.8]},
    ...        "gap_recovery_seed_std": {"a": [0.0, 0.1], "b": [0.0, 0.05]}}
    >>> compare_recoveries(seg, "a", "b", 1)
    'tie (-0.05, spread 0.10)'
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = [
    "compare_recoveries",
    "dice_gap",
    "format_spread",
    "recovery",
    "recovery_difference",
    "seed_count",
]


def _value(value: Any) -> float | None:
    """A plain float, or None for a missing, NaN or non-numeric value (e.g. JSON ``"nan"``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) else float(value)


def _at(values: Any, index: int) -> float | None:
    if not isinstance(values, (list, tuple)) or index >= len(values):
        return None
    return _value(values[index])


def seed_count(seg: Mapping[str, Any]) -> int:
    """How many segmentor seeds the lens averaged (1 for results without the record).

    Args:
        seg: ``results["segmentation"]``.
    """
    return len(seg.get("segmentor_seeds") or [0])


def recovery(seg: Mapping[str, Any], method: str, index: int) -> tuple[float | None, float | None]:
    """``(mean, seed std)`` of a method's gap recovery for class ``index``.

    Args:
        seg: ``results["segmentation"]``.
        method: the method's row name.
        index: the class (0 is background).
    """
    mean = _at(seg.get("gap_recovery", {}).get(method), index)
    std = _at((seg.get("gap_recovery_seed_std") or {}).get(method), index)
    return mean, std


def dice_gap(seg: Mapping[str, Any], index: int) -> tuple[float | None, float | None]:
    """``(mean, seed std)`` of Dice[source→source] − Dice[target→source] for class ``index``.

    Args:
        seg: ``results["segmentation"]``.
        index: the class (0 is background).
    """
    gap = seg.get("dice_gap") or {}
    return _at(gap.get("mean"), index), _at(gap.get("seed_std"), index)


def format_spread(mean: float | None, std: float | None, digits: int = 2) -> str:
    """``mean ± std``; the mean alone without a spread; a dash without a mean.

    Args:
        mean: the mean over seeds.
        std: the spread over seeds, or None.
        digits: decimals shown.
    """
    if mean is None:
        return "–"
    if std is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def recovery_difference(
    seg: Mapping[str, Any], method: str, other: str, index: int
) -> tuple[float, float | None, bool] | None:
    """``method``'s recovery minus ``other``'s for class ``index``, against the seed spread.

    Args:
        seg: ``results["segmentation"]``.
        method: the row compared.
        other: the row it is compared with.
        index: the class (0 is background).

    Returns:
        ``(difference, spread, tie)``: the spread is the larger of the two seed standard
        deviations (None without any), and a tie is a difference smaller than it (or none
        at all). None when either recovery is undefined.
    """
    (a, sa), (b, sb) = recovery(seg, method, index), recovery(seg, other, index)
    if a is None or b is None:
        return None
    diff = a - b
    spreads = [s for s in (sa, sb) if s is not None]
    spread = max(spreads) if spreads else None
    tie = diff == 0 or (spread is not None and abs(diff) < spread)
    return diff, spread, tie


def compare_recoveries(seg: Mapping[str, Any], method: str, other: str, index: int) -> str:
    """:func:`recovery_difference` in words: a tie, or the difference beyond the spread.

    Args:
        seg: ``results["segmentation"]``.
        method: the row compared.
        other: the row it is compared with.
        index: the class (0 is background).
    """
    found = recovery_difference(seg, method, other, index)
    if found is None:
        return "–"
    diff, spread, tie = found
    if spread is None:
        return "tie (no difference)" if tie else f"{diff:+.2f} (no seed spread)"
    if tie:
        return f"tie ({diff:+.2f}, spread {spread:.2f})"
    return f"{diff:+.2f}, beyond seed spread {spread:.2f}"
