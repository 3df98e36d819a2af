"""Relative Hessians, samplers, the LEP check and the sample-size search (paper section 5), checked against
independent dense computations (autograd Hessians, explicit solves) and crafted LEP constructions."""

import json
import warnings

import numpy as np
import pytest
import reference as ref  # tests/reference.py: independent maths
import torch
from conftest import relu_embeddings

from winnow.analyses.relative import (
    LEPResult,
    RelativeHessian,
    SearchResult,
    inclusion_probabilities,
    lep_check,
    lep_statistics,
    leverage_scores,
    make_curvature,
    relative_curvature,
    report_section,
    sample_leverage,
    sample_sizes,
    sample_stratified,
    sample_uniform,
    stratified_allocation,
    systematic_sample,
    two_sample_search,
)
from winnow.core.curvature import Curvature, fit_curvature
from winnow.core.heads import LogisticHead, SoftmaxHead
from winnow.errors import ValidationError


def _head(kind, X, y, l2=1e-2):
    return (LogisticHead(l2=l2, tol=1e-11) if kind == "logistic" else SoftmaxHead(l2=l2, tol=1e-11)).fit(X, y)


def _data(kind, n=300, seed=3):
    return relu_embeddings(n, d=8, seed=seed, k=2 if kind == "logistic" else 3)


def _kind(head):
    return ("logistic", 1) if isinstance(head, LogisticHead) else ("softmax", head.n_outputs)


def dense_risk_hessian(head, X, y):
    """Hessian of (1/|X|) Σ ℓ_i + (λ/2)‖W‖² by autograd of the independent losses (tests/reference.py)."""
    kind, K = _kind(head)
    return torch.as_tensor(ref.risk_hessian(kind, X, y, head.theta_.numpy(), K, head.l2))


def dense_row_hessians(head, X, y):
    """(n, P, P) per-row loss Hessians by autograd of the independent losses."""
    kind, K = _kind(head)
    th = head.theta_.numpy()
    return torch.stack([torch.as_tensor(ref.loss_hessian_sum(kind, X[i:i + 1], y[i:i + 1], th, K))
                        for i in range(len(y))])


def dense_gradients(head, X, y):
    kind, K = _kind(head)
    return torch.as_tensor(ref.per_example_grads(kind, X, y, head.theta_.numpy(), K))


# ------------------------------------------------------------------------------------------ m = n
@pytest.mark.parametrize("kind", ["logistic", "softmax"])
@pytest.mark.parametrize("sampler", ["uniform", "stratified", "leverage"])
def test_full_sample_reproduces_full_influence(kind, sampler):
    X, y = _data(kind)
    Xtr, ytr, Xte, yte = X[:240], y[:240], X[240:], y[240:]
    head = _head(kind, Xtr, ytr)
    full = fit_curvature(head, (Xtr, ytr))
    rel = relative_curvature(head, (Xtr, ytr), 240, sampler=sampler, seed=5, chunk_size=50)
    torch.testing.assert_close(rel.hessian, full.hessian, rtol=1e-12, atol=1e-14)
    res = lep_check(head, (Xtr, ytr), (Xte, yte), rel, test_points=[0, 7, 59], chunk_size=70)
    s = res.statistics
    ratio = res.influence / res.relative_influence
    assert np.max(np.abs(ratio - 1)) < 1e-9
    assert s["rho"] == pytest.approx(1.0, abs=1e-10)
    assert s["spearman"] == pytest.approx(1.0, abs=1e-12)
    assert s["pearson"] == pytest.approx(1.0, abs=1e-12)
    assert s["ratio_within_5pct"] == 1.0 and s["sign_agreement"] == 1.0
    assert s["top_harmful_overlap"] == 1.0 and s["top_helpful_overlap"] == 1.0
    assert [p["test_row"] for p in res.points] == [0, 7, 59]
    for p in res.points:
        assert p["spearman"] == pytest.approx(1.0, abs=1e-12) and p["rho"] == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize("kind", ["logistic", "softmax"])
