"""Classical harmonization baselines: per-volume z-score, histogram matching, Nyúl.

Both histogram methods are learned on the target site: each of its training volumes gives
landmark quantiles of its foreground, and the mean landmarks are the standard scale. A
source volume's own landmarks are mapped piecewise-linearly onto it.

* :class:`HistogramMatcher` uses dense landmarks (101 quantiles, 0 to 100%) and clamps
  beyond the ends.
* :class:`NyulStandardizer` follows Nyúl and Udupa (1999, 2000): landmarks at the
  ``pc1`` and ``pc2`` percentiles (1 and 99) and the deciles between them, with the end
  segments extended linearly beyond them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["HistogramMatcher", "NyulStandardizer", "zscore"]


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


class NyulStandardizer:
    """Nyúl-Udupa piecewise-linear intensity standardization onto a reference site.

    Args:
        percentiles: landmark percentiles of the foreground, increasing; the first and last
            are ``pc1`` and ``pc2`` (default 1, 10, 20, ..., 90, 99).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> ref = [rng.normal(0.5, 0.1, 10_000) for _ in range(3)]
        >>> nyul = NyulStandardizer().fit(ref)
        >>> out = nyul.apply(rng.normal(-0.2, 0.3, 10_000), np.ones(10_000, bool))
        >>> bool(abs(np.median(out) - 0.5) < 0.02)
        True
    """

    def __init__(self, percentiles: tuple[float, ...] | None = None) -> None:
        pcts = percentiles or (1.0, *range(10, 100, 10), 99.0)
        self.percentiles = np.asarray(pcts, dtype=np.float64)
        if self.percentiles.size < 2 or np.any(np.diff(self.percentiles) <= 0):
            raise ValueError(f"Nyul percentiles {pcts} must be at least two increasing values")
        if self.percentiles[0] < 0 or self.percentiles[-1] > 100:
            raise ValueError(f"Nyul percentiles {pcts} must lie in [0, 100]")
        self.standard: np.ndarray | None = None

    def fit(self, foreground_values: list[np.ndarray]) -> NyulStandardizer:
        """Average each reference volume's landmarks into the standard scale."""
        if not foreground_values:
            raise ValueError("NyulStandardizer.fit: no reference volumes")
        landmarks = [
            np.percentile(v.astype(np.float64), self.percentiles) for v in foreground_values
        ]
        self.standard = np.mean(landmarks, axis=0)
        return self

    def apply(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Map ``x``'s foreground onto the standard scale; background kept."""
        if self.standard is None:
            raise RuntimeError("NyulStandardizer.apply called before fit")
        mask = mask.astype(bool)
        own = np.percentile(x[mask].astype(np.float64), self.percentiles)
        own = np.maximum.accumulate(own + np.arange(own.size) * 1e-9)
        values = x[mask].astype(np.float64)
        out = np.interp(values, own, self.standard)
        # Beyond pc1 and pc2 the end segments continue linearly (Nyul's extrapolation).
        low_slope = (self.standard[1] - self.standard[0]) / (own[1] - own[0])
        high_slope = (self.standard[-1] - self.standard[-2]) / (own[-1] - own[-2])
        below, above = values < own[0], values > own[-1]
        out[below] = self.standard[0] + (values[below] - own[0]) * low_slope
        out[above] = self.standard[-1] + (values[above] - own[-1]) * high_slope
        result = x.astype(np.float32).copy()
        result[mask] = out.astype(np.float32)
        return result
