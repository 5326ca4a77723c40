"""DCI scores (Eastwood & Williams, 2018): how disentangled, complete and informative a learned code is.

One gradient-boosted regressor per ground-truth factor predicts that factor from the code; its feature
importances form column k of the importance matrix R (code dims x factors). Disentanglement asks whether each
code dim matters for a single factor, completeness whether each factor is captured by a single code dim, and
informativeness is the test prediction error. Block variants sum the rows of R over groups of code dims (e.g. one
block per causal variable of a multi-dimensional latent) before scoring.

Factors are continuous and are standardised with their train mean and std, so informativeness is the test mean
absolute error in units of the factor's std (0 is perfect, about 0.8 is "predicts the mean" for a Gaussian
factor); the test R^2 of the same prediction is reported alongside by :func:`dci`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.ensemble import GradientBoostingRegressor


def _as_2d(name: str, array: np.ndarray) -> np.ndarray:
    """Return ``array`` as a float64 (N, C) matrix; a 1-D input is one column."""
    out = np.asarray(array, dtype=np.float64)
    if out.ndim == 1:
        out = out[:, None]
    if out.ndim != 2:
        raise ValueError(f"{name} must be a 1-D or 2-D array, got shape {np.shape(array)}")
    if out.shape[0] == 0 or out.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {out.shape}")
    return out


def _check_inputs(
    codes_train: np.ndarray, factors_train: np.ndarray, codes_test: np.ndarray, factors_test: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate shapes (and finiteness of the codes) of the four DCI inputs and return them as float64 matrices."""
    ctr = _as_2d("codes_train", codes_train)
    ftr = _as_2d("factors_train", factors_train)
    cte = _as_2d("codes_test", codes_test)
    fte = _as_2d("factors_test", factors_test)
    if ctr.shape[0] != ftr.shape[0]:
        raise ValueError(f"codes_train has {ctr.shape[0]} rows but factors_train has {ftr.shape[0]}")
    if cte.shape[0] != fte.shape[0]:
        raise ValueError(f"codes_test has {cte.shape[0]} rows but factors_test has {fte.shape[0]}")
    if ctr.shape[1] != cte.shape[1]:
        raise ValueError(f"codes_train has {ctr.shape[1]} dims but codes_test has {cte.shape[1]}")
    if ftr.shape[1] != fte.shape[1]:
        raise ValueError(f"factors_train has {ftr.shape[1]} factors but factors_test has {fte.shape[1]}")
    for name, codes in (("codes_train", ctr), ("codes_test", cte)):
        if not np.all(np.isfinite(codes)):
            raise ValueError(f"{name} contains NaN or infinite values")
    return ctr, ftr, cte, fte


