from __future__ import annotations

import importlib

import numpy as np
import pytest
import scipy.linalg
import torch

from segrenorm.errors import ConfigError, InputError
from segrenorm.evaluate.distances import fid, kid, mmd2_unbiased, polynomial_kernel


def _brute_force_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return float((np.dot(a, b) / d + 1.0) ** 3)

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2.0 * xy


def _orthogonal_sample(
    n: int, means: np.ndarray, stds: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """n samples whose sample mean and (ddof=1) covariance are exactly means, diag(stds²)."""
    z = rng.normal(size=(n, len(means)))
    q, _ = np.linalg.qr(z - z.mean(axis=0))  # orthonormal, centred columns
    return q * stds * np.sqrt(n - 1) + means


def _reference_fid(x: np.ndarray, y: np.ndarray) -> float:
    """The usual formula with scipy's general matrix square root."""
    cx, cy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = scipy.linalg.sqrtm(cx @ cy)
    diff = x.mean(0) - y.mean(0)
    return float(diff @ diff + np.trace(cx) + np.trace(cy) - 2.0 * np.trace(root).real)


def test_mmd2_matches_the_double_loop_definition() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 5))
    y = rng.normal(0.3, 1.2, size=(9, 5))
    assert mmd2_unbiased(x, y) == pytest.approx(_brute_force_mmd2(x, y), rel=1e-12)
    assert mmd2_unbiased(y, x) == pytest.approx(mmd2_unbiased(x, y), rel=1e-12)
    assert mmd2_unbiased(x.astype(np.float32), y) == pytest.approx(
        _brute_force_mmd2(x.astype(np.float32).astype(np.float64), y), rel=1e-12
    )


def test_polynomial_kernel_values() -> None:
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    b = np.array([[2.0, 2.0]])
    np.testing.assert_allclose(polynomial_kernel(a, b), [[8.0], [27.0]])


def test_kid_is_near_zero_for_one_distribution_and_positive_for_a_shift() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    same = kid(x, y, n_subsets=20, subset_size=200)
    shifted = kid(x, y + 0.5, n_subsets=20, subset_size=200)
    assert abs(same["mean"]) < 0.05
    assert shifted["mean"] > 0.5
    assert shifted["mean"] > 5 * shifted["std"]
    assert same["n_subsets"] == 20 and same["subset_size"] == 200


def test_kid_of_full_permutations_has_no_spread() -> None:
    # subset_size >= n draws every sample: each subset is a permutation, and MMD² does
    # not depend on the order of the samples.
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(30, 4)), rng.normal(1.0, 1.0, size=(30, 4))
    result = kid(x, y, n_subsets=5, subset_size=1000)
    assert result["subset_size"] == 30
    assert result["mean"] == pytest.approx(mmd2_unbiased(x, y), rel=1e-12)
    assert result["std"] < 1e-12 * abs(result["mean"])


def test_kid_uses_the_smaller_set_and_is_seeded() -> None:
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(50, 3)), rng.normal(size=(20, 3))
    first = kid(x, y, n_subsets=10, subset_size=40, seed=7)
    assert first["subset_size"] == 20
    assert kid(x, y, n_subsets=10, subset_size=40, seed=7) == first
    assert kid(x, y, n_subsets=10, subset_size=40, seed=8)["mean"] != first["mean"]
    assert kid(x, y, n_subsets=1)["std"] == 0.0


def test_fid_of_one_dimensional_gaussians() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(1.0, 2.0, size=(300, 1))
    y = rng.normal(-0.5, 0.5, size=(200, 1))
    sx, sy = x.std(ddof=1), y.std(ddof=1)
    expected = (x.mean() - y.mean()) ** 2 + (sx - sy) ** 2
    assert fid(x, y) == pytest.approx(expected, rel=1e-10)


def test_fid_of_diagonal_covariances() -> None:
    rng = np.random.default_rng(5)
    mx, my = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, -1.0])
    sx, sy = np.array([1.0, 2.0, 0.5]), np.array([3.0, 1.0, 0.5])
    x = _orthogonal_sample(50, mx, sx, rng)
    y = _orthogonal_sample(80, my, sy, rng)
    np.testing.assert_allclose(np.cov(x, rowvar=False), np.diag(sx**2), atol=1e-12)
    expected = np.sum((mx - my) ** 2) + np.sum((sx - sy) ** 2)  # 11 + 5
    assert fid(x, y) == pytest.approx(expected, rel=1e-10)


def test_fid_of_a_set_with_itself_is_zero() -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(size=(100, 16)) @ rng.normal(size=(16, 16))
    assert fid(x, x) == pytest.approx(0.0, abs=1e-9 * np.trace(np.cov(x, rowvar=False)))
    few = rng.normal(size=(10, 32))  # singular covariance: fewer samples than features
    assert fid(few, few) == pytest.approx(0.0, abs=1e-8)


def test_fid_matches_scipy_sqrtm_for_full_covariances() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6))
    y = rng.normal(0.5, 1.0, size=(150, 6)) @ rng.normal(size=(6, 6))
    assert fid(x, y) == pytest.approx(_reference_fid(x, y), rel=1e-8)
    assert fid(y, x) == pytest.approx(fid(x, y), rel=1e-10)


def test_fid_with_singular_covariances_stays_finite_and_symmetric() -> None:
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(10, 20)), rng.normal(1.0, 2.0, size=(12, 20))
    value = fid(x, y)
    assert np.isfinite(value) and value > 0
    assert fid(y, x) == pytest.approx(value, rel=1e-8)


@pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated:DeprecationWarning")
def test_fid_matches_monai() -> None:
    metrics = importlib.import_module("monai.metrics")  # a dev dependency: never skipped
    rng = np.random.default_rng(9)
    x = rng.normal(size=(120, 5)) @ rng.normal(size=(5, 5))
    y = rng.normal(0.2, 1.5, size=(90, 5))
    theirs = float(metrics.FIDMetric()(torch.from_numpy(x), torch.from_numpy(y)))
    assert fid(x, y) == pytest.approx(theirs, rel=1e-8)


@pytest.mark.parametrize(
    ("x_shape", "y_shape", "message"),
    [
        ((5,), (5, 3), r"\(n_samples, n_features\), got x \(5,\), y \(5, 3\)"),
        ((1, 3), (5, 3), r"at least 2 samples, got x \(1, 3\), y \(5, 3\)"),
        ((4, 3), (5, 2), r"feature dimensions differ, got x \(4, 3\), y \(5, 2\)"),
    ],
)
def test_bad_feature_arrays_are_refused(
    x_shape: tuple[int, ...], y_shape: tuple[int, ...], message: str
) -> None:
    x, y = np.zeros(x_shape), np.zeros(y_shape)
    for func in (mmd2_unbiased, kid, fid):
        with pytest.raises(InputError, match=message):
            func(x, y)


def test_non_finite_features_are_refused() -> None:
    x, y = np.zeros((4, 3)), np.ones((5, 3))
    y[2, 1] = np.nan
    with pytest.raises(InputError, match=r"fid: y holds 1 non-finite values.*y \(5, 3\)"):
        fid(x, y)
    with pytest.raises(InputError, match=r"kid: y holds 1 non-finite"):
        kid(x, y)


def test_bad_kid_options_are_refused() -> None:
    x = np.zeros((4, 3))
    with pytest.raises(ConfigError, match="n_subsets=0 must be >= 1"):
        kid(x, x, n_subsets=0)
    with pytest.raises(ConfigError, match="subset_size=1 must be >= 2"):
        kid(x, x, subset_size=1)
