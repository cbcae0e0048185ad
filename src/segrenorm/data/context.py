"""2.5-D input: which slices make up a slice's context stack (the one neighbour rule).

With ``data.context_slices = k`` (odd) a slice at index ``z`` is given to the networks with
its neighbours ``z - k//2 .. z + k//2`` of the same volume as channels, the slice itself at
the centre. A neighbour that does not exist, because it lies past the volume's edge or
because ``segrenorm prepare`` skipped it (too little foreground), is replaced by the
nearest available slice toward the centre: a neighbour above ``z`` by the highest available
index at or below it, one below ``z`` by the lowest at or above it. At a volume's edge that
replicates the edge slice.

Training and evaluation apply the rule to the slices a cache holds of each subject
(:meth:`segrenorm.data.slice_cache.SliceCache.context_rows`); harmonization to every slice
of the volume along the view (:func:`segrenorm.harmonize.fusion.translate_view`), where
only the volume's edges are missing.

Example:
    >>> context_positions(np.array([0, 1, 2, 4]), 3).tolist()  # slice 3 was skipped
    [[0, 0, 1], [0, 1, 2], [1, 2, 2], [3, 3, 3]]
"""

from __future__ import annotations

import numpy as np

from segrenorm.errors import ConfigError

__all__ = ["check_context", "context_positions"]


def check_context(k: int) -> int:
    """Return ``k`` if it is a valid context size (odd, at least 1), else raise.

    Args:
        k: slices per context stack.

    Raises:
        ConfigError: ``k`` is not an odd positive integer.
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1 or k % 2 == 0:
        raise ConfigError(
            f"context_slices={k!r} must be an odd number of slices >= 1 (the slice at the "
            "centre, as many neighbours on each side): use 1, 3, 5, ..."
        )
    return int(k)


def context_positions(index: np.ndarray, k: int) -> np.ndarray:
    """The context stack of every slice of one volume, as positions into ``index``.

    Args:
        index: (n,) slice indices available of one volume, strictly increasing (e.g. a
            subject's rows of a cache's ``slices.npy``, or ``arange(n)`` for a whole volume).
        k: slices per stack, odd.

    Returns:
        (n, k) int64 array: row ``j`` holds the positions (into ``index``) of the slices
        ``index[j] - k//2 .. index[j] + k//2``, a missing one replaced by the nearest
        available slice toward the centre; column ``k//2`` is ``j`` itself.

    Raises:
        ConfigError: ``k`` is not odd and positive, or ``index`` is not strictly increasing.
    """
    k = check_context(k)
    z = np.asarray(index, dtype=np.int64).reshape(-1)
    if np.any(np.diff(z) <= 0):
        raise ConfigError(
            f"slice indices {z.tolist()[:12]} are not strictly increasing: a volume's slices "
            "must each appear once, in order (is the cache's slices.npy corrupt?)"
        )
    half = k // 2
    columns = []
    for offset in range(-half, half + 1):
        wanted = z + offset
        if offset > 0:  # the highest available slice at or below the wanted one (>= z)
            columns.append(np.searchsorted(z, wanted, side="right") - 1)
        else:  # the lowest available slice at or above the wanted one (<= z)
            columns.append(np.searchsorted(z, wanted, side="left"))
    return np.stack(columns, axis=1).astype(np.int64)
