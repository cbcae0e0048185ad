"""Distances between two sets of feature vectors: KID (unbiased MMD²) and FID.

Both compare rows of ``x`` (N, d) with rows of ``y`` (M, d), e.g. autoencoder
bottleneck features (see :mod:`segrenorm.evaluate.features`) of harmonized and of
target-scanner slices. Everything is computed in float64.

KID (Bińkowski et al., 2018) is the unbiased MMD² under the cubic polynomial kernel
``k(a, b) = (aᵀb / d + 1)³``, averaged over random subsets; FID (Heusel et al., 2017) is
the Fréchet distance between Gaussians fitted to the two sets.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.normal(size=(200, 4)), rng.normal(size=(200, 4))
    >>> abs(mmd2_unbiased(x, y)) < 0.1
    True
    >>> fid(x, x + 1.0) > 3.9
    True
"""

from __future__ import annotations

import numpy as np

from segrenorm.errors import ConfigError, InputError

__all__ = ["fid", "kid", "mmd2_unbiased", "polynomial_kernel"]


def _check_pair(x: np.ndarray, y: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Return ``x`` and ``y`` as float64 (N, d) arrays, or raise :class:`InputError`."""
    x = np.asarray(x)
    y = np.asarray(y)
    shapes = f"x {x.shape}, y {y.shape}"
    if x.ndim != 2 or y.ndim != 2:
        raise InputError(
            f"{what}: expected two feature matrices (n_samples, n_features), got {shapes}; "
            "flatten or pool each sample to one feature vector first."
        )
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise InputError(f"{what}: each set needs at least 2 samples, got {shapes}.")
    if x.shape[1] != y.shape[1]:
        raise InputError(
            f"{what}: feature dimensions differ, got {shapes}; extract both sets with the "
            "same feature extractor."
        )
    if x.shape[1] == 0:
        raise InputError(f"{what}: the feature dimension is 0, got {shapes}.")
    x = x.astype(np.float64, copy=False)
    y = y.astype(np.float64, copy=False)
    for name, a in (("x", x), ("y", y)):
        if not np.isfinite(a).all():
            bad = int(np.count_nonzero(~np.isfinite(a)))
            raise InputError(
                f"{what}: {name} holds {bad} non-finite values (NaN or inf), got {shapes}; "
                "check the images and the feature extractor."
            )
    return x, y


def polynomial_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cubic polynomial kernel matrix ``(a bᵀ / d + 1)³`` of two float (N, d), (M, d) arrays.

    Args:
        a: first set of feature vectors (N, d).
        b: second set of feature vectors (M, d).

    Returns:
        The (N, M) kernel matrix, float64.
    """
    d = a.shape[1]
    return np.asarray((a @ b.T / d + 1.0) ** 3, dtype=np.float64)


def _mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² of already checked float64 arrays."""
    m, n = x.shape[0], y.shape[0]
    kxx = polynomial_kernel(x, x)
    kyy = polynomial_kernel(y, y)
    kxy = polynomial_kernel(x, y)
    # The diagonal terms k(x_i, x_i) are what make the plain V-statistic biased.
    sum_xx = kxx.sum() - np.trace(kxx)
    sum_yy = kyy.sum() - np.trace(kyy)
    return float(sum_xx / (m * (m - 1)) + sum_yy / (n * (n - 1)) - 2.0 * kxy.mean())


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased estimate of MMD² between the distributions of ``x`` and ``y``.

    Mean of ``k(x_i, x_j)`` over i ≠ j, plus the same for ``y``, minus twice the mean of
    ``k(x_i, y_j)``, with the kernel of :func:`polynomial_kernel`. May be slightly
    negative when the two distributions are equal.

    Args:
        x: feature vectors (N, d), N >= 2.
        y: feature vectors (M, d), M >= 2.

    Returns:
        The estimate as a Python float.

    Raises:
        InputError: arrays that are not 2-D, sets with fewer than 2 samples, differing
            feature dimensions or non-finite values.
    """
    x, y = _check_pair(x, y, "mmd2_unbiased")
    return _mmd2(x, y)


def kid(
    x: np.ndarray,
    y: np.ndarray,
    *,
    n_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Kernel Inception Distance: unbiased MMD² averaged over random subsets.

    Each subset draws ``subset_size`` rows of ``x`` and, independently, of ``y``, both
    without replacement. The spread is the population standard deviation over subsets
    (0 when ``n_subsets`` is 1).

    Args:
        x: feature vectors (N, d), N >= 2.
        y: feature vectors (M, d), M >= 2.
        n_subsets: number of subsets to average over (>= 1).
        subset_size: rows per subset (>= 2); reduced to ``min(N, M)`` when larger.
        seed: seed of the numpy Generator that draws the subsets.

    Returns:
        ``{"mean", "std", "n_subsets", "subset_size"}`` where ``subset_size`` is the
        size actually used.

    Raises:
        InputError: bad feature arrays (see :func:`mmd2_unbiased`).
        ConfigError: ``n_subsets`` < 1 or ``subset_size`` < 2.
    """
    if n_subsets < 1:
        raise ConfigError(f"kid: n_subsets={n_subsets} must be >= 1.")
    if subset_size < 2:
        raise ConfigError(
            f"kid: subset_size={subset_size} must be >= 2 (the unbiased MMD² needs pairs)."
        )
    x, y = _check_pair(x, y, "kid")
    size = min(subset_size, x.shape[0], y.shape[0])
    rng = np.random.default_rng(seed)
    values = np.empty(n_subsets, dtype=np.float64)
    for i in range(n_subsets):
        ix = rng.choice(x.shape[0], size=size, replace=False)
        iy = rng.choice(y.shape[0], size=size, replace=False)
        values[i] = _mmd2(x[ix], y[iy])
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "n_subsets": n_subsets,
        "subset_size": size,
    }


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix."""
    w, v = np.linalg.eigh((a + a.T) / 2.0)
    return np.asarray((v * np.sqrt(np.clip(w, 0.0, None))) @ v.T)


def fid(x: np.ndarray, y: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to ``x`` and ``y``.

    ``‖μx − μy‖² + Tr(Σx + Σy − 2 (Σx Σy)^½)`` with sample covariances (ddof=1). The
    trace of the square root is taken from the eigenvalues of the symmetric PSD matrix
    ``Σx^½ Σy Σx^½``, which has the same spectrum as ``Σx Σy``; tiny negative
    eigenvalues from rounding are clipped, so singular covariances (fewer samples than
    features) need no regularisation. The result is clipped at 0.

    Args:
        x: feature vectors (N, d), N >= 2.
        y: feature vectors (M, d), M >= 2.

    Returns:
        The distance as a Python float (squared units of the features).

    Raises:
        InputError: bad feature arrays (see :func:`mmd2_unbiased`).
    """
    x, y = _check_pair(x, y, "fid")
    diff = x.mean(axis=0) - y.mean(axis=0)
    cov_x = np.atleast_2d(np.cov(x, rowvar=False, ddof=1))  # (d, d)
    cov_y = np.atleast_2d(np.cov(y, rowvar=False, ddof=1))
    root_x = _sqrtm_psd(cov_x)
    middle = root_x @ cov_y @ root_x
    eig = np.linalg.eigvalsh((middle + middle.T) / 2.0)
    tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    value = float(diff @ diff + np.trace(cov_x) + np.trace(cov_y) - 2.0 * tr_covmean)
    return max(value, 0.0)
