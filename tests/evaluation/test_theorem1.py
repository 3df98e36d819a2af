"""Theorem 1 diagnostic: the identities of eqs. 39–51 and independent dense computations."""

import numpy as np
import pytest
import torch
from nets import Net, data, trained_net

from winnow.core.influence import InfluenceAnalyzer
from winnow.core.models import extract_features, head_from_module, select_params
from winnow.errors import ValidationError
from winnow.evaluation.theorem1 import report_section, theorem1_check
from winnow.report import Report


def full_dense_influence(net, X, y, Xte, yte, l2, damping):
    """−g_tᵀ H⁻¹ g_p from torch.autograd (double backward Hessian, per-example autograd.grad)."""
    names = [n for n, _ in net.named_parameters()]
    params = [p for _, p in net.named_parameters()]
    theta0 = torch.cat([p.detach().reshape(-1) for p in params])
    mask = torch.cat([torch.full((p.numel(),), 1.0 if p.ndim >= 2 else 0.0, dtype=torch.float64) for p in params])

    def unflat(theta):
        out, o = {}, 0
        for n_, p in zip(names, params):
            out[n_] = theta[o:o + p.numel()].reshape(p.shape)
            o += p.numel()
        return out

    def risk(theta):
        z = torch.func.functional_call(net, unflat(theta), (X,))[:, 0]
        reg = 0.5 * l2 * (mask * theta ** 2).sum()
        return torch.nn.functional.binary_cross_entropy_with_logits(z, y.double()) + reg

    H = torch.autograd.functional.hessian(risk, theta0) + damping * torch.eye(theta0.numel(), dtype=torch.float64)

    def grads(A, b):
        rows = []
        for i in range(len(b)):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(A[i:i + 1])[:, 0], b[i:i + 1].double())
            rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
        return torch.stack(rows)

    return -(grads(Xte, yte) @ torch.linalg.solve(H, grads(X, y).T)).numpy(), H


@pytest.mark.slow
def test_theorem1_dense_matches_independent_computations():
    net = trained_net()
    X, y = data()
    Xte, yte = data(15, seed=4)
    l2, damping = 1e-2, 1e-3
    res = theorem1_check(net, "fc", (X, y), (Xte, yte), l2=l2, damping=damping, n_train=30, n_test=6, seed=1)
    assert res.method == "dense" and res.n_params == sum(p.numel() for p in net.parameters())
    assert res.n_head_params == 6 and res.damping_added == 0.0 and res.n_negative == 0
    I_ref, H = full_dense_influence(net, X, y, Xte, yte, l2, damping)
    I_ref = I_ref[np.ix_(res.test_rows, res.train_rows)]
    np.testing.assert_allclose(res.influence_full, I_ref, rtol=1e-8, atol=1e-10)
    # head-only: the closed-form head path on the extracted features, with the same damping
    ftr = extract_features(net, "fc", (X, y), dtype=np.float64)
    fte = extract_features(net, "fc", (Xte, yte), dtype=np.float64)
    head = head_from_module(net.fc, l2=l2)
    I_head = InfluenceAnalyzer(head, damping=damping).fit((ftr.X, ftr.y)).pairwise((fte.X, fte.y))
    np.testing.assert_allclose(res.influence_head, I_head[np.ix_(res.test_rows, res.train_rows)], rtol=1e-8,
                               atol=1e-10)
    # eq. 39/43: the main term plus 𝒯₂ is the full g_tᵀH⁻¹g_p, for every pair
    np.testing.assert_allclose(res.main_term + res.t2, -res.influence_full, rtol=1e-8, atol=1e-10)
    # the eigenvalues are H's, the head masses sum to μ_C
    np.testing.assert_allclose(np.sort(res.eigenvalues), torch.linalg.eigvalsh(H).numpy(), rtol=1e-8, atol=1e-12)
    assert abs(res.head_mass.sum() - 6) < 1e-8
    assert 0 < res.head_inverse_mass < 1 and res.head_mass_baseline == pytest.approx(6 / res.n_params)
    a, b = res.influence_full.ravel(), res.influence_head.ravel()
    assert res.pearson == pytest.approx(np.corrcoef(a, b)[0, 1])
    assert res.sign_agreement == pytest.approx(np.mean(np.sign(a) == np.sign(b)))
    assert res.verdict and isinstance(res.trusted, bool)
    rep = report_section(Report("t"), res)
    assert "Theorem 1" in rep.html()


