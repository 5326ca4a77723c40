"""Known-answer tests for the DCI, FID/KID and CLD metrics in causaldiffae.metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg

from causaldiffae.metrics import minimality
from causaldiffae.metrics.dci import block_importance, completeness, dci, disentanglement, importance_matrix
from causaldiffae.metrics.minimality import counterfactual_latent_divergence, quantile_bins
from causaldiffae.metrics.realism import frechet_distance, kernel_inception_distance

# A 4x4 Hadamard matrix over 2 is orthogonal and mixes every factor into every code dim with equal weight.
HADAMARD = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=np.float64) / 2.0


def _factors(seed: int, n_train: int = 300, n_test: int = 200, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Independent uniform factors for train and test."""
    rng = np.random.default_rng(seed)
    return rng.uniform(size=(n_train, k)), rng.uniform(size=(n_test, k))


# ----------------------------------------------------------------------------------------------------------- DCI


def test_disentanglement_and_completeness_of_hand_written_matrices():
    """A diagonal R scores exactly 1, a constant R 0, and a mixed R the hand-computed entropy weighting."""
    diag = np.diag([0.5, 1.0, 2.0])
    assert disentanglement(diag) == 1.0
    assert completeness(diag) == 1.0
    const = np.ones((3, 3))
    assert disentanglement(const) == pytest.approx(0.0, abs=1e-12)
    assert completeness(const) == pytest.approx(0.0, abs=1e-12)
    # row 0 spreads evenly over 2 factors (D=0, weight 2/3), row 1 is pure (D=1, weight 1/3)
    mixed = np.array([[1.0, 1.0], [1.0, 0.0]])
    assert disentanglement(mixed) == pytest.approx(1 / 3)
    assert completeness(mixed) == pytest.approx(0.5)
    # a code dim with no importance gets weight 0; a factor column with none is left out of completeness
    assert disentanglement(np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])) == 1.0
    assert completeness(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])) == 1.0
    # degenerate sizes
    assert disentanglement(np.array([[0.3], [0.7]])) == 1.0
    assert completeness(np.array([[0.3, 0.7]])) == 1.0
    assert disentanglement(np.zeros((2, 2))) == 0.0
    assert completeness(np.zeros((2, 2))) == 0.0


def test_block_importance_sums_rows():
    """An int block size and explicit index lists both sum the right rows."""
    r = np.arange(12, dtype=np.float64).reshape(4, 3)
    np.testing.assert_allclose(block_importance(r, 2), [r[0] + r[1], r[2] + r[3]])
    np.testing.assert_allclose(block_importance(r, [[3], [0, 2]]), [r[3], r[0] + r[2]])
    with pytest.raises(ValueError, match="does not divide"):
        block_importance(r, 3)
    with pytest.raises(ValueError, match="outside"):
        block_importance(r, [[0, 4]])
    with pytest.raises(ValueError, match="more than one block"):
        block_importance(r, [[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="non-negative"):
        disentanglement(-r)


def test_dci_identity_code_is_disentangled_complete_and_informative():
    """codes == factors gives D and C near 1 and a near-zero test error."""
    f_tr, f_te = _factors(0)
    out = dci(f_tr, f_tr, f_te, f_te)
    assert out["disentanglement"] > 0.95
    assert out["completeness"] > 0.95
    assert out["informativeness"] < 0.1
    assert out["r2"] > 0.95
    assert len(out["per_factor_informativeness"]) == 4
    r = np.asarray(out["importance"])
    assert r.shape == (4, 4)
    assert np.all(np.argmax(r, axis=0) == np.arange(4))
    assert "block_disentanglement" not in out


def test_dci_mixed_code_is_not_disentangled():
    """A Hadamard mixture of all factors scores near 0, a random rotation clearly below the identity code."""
    f_tr, f_te = _factors(1)
    mixed = dci(f_tr @ HADAMARD, f_tr, f_te @ HADAMARD, f_te)
    assert mixed["disentanglement"] < 0.2
    assert mixed["completeness"] < 0.2
    assert mixed["r2"] > 0.8  # the mixture is still informative, just entangled
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(4, 4)))
    rotated = dci(f_tr @ q, f_tr, f_te @ q, f_te)
    assert rotated["disentanglement"] < 0.8


def test_dci_blocks_of_duplicated_identity_code():
    """Each factor copied into 2 dims: per-dim completeness drops to 1 - log 2 / log 8, block scores stay ~1."""
    f_tr, f_te = _factors(2)
    out = dci(np.repeat(f_tr, 2, axis=1), f_tr, np.repeat(f_te, 2, axis=1), f_te, block_size=2)
    assert out["disentanglement"] > 0.95
    assert out["completeness"] < 0.75
    assert out["block_disentanglement"] > 0.95
    assert out["block_completeness"] > 0.95
    assert np.asarray(out["block_importance"]).shape == (4, 4)