def _fit_factors(
    codes_train: np.ndarray,
    factors_train: np.ndarray,
    codes_test: np.ndarray,
    factors_test: np.ndarray,
    n_estimators: int,
    max_depth: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit one regressor per factor; return importances (D, K), test MAE (K,) and test R^2 (K,) of std. factors."""
    ctr, ftr, cte, fte = _check_inputs(codes_train, factors_train, codes_test, factors_test)
    if n_estimators < 1:
        raise ValueError(f"n_estimators must be >= 1, got {n_estimators}")
    if max_depth < 1:
        raise ValueError(f"max_depth must be >= 1, got {max_depth}")
    n_dims, n_factors = ctr.shape[1], ftr.shape[1]
    importance = np.zeros((n_dims, n_factors))
    mae = np.zeros(n_factors)
    r2 = np.zeros(n_factors)
    for k in range(n_factors):
        keep_tr = np.isfinite(ftr[:, k])
        keep_te = np.isfinite(fte[:, k])
        if keep_tr.sum() < 2:
            raise ValueError(f"factor {k} has {int(keep_tr.sum())} finite train values; need at least 2")
        if keep_te.sum() < 1:
            raise ValueError(f"factor {k} has no finite test values")
        y_tr = ftr[keep_tr, k]
        mean, std = float(y_tr.mean()), float(y_tr.std())
        scale = std if std > 0 else 1.0
        y_tr = (y_tr - mean) / scale
        y_te = (fte[keep_te, k] - mean) / scale
        model = GradientBoostingRegressor(n_estimators=n_estimators, max_depth=max_depth, random_state=seed)
        model.fit(ctr[keep_tr], y_tr)
        importance[:, k] = np.abs(model.feature_importances_)
        pred = model.predict(cte[keep_te])
        mae[k] = float(np.mean(np.abs(pred - y_te)))
        ss_tot = float(np.sum((y_te - y_te.mean()) ** 2))
        ss_res = float(np.sum((pred - y_te) ** 2))
        r2[k] = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)
    return importance, mae, r2


def importance_matrix(
    codes_train: np.ndarray,
    factors_train: np.ndarray,
    codes_test: np.ndarray,
    factors_test: np.ndarray,
    n_estimators: int = 50,
    max_depth: int = 3,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Return the importance matrix R (D, K) and per-factor informativeness (test MAE of the standardised factor)."""
    importance, mae, _ = _fit_factors(
        codes_train, factors_train, codes_test, factors_test, n_estimators, max_depth, seed
    )
    return importance, mae


def _check_importance(importance: np.ndarray) -> np.ndarray:
    """Validate a (D, K) non-negative finite importance matrix and return it as float64."""
    r = np.asarray(importance, dtype=np.float64)
    if r.ndim != 2 or r.shape[0] == 0 or r.shape[1] == 0:
        raise ValueError(f"importance must be a non-empty 2-D (code dims, factors) array, got shape {r.shape}")
    if not np.all(np.isfinite(r)):
        raise ValueError("importance contains NaN or infinite values")
    if np.any(r < 0):
        raise ValueError("importance must be non-negative")
    return r


def _one_minus_entropy(p: np.ndarray, base: int) -> np.ndarray:
    """Return 1 - H(p) with the entropy in log base ``base``, row-wise, for rows of ``p`` that sum to 1."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return 1.0 + terms.sum(axis=1) / np.log(base)


def disentanglement(importance: np.ndarray) -> float:
    """Importance-weighted mean over code dims of 1 - H_K(P_i); 1.0 when K == 1, 0.0 for an all-zero R."""
    r = _check_importance(importance)
    row_sums = r.sum(axis=1)
    total = row_sums.sum()
    if total <= 0:
        return 0.0
    if r.shape[1] == 1:
        return 1.0  # with a single factor every code dim trivially explains only that factor
    used = row_sums > 0
    p = r[used] / row_sums[used, None]
    scores = _one_minus_entropy(p, r.shape[1])
    weights = row_sums[used] / total
    return float(np.clip(np.sum(weights * scores), 0.0, 1.0))


def completeness(importance: np.ndarray) -> float:
    """Mean over factors of 1 - H_D(P_k), skipping all-zero columns; 1.0 when D == 1, 0.0 for an all-zero R.

    With normalised per-factor importances (as from :func:`importance_matrix`) this equals the column-weighted
    average of Eastwood & Williams; columns with zero importance (e.g. a constant factor) are left out.
    """
    r = _check_importance(importance)
    col_sums = r.sum(axis=0)
    used = col_sums > 0
    if not np.any(used):
        return 0.0
    if r.shape[0] == 1:
        return 1.0  # a single code dim captures every factor on its own
    p = (r[:, used] / col_sums[None, used]).T
    scores = _one_minus_entropy(p, r.shape[0])
    return float(np.clip(np.mean(scores), 0.0, 1.0))


def block_importance(importance: np.ndarray, blocks: list[list[int]] | int) -> np.ndarray:
    """Sum the rows of R over blocks of code dims: a list of index lists, or an int block size d (D % d == 0)."""
    r = _check_importance(importance)
    n_dims = r.shape[0]
    if isinstance(blocks, (int, np.integer)) and not isinstance(blocks, bool):
        size = int(blocks)
        if size < 1:
            raise ValueError(f"block size must be >= 1, got {size}")
        if n_dims % size != 0:
            raise ValueError(f"block size {size} does not divide the number of code dims {n_dims}")
        return r.reshape(n_dims // size, size, r.shape[1]).sum(axis=1)
    if not isinstance(blocks, (list, tuple)) or len(blocks) == 0:
        raise ValueError(f"blocks must be a positive int or a non-empty list of index lists, got {blocks!r}")
    seen: set[int] = set()
    rows = []
    for b, block in enumerate(blocks):
        idx = [int(i) for i in block]
        if not idx:
            raise ValueError(f"block {b} is empty")
        for i in idx:
            if not 0 <= i < n_dims:
                raise ValueError(f"block {b} has index {i} outside [0, {n_dims})")
            if i in seen:
                raise ValueError(f"code dim {i} appears in more than one block (block {b})")
            seen.add(i)
        rows.append(r[idx].sum(axis=0))
    return np.stack(rows)


def dci(
    codes_train: np.ndarray,
    factors_train: np.ndarray,
    codes_test: np.ndarray,
    factors_test: np.ndarray,
    block_size: int | None = None,
    seed: int = 0,
    n_estimators: int = 50,
    max_depth: int = 3,
) -> dict[str, Any]:
    """Compute DCI (and block DCI when ``block_size`` is given) as a JSON-serialisable dict of floats and lists."""
    importance, mae, r2 = _fit_factors(
        codes_train, factors_train, codes_test, factors_test, n_estimators, max_depth, seed
    )
    out: dict[str, Any] = {
        "disentanglement": disentanglement(importance),
        "completeness": completeness(importance),
        "informativeness": float(np.mean(mae)),
        "per_factor_informativeness": [float(v) for v in mae],
        "r2": float(np.mean(r2)),
        "per_factor_r2": [float(v) for v in r2],
        "importance": importance.tolist(),
    }
    if block_size is not None:
        blocked = block_importance(importance, block_size)
        out["block_disentanglement"] = disentanglement(blocked)
        out["block_completeness"] = completeness(blocked)
        out["block_importance"] = blocked.tolist()
    return out
