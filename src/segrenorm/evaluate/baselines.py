"""Classical harmonization baselines: z-score, histogram matching, Nyúl, WhiteStripe.

Each is learned on the target site (its training volumes' foreground) and applied to one
source volume at a time.

* :class:`HistogramMatcher` uses dense landmarks (101 quantiles, 0 to 100%), maps a volume's
  own landmarks piecewise-linearly onto the reference's mean landmarks, and clamps beyond
  the ends.
* :class:`NyulStandardizer` follows Nyúl and Udupa (1999, 2000): landmarks at the
  ``pc1`` and ``pc2`` percentiles (1 and 99) and the deciles between them; each reference
  volume's landmarks are first mapped linearly so that its ``pc1`` and ``pc2`` land on the
  standard range ``[s1, s2]``, then averaged; the end segments extend linearly beyond.
* :class:`WhiteStripe` follows Shinohara et al. (NeuroImage Clin. 2014): the normal-appearing
  white matter is the stripe of foreground intensities whose quantile lies within
  ``±width`` of the quantile of the white-matter mode (for T1, the highest-intensity peak
  of the smoothed foreground histogram), and the volume is z-scored with that stripe's mean
  and standard deviation.

``tests/evaluate/test_baselines_reference.py`` checks Nyúl and WhiteStripe against
the ``intensity-normalization`` package.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage

from segrenorm.errors import ConfigError, InputError

__all__ = ["HistogramMatcher", "NyulStandardizer", "Stripe", "WhiteStripe", "zscore"]


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

    def fit(
        self,
        foreground_values: list[np.ndarray],
        standard_range: tuple[float, float] | None = None,
    ) -> NyulStandardizer:
        """Learn the standard scale from reference volumes.

        Each volume's landmarks are mapped linearly so that its ``pc1`` and ``pc2``
        landmarks land on ``standard_range``, then averaged (Nyúl and Udupa's training).

        Args:
            foreground_values: each reference volume's foreground intensities.
            standard_range: ``(s1, s2)``; by default the mean ``pc1`` and ``pc2`` landmarks
                of the references, so the standard scale is on the references' own scale.

        Raises:
            ValueError: no reference volumes, or one whose ``pc1`` and ``pc2`` coincide.
        """
        if not foreground_values:
            raise ValueError("NyulStandardizer.fit: no reference volumes")
        landmarks = np.asarray(
            [np.percentile(v.astype(np.float64), self.percentiles) for v in foreground_values]
        )
        spans = landmarks[:, -1] - landmarks[:, 0]
        if np.any(spans <= 0):
            bad = int(np.flatnonzero(spans <= 0)[0])
            raise ValueError(
                f"NyulStandardizer.fit: reference volume {bad} has equal pc1 and pc2 "
                "landmarks (a constant foreground); leave it out of the references"
            )
        s1, s2 = standard_range or (float(landmarks[:, 0].mean()), float(landmarks[:, -1].mean()))
        unit = (landmarks - landmarks[:, :1]) / spans[:, None]
        self.standard = s1 + (s2 - s1) * unit.mean(axis=0)
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


def _foreground(values: np.ndarray) -> np.ndarray:
    flat = np.asarray(values, dtype=np.float64).ravel()
    if flat.size < 2:
        raise InputError(f"WhiteStripe needs a foreground of 2 or more voxels, got {flat.size}")
    return flat


class Stripe(NamedTuple):
    """The white stripe of one volume.

    Args:
        mode: the white-matter mode (intensity of the last histogram peak).
        lower: the stripe's lowest intensity (the quantile ``q - width``).
        upper: the stripe's highest intensity (the quantile ``q + width``).
        mean: mean intensity of the stripe's voxels.
        std: their standard deviation.
        n_voxels: voxels in the stripe.
    """

    mode: float
    lower: float
    upper: float
    mean: float
    std: float
    n_voxels: int


class WhiteStripe:
    """WhiteStripe normalization (T1): z-score with the white-matter stripe's statistics.

    The mode is found on the foreground intensities at or below the ``tail`` percentile
    (bright outliers removed), in a histogram smoothed with a Gaussian of Scott's bandwidth
    (``std * n ** -0.2``, what a Gaussian kernel density estimate uses): the last local
    maximum whose density is at least ``min_peak`` of the largest one, or the largest
    maximum when the density has no interior peak. (The tail cut is the
    ``intensity-normalization`` package's; the R WhiteStripe package instead drops histogram
    bins under 1/5 of the highest before smoothing.) The method assumes a white-matter peak:
    on a foreground whose histogram has none (one broad GM/WM hump, e.g. a noisy,
    low-contrast scan) the stripe lands between the tissues, and the row shows it.

    :meth:`standardize` gives the plain WhiteStripe z-score (the stripe has mean 0 and
    standard deviation 1). :meth:`fit` learns the reference site's average stripe mean and
    standard deviation, and :meth:`apply` puts a volume's z-score on that scale, so its
    white matter sits where the reference's does.

    Args:
        width: half-width ``tau`` of the stripe in quantiles (0.05 in the paper).
        tail: foreground percentile above which intensities are left out of the mode search.
        min_peak: peaks lower than this fraction of the highest one are not modes.

    Raises:
        ConfigError: ``width`` outside (0, 0.5), ``tail`` outside (50, 100] or ``min_peak``
            outside [0, 1).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> brain = np.concatenate([rng.normal(0.4, 0.05, 4000), rng.normal(1.0, 0.05, 6000)])
        >>> round(WhiteStripe().stripe(brain).mode, 1)
        1.0
    """

    def __init__(self, width: float = 0.05, *, tail: float = 96.0, min_peak: float = 0.1) -> None:
        if not 0.0 < width < 0.5:
            raise ConfigError(f"WhiteStripe width {width} must be a quantile in (0, 0.5)")
        if not 50.0 < tail <= 100.0:
            raise ConfigError(f"WhiteStripe tail {tail} must be a percentile in (50, 100]")
        if not 0.0 <= min_peak < 1.0:
            raise ConfigError(f"WhiteStripe min_peak {min_peak} must be in [0, 1)")
        self.width, self.tail, self.min_peak = float(width), float(tail), float(min_peak)
        self.reference: tuple[float, float] | None = None

    def mode(self, values: np.ndarray) -> float:
        """The white-matter mode of foreground intensities (see the class docstring).

        Args:
            values: a volume's foreground intensities.

        Raises:
            InputError: fewer than two values, or constant values below the tail.
        """
        values = _foreground(values)
        kept = values[values <= np.percentile(values, self.tail)]
        low, high, spread = float(kept.min()), float(kept.max()), float(kept.std())
        if not high > low or spread == 0:
            raise InputError(
                "WhiteStripe: the foreground intensities are constant, so there is no "
                "white-matter peak; check the volume and its mask"
            )
        bandwidth = spread * kept.size**-0.2
        # Bins of a twentieth of the bandwidth place the mode to within a few per cent of it.
        n_bins = int(np.clip(np.ceil(20 * (high - low) / bandwidth), 64, 16384))
        counts, edges = np.histogram(kept, bins=n_bins, range=(low, high))
        # Zero padding beyond the ends: exactly a Gaussian kernel density estimate on the bins.
        density = ndimage.gaussian_filter1d(
            counts.astype(np.float64), bandwidth / (edges[1] - edges[0]), mode="constant"
        )
        centres = 0.5 * (edges[:-1] + edges[1:])
        inner = density[1:-1]
        peaks = np.flatnonzero((inner > density[:-2]) & (inner >= density[2:])) + 1
        peaks = peaks[density[peaks] >= self.min_peak * density.max()]
        return float(centres[peaks[-1]] if peaks.size else centres[np.argmax(density)])

    def stripe(self, values: np.ndarray, *, mode: float | None = None) -> Stripe:
        """The white stripe of a volume's foreground intensities.

        Args:
            values: a volume's foreground intensities.
            mode: the white-matter mode, when it is known; found with :meth:`mode` otherwise.

        Raises:
            InputError: no usable mode (see :meth:`mode`), or a stripe of constant intensity.
        """
        values = _foreground(values)
        mode = self.mode(values) if mode is None else float(mode)
        at = float(np.mean(values < mode))  # the mode's quantile
        bounds = (max(at - self.width, 0.0), min(at + self.width, 1.0))
        lower, upper = (float(v) for v in np.quantile(values, bounds))
        inside = values[(values >= lower) & (values <= upper)]
        std = float(inside.std())
        if std == 0:
            raise InputError(
                f"WhiteStripe: the stripe [{lower:.4g}, {upper:.4g}] around the mode {mode:.4g} "
                "has constant intensity; the foreground has too few distinct values"
            )
        return Stripe(mode, lower, upper, float(inside.mean()), std, int(inside.size))

    def standardize(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``x`` z-scored with the white stripe of its foreground (the stripe: mean 0, std 1).

        Args:
            x: a volume.
            mask: its foreground, same shape.

        Raises:
            InputError: an empty mask, or no usable stripe.
        """
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != x.shape or not mask.any():
            raise InputError(
                f"WhiteStripe: the mask {mask.shape} must match the volume {x.shape} and "
                "hold at least one voxel"
            )
        found = self.stripe(x[mask])
        return ((x.astype(np.float64) - found.mean) / found.std).astype(np.float32)

    def fit(self, foreground_values: list[np.ndarray]) -> WhiteStripe:
        """Learn the reference scale: the mean of each reference volume's stripe mean and std.

        Args:
            foreground_values: each reference volume's foreground intensities.

        Raises:
            InputError: no reference volumes, or one without a usable stripe.
        """
        if not foreground_values:
            raise InputError("WhiteStripe.fit: no reference volumes")
        stripes = [self.stripe(v) for v in foreground_values]
        self.reference = (
            float(np.mean([s.mean for s in stripes])),
            float(np.mean([s.std for s in stripes])),
        )
        return self

    def apply(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``x``'s WhiteStripe z-score on the reference's scale inside ``mask``; background kept.

        Args:
            x: a volume.
            mask: its foreground, same shape.

        Raises:
            RuntimeError: called before :meth:`fit`.
            InputError: an empty mask, or no usable stripe.
        """
        if self.reference is None:
            raise RuntimeError("WhiteStripe.apply called before fit")
        mask = np.asarray(mask, dtype=bool)
        mean, std = self.reference
        z = self.standardize(x, mask)
        out = x.astype(np.float32).copy()
        out[mask] = (z[mask] * std + mean).astype(np.float32)
        return out