def test_importance_matrix_drops_nan_rows_per_factor():
    """NaN factor values are dropped for that factor only, giving the same fit as removing the rows by hand."""
    f_tr, f_te = _factors(3, n_train=200, n_test=100, k=2)
    holes = f_tr.copy()
    holes[::5, 0] = np.nan
    r, err = importance_matrix(f_tr, holes, f_te, f_te, n_estimators=20)
    keep = np.isfinite(holes[:, 0])
    r0, err0 = importance_matrix(f_tr[keep], f_tr[keep, :1], f_te, f_te[:, :1], n_estimators=20)
    np.testing.assert_allclose(r[:, 0], r0[:, 0])
    assert err[0] == pytest.approx(err0[0])
    assert np.all(np.isfinite(r)) and np.all(np.isfinite(err))


def test_dci_rejects_bad_shapes():
    """Mismatched rows, dims or factor counts and non-finite codes raise ValueError naming the input."""
    f_tr, f_te = _factors(4, n_train=20, n_test=10)
    with pytest.raises(ValueError, match="codes_train has 19 rows"):
        dci(f_tr[:-1], f_tr, f_te, f_te)
    with pytest.raises(ValueError, match="codes_train has 4 dims but codes_test has 3"):
        dci(f_tr, f_tr, f_te[:, :3], f_te)
    with pytest.raises(ValueError, match="factors_train has 4 factors but factors_test has 3"):
        dci(f_tr, f_tr, f_te, f_te[:, :3])
    bad = f_tr.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="codes_train contains NaN"):
        dci(bad, f_tr, f_te, f_te)
    all_nan = f_tr.copy()
    all_nan[:, 1] = np.nan
    with pytest.raises(ValueError, match="factor 1"):
        dci(f_tr, all_nan, f_te, f_te)


# ------------------------------------------------------------------------------------------------------- FID/KID


def test_frechet_distance_known_values():
    """Same set gives 0, a shifted copy gives ||m||^2, it is symmetric and matches the scipy sqrtm formula."""
    rng = np.random.default_rng(5)
    a = rng.normal(size=(1000, 8)) @ rng.normal(size=(8, 8))
    m = np.linspace(-1.0, 1.0, 8)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(a, a + m) == pytest.approx(float(m @ m), rel=1e-6)
    b = rng.normal(size=(800, 8)) * np.linspace(0.5, 2.0, 8) + 0.3
    ab, ba = frechet_distance(a, b), frechet_distance(b, a)
    assert ab == pytest.approx(ba, rel=1e-8)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    diff = a.mean(0) - b.mean(0)
    reference = diff @ diff + np.trace(ca + cb - 2 * np.real(scipy.linalg.sqrtm(ca @ cb)))
    assert ab == pytest.approx(float(reference), rel=1e-6)
    # two independent samples of N(0, I) and N(m, I): close to ||m||^2 (plus a small finite-sample bias)
    x, y = rng.normal(size=(4000, 4)), rng.normal(size=(4000, 4)) + 1.0
    assert frechet_distance(x, y) == pytest.approx(4.0, abs=0.15)
    assert frechet_distance(x[:, :1], y[:, :1]) == pytest.approx(1.0, abs=0.1)


def test_frechet_distance_rejects_bad_input():
    """Too few rows, mismatched features and 1-D input raise ValueError."""
    a = np.zeros((5, 3))
    with pytest.raises(ValueError, match="at least 2 rows"):
        frechet_distance(a[:1], a)
    with pytest.raises(ValueError, match="a has 3 features but b has 2"):
        frechet_distance(a, a[:, :2])
    with pytest.raises(ValueError, match="2-D"):
        frechet_distance(a[:, 0], a)


def test_kernel_inception_distance():
    """Same distribution gives ~0 (unbiased, can be negative); a shifted one clearly more."""
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(600, 16)), rng.normal(size=(600, 16))
    mean, std = kernel_inception_distance(a, b, subsets=20, subset_size=300)
    assert abs(mean) < 0.03
    assert std >= 0
    shifted, _ = kernel_inception_distance(a, b + 0.5, subsets=20, subset_size=300)
    assert shifted > 0.5
    # subset_size larger than the data is clipped; with one subset over all rows the std is 0
    full_mean, full_std = kernel_inception_distance(a[:50], b[:40], subsets=1, subset_size=500)
    assert full_std == 0.0 and math.isfinite(full_mean)
    with pytest.raises(ValueError, match="subsets"):
        kernel_inception_distance(a, b, subsets=0)
    with pytest.raises(ValueError, match="features"):
        kernel_inception_distance(a, b[:, :4])


# ----------------------------------------------------------------------------------------------------------- CLD


def _cld(p1: float, p2: float) -> float:
    """CLD of one sample from its p1 and p2."""
    return math.log(0.8 * math.exp(p1) + 0.2 * math.exp(p2))


