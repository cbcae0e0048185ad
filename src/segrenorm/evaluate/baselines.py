"""Classical harmonization baselines: per-volume z-score and histogram matching.

Histogram matching is learned on the target site: the pooled foreground intensities of
its training volumes define landmark quantiles, and each source volume's own quantiles
are mapped piecewise-linearly onto them (Nyúl-style standardization with dense
landmarks).
"""

from __future__ import annotations

import numpy as np

__all__ = ["HistogramMatcher", "zscore"]


def zscore(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Standardize ``x`` to zero mean and unit variance inside ``mask``."""
    values = x[mask.astype(bool)]
    std = float(values.std())
    if std == 0:
        raise ValueError("zscore: the foreground is constant")
    return ((x - float(values.mean())) / std).astype(np.float32)


class HistogramMatcher:
    """Map a volume's foreground quantiles onto a reference site's.

    Args:
        n_landmarks: quantiles used as landmarks between the 1st and 99th percentile.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> target = rng.normal(0.5, 0.1, 10_000)
        >>> m = HistogramMatcher().fit([target])
        >>> out = m.apply(rng.normal(-0.2, 0.3, 10_000), np.ones(10_000, bool))
        >>> bool(abs(out.mean() - 0.5) < 0.02)
        True
    """

    def __init__(self, n_landmarks: int = 101) -> None:
        self.quantiles = np.linspace(0.0, 1.0, n_landmarks)
        self.reference: np.ndarray | None = None

    def fit(self, foreground_values: list[np.ndarray]) -> HistogramMatcher:
        """Average the landmark quantiles of each reference volume's foreground values."""
        if not foreground_values:
            raise ValueError("HistogramMatcher.fit: no reference volumes")
        per_volume = [np.quantile(v.astype(np.float64), self.quantiles) for v in foreground_values]
        self.reference = np.mean(per_volume, axis=0)
        return self

    def apply(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Return ``x`` with its foreground mapped onto the reference; background kept."""
        if self.reference is None:
            raise RuntimeError("HistogramMatcher.apply called before fit")
        mask = mask.astype(bool)
        own = np.quantile(x[mask].astype(np.float64), self.quantiles)
        # Strictly increasing landmarks keep np.interp well defined on flat histograms.
        own = np.maximum.accumulate(own + np.arange(own.size) * 1e-9)
        out = x.astype(np.float32).copy()
        out[mask] = np.interp(x[mask], own, self.reference).astype(np.float32)
        return out
