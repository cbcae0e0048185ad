"""Image similarity metrics for paired ground truth, restricted to a foreground mask.

SSIM follows Wang et al. (2004): Gaussian window sigma 1.5 truncated at 3.5 sigma
(an 11x11 window), K1 = 0.01, K2 = 0.03, population covariances. ``ssim`` averages the
SSIM map over the mask, so background (identical -1 in both images) does not inflate it.

Example:
    >>> import numpy as np
    >>> x = np.linspace(-1, 1, 64 * 64).reshape(64, 64)
    >>> round(ssim(x, x, data_range=2.0), 6)
    1.0
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["mae", "psnr", "ssim", "ssim_map"]

_SIGMA = 1.5
_TRUNCATE = 3.5


def ssim_map(x: np.ndarray, y: np.ndarray, *, data_range: float) -> np.ndarray:
    """Per-pixel SSIM of two same-shaped 2D (or 3D, slice-wise along axis 0) arrays.

    Args:
        x: reference image, (H, W) or (N, H, W).
        y: compared image, same shape.
        data_range: the intensities' dynamic range (2.0 for images in [-1, 1]).

    Returns:
        float64 array of x's shape.
    """
    if x.shape != y.shape:
        raise ValueError(f"ssim: shapes differ, {x.shape} vs {y.shape}")
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    sigma = (0.0, _SIGMA, _SIGMA) if x.ndim == 3 else _SIGMA

    def blur(a: np.ndarray) -> np.ndarray:
        return np.asarray(ndimage.gaussian_filter(a, sigma, truncate=_TRUNCATE, mode="reflect"))

    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cxy = blur(x * y) - mx * my
    num = (2 * mx * my + c1) * (2 * cxy + c2)
    den = (mx * mx + my * my + c1) * (vx + vy + c2)
    return np.asarray(num / den)


def _masked_mean(values: np.ndarray, mask: np.ndarray | None) -> float:
    if mask is None:
        return float(values.mean())
    mask = mask.astype(bool)
    if not mask.any():
        raise ValueError("metric: the mask is empty")
    return float(values[mask].mean())


def ssim(
    x: np.ndarray, y: np.ndarray, *, data_range: float = 2.0, mask: np.ndarray | None = None
) -> float:
    """Mean SSIM over ``mask`` (all pixels when None)."""
    return _masked_mean(ssim_map(x, y, data_range=data_range), mask)


def mae(x: np.ndarray, y: np.ndarray, *, mask: np.ndarray | None = None) -> float:
    """Mean absolute error over ``mask``."""
    return _masked_mean(np.abs(x.astype(np.float64) - y.astype(np.float64)), mask)


def psnr(
    x: np.ndarray, y: np.ndarray, *, data_range: float = 2.0, mask: np.ndarray | None = None
) -> float:
    """Peak signal-to-noise ratio in dB over ``mask``; inf for identical inputs."""
    mse = _masked_mean((x.astype(np.float64) - y.astype(np.float64)) ** 2, mask)
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(data_range**2 / mse))
