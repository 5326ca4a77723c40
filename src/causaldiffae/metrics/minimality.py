"""Minimality of counterfactuals as the counterfactual latent divergence (CLD) of Melistas et al. (NeurIPS D&B 2024).

A counterfactual should change an image only as much as the intervention requires. CLD compares the embedding
distance d between a factual x and its counterfactual x' (intervention on variable k) with distances from x to
real reference images: p1 is the fraction of references whose k falls in the counterfactual's bin that lie at
most d from x (large p1: x' moved further than real images that already have the new value), and p2 the fraction
of references sharing x's own bin of k that lie at least d from x (large p2: x' barely moved). CLD is
log(0.8 exp(p1) + 0.2 exp(p2)); lower is better. Embeddings are any feature vectors; d is the mean absolute
difference over features.
"""

from __future__ import annotations

from typing import Any

import numpy as np

W1 = 0.8
W2 = 0.2
_CHUNK_ELEMENTS = 1 << 23  # bound on the temporary (rows x references x features) array of one chunk


def quantile_bins(values: np.ndarray, n_bins: int = 10) -> np.ndarray:
    """Return the n_bins - 1 inner quantile edges of ``values`` (NaN ignored), for use with np.searchsorted."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"values must be a 1-D array, got shape {v.shape}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        raise ValueError("values has no finite entries to take quantiles of")
    return np.quantile(finite, np.linspace(0.0, 1.0, n_bins + 1)[1:-1])


def _matrix(name: str, array: np.ndarray) -> np.ndarray:
    """Return ``array`` as a finite float64 (rows, features) matrix."""
    out = np.asarray(array, dtype=np.float64)
    if out.ndim != 2 or out.shape[1] == 0:
        raise ValueError(f"{name} must be a 2-D (samples, features) array, got shape {out.shape}")
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return out


def _vector(name: str, array: np.ndarray, length: int) -> np.ndarray:
    """Return ``array`` as a float64 vector of the given length."""
    out = np.asarray(array, dtype=np.float64)
    if out.ndim != 1 or out.shape[0] != length:
        raise ValueError(f"{name} must have shape ({length},), got {out.shape}")
    return out


def _bins(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index of each value via np.searchsorted; -1 for NaN so that it matches no bin."""
    out = np.searchsorted(edges, values)
    out[~np.isfinite(values)] = -1
    return out


def counterfactual_latent_divergence(
    factual_feats: np.ndarray,
    cf_feats: np.ndarray,
    reference_feats: np.ndarray,
    reference_values: np.ndarray,
    factual_values: np.ndarray,
    cf_values: np.ndarray,
    edges: np.ndarray,
) -> dict[str, Any]:
    """Return CLD mean, per-sample values (NaN where skipped), mean p1/p2 and the number of skipped samples.

    A sample is skipped when no reference value shares its factual or counterfactual bin (or a value is NaN).
    """
    fact = _matrix("factual_feats", factual_feats)
    cf = _matrix("cf_feats", cf_feats)
    ref = _matrix("reference_feats", reference_feats)
    n, n_feat = fact.shape
    if cf.shape != fact.shape:
        raise ValueError(f"cf_feats has shape {cf.shape} but factual_feats has shape {fact.shape}")
    if ref.shape[1] != n_feat:
        raise ValueError(f"reference_feats has {ref.shape[1]} features but factual_feats has {n_feat}")
    if n == 0 or ref.shape[0] == 0:
        raise ValueError(f"need at least one sample and one reference, got {n} and {ref.shape[0]}")
    ref_values = _vector("reference_values", reference_values, ref.shape[0])
    f_values = _vector("factual_values", factual_values, n)
    c_values = _vector("cf_values", cf_values, n)
    e = np.asarray(edges, dtype=np.float64)
    if e.ndim != 1 or not np.all(np.isfinite(e)) or np.any(np.diff(e) < 0):
        raise ValueError("edges must be a 1-D array of finite, non-decreasing values")

    ref_bin = _bins(ref_values, e)
    f_bin = _bins(f_values, e)
    c_bin = _bins(c_values, e)
    d = np.mean(np.abs(cf - fact), axis=1)
    p1 = np.full(n, np.nan)
    p2 = np.full(n, np.nan)
    chunk = max(1, _CHUNK_ELEMENTS // (ref.shape[0] * n_feat))
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        dist = np.mean(np.abs(fact[start:stop, None, :] - ref[None, :, :]), axis=2)  # (chunk, M)
        in_cf = ref_bin[None, :] == c_bin[start:stop, None]
        in_f = ref_bin[None, :] == f_bin[start:stop, None]
        n_cf = in_cf.sum(axis=1)
        n_f = in_f.sum(axis=1)
        below = (in_cf & (dist <= d[start:stop, None])).sum(axis=1)
        above = (in_f & (dist >= d[start:stop, None])).sum(axis=1)
        ok = (n_cf > 0) & (n_f > 0)
        p1[start:stop][ok] = below[ok] / n_cf[ok]
        p2[start:stop][ok] = above[ok] / n_f[ok]
    valid = np.isfinite(p1)
    per_sample = np.full(n, np.nan)
    per_sample[valid] = np.log(W1 * np.exp(p1[valid]) + W2 * np.exp(p2[valid]))
    any_valid = bool(valid.any())
    return {
        "cld": float(per_sample[valid].mean()) if any_valid else float("nan"),
        "cld_per_sample": [float(v) for v in per_sample],
        "p1": float(p1[valid].mean()) if any_valid else float("nan"),
        "p2": float(p2[valid].mean()) if any_valid else float("nan"),
        "skipped": int(n - valid.sum()),
    }
