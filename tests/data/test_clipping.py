"""The clipped-class count and prepare's warning about it."""

from __future__ import annotations

import numpy as np

from segrenorm.data.clipping import (
    CLIP_WARN_FRACTION,
    MIN_CLASS_VOXELS,
    clipped_counts,
    clipping_warnings,
)


def test_clipped_counts_by_hand() -> None:
    scaled = np.array([[1.0, 1.0, 0.5], [0.9999999, -1.0, 1.0]], dtype=np.float32)
    labels = np.array([[2, 2, 2], [1, 0, 0]])
    mask = np.array([[True, True, True], [True, True, False]])  # the last voxel is outside
    counts = clipped_counts(scaled, labels, mask, n_classes=3)
    # class 0: one voxel inside (at -1); class 1: one voxel at 0.9999999 (the float32 clip);
    # class 2: two of three at 1.
    np.testing.assert_array_equal(counts, [[0, 1], [1, 1], [2, 3]])
    # Labels beyond n_classes are not counted.
    fewer = clipped_counts(scaled, labels, mask, n_classes=2)
    np.testing.assert_array_equal(fewer, [[0, 1], [1, 1]])


def test_clipping_warnings_name_the_site_class_and_what_to_do() -> None:
    names = ["background", "lesion", "tissue"]
    just_over = MIN_CLASS_VOXELS * 2
    counts = {
        "SA": np.array([[900, 1000], [int(0.93 * 400), 400], [10, 5000]]),
        # exactly at the warning fraction: not more than it, so no warning
        "SV": np.array([[0, 10], [int(CLIP_WARN_FRACTION * just_over), just_over], [0, 10]]),
        # most of the class clips, but too few voxels to judge
        "PI": np.array([[0, 10], [MIN_CLASS_VOXELS - 1, MIN_CLASS_VOXELS - 1], [0, 10]]),
    }
    messages = clipping_warnings(counts, names, upper_pct=99.5, headroom=0.0)
    assert messages == [
        "site 'SA': 93% of its 'lesion' voxels (372 of 400) clip at +1 (the 99.5th percentile): "
        "their contrast is lost to training and to every lesion-contrast figure; prepare again "
        "with a larger --headroom (1) so that they keep their contrast"
    ]  # the background (900 of 1000 clipped) is never judged
    again = clipping_warnings({"SA": counts["SA"]}, names, upper_pct=99.0, headroom=1.0)
    assert len(again) == 1
    assert "(the 99th percentile raised by a headroom of 1)" in again[0]
    assert "a larger --headroom (2)" in again[0]
    assert clipping_warnings({"SA": counts["SA"][:1]}, names, upper_pct=99.5, headroom=0) == []
