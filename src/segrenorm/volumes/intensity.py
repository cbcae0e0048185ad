"""Intensity preprocessing: robust scaling to ``[-1, 1]`` and automatic foreground masks.

Pure NumPy/SciPy on in-memory arrays. Images are scaled to ``[-1, 1]`` because the generators
end in ``tanh``; label maps are never intensity-scaled.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import ndimage

from segrenorm.errors import ConfigError, InputError

__all__ = ["MAX_HEADROOM", "IntensityScaling", "check_headroom", "fit_scaling", "foreground_mask"]


def _check_percentiles(lower_pct: float, upper_pct: float) -> None:
    if not 0.0 <= lower_pct < upper_pct <= 100.0:
        raise ConfigError(
            f"percentiles must satisfy 0 <= lower < upper <= 100, got {lower_pct}, {upper_pct}"
        )


#: Largest accepted headroom: 10 percentile ranges above the upper percentile would leave the
#: tissue a tenth of [-1, 1].
MAX_HEADROOM = 10.0


def check_headroom(headroom: float) -> float:
    """Return ``headroom`` as a float if it lies in ``[0, MAX_HEADROOM]``, else raise.

    Raises:
        ConfigError: a negative, non-finite or too large value.
    """
    value = float(headroom)
    if not (np.isfinite(value) and 0.0 <= value <= MAX_HEADROOM):
        raise ConfigError(
            f"headroom {headroom!r} must be between 0 and {MAX_HEADROOM:g}: the fraction of the "
            "percentile range kept above the upper percentile (1 for FLAIR lesions)"
        )
    return value


def _check_mask_shape(mask: np.ndarray, shape: tuple[int, ...]) -> None:
    if mask.shape != shape:
        raise InputError(f"mask shape {mask.shape} differs from image shape {shape}")


# --------------------------------------------------------------------------- intensities


@dataclasses.dataclass(frozen=True)
class IntensityScaling:
    """A linear map of one volume's intensities to ``[-1, 1]``, clipped, and its inverse.

    ``low`` maps to -1 and ``high`` to 1. ``low`` is the volume's ``lower_pct`` intensity
    percentile inside its foreground; ``high`` is its ``upper_pct`` percentile, raised by
    ``headroom`` times the percentile range so that hyperintensities above it (FLAIR lesions)
    keep their contrast instead of clipping at 1 (see :func:`fit_scaling`). Stored per subject
    in the cache manifest so that harmonized slices can be put back on the scanner's scale.

    Args:
        low: intensity mapped to -1.
        high: intensity mapped to 1 (must be greater than ``low``).
        lower_pct: percentile that ``low`` was taken at (kept for the record).
        upper_pct: percentile that the range above ``low`` was measured at.
        headroom: fraction of that percentile range added above it to give ``high`` (kept for
            the record; 0 means ``high`` is the percentile itself).

    Example:
        >>> s = IntensityScaling(low=0.0, high=100.0, lower_pct=0.5, upper_pct=99.5)
        >>> s.apply(np.array([0.0, 50.0, 200.0])).tolist()
        [-1.0, 0.0, 1.0]
    """

    low: float
    high: float
    lower_pct: float = 0.5
    upper_pct: float = 99.5
    headroom: float = 0.0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.low) and np.isfinite(self.high)) or self.high <= self.low:
            raise ConfigError(
                f"intensity scaling needs finite low < high, got low={self.low}, high={self.high}"
            )
        _check_percentiles(self.lower_pct, self.upper_pct)
        check_headroom(self.headroom)

    def apply(self, x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Scale intensities to float32 in ``[-1, 1]``; voxels outside ``mask`` become -1.

        Args:
            x: intensities (any shape).
            mask: optional boolean foreground of the same shape.
        """
        y = (np.asarray(x, dtype=np.float64) - self.low) * (2.0 / (self.high - self.low)) - 1.0
        y = np.clip(y, -1.0, 1.0).astype(np.float32)
        if mask is not None:
            _check_mask_shape(mask, y.shape)
            y[~mask.astype(bool)] = -1.0
        return y

    def invert(self, y: np.ndarray) -> np.ndarray:
        """Map values in ``[-1, 1]`` back to the original intensity scale (float32).

        Args:
            y: scaled values, e.g. a harmonized slice.
        """
        y64 = np.asarray(y, dtype=np.float64)
        return ((y64 + 1.0) * (0.5 * (self.high - self.low)) + self.low).astype(np.float32)

    def to_dict(self) -> dict[str, float]:
        """Plain-JSON form, as stored in the cache manifest."""
        return {
            "low": float(self.low),
            "high": float(self.high),
            "lower_pct": float(self.lower_pct),
            "upper_pct": float(self.upper_pct),
            "headroom": float(self.headroom),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> IntensityScaling:
        """Rebuild from :meth:`to_dict` output.

        Args:
            values: mapping with keys ``low``, ``high``, ``lower_pct``, ``upper_pct`` and,
                optionally, ``headroom`` (0 when absent: caches from before it existed).

        Raises:
            ConfigError: on a missing key or a non-numeric value.
        """
        keys = ("low", "high", "lower_pct", "upper_pct")
        missing = [k for k in keys if k not in values]
        if missing:
            raise ConfigError(f"intensity scaling {dict(values)!r} lacks {', '.join(missing)}")
        try:
            numbers = [float(values[k]) for k in keys]
            headroom = float(values.get("headroom", 0.0))
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"intensity scaling {dict(values)!r} has a non-numeric value"
            ) from exc
        low, high, lower_pct, upper_pct = numbers
        return cls(low, high, lower_pct, upper_pct, headroom)


