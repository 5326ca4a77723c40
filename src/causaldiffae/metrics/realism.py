"""Realism of generated images as FID and KID computed on arbitrary feature vectors.

We embed images with our own anti-causal predictors instead of Inception (no download, and the features are
tuned to the dataset), so the functions here take plain (N, F) feature matrices. FID is the Frechet distance
between Gaussians fitted to the two sets; KID (Binkowski et al., 2018) is the unbiased squared MMD with the cubic
polynomial kernel, averaged over random subsets, which is unbiased and so comparable across sample sizes.
"""

from __future__ import annotations

import numpy as np


def _features(name: str, array: np.ndarray) -> np.ndarray:
    """Return ``array`` as a finite float64 (N, F) matrix with N >= 2."""
    out = np.asarray(array, dtype=np.float64)
    if out.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (samples, features) array, got shape {np.shape(array)}")
    if out.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 rows, got {out.shape[0]}")
    if out.shape[1] < 1:
        raise ValueError(f"{name} needs at least 1 feature, got shape {out.shape}")
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return out


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate two feature matrices with the same feature count."""
    fa, fb = _features("a", a), _features("b", b)
    if fa.shape[1] != fb.shape[1]:
        raise ValueError(f"a has {fa.shape[1]} features but b has {fb.shape[1]}")
    return fa, fb


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (negative eigenvalues clipped to 0)."""
    vals, vecs = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance ||mu_a - mu_b||^2 + Tr(Ca + Cb - 2 (Ca Cb)^{1/2}) between Gaussian fits of two feature sets.

    Tr (Ca Cb)^{1/2} is computed as Tr (Ca^{1/2} Cb Ca^{1/2})^{1/2} (a similar, symmetric PSD matrix), which is
    real and stable where ``scipy.linalg.sqrtm`` of the non-symmetric product can return complex noise.
    """
    fa, fb = _pair(a, b)
    diff = fa.mean(axis=0) - fb.mean(axis=0)
    cov_a = np.atleast_2d(np.cov(fa, rowvar=False))
    cov_b = np.atleast_2d(np.cov(fb, rowvar=False))
    root_a = _sqrt_psd(cov_a)
    middle = root_a @ cov_b @ root_a
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = float(np.sum(np.sqrt(np.clip(eig, 0.0, None))))
    value = float(diff @ diff) + float(np.trace(cov_a)) + float(np.trace(cov_b)) - 2.0 * trace_sqrt
    return max(value, 0.0)


def _polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Cubic polynomial kernel k(x, y) = (x.y / F + 1)^3 between all rows of ``x`` and ``y``."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased estimate of MMD^2 between two equal-size samples with the cubic polynomial kernel."""
    m = x.shape[0]
    k_xx = _polynomial_kernel(x, x)
    k_yy = _polynomial_kernel(y, y)
    k_xy = _polynomial_kernel(x, y)
    sum_xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    sum_yy = (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(sum_xx + sum_yy - 2.0 * k_xy.mean())


def kernel_inception_distance(
    a: np.ndarray, b: np.ndarray, subsets: int = 50, subset_size: int = 500, seed: int = 0
) -> tuple[float, float]:
    """Return mean and std over random subsets of the unbiased MMD^2 (cubic kernel); subset_size <= min(N, M)."""
    fa, fb = _pair(a, b)
    if subsets < 1:
        raise ValueError(f"subsets must be >= 1, got {subsets}")
    if subset_size < 2:
        raise ValueError(f"subset_size must be >= 2, got {subset_size}")
    size = min(subset_size, fa.shape[0], fb.shape[0])
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for s in range(subsets):
        ia = rng.choice(fa.shape[0], size=size, replace=False)
        ib = rng.choice(fb.shape[0], size=size, replace=False)
        values[s] = _unbiased_mmd2(fa[ia], fb[ib])
    return float(values.mean()), float(values.std())