def test_head_only_parameter_set_is_the_exact_limit():
    """With params = the head only, the full model *is* the head: I_head = I, 𝒯₁ = 𝒯₂ = 0, trusted."""
    net = trained_net()
    X, y = data()
    res = theorem1_check(net, "fc", (X, y), (X[:10], y[:10]), l2=1e-2, params="fc", n_train=40, n_test=5)
    np.testing.assert_allclose(res.influence_head, res.influence_full, rtol=1e-9, atol=1e-12)
    # equal to 1e-9, so the ranks agree but for near-ties (one adjacent swap of 200 pairs is 1 − 1.5e-6)
    assert res.spearman > 1 - 1e-5 and res.sign_agreement == 1.0 and res.trusted
    assert res.t1_relative < 1e-10 and res.t2_relative["q95"] < 1e-8
    assert res.head_inverse_mass == pytest.approx(1.0)


def test_indefinite_hessian_is_damped_and_said_so():
    torch.manual_seed(0)
    net = Net(k=1).double().eval()  # untrained: far from a minimum
    X, y = data()
    res = theorem1_check(net, "fc", (X, y), (X[:10], y[:10]), l2=0.0, n_train=20, n_test=4, sweep=(1.0,))
    assert res.n_negative > 0 and res.min_eigenvalue < 0 and res.damping_added > -res.min_eigenvalue
    assert any("not a minimum" in n for n in res.notes) and "indefinite" in res.verdict
    assert any("stationary" in n for n in res.notes)
    assert res.damping_sweep and res.damping_sweep[0]["damping"] == 1.0


def test_lanczos_fallback_said_as_such_and_exact_at_full_rank():
    net = trained_net()
    X, y = data()
    kw = dict(l2=1e-2, damping=1e-2, n_train=20, n_test=4, seed=2)
    dense = theorem1_check(net, "fc", (X, y), (X[:10], y[:10]), **kw)
    P = dense.n_params
    lz = theorem1_check(net, "fc", (X, y), (X[:10], y[:10]), max_dense=10, rank=P, **kw)
    assert lz.method.startswith("lanczos") and any("approximation" in n for n in lz.notes)
    assert lz.t1_relative is None
    np.testing.assert_allclose(lz.influence_full, dense.influence_full, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(lz.influence_head, dense.influence_head, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValidationError, match="damping"):
        theorem1_check(net, "fc", (X, y), (X[:10], y[:10]), l2=1e-2, max_dense=10, rank=5)


def test_bad_inputs():
    net = trained_net()
    X, y = data()
    with pytest.raises(ValidationError, match="candidates"):
        theorem1_check(net, "classifier", (X, y), (X, y))
    with pytest.raises(ValidationError, match="include the head"):
        theorem1_check(net, "fc", (X, y), (X, y), params="body")
    with pytest.raises(ValidationError, match="1 output"):
        theorem1_check(net, "fc", (X, y + 1), (X, y))
    assert select_params(net, None)[-1] == "fc.bias"


def _flat_grads(net, A, b):
    params = list(net.parameters())
    rows = []
    for i in range(len(b)):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(A[i:i + 1])[:, 0], b[i:i + 1].double())
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    return torch.stack(rows).numpy()