def fit_scaling(
    data: np.ndarray,
    mask: np.ndarray | None = None,
    lower_pct: float = 0.5,
    upper_pct: float = 99.5,
    headroom: float = 0.0,
) -> IntensityScaling:
    """Fit an :class:`IntensityScaling` to the robust intensity range of one volume.

    Percentiles are taken inside ``mask`` so that the (large, dark) background does not pull
    ``low`` to zero and bright outliers (vessels, fat) do not stretch ``high``.

    Args:
        data: the volume's intensities.
        mask: optional boolean foreground of the same shape.
        lower_pct: percentile mapped to -1.
        upper_pct: percentile mapped to 1 when ``headroom`` is 0.
        headroom: map ``p_upper + headroom * (p_upper - p_lower)`` to 1 instead, so that
            intensities up to that far above the upper percentile stay unclipped. FLAIR lesions
            are the brightest fraction of a percent of the brain: at the default 99.5th
            percentile and no headroom nearly all lesion voxels clip to 1.

    Example:
        >>> values = np.arange(101.0)
        >>> fit_scaling(values, lower_pct=0.0, upper_pct=50.0, headroom=0.5).high
        75.0

    Raises:
        ConfigError: percentiles or headroom out of range.
        InputError: if the mask is empty or the intensities inside it are constant.
    """
    _check_percentiles(lower_pct, upper_pct)
    headroom = check_headroom(headroom)
    values = np.asarray(data)
    if mask is not None:
        _check_mask_shape(mask, values.shape)
        values = values[mask.astype(bool)]
    if values.size == 0:
        raise InputError("cannot fit an intensity scaling: the foreground mask is empty")
    low, high = (float(v) for v in np.percentile(values, [lower_pct, upper_pct]))
    if high <= low:
        # Heavily quantised data (e.g. a few grey levels) can tie at both percentiles.
        low, high = float(values.min()), float(values.max())
    if high <= low:
        raise InputError(
            f"cannot fit an intensity scaling: every foreground intensity equals {low:g}"
        )
    high += headroom * (high - low)
    return IntensityScaling(
        low=low, high=high, lower_pct=lower_pct, upper_pct=upper_pct, headroom=headroom
    )


# --------------------------------------------------------------------------- foreground


def _otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut maximising the between-class variance of a histogram."""
    hist, edges = np.histogram(values, bins=bins)
    centers = 0.5 * (edges[:-1] + edges[1:])
    weight_low = np.cumsum(hist).astype(np.float64)
    weight_high = weight_low[-1] - weight_low
    mass_low = np.cumsum(hist * centers)
    mean_low = mass_low / np.maximum(weight_low, 1.0)
    mean_high = (mass_low[-1] - mass_low) / np.maximum(weight_high, 1.0)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def _auto_threshold(arr: np.ndarray) -> float:
    # Subsample big volumes: the histogram only needs a few million values.
    flat = arr.ravel()
    flat = flat[:: max(1, flat.size // 2_000_000)]
    low = float(flat.min())
    high = float(np.percentile(flat, 99.0))
    if high <= low:
        high = float(flat.max())
    otsu = _otsu_threshold(np.clip(flat, low, high))
    # Otsu alone can cut dark tissue (CSF, marrow) off the head; 10 % of the bright end is above
    # MR background noise, so the lower of the two keeps the head whole.
    return min(otsu, low + 0.1 * (high - low))


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    return labels == int(np.argmax(counts))


def foreground_mask(data: np.ndarray, *, threshold: float | None = None) -> np.ndarray:
    """An automatic head/brain foreground: threshold, largest component, fill holes.

    Args:
        data: a 2D or 3D intensity array.
        threshold: intensities above it are candidate foreground; by default the lower of
            Otsu's threshold and 10 % of the range from the minimum to the 99th percentile.

    Returns:
        A boolean array of ``data``'s shape.

    Raises:
        InputError: if no voxel lies above the threshold.
    """
    arr = np.asarray(data, dtype=np.float32)
    if arr.ndim not in (2, 3):
        raise InputError(f"foreground_mask needs a 2D or 3D array, got shape {arr.shape}")
    cut = _auto_threshold(arr) if threshold is None else float(threshold)
    mask = arr > cut
    if not mask.any():
        raise InputError(
            f"no voxel is above the foreground threshold {cut:g} (intensity range "
            f"{float(arr.min()):g}..{float(arr.max()):g}); pass a lower threshold or disable "
            "the mask"
        )
    # Noise above the threshold is scattered specks; the head is one big connected object.
    mask = _largest_component(mask)
    return np.asarray(ndimage.binary_fill_holes(mask), dtype=bool)
