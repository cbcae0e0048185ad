"""Which labelled classes the intensity scaling clips, and the warning ``prepare`` gives.

Volumes are scaled so that the upper foreground percentile maps to +1 and brighter voxels clip
there (:func:`~segrenorm.volumes.intensity.fit_scaling`). That is right for tissue, and wrong for
hyperintense classes that are a fraction of a percent of the brain: FLAIR lesions *are* the top
half-percent, so at the default 99.5th percentile nearly all their voxels become exactly +1 on
every scanner. Their contrast to white matter, the thing a harmonizer should carry over, is then
gone from training and from every lesion-contrast figure. ``prepare`` counts, per site and
class, the labelled voxels at the ceiling and warns when most of a class is there.

    >>> import numpy as np
    >>> scaled = np.array([0.2, 1.0, 1.0, 0.9])
    >>> clipped_counts(scaled, np.array([0, 1, 1, 1]), np.ones(4, bool), n_classes=2).tolist()
    [[0, 1], [2, 3]]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["CLIP_WARN_FRACTION", "MIN_CLASS_VOXELS", "clipped_counts", "clipping_warnings"]

#: Warn when more than this fraction of a class's voxels sit at +1.
CLIP_WARN_FRACTION = 0.5
#: Classes with fewer labelled voxels at a site are too small to judge.
MIN_CLASS_VOXELS = 20
#: A scaled value at or above this is at the ceiling (float32 rounding of the clip).
_CEILING = 1.0 - 1e-6


def clipped_counts(
    scaled: np.ndarray, labels: np.ndarray, mask: np.ndarray, *, n_classes: int
) -> np.ndarray:
    """Per class, (voxels at +1, voxels) inside ``mask``: an ``(n_classes, 2)`` int64 array.

    Args:
        scaled: a volume scaled to ``[-1, 1]``.
        labels: its label map (same shape; classes ``0..n_classes-1``).
        mask: the foreground the scaling was fitted in (same shape).
        n_classes: number of classes counted (labels beyond it are ignored).
    """
    inside = np.asarray(mask, dtype=bool)
    classes = np.asarray(labels)[inside].astype(np.int64)
    at_ceiling = np.asarray(scaled)[inside] >= _CEILING
    keep = classes < n_classes
    total = np.bincount(classes[keep], minlength=n_classes)[:n_classes]
    clipped = np.bincount(classes[keep & at_ceiling], minlength=n_classes)[:n_classes]
    return np.stack([clipped, total], axis=1)


def clipping_warnings(
    counts: Mapping[str, np.ndarray],
    class_names: Sequence[str],
    *,
    upper_pct: float,
    headroom: float,
) -> list[str]:
    """One message per (site, foreground class) with most of its voxels clipped at +1.

    Args:
        counts: per site name, the summed :func:`clipped_counts` of its subjects.
        class_names: the cache's class names (index 0, the background, is not judged).
        upper_pct: the cache's upper percentile.
        headroom: the cache's headroom.

    Returns:
        Messages saying what is lost and what to run instead; empty when nothing is.
    """
    ceiling = f"the {upper_pct:g}th percentile" + (
        f" raised by a headroom of {headroom:g}" if headroom > 0 else ""
    )
    advice = (
        f"prepare again with a larger --headroom ({max(1.0, 2 * headroom):g}) so that they keep "
        "their contrast"
    )
    messages = []
    for site, table in counts.items():
        for k in range(1, min(len(class_names), len(table))):
            clipped, total = (int(v) for v in table[k])
            if total >= MIN_CLASS_VOXELS and clipped > CLIP_WARN_FRACTION * total:
                messages.append(
                    f"site {site!r}: {clipped / total:.0%} of its {class_names[k]!r} voxels "
                    f"({clipped} of {total}) clip at +1 ({ceiling}): their contrast is lost to "
                    f"training and to every lesion-contrast figure; {advice}"
                )
    return messages