def test_theorem1_terms_against_a_numpy_eigendecomposition():
    """𝒯₁ = βᵀΛ_Fβ (eq. 42), the main term g_tᵀQ_CᵀΛ_C⁻¹Q_Cg_p and 𝒯₂ (eq. 43) written out with numpy.linalg.eigh
    of the autograd Hessian; Λ_C = the μ_C eigenpairs with the largest mass on the head's coordinates."""
    net = trained_net()
    X, y = data()
    Xte, yte = data(15, seed=4)
    l2, damping = 1e-2, 1e-3
    res = theorem1_check(net, "fc", (X, y), (Xte, yte), l2=l2, damping=damping, n_train=12, n_test=4, seed=3)
    _, H = full_dense_influence(net, X, y, Xte[:1], yte[:1], l2, damping)
    H = H.numpy()
    P = H.shape[0]
    C = np.arange(P - 6, P)  # fc.weight, fc.bias: the last parameters in named_parameters order
    F = np.arange(P - 6)
    ev, V = np.linalg.eigh(H)
    mass = (V[C] ** 2).sum(0)
    S = np.argsort(-mass, kind="stable")[:6]
    Sc = np.setdiff1d(np.arange(P), S)
    QC = V[np.ix_(C, S)].T            # Q_C (μ_C × μ_C): rows = chosen eigenvectors, columns = head coordinates
    beta = V[np.ix_(C, Sc)].T         # β: the other eigenvectors on the head coordinates
    A_C = QC.T @ np.diag(ev[S]) @ QC
    T1 = beta.T @ np.diag(ev[Sc]) @ beta
    np.testing.assert_allclose(A_C + T1, H[np.ix_(C, C)], rtol=1e-9, atol=1e-12)  # eq. 51
    assert res.t1_relative == pytest.approx(np.linalg.norm(T1, 2) / np.linalg.norm(A_C, 2), rel=1e-6)
    assert res.t1_relative > 1e-6  # not the trivial head-only case: 𝒯₁ is really computed
    Gp = _flat_grads(net, X[res.train_rows], y[res.train_rows])
    Gt = _flat_grads(net, Xte[res.test_rows], yte[res.test_rows])
    main = (Gt[:, C] @ QC.T) @ np.diag(1 / ev[S]) @ (QC @ Gp[:, C].T)
    np.testing.assert_allclose(res.main_term, main, rtol=1e-7, atol=1e-10)
    full = Gt @ np.linalg.solve(H, Gp.T)
    np.testing.assert_allclose(res.t2, full - main, rtol=1e-7, atol=1e-10)
    # eq. 43 term by term: F1 = βᵀΛ_F⁻¹β, F2 = Q_CᵀΛ_C⁻¹α + βᵀΛ_F⁻¹γ, F3 = αᵀΛ_C⁻¹α + γᵀΛ_F⁻¹γ
    alpha, gamma = V[np.ix_(F, S)].T, V[np.ix_(F, Sc)].T
    F1 = beta.T @ np.diag(1 / ev[Sc]) @ beta
    F2 = QC.T @ np.diag(1 / ev[S]) @ alpha + beta.T @ np.diag(1 / ev[Sc]) @ gamma
    F3 = alpha.T @ np.diag(1 / ev[S]) @ alpha + gamma.T @ np.diag(1 / ev[Sc]) @ gamma
    gt, gp, ft, fp = Gt[:, C], Gp[:, C], Gt[:, F], Gp[:, F]
    T2 = gt @ F1 @ gp.T + gt @ F2 @ fp.T + ft @ F2.T @ gp.T + ft @ F3 @ fp.T
    np.testing.assert_allclose(res.t2, T2, rtol=1e-7, atol=1e-10)
    q = np.quantile(np.abs(T2) / np.abs(main), [0.05, 0.25, 0.5, 0.75, 0.95])
    np.testing.assert_allclose([res.t2_relative[k] for k in ("q05", "q25", "q50", "q75", "q95")], q, rtol=1e-6)
    # head-only influence with the head block of the same H (eq. 36), and the spectrum's head mass
    np.testing.assert_allclose(res.influence_head, -(gt @ np.linalg.solve(H[np.ix_(C, C)], gp.T)), rtol=1e-8,
                               atol=1e-11)
    assert res.head_inverse_mass == pytest.approx((mass / ev).sum() / (1 / ev).sum(), rel=1e-8)
    assert res.head_block_mass == pytest.approx((QC ** 2).sum() / 6, rel=1e-8)
    a, b = res.influence_full.ravel(), res.influence_head.ravel()
    from scipy.stats import rankdata

    assert res.spearman == pytest.approx(np.corrcoef(rankdata(a), rankdata(b))[0, 1], rel=1e-9)
    ratio = b / a
    assert res.ratio_within_2x == pytest.approx(np.mean((ratio >= 0.5) & (ratio <= 2.0)))
    assert res.min_eigenvalue == pytest.approx(ev[0], rel=1e-8) and res.max_eigenvalue == pytest.approx(ev[-1])


def test_reported_gradient_norm_is_that_of_the_regularised_objective():
    """‖∇R(θ̂)‖∞ with R = mean BCE + (λ/2)‖W‖² over the parameter set (here the head), by autograd."""
    torch.manual_seed(1)
    net = Net(k=1).double().eval()  # untrained: a clearly nonzero gradient
    X, y = data()
    res = theorem1_check(net, "fc", (X, y), (X[:10], y[:10]), l2=0.5, params="fc", n_train=5, n_test=2)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(net(X)[:, 0], y.double())
    gw, gb = torch.autograd.grad(loss, [net.fc.weight, net.fc.bias])
    expected = max(float((gw + 0.5 * net.fc.weight).abs().max()), float(gb.abs().max()))
    assert res.gradient_norm == pytest.approx(expected, rel=1e-9)


def test_summary_has_the_scalars_and_none_of_the_arrays():
    import json

    net = trained_net()
    X, y = data()
    res = theorem1_check(net, "fc", (X, y), (X[:10], y[:10]), l2=1e-2, n_train=20, n_test=4, seed=2)
    s = res.summary()
    for k in ("train_rows", "test_rows", "influence_full", "influence_head", "eigenvalues", "head_mass", "t2",
              "main_term"):
        assert k not in s, k
    for k in ("spearman", "pearson", "sign_agreement", "n_params", "n_head_params", "verdict", "trusted"):
        assert s[k] == getattr(res, k), k
    json.dumps(s)  # scalars only