def test_relative_hessian_and_influence_match_dense_subset(kind):
    """H⁽ᵐ⁾ = autograd Hessian of the subset risk (eq. 52) and I⁽ᵐ⁾ = −ḡᵀH⁽ᵐ⁾⁻¹g_p by explicit solves."""
    X, y = _data(kind, n=200, seed=4)
    Xtr, ytr, Xte, yte = X[:150], y[:150], X[150:], y[150:]
    head = _head(kind, Xtr, ytr)
    rh = RelativeHessian(60, sampler="uniform", seed=11, chunk_size=17).fit(head, (Xtr, ytr))
    rows = rh.sample_.rows
    assert rows.shape == (60,) and np.all(np.diff(rows) > 0) and rh.cost_["curvature_rows_read"] == 60
    H_sub = dense_risk_hessian(head, Xtr[rows], ytr[rows])
    H_full = dense_risk_hessian(head, Xtr, ytr)
    torch.testing.assert_close(rh.curvature_.hessian, H_sub, rtol=1e-9, atol=1e-12)
    res = lep_check(head, (Xtr, ytr), (Xte, yte), rh.curvature_, chunk_size=40, test_points=[3, 10])
    G = dense_gradients(head, Xtr, ytr)
    Gt = dense_gradients(head, Xte, yte)
    gbar = Gt.mean(0)
    # the softmax Hessian is singular along the bias-shift direction: pinv solves on the gradients' span
    I_rel = -(G @ (torch.linalg.pinv(H_sub, hermitian=True) @ gbar)).numpy()
    I_full = -(G @ (torch.linalg.pinv(H_full, hermitian=True) @ gbar)).numpy()
    np.testing.assert_allclose(res.relative_influence, I_rel, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(res.influence, I_full, rtol=1e-7, atol=1e-10)
    ref = lep_reference(I_full, I_rel)
    assert res.statistics["spearman"] == pytest.approx(ref["spearman"], abs=1e-9)
    assert res.statistics["rho"] == pytest.approx(ref["rho"], rel=1e-7)
    assert res.statistics["ratio_cv"] == pytest.approx(ref["ratio_cv"], rel=1e-6)
    assert res.statistics["spearman"] < 1.0  # a 60-row sample is not the full Hessian
    for p, t in zip(res.points, [3, 10]):
        ref_t = lep_reference(-(G @ torch.linalg.pinv(H_full, hermitian=True) @ Gt[t]).numpy(),
                               -(G @ torch.linalg.pinv(H_sub, hermitian=True) @ Gt[t]).numpy())
        assert p["test_row"] == t and p["spearman"] == pytest.approx(ref_t["spearman"], abs=1e-9)
        assert p["rho"] == pytest.approx(ref_t["rho"], rel=1e-6)
    # the relative Hessian plugs into InfluenceAnalyzer (what `winnow influence --hessian relative` does)
    from winnow.core.influence import InfluenceAnalyzer

    scores = InfluenceAnalyzer(head).fit((Xtr, ytr), curvature=rh.curvature_).score((Xte, yte))
    np.testing.assert_allclose(scores["influence"].to_numpy(), I_rel, rtol=1e-7, atol=1e-10)


def lep_reference(a, b, top_fraction=0.01):
    """The LEP statistics written out independently: r_p = I_p / I⁽ᵐ⁾_p (eq. 55) over points with I⁽ᵐ⁾ ≠ 0,
    its median ρ, CV, IQR/|ρ|, share within ±5 % of ρ; Pearson, Spearman (ranks), sign agreement, top-k."""
    from scipy.stats import rankdata

    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = b != 0
    r = np.sort(a[ok] / b[ok])
    m = r.size
    rho = r[m // 2] if m % 2 else 0.5 * (r[m // 2 - 1] + r[m // 2])

    def quantile(q):  # linear interpolation between order statistics
        h = (m - 1) * q
        lo = int(np.floor(h))
        return r[lo] + (h - lo) * (r[min(lo + 1, m - 1)] - r[lo])

    mean = r.sum() / m
    sd = np.sqrt(((r - mean) ** 2).sum() / m)

    def pearson(x, y):
        x, y = x - x.mean(), y - y.mean()
        return (x @ y) / np.sqrt((x @ x) * (y @ y))

    n = a.size
    k = max(1, int(round(top_fraction * n)))

    def overlap(x, y):
        return len(set(np.argsort(-x, kind="stable")[:k]) & set(np.argsort(-y, kind="stable")[:k])) / k

    iqr = quantile(0.75) - quantile(0.25)
    return {"rho": rho, "ratio_cv": sd / abs(mean), "ratio_iqr_over_median": iqr / abs(rho),
            "ratio_within_5pct": float(np.mean(np.abs(r - rho) <= 0.05 * abs(rho))), "n_ratio_undefined": int(n - m),
            "pearson": pearson(a, b), "spearman": pearson(rankdata(a), rankdata(b)), "k": k, "n": n,
            "sign_agreement": float(np.mean(np.sign(a) == np.sign(b))),
            "top_harmful_overlap": overlap(a, b), "top_helpful_overlap": overlap(-a, -b)}


def test_lep_statistics_against_the_written_out_definitions():
    """Skewed ratios (mean far from median), zeros in I⁽ᵐ⁾, ties-free values: every statistic independently."""
    rng = np.random.default_rng(7)
    n = 400
    b = rng.standard_normal(n)
    b[:5] = 0.0  # undefined ratios
    r = np.exp(rng.standard_normal(n) * 0.8) * 1.7  # log-normal: mean ≈ 1.38 ρ
    a = r * b + 1e-3 * rng.standard_normal(n)
    got = lep_statistics(a, b, top_fraction=0.05)
    want = lep_reference(a, b, top_fraction=0.05)
    for key, v in want.items():
        assert got[key] == pytest.approx(v, rel=1e-9, abs=1e-12), key
    assert abs(got["rho"] - np.mean(a[5:] / b[5:])) > 0.1  # the median is not the mean here
    # a hand-sized case: ratios 1, 2, 3, 10 (median 2.5, mean 4)
    s = lep_statistics(np.array([1.0, 4.0, 9.0, 40.0]), np.array([1.0, 2.0, 3.0, 4.0]), top_fraction=0.25)
    assert s["rho"] == 2.5 and s["k"] == 1 and s["n_ratio_undefined"] == 0
    assert s["ratio_cv"] == pytest.approx(np.std([1, 2, 3, 10]) / 4.0)
    assert s["ratio_iqr_over_median"] == pytest.approx((4.75 - 1.75) / 2.5)
    assert s["ratio_within_5pct"] == 0.0
    assert s["top_harmful_overlap"] == 1.0 and s["top_helpful_overlap"] == 1.0 and s["sign_agreement"] == 1.0
    s = lep_statistics(np.array([1.0, -2.0, 3.0, 4.0]), np.array([-1.0, -2.0, 3.0, -4.0]), top_fraction=0.25)
    assert s["sign_agreement"] == 0.5 and s["top_harmful_overlap"] == 0.0 and s["top_helpful_overlap"] == 0.0
    assert s["rho"] == pytest.approx(0.0) and np.isnan(s["ratio_within_5pct"])
    # |r − ρ| ≤ 5 % |ρ| counts the boundary and nothing beyond it
    s = lep_statistics(np.array([19.0, 20.0, 21.0, 21.5, 3.0]), np.ones(5))
    assert s["rho"] == 20.0 and s["ratio_within_5pct"] == pytest.approx(3 / 5)
    # constant vectors have no correlation; k ≥ n means full overlap
    s = lep_statistics(np.ones(3), np.ones(3), top_fraction=1.0)
    assert np.isnan(s["pearson"]) and np.isnan(s["spearman"]) and s["top_harmful_overlap"] == 1.0
    s = lep_statistics(np.ones(3), np.zeros(3))
    assert np.isnan(s["rho"]) and s["n_ratio_undefined"] == 3


# ------------------------------------------------------------------------------------------ trivial LEP
def _crafted_pair(P, rng, lam1=2.0, mu1=0.5):
    """H and H⁽ᵐ⁾ sharing the unit eigenvector q (eigenvalues lam1 and mu1); otherwise unrelated bases."""
    q = rng.standard_normal(P)
    q /= np.linalg.norm(q)
    mats = []
    for top in (lam1, mu1):
        B = rng.standard_normal((P, P))
        B -= np.outer(q, q @ B)  # columns orthogonal to q
        U, _, _ = np.linalg.svd(B)
        V = U[:, :P - 1]  # orthonormal basis of q's complement
        ev = rng.uniform(0.3, 3.0, P - 1)
        mats.append(top * np.outer(q, q) + V @ np.diag(ev) @ V.T)
    return q, mats[0], mats[1]


def test_trivial_lep_case_gives_constant_ratio_statistics():
    """Paper section 5: H⁽ᵐ⁾ sharing an eigenvector with H, every g_p parallel to it -> r_p = μ/λ for all p."""
    rng = np.random.default_rng(0)
    P, n = 12, 500
    q, H, Hm = _crafted_pair(P, rng, lam1=2.0, mu1=0.5)
    g_t = rng.standard_normal(P)  # a generic test gradient (not orthogonal to q)
    a = rng.standard_normal(n)
    G = a[:, None] * q[None, :]  # all training gradients parallel to q
    I = -(G @ np.linalg.solve(H, g_t))
    Im = -(G @ np.linalg.solve(Hm, g_t))
    s = lep_statistics(I, Im)
    assert s["rho"] == pytest.approx(0.5 / 2.0, rel=1e-10)  # r = I/I⁽ᵐ⁾ = (1/λ)/(1/μ) = μ/λ
    assert s["ratio_cv"] < 1e-10 and s["ratio_iqr_over_median"] < 1e-10
    assert s["ratio_within_5pct"] == 1.0 and s["n_ratio_undefined"] == 0
    assert s["spearman"] == pytest.approx(1.0) and s["pearson"] == pytest.approx(1.0)
    assert s["sign_agreement"] == 1.0 and s["k"] == 5
    assert s["top_harmful_overlap"] == 1.0 and s["top_helpful_overlap"] == 1.0
    # the same Hessians with generic gradients: the ratio is no longer constant (the check can fail)
    G2 = rng.standard_normal((n, P))
    s2 = lep_statistics(-(G2 @ np.linalg.solve(H, g_t)), -(G2 @ np.linalg.solve(Hm, g_t)))
    assert s2["ratio_within_5pct"] < 0.5 and s2["ratio_iqr_over_median"] > 0.1


def test_trivial_lep_case_through_lep_check_with_a_real_head():
    """A logistic head whose training rows share one feature vector u0: every g_p = (s − y_p)ũ0 is parallel
    to ũ0. Crafted Curvatures H and H⁽ᵐ⁾ with the common eigenvector ũ0/‖ũ0‖ go through ``lep_check``."""
    rng = np.random.default_rng(1)
    D = 5
    u0 = rng.uniform(0.2, 1.0, D)
    Xtr = np.tile(u0, (80, 1))
    ytr = (rng.random(80) < 0.4).astype(np.int64)
    Xte = rng.uniform(0.0, 1.0, (30, D))
    yte = (rng.random(30) < 0.5).astype(np.int64)
    head = LogisticHead.from_weights(rng.standard_normal(D) * 0.3, 0.1, l2=1e-2)
    ut = np.append(u0, 1.0)
    P = D + 1
    # H and H⁽ᵐ⁾ with q = ũ0/‖ũ0‖ as a shared eigenvector (eigenvalues 1.7 and 0.4), different elsewhere
    q = ut / np.linalg.norm(ut)
    B = rng.standard_normal((P, P))
    B -= np.outer(q, q @ B)
    V = np.linalg.svd(B)[0][:, :P - 1]
    H = 1.7 * np.outer(q, q) + V @ np.diag(rng.uniform(0.3, 3, P - 1)) @ V.T
    W = np.linalg.qr(V @ rng.standard_normal((P - 1, P - 1)))[0]  # another basis of the complement
    Hm = 0.4 * np.outer(q, q) + W @ np.diag(rng.uniform(0.3, 3, P - 1)) @ W.T
    full = Curvature(hessian=torch.tensor(H), n=80, l2=head.l2)
    rel = Curvature(hessian=torch.tensor(Hm), n=20, l2=head.l2)
    res = lep_check(head, (Xtr, ytr), (Xte, yte), rel, full, test_points=[0, 1, 2], chunk_size=13)
    r = res.influence / res.relative_influence
    np.testing.assert_allclose(r, 0.4 / 1.7, rtol=1e-9)
    assert res.statistics["rho"] == pytest.approx(0.4 / 1.7, rel=1e-9)
    assert res.statistics["ratio_within_5pct"] == 1.0 and res.statistics["sign_agreement"] == 1.0
    assert res.statistics["pearson"] == pytest.approx(1.0)
    for p in res.points:
        assert p["rho"] == pytest.approx(0.4 / 1.7, rel=1e-9) and p["ratio_cv"] < 1e-9
    # control: a relative Hessian that does not share the eigenvector breaks the constant ratio
    Hbad = V @ np.diag(rng.uniform(0.3, 3, P - 1)) @ V.T + 0.4 * np.eye(P)
    Hbad += 0.3 * (np.outer(q, V[:, 0]) + np.outer(V[:, 0], q))
    res2 = lep_check(head, (Xtr, ytr), (Xte, yte), Curvature(hessian=torch.tensor(Hbad), n=20, l2=head.l2),
                     full, test_points=[0, 1, 2])
    assert max(p["ratio_iqr_over_median"] for p in res2.points) > 1e-3 or \
        np.ptp([p["rho"] for p in res2.points]) / abs(np.mean([p["rho"] for p in res2.points])) > 1e-3


# ------------------------------------------------------------------------------------------ samplers
@pytest.mark.parametrize("kind", ["logistic", "softmax"])
def test_leverage_scores_equal_dense_trace(kind):
    """ℓev_i = tr(H_pilot⁻¹ ∇²ℓ_i) with H_pilot and ∇²ℓ_i from autograd (softmax: the trace analogue)."""
    X, y = _data(kind, n=60, seed=6)
    head = _head(kind, X, y)
    L = leverage_scores(head, (X, y), pilot_size=40, seed=3, chunk_size=25)
    assert L.rows_read == 40 + 60 and L.pilot_rows.shape == (40,)
    Hp = dense_risk_hessian(head, X[L.pilot_rows], y[L.pilot_rows])
    Hp_inv = torch.linalg.pinv(Hp, hermitian=True)
    Hi = dense_row_hessians(head, X, y)
    ref = torch.einsum("pq,iqp->i", Hp_inv, Hi).numpy()
    np.testing.assert_allclose(L.scores, ref, rtol=1e-7, atol=1e-12)
    if kind == "logistic":
        s = head.predict_proba(X)
        ut = np.hstack([X, np.ones((60, 1))])
        np.testing.assert_allclose(L.scores, s * (1 - s) * np.einsum("ip,pq,iq->i", ut, Hp_inv.numpy(), ut),
                                   rtol=1e-7)
    assert L.expected_gain() >= 1.0 - 1e-12  # Cauchy-Schwarz: importance sampling never loses in this bound


def _estimate(sample, row_h):
    return np.einsum("i,ipq->pq", sample.weights, row_h[sample.rows]) / sample.normalizer


@pytest.mark.parametrize("sampler", ["leverage", "stratified", "uniform"])
def test_sampled_hessian_is_unbiased_over_seeds(sampler):
    """E[(1/N) Σ_S w_j ∇²ℓ_j] = (1/n) Σ_i ∇²ℓ_i, checked by averaging over 3000 seeds (z-scores), and an
    estimator without the importance weights is rejected by the same test."""
    X, y = relu_embeddings(40, d_in=4, d=3, seed=7)
    head = LogisticHead(l2=1e-2).fit(X, y)
    row_h = dense_row_hessians(head, X, y).numpy()
    truth = row_h.mean(0)
    L = leverage_scores(head, (X, y), pilot_size=20, seed=0)
    m, S = 10, 3000
    est, unweighted, hits = [], [], np.zeros(40)
    for seed in range(S):
        rng = np.random.default_rng(seed)
        if sampler == "leverage":
            smp = sample_leverage(L.scores, m, rng)
        elif sampler == "stratified":
            smp = sample_stratified(y, m, rng)
        else:
            smp = sample_uniform(40, m, rng)
        assert smp.n_rows == m and np.all(np.diff(smp.rows) > 0)
        est.append(_estimate(smp, row_h))
        unweighted.append(row_h[smp.rows].mean(0))
        hits[smp.rows] += 1
    est, unweighted = np.array(est), np.array(unweighted)
    iu = np.triu_indices(4)
    se = est.std(0)[iu] / np.sqrt(S)
    z = np.abs(est.mean(0)[iu] - truth[iu]) / np.maximum(se, 1e-300)
    assert z.max() < 4.5, z
    if sampler == "leverage":
        pi = inclusion_probabilities(np.asarray(0.9 * L.scores / L.scores.sum() + 0.1 / 40), m)
        assert pi.sum() == pytest.approx(m) and pi.max() <= 1.0
        z_pi = np.abs(hits / S - pi) / np.sqrt(pi * (1 - pi) / S + 1e-300)
        assert z_pi.max() < 4.5
        zb = np.abs(unweighted.mean(0)[iu] - truth[iu]) / (unweighted.std(0)[iu] / np.sqrt(S))
        assert zb.max() > 10  # ignoring the weights is detectably biased: the test has power


def test_systematic_sample_exact_size_and_full_inclusion():
    rng = np.random.default_rng(0)
    pi = np.array([1.0, 0.5, 0.5, 0.25, 0.75, 1.0])
    for _ in range(50):
        rows = systematic_sample(pi, rng)
        assert rows.shape == (4,) and np.all(np.diff(rows) > 0)
        assert {0, 5} <= set(rows.tolist())
    np.testing.assert_array_equal(systematic_sample(np.ones(7), rng), np.arange(7))


def test_stratified_keeps_class_proportions():
    y = np.repeat([0, 1, 2], [700, 250, 50])
    rng = np.random.default_rng(1)
    y = y[rng.permutation(1000)]
    smp = sample_stratified(y, 100, rng)
    counts = np.bincount(y[smp.rows], minlength=3)
    np.testing.assert_array_equal(counts, [70, 25, 5])
    for c, n_c in enumerate([700, 250, 50]):
        assert smp.weights[y[smp.rows] == c].sum() / smp.normalizer == pytest.approx(n_c / 1000, rel=1e-12)
    alloc = stratified_allocation(np.array([333, 333, 334]), 101)
    assert alloc.sum() == 101 and np.all(np.abs(alloc - 101 * np.array([333, 333, 334]) / 1000) < 1)
    smp = sample_stratified(y, 101, rng)
    assert smp.n_rows == 101 and np.all(np.diff(smp.rows) > 0)


# ------------------------------------------------------------------------------------------ bad input
def test_bad_inputs():
    X, y = _data("logistic", n=120)
    head = _head("logistic", X, y)
    with pytest.raises(ValidationError, match="exceeds the number of training rows"):
        relative_curvature(head, (X, y), 121)
    with pytest.raises(ValidationError, match="sample_size must be an integer >= 1"):
        relative_curvature(head, (X, y), 0)
    with pytest.raises(ValidationError, match="sampler"):
        relative_curvature(head, (X, y), 50, sampler="bogus")
    with pytest.warns(UserWarning, match="below the number of head parameters"):
        relative_curvature(head, (X, y), 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        relative_curvature(head, (X, y), head.n_params)
    yk = np.zeros(120, dtype=np.int64)
    yk[:3] = 1
    yk[3] = 2
    with pytest.raises(ValidationError, match="sampler .stratified.: class 2 has only 1 of 120"):
        sample_stratified(yk, 20, np.random.default_rng(0))
    with pytest.raises(ValidationError, match="hessian .relative. needs a sample_size"):
        make_curvature(head, (X, y), hessian="relative")
    with pytest.raises(ValidationError, match="sample_size applies only"):
        make_curvature(head, (X, y), hessian="full", sample_size=10)
    with pytest.raises(ValidationError, match="hessian must be one of full, relative"):
        make_curvature(head, (X, y), hessian="partial")
    with pytest.raises(ValidationError, match="threshold"):
        two_sample_search(head, (X, y), (X, y), threshold=1.5)
    with pytest.raises(ValidationError, match="start"):
        two_sample_search(head, (X, y), (X, y), start=100, max_size=50)
    with pytest.raises(ValidationError, match="test_points"):
        lep_check(head, (X, y), (X[:10], y[:10]), fit_curvature(head, (X, y)), test_points=[10])
    with pytest.raises(ValidationError, match="seed"):
        relative_curvature(head, (X, y), 50, seed=-1)


def test_make_curvature_relative_equals_relative_curvature():
    X, y = _data("logistic", n=150)
    head = _head("logistic", X, y)
    a = make_curvature(head, (X, y), hessian="relative", sample_size=70, sampler="leverage", seed=2)
    b = relative_curvature(head, (X, y), 70, sampler="leverage", seed=2)
    c = relative_curvature(head, (X, y), 70, sampler="leverage", seed=3)
    torch.testing.assert_close(a.hessian, b.hessian, rtol=0, atol=0)
    assert not torch.allclose(a.hessian, c.hessian)
    torch.testing.assert_close(make_curvature(head, (X, y)).hessian, fit_curvature(head, (X, y)).hessian)


# ------------------------------------------------------------------------------------------ search
def test_sample_sizes_grid():
    assert sample_sizes(256, 3000) == [256, 512, 1024, 2048, 3000]
    assert sample_sizes(100, 100) == [100]
    assert sample_sizes(64, 200, growth=1.5) == [64, 96, 144, 200]


@pytest.mark.parametrize("full", [False, True])
def test_two_sample_search_stops_at_first_passing_size(full):
    X, y = _data("logistic", n=700, seed=8)
    Xtr, ytr, Xte, yte = X[:600], y[:600], X[600:], y[600:]
    head = _head("logistic", Xtr, ytr, l2=1e-3)
    res = two_sample_search(head, (Xtr, ytr), (Xte, yte), sampler="uniform", start=20, threshold=0.98,
                            seed=4, full=full)
    assert isinstance(res, SearchResult) and res.mode == ("full" if full else "two-sample")
    sizes = [s.size for s in res.steps]
    assert sizes == sample_sizes(20, 600)[:len(sizes)]
    sp = [s.statistics["spearman"] for s in res.steps]
    assert res.recommended_sample_size == sizes[-1] and sp[-1] >= 0.98
    assert all(v < 0.98 for v in sp[:-1]) and len(sizes) >= 2
    assert (res.full_seconds is not None) == full
    for s in res.steps:
        est = s.statistics.get("spearman_vs_full_estimate")
        assert (est is None) == full
        if est is not None:
            assert est == pytest.approx(1 - (1 - s.statistics["spearman"]) / 2)
    summary = json.loads(json.dumps(res.summary(), default=float))
    assert summary["recommended_sample_size"] == sizes[-1] and len(summary["curve"]) == len(sizes)
    if full:
        # subset a of the search is relative_curvature(seed=seed): same statistics
        m = res.recommended_sample_size
        rel = relative_curvature(head, (Xtr, ytr), m, seed=4)
        chk = lep_check(head, (Xtr, ytr), (Xte, yte), rel)
        assert chk.statistics["spearman"] == pytest.approx(res.step(m).statistics["spearman"], abs=1e-12)
        assert res.speedup() is not None and res.speedup() > 0


def test_two_sample_search_reaches_n_and_reports_failure():
    X, y = _data("logistic", n=260, seed=9)
    head = _head("logistic", X[:200], y[:200], l2=1e-3)
    res = two_sample_search(head, (X[:200], y[:200]), (X[200:], y[200:]), start=30, threshold=1.0, seed=1)
    # uniform without replacement at m = n: both "samples" are the whole set -> identical influence
    assert res.steps[-1].size == 200
    assert res.steps[-1].statistics["spearman"] == pytest.approx(1.0, abs=1e-12)
    res2 = two_sample_search(head, (X[:200], y[:200]), (X[200:], y[200:]), start=30, max_size=60,
                             threshold=1.0, seed=1)
    assert res2.recommended_sample_size is None and res2.summary()["reached"] is False


def test_report_section_adds_curve_and_table(tmp_path):
    from winnow.report import Report

    X, y = _data("logistic", n=400, seed=10)
    head = _head("logistic", X[:300], y[:300])
    res = two_sample_search(head, (X[:300], y[:300]), (X[300:], y[300:]), start=40, threshold=0.95,
                            full=True, sampler="stratified")
    rep = report_section(Report("t"), res)
    html = rep.html()
    assert "Relative influence (LEP)" in html and "<img" in html and "Spearman" in html
    chk = lep_check(head, (X[:300], y[:300]), (X[300:], y[300:]),
                    relative_curvature(head, (X[:300], y[:300]), 100))
    assert isinstance(chk, LEPResult) and "ratio_cv" in report_section(Report("u"), chk).html()
    assert chk.summary()["mean_test_loss"]["n"] == 300
    with pytest.raises(ValidationError):
        report_section(Report("v"), 3)


# ------------------------------------------------------------------------------------------ CLI
def test_cli_lep_writes_json_and_plot(tmp_path, capsys):
    import winnow.cli.relative  # noqa: F401  (registers `lep` until cli/__init__ imports it)
    from winnow.cli import main

    X, y = _data("logistic", n=500, seed=12)
    np.savez(tmp_path / "train.npz", X=X[:400], y=y[:400])
    np.savez(tmp_path / "test.npz", X=X[400:], y=y[400:])
    _head("logistic", X[:400], y[:400]).save(tmp_path / "head.npz")
    args = ["lep", str(tmp_path / "train.npz"), "--head", str(tmp_path / "head.npz"), "--test",
            str(tmp_path / "test.npz"), "--start", "40", "--threshold", "0.97", "--json", str(tmp_path / "o.json"),
            "--plot", str(tmp_path / "o.png"), "--quiet", "--sampler", "leverage", "--full"]
    main(args)
    out = capsys.readouterr().out
    assert "LEP search" in out and "Spearman" in out
    d = json.loads((tmp_path / "o.json").read_text())
    m = d["recommended_sample_size"]
    assert m is not None and d["curve"][-1]["size"] == m and d["curve"][-1]["statistics"]["spearman"] >= 0.97
    assert f"--sample-size {m} --sampler leverage --seed 0" in out
    assert d["selection"]["rows_read"] == d["selection"]["pilot_size"] + 400
    assert (tmp_path / "o.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2 and "exists" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(args[:-4] + ["--overwrite", "--sampler", "stratified", "--start", "5000"])
    assert e.value.code == 2


@pytest.mark.parametrize("sampler", ["stratified", "leverage"])
def test_weighted_relative_hessian_eq52_with_written_out_weights(sampler):
    """H⁽ᵐ⁾ = (1/m) Σ_S w_j ∇²ℓ_j + λ·mask with w_j = (m/n)(n_c/m_c) (stratified) or m/(n π_j) (leverage,
    π_j = min(1, c q_j), Σπ = m, q = 0.9 ℓev/Σℓev + 0.1/n): the weights and the sum written out here."""
    X, y = _data("logistic", n=200, seed=9)
    y = np.where(np.arange(200) < 30, 1, 0)  # unbalanced classes: n_1 = 30, n_0 = 170
    head = _head("logistic", X, y)
    m, n = 40, 200
    rh = RelativeHessian(m, sampler=sampler, seed=3, pilot_size=60).fit(head, (X, y))
    rows = rh.sample_.rows
    if sampler == "stratified":
        m1 = int((y[rows] == 1).sum())
        assert m1 == 6 and rows.size == m  # proportional: 40 · 30/200
        w = np.where(y[rows] == 1, (m / n) * (30 / m1), (m / n) * (170 / (m - m1)))
    else:
        lev = rh.leverage_.scores
        q = 0.9 * lev / lev.sum() + 0.1 / n
        certain = np.zeros(n, bool)
        for _ in range(n):
            c = (m - certain.sum()) / q[~certain].sum()
            new = ~certain & (c * q >= 1)
            if not new.any():
                break
            certain |= new
        pi = np.where(certain, 1.0, c * q)
        assert pi.sum() == pytest.approx(m) and rows.size == m
        w = m / (n * pi[rows])
    np.testing.assert_allclose(rh.sample_.weights, w, rtol=1e-12)
    H_ref = (ref.loss_hessian_sum("logistic", X[rows], y[rows], head.theta_.numpy(), 1, weights=w) / m
             + head.l2 * np.diag(np.r_[np.ones(X.shape[1]), 0.0]))
    np.testing.assert_allclose(rh.curvature_.hessian.numpy(), H_ref, rtol=1e-10, atol=1e-12)


def test_two_sample_search_uses_the_sampler_and_default_start():
    """The search's subset a is relative_curvature(sampler=..., seed=...) (here stratified, against the full
    Hessian); ``start`` defaults to min(max(2P, 256), max_size); ``speedup(size)`` is per step."""
    X, y = _data("logistic", n=330, seed=8)
    Xtr, ytr, Xte, yte = X[:300], y[:300], X[300:], y[300:]
    head = _head("logistic", Xtr, ytr, l2=1e-3)
    res = two_sample_search(head, (Xtr, ytr), (Xte, yte), sampler="stratified", start=20, max_size=40,
                            threshold=1.0, seed=5, full=True)
    assert [s.size for s in res.steps] == [20, 40] and res.recommended_sample_size is None
    rel = relative_curvature(head, (Xtr, ytr), 40, sampler="stratified", seed=5)
    chk = lep_check(head, (Xtr, ytr), (Xte, yte), rel)
    assert chk.statistics["spearman"] == pytest.approx(res.step(40).statistics["spearman"], abs=1e-12)
    assert res.speedup() is None  # no recommended size
    assert res.speedup(20) == pytest.approx(res.full_seconds / res.step(20).seconds_curvature)
    res = two_sample_search(head, (Xtr, ytr), (Xte, yte), threshold=0.01, seed=5)
    assert res.steps[0].size == 256  # 2P = 18 < 256 <= n
    res = two_sample_search(head, (Xtr, ytr), (Xte, yte), threshold=0.01, seed=5, max_size=100)
    assert res.steps[0].size == 100
    from winnow.io.sources import open_source

    _, cost = RelativeHessian(40, sampler="stratified", seed=5).draw(head, open_source((Xtr, ytr)))
    assert set(cost) == {"selection_rows_read", "selection_seconds"} and cost["selection_seconds"] >= 0
    assert cost["selection_rows_read"] == 300  # the label column


def test_leverage_pilot_is_independent_of_the_sample_drawn_with_the_same_seed():
    """The pilot uses its own random stream: with the pilot as large as a uniform sample of the same seed, the
    two are different row sets (the same stream would draw the same rows)."""
    X, y = _data("logistic", n=200, seed=8)
    head = _head("logistic", X, y)
    L = leverage_scores(head, (X, y), pilot_size=50, seed=4)
    rel = RelativeHessian(50, sampler="uniform", seed=4).fit(head, (X, y))
    assert L.pilot_rows.shape == rel.sample_.rows.shape == (50,)
    assert not np.array_equal(np.sort(L.pilot_rows), np.sort(rel.sample_.rows))
    again = leverage_scores(head, (X, y), pilot_size=50, seed=4)
    np.testing.assert_array_equal(again.pilot_rows, L.pilot_rows)  # reproducible from the seed