def test_quantile_bins():
    """Inner quantile edges, NaN ignored, n_bins - 1 of them."""
    values = np.concatenate([np.arange(101, dtype=np.float64), [np.nan, np.nan]])
    np.testing.assert_allclose(quantile_bins(values, 4), [25.0, 50.0, 75.0])
    assert quantile_bins(values, 1).shape == (0,)
    with pytest.raises(ValueError, match="n_bins"):
        quantile_bins(values, 0)
    with pytest.raises(ValueError, match="no finite"):
        quantile_bins(np.full(3, np.nan))


def test_cld_hand_computed_case():
    """1-D embeddings with references at known distances give exact p1, p2 and CLD; empty bins are skipped."""
    edges = np.array([0.5, 1.5])
    ref_values = np.array([0.0, 0.0, 1.0, 1.0, 1.0])
    ref_feats = np.array([[1.0], [3.0], [2.0], [4.0], [6.0]])
    factual = np.zeros((3, 1))
    cf = np.array([[3.0], [3.0], [3.0]])  # d = 3 for every sample
    f_values = np.array([0.0, 0.0, np.nan])
    cf_values = np.array([1.0, 2.0, 1.0])  # sample 1 lands in bin 2 (no references), sample 2 has a NaN factual
    out = counterfactual_latent_divergence(factual, cf, ref_feats, ref_values, f_values, cf_values, edges)
    # sample 0: S_cf = {2, 4, 6} -> p1 = 1/3 (<= 3); S_f = {1, 3} -> p2 = 1/2 (>= 3)
    assert out["skipped"] == 2
    assert out["p1"] == pytest.approx(1 / 3)
    assert out["p2"] == pytest.approx(1 / 2)
    assert out["cld"] == pytest.approx(_cld(1 / 3, 1 / 2))
    assert out["cld_per_sample"][0] == pytest.approx(_cld(1 / 3, 1 / 2))
    assert all(math.isnan(v) for v in out["cld_per_sample"][1:])


def test_cld_unchanged_and_far_counterfactuals():
    """cf == factual gives p1 = 0, p2 = 1; a far-away cf gives p1 = 1, p2 = 0 (the worst CLD)."""
    rng = np.random.default_rng(7)
    n, m, f = 50, 400, 8
    factual = rng.normal(size=(n, f))
    ref = rng.normal(size=(m, f))  # continuous, so no reference coincides with a factual (no distance of 0)
    ref_values = rng.uniform(size=m)
    edges = quantile_bins(ref_values, 5)
    f_values, cf_values = rng.uniform(size=n), rng.uniform(size=n)
    same = counterfactual_latent_divergence(factual, factual, ref, ref_values, f_values, cf_values, edges)
    assert same["skipped"] == 0
    assert same["p1"] == 0.0 and same["p2"] == 1.0
    assert same["cld"] == pytest.approx(_cld(0.0, 1.0))
    far = counterfactual_latent_divergence(factual, factual + 100.0, ref, ref_values, f_values, cf_values, edges)
    assert far["p1"] == 1.0 and far["p2"] == 0.0
    assert far["cld"] == pytest.approx(_cld(1.0, 0.0))
    assert far["cld"] > same["cld"]


def test_cld_chunking_matches_single_pass(monkeypatch: pytest.MonkeyPatch):
    """Splitting the samples into many chunks gives the same result as one pass."""
    rng = np.random.default_rng(8)
    n, m, f = 40, 60, 5
    args = (
        rng.normal(size=(n, f)),
        rng.normal(size=(n, f)),
        rng.normal(size=(m, f)),
        rng.uniform(size=m),
        rng.uniform(size=n),
        rng.uniform(size=n),
    )
    edges = quantile_bins(args[3], 4)
    one = counterfactual_latent_divergence(*args, edges)
    monkeypatch.setattr(minimality, "_CHUNK_ELEMENTS", m * f * 3)
    many = counterfactual_latent_divergence(*args, edges)
    np.testing.assert_allclose(many["cld_per_sample"], one["cld_per_sample"])
    assert many["p1"] == one["p1"] and many["p2"] == one["p2"]


def test_cld_rejects_bad_shapes():
    """Mismatched feature matrices and value vectors raise ValueError naming the input."""
    x = np.zeros((4, 3))
    ref = np.ones((6, 3))
    v4, v6 = np.zeros(4), np.zeros(6)
    edges = np.array([0.5])
    with pytest.raises(ValueError, match="cf_feats has shape"):
        counterfactual_latent_divergence(x, x[:3], ref, v6, v4, v4, edges)
    with pytest.raises(ValueError, match="reference_feats has 2 features"):
        counterfactual_latent_divergence(x, x, ref[:, :2], v6, v4, v4, edges)
    with pytest.raises(ValueError, match="reference_values must have shape"):
        counterfactual_latent_divergence(x, x, ref, v4, v4, v4, edges)
    with pytest.raises(ValueError, match="cf_values must have shape"):
        counterfactual_latent_divergence(x, x, ref, v6, v4, v6, edges)
    with pytest.raises(ValueError, match="edges"):
        counterfactual_latent_divergence(x, x, ref, v6, v4, v4, np.array([1.0, 0.0]))
