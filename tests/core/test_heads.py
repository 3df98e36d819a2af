"""Heads: closed-form derivatives against finite differences and autograd, fit against scikit-learn."""

import numpy as np
import pytest
import reference as ref  # tests/reference.py: independent maths
import torch
from conftest import relu_embeddings
from sklearn.linear_model import LogisticRegression

from winnow.core.heads import LogisticHead, SoftmaxHead, as_tensor, head_from_torch, load_head
from winnow.errors import ConvergenceError, ValidationError


def _fitted(kind, X, y, l2=1e-2):
    head = LogisticHead(l2=l2) if kind == "logistic" else SoftmaxHead(l2=l2)
    return head.fit(X, y)


@pytest.mark.parametrize("kind", ["logistic", "softmax"])
def test_gradients_match_finite_differences(kind, binary_data, multiclass_data):
    X, y = binary_data if kind == "logistic" else multiclass_data
    head = _fitted(kind, X[:50], y[:50])
    Xt, yt = as_tensor(X[:5]), torch.as_tensor(y[:5])
    theta = head.theta_ + 0.1 * torch.randn(head.n_params, generator=torch.Generator().manual_seed(0),
                                            dtype=torch.float64)
    G = head.gradients(Xt, yt, theta)
    eps = 1e-6
    fd = torch.zeros_like(G)
    for j in range(head.n_params):
        e = torch.zeros_like(theta)
        e[j] = eps
        fd[:, j] = (head.losses(Xt, yt, theta + e) - head.losses(Xt, yt, theta - e)) / (2 * eps)
    assert torch.allclose(G, fd, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("kind", ["logistic", "softmax"])
def test_hessian_matches_autograd_of_mean_loss(kind, binary_data, multiclass_data):
    X, y = binary_data if kind == "logistic" else multiclass_data
    head = _fitted(kind, X, y)
    Xt, yt = as_tensor(X), torch.as_tensor(y)

    def mean_loss(th):
        return head.losses(Xt, yt, th).mean()

    H_auto = torch.autograd.functional.hessian(mean_loss, head.theta_.clone())
    H_closed = head.hessian_sum(Xt) / len(y)
    assert torch.allclose(H_closed, H_auto, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("kind", ["logistic", "softmax"])
def test_hessian_matches_finite_differences_of_gradient(kind, binary_data, multiclass_data):
    X, y = binary_data if kind == "logistic" else multiclass_data
    head = _fitted(kind, X[:60], y[:60])
    Xt, yt = as_tensor(X[:60]), torch.as_tensor(y[:60])
    eps = 1e-6
    H = head.hessian_sum(Xt)
    for j in range(0, head.n_params, 3):
        e = torch.zeros(head.n_params, dtype=torch.float64)
        e[j] = eps
        col = (head.gradients(Xt, yt, head.theta_ + e).sum(0)
               - head.gradients(Xt, yt, head.theta_ - e).sum(0)) / (2 * eps)
        assert torch.allclose(H[:, j], col, atol=1e-6, rtol=1e-6)


def test_weighted_hessian_equals_repeated_rows(binary_data):
    X, y = binary_data
    head = _fitted("logistic", X, y)
    w = np.array([2.0, 0.0, 1.0, 3.0])
    rep = np.repeat(np.arange(4), w.astype(int))
    H_w = head.hessian_sum(as_tensor(X[:4]), weights=as_tensor(w))
    H_r = head.hessian_sum(as_tensor(X[rep]))
    assert torch.allclose(H_w, H_r, atol=1e-12)


@pytest.mark.parametrize("kind", ["logistic", "softmax"])
def test_fit_reaches_stationary_point(kind, binary_data, multiclass_data):
    X, y = binary_data if kind == "logistic" else multiclass_data
    head = _fitted(kind, X, y, l2=1e-3)
    assert head.grad_norm_ <= 1e-9
    Xt, yt = as_tensor(X), torch.as_tensor(y)
    th = head.theta_.clone().requires_grad_(True)
    R = ref.risk_torch(kind, Xt, yt, th, head.n_outputs, head.l2)  # independent risk, bias unregularised
    (g,) = torch.autograd.grad(R, th)
    assert float(g.abs().max()) < 1e-8


def test_from_sklearn_logistic_same_optimum(binary_data):
    X, y = binary_data
    C = 0.7
    sk = LogisticRegression(C=C, tol=1e-12, max_iter=10000).fit(X, y)
    mapped = LogisticHead.from_sklearn(sk, n_samples=len(y))
    assert mapped.l2 == pytest.approx(1.0 / (C * len(y)))
    ours = LogisticHead(l2=mapped.l2, tol=1e-11).fit(X, y)
    np.testing.assert_allclose(ours.weight_, mapped.weight_, atol=2e-5)
    np.testing.assert_allclose(ours.bias_, mapped.bias_, atol=2e-5)


def test_from_sklearn_multinomial_same_predictions(multiclass_data):
    X, y = multiclass_data
    C = 2.0
    sk = LogisticRegression(C=C, tol=1e-12, max_iter=10000).fit(X, y)
    mapped = SoftmaxHead.from_sklearn(sk, n_samples=len(y))
    ours = SoftmaxHead(l2=mapped.l2, tol=1e-11).fit(X, y)
    # weights are identified up to the bias shift; the probabilities are unique
    np.testing.assert_allclose(ours.predict_proba(X), mapped.predict_proba(X), atol=2e-5)
    np.testing.assert_allclose(ours.weight_, mapped.weight_, atol=2e-4)


def test_save_load_roundtrip(tmp_path, multiclass_data):
    X, y = multiclass_data
    head = _fitted("softmax", X, y)
    path = head.save(tmp_path / "head.npz")
    with np.load(path) as z:
        assert set(z.files) == {"weight", "bias", "kind", "l2"}
    back = load_head(path)
    assert isinstance(back, SoftmaxHead) and back.l2 == head.l2
    np.testing.assert_array_equal(back.weight_, head.weight_)
    with pytest.raises(FileExistsError):
        head.save(path)


def test_from_torch_linear():
    lin = torch.nn.Linear(5, 3)
    head = head_from_torch(lin, l2=0.1)
    assert isinstance(head, SoftmaxHead) and head.n_params == 18
    np.testing.assert_allclose(head.weight_, lin.weight.detach().double().numpy())
    assert isinstance(head_from_torch(torch.nn.Linear(5, 1)), LogisticHead)


def test_bad_labels_rejected(binary_data):
    X, y = binary_data
    with pytest.raises(ValidationError, match=r"\{0, 1\}"):
        LogisticHead().fit(X, y + 1)
    with pytest.raises(ValidationError, match="0..2"):
        SoftmaxHead(n_classes=3).fit(X, np.where(y == 1, 3, 0))


def test_fit_that_runs_out_of_iterations_fails_loudly(binary_data):
    X, y = binary_data
    with pytest.raises(ConvergenceError, match="did not converge"):
        LogisticHead(l2=1e-4, max_iter=1).fit(X, y)


def test_negative_l2_rejected():
    with pytest.raises(ValidationError, match="l2"):
        LogisticHead(l2=-1.0)


# ------------------------------------------------------------------ pinned against tests/reference.py
# Every expected value below comes from the independent formulas in tests/reference.py (numpy, scipy,
# torch.autograd on the paper's losses), never from a head's own helpers.


def _random_theta(head, seed=0, scale=0.3):
    g = np.random.default_rng(seed)
    return g.standard_normal(head.n_params) * scale


@pytest.mark.parametrize("kind", ["logistic", "softmax"])
def test_per_example_maths_matches_independent_formulas(kind, binary_data, multiclass_data):
    X, y = binary_data if kind == "logistic" else multiclass_data
    X, y = X[:40], y[:40]
    head = _fitted(kind, X, y)
    K = head.n_outputs
    th = _random_theta(head)
    Xt, yt, tht = as_tensor(X), torch.as_tensor(y), torch.as_tensor(th)
    np.testing.assert_allclose(head.losses(Xt, yt, tht).numpy(), ref.losses_np(kind, X, y, th, K), rtol=1e-12)
    W, b = ref.split(th, K, X.shape[1])
    Z = X @ W.T + b
    np.testing.assert_allclose(head.logits(Xt, tht).numpy(), Z, rtol=1e-12, atol=1e-14)
    if kind == "logistic":
        r = (1 / (1 + np.exp(-Z[:, 0])) - y)[:, None]
    else:
        P = np.exp(Z - Z.max(1, keepdims=True))
        P /= P.sum(1, keepdims=True)
        r = P - np.eye(K)[y]
    np.testing.assert_allclose(head.residuals(Xt, yt, tht).numpy(), r, rtol=1e-10, atol=1e-14)
    G = ref.per_example_grads(kind, X, y, th, K)
    np.testing.assert_allclose(head.gradients(Xt, yt, tht).numpy(), G, rtol=1e-10, atol=1e-13)
    # g_i^T v without forming g, for one vector and for a matrix of them
    V = np.random.default_rng(1).standard_normal((head.n_params, 3))
    np.testing.assert_allclose(head.grad_dot(Xt, yt, torch.as_tensor(V[:, 0]), tht).numpy(), G @ V[:, 0],
                               rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(head.grad_dot(Xt, yt, torch.as_tensor(V), tht).numpy(), G @ V, rtol=1e-10,
                               atol=1e-13)
    # the fitted θ̂ is used when theta is omitted
    np.testing.assert_allclose(head.gradients(Xt, yt).numpy(),
                               ref.per_example_grads(kind, X, y, head.theta_.numpy(), K), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("kind", ["logistic", "softmax"])
def test_weighted_hessian_sum_and_objective_terms_match_autograd(kind, binary_data, multiclass_data):
    X, y = binary_data if kind == "logistic" else multiclass_data
    X, y = X[:30], y[:30]
    head = _fitted(kind, X, y)
    K = head.n_outputs
    th = _random_theta(head, seed=2)
    w = np.random.default_rng(3).uniform(0.0, 2.0, len(y))
    Xt, yt, tht, wt = as_tensor(X), torch.as_tensor(y), torch.as_tensor(th), torch.as_tensor(w)
    H_ref = ref.loss_hessian_sum(kind, X, y, th, K, weights=w)
    np.testing.assert_allclose(head.hessian_sum(Xt, tht, weights=wt).numpy(), H_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(head.hessian_sum(Xt, tht).numpy(), ref.loss_hessian_sum(kind, X, y, th, K),
                               rtol=1e-10, atol=1e-12)
    loss, grad, hess = head.objective_terms(Xt, yt, wt, tht)
    assert float(loss) == pytest.approx(float(w @ ref.losses_np(kind, X, y, th, K)), rel=1e-12)
    np.testing.assert_allclose(grad.numpy(), w @ ref.per_example_grads(kind, X, y, th, K), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(hess.numpy(), H_ref, rtol=1e-10, atol=1e-12)
    loss, grad, _ = head.objective_terms(Xt, yt, None, tht)
    assert float(loss) == pytest.approx(float(ref.losses_np(kind, X, y, th, K).sum()), rel=1e-12)
    np.testing.assert_allclose(grad.numpy(), ref.per_example_grads(kind, X, y, th, K).sum(0), rtol=1e-10,
                               atol=1e-12)


def test_logistic_curvature_weights_are_s_one_minus_s(binary_data):
    X, y = binary_data
    head = _fitted("logistic", X[:50], y[:50])
    s = 1 / (1 + np.exp(-(X[:20] @ head.weight_[0] + head.bias_[0])))
    np.testing.assert_allclose(head.curvature_weights(as_tensor(X[:20])).numpy(), s * (1 - s), rtol=1e-12)
    np.testing.assert_allclose(head.predict_proba(X[:20]), s, rtol=1e-12)


def test_softmax_predict_proba(multiclass_data):
    X, y = multiclass_data
    head = _fitted("softmax", X[:80], y[:80])
    Z = X[:20] @ head.weight_.T + head.bias_
    P = np.exp(Z - Z.max(1, keepdims=True))
    np.testing.assert_allclose(head.predict_proba(X[:20]), P / P.sum(1, keepdims=True), rtol=1e-12)


@pytest.mark.parametrize("kind", ["logistic", "softmax"])
def test_regulariser_and_mask_leave_the_bias_alone(kind, binary_data, multiclass_data):
    X, y = binary_data if kind == "logistic" else multiclass_data
    head = _fitted(kind, X[:60], y[:60], l2=0.37)
    K, D = head.n_outputs, head.n_features_
    th = _random_theta(head, seed=4, scale=1.0)
    assert float(head.regulariser(torch.as_tensor(th))) == pytest.approx(
        float(ref.weight_penalty(th, K, D, 0.37)), rel=1e-13)
    want = np.ones((K, D + 1))
    want[:, D] = 0.0
    np.testing.assert_array_equal(head.weight_mask().numpy(), want.reshape(-1))
    # a θ that only moves the biases has no penalty
    only_bias = np.zeros((K, D + 1))
    only_bias[:, D] = 5.0
    assert float(head.regulariser(torch.as_tensor(only_bias.reshape(-1)))) == 0.0


def test_null_directions():
    head = SoftmaxHead.from_weights(np.ones((3, 4)), np.zeros(3))
    np.testing.assert_allclose(head.null_directions().numpy()[:, 0], ref.bias_shift_direction(3, 4), rtol=1e-15)
    assert LogisticHead.from_weights(np.ones(4), 0.0).null_directions().shape == (5, 0)


@pytest.mark.parametrize("kind", ["logistic", "softmax"])
@pytest.mark.parametrize("weighted", [False, True])
def test_fit_reaches_the_optimum_of_the_independent_risk(kind, weighted, binary_data, multiclass_data):
    """θ̂ from fit() against scipy.optimize on the independent risk (weights only regularised)."""
    X, y = binary_data if kind == "logistic" else multiclass_data
    X, y = X[:120], y[:120]
    l2 = 0.05
    K = 1 if kind == "logistic" else 4
    w = np.random.default_rng(5).uniform(0.2, 3.0, len(y)) if weighted else None
    N = 77.0 if weighted else None
    head = LogisticHead(l2=l2, tol=1e-11) if kind == "logistic" else SoftmaxHead(l2=l2, tol=1e-11, n_classes=4)
    head.fit(X, y, sample_weight=w, normalizer=N)
    # the independent gradient of the independent risk vanishes at θ̂
    th = head.theta_.clone().requires_grad_(True)
    R = ref.risk_torch(kind, ref.tt(X), torch.as_tensor(y), th, K, l2,
                       ref.tt(w) if w is not None else None, N)
    (g,) = torch.autograd.grad(R, th)
    assert float(g.abs().max()) < 1e-9
    theta_sp = ref.fit_scipy(kind, X, y, K, l2, w, N)
    if kind == "softmax":  # identified up to the common bias shift
        v = ref.bias_shift_direction(K, X.shape[1])
        theta_sp = theta_sp - v * (v @ (theta_sp - head.theta_.numpy()))
    np.testing.assert_allclose(head.theta_.numpy(), theta_sp, atol=2e-5)
    assert head.grad_norm_ <= 1e-11 and head.n_iter_ >= 1


def test_fit_with_zero_l2_on_separable_data_is_shifted_newton():
    """Collinear features, λ = 0: the Hessian is singular; the shifted Newton step still reaches a stationary
    point of the independent risk."""
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((80, 2))
    X = np.column_stack([Z, Z[:, 0] + Z[:, 1]])
    y = (Z[:, 0] + 0.8 * rng.standard_normal(80) > 0).astype(int)
    head = LogisticHead(l2=0.0, tol=1e-9, max_iter=200).fit(X, y)
    th = head.theta_.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(ref.risk_torch("logistic", ref.tt(X), torch.as_tensor(y), th, 1, 0.0), th)
    assert float(g.abs().max()) < 1e-8


def test_from_torch_and_save_load_keep_every_parameter(tmp_path):
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 1)
    head = head_from_torch(lin, l2=0.25, tol=1e-7)
    assert isinstance(head, LogisticHead) and head.l2 == 0.25 and head.tol == 1e-7
    np.testing.assert_allclose(head.weight_, lin.weight.detach().double().numpy(), rtol=1e-7)
    np.testing.assert_allclose(head.bias_, lin.bias.detach().double().numpy(), rtol=1e-7)
    nob = head_from_torch(torch.nn.Linear(4, 3, bias=False))
    np.testing.assert_array_equal(nob.bias_, np.zeros(3))
    with pytest.raises(ValidationError, match="nn.Linear"):
        head_from_torch(torch.nn.Conv1d(1, 1, 1))
    path = head.save(tmp_path / "h.npz")
    back = load_head(path)
    assert type(back) is LogisticHead and back.l2 == 0.25
    np.testing.assert_array_equal(back.bias_, head.bias_)
    np.testing.assert_array_equal(back.theta_.numpy(), head.theta_.numpy())
    head.save(path, overwrite=True)
    with pytest.raises(ValidationError, match="does not exist"):
        load_head(tmp_path / "missing.npz")
    np.savez(tmp_path / "bad.npz", weight=np.ones((1, 2)))
    with pytest.raises(ValidationError, match="not a winnow head"):
        load_head(tmp_path / "bad.npz")
    np.savez(tmp_path / "kind.npz", weight=np.ones((1, 2)), bias=np.zeros(1), kind=np.array("tree"), l2=np.array(0.1))
    with pytest.raises(ValidationError, match="unknown head kind"):
        load_head(tmp_path / "kind.npz")
    with pytest.raises(ValidationError, match="features"):
        head.predict_proba(np.ones((2, 3)))


@pytest.mark.parametrize("kind", ["logistic", "softmax"])
def test_leverage_is_the_trace_of_hinv_times_each_example_hessian(kind, binary_data):
    """ℓev_i = tr(H⁻¹ ∇²ℓ_i): per-example Hessians by autograd, H⁻¹ by numpy (the pseudo-inverse on the
    gradients' span for softmax; `Curvature.inverse`'s null-direction fill must not change it)."""
    from scipy.special import softmax

    from winnow.core.curvature import fit_curvature
    from winnow.core.heads import augment

    X, y = binary_data[0][:60], binary_data[1][:60]
    if kind == "softmax":
        X, y = relu_embeddings(60, d=3, seed=5, k=3)
    head = _fitted(kind, X, y, l2=0.05)
    K, D = head.n_outputs, head.n_features_
    th = head.theta_.numpy()
    H = ref.risk_hessian(kind, X, y, th, K, head.l2)
    Hinv = ref.pinv_on_gradients(H, ref.bias_shift_direction(K, D) if kind == "softmax" else None)
    rows = range(0, 60, 7)
    lev_ref = np.array([np.trace(Hinv @ ref.loss_hessian_sum(kind, X[i:i + 1], y[i:i + 1], th, K)) for i in rows])
    Xr = torch.as_tensor(X[list(rows)])
    np.testing.assert_allclose(head.leverage(Xr, torch.as_tensor(Hinv)).numpy(), lev_ref, rtol=1e-9, atol=1e-13)
    curv = fit_curvature(head, (X, y))
    np.testing.assert_allclose(head.leverage(Xr, curv.inverse()).numpy(), lev_ref, rtol=1e-8, atol=1e-12)
    # the blocks M_p = U_pᵀH⁻¹U_p with the curvature factor A_p give the same trace: Σ_kl (A_p)_kl (M_p)_lk
    M = head.leverage_blocks(augment(Xr), torch.as_tensor(Hinv)).numpy()
    assert M.dtype == np.float64 and M.shape == (len(lev_ref), K, K)
    W, b = ref.split(th, K, D)
    Z = X[list(rows)] @ W.T + b
    if kind == "logistic":
        s = 1 / (1 + np.exp(-Z[:, 0]))
        A = (s * (1 - s))[:, None, None]
    else:
        p = softmax(Z, axis=1)
        A = np.einsum("ik,kl->ikl", p, np.eye(K)) - p[:, :, None] * p[:, None, :]
    np.testing.assert_allclose(np.einsum("ikl,ilk->i", A, M), lev_ref, rtol=1e-9, atol=1e-13)
    Ua = np.c_[X[list(rows)], np.ones(len(lev_ref))]
    for k in range(K):
        blk = Hinv[k * (D + 1):(k + 1) * (D + 1), (K - 1) * (D + 1):]
        np.testing.assert_allclose(M[:, k, K - 1], np.einsum("id,de,ie->i", Ua, blk, Ua), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("kind", ["logistic", "softmax"])
def test_blank_is_an_unfitted_copy_for_retraining(kind, binary_data):
    X, y = binary_data if kind == "logistic" else relu_embeddings(50, d=3, seed=5, k=3)
    head = _fitted(kind, X[:50], y[:50], l2=0.07)
    b = head.blank()
    assert type(b) is type(head) and not b.is_fitted
    assert b.l2 == 0.07 and b.tol == head.tol and b.max_iter >= 100
    assert head.blank(tol=1e-5).tol == 1e-5
    refit = b.fit(X[:50], y[:50])
    np.testing.assert_allclose(refit.theta_.numpy(), head.theta_.numpy(), rtol=1e-6, atol=1e-8)
    if kind == "softmax":
        assert b.n_outputs == head.n_outputs


@pytest.mark.parametrize("kind", ["logistic", "softmax"])
def test_generic_score_chunk_and_logit_maths_against_the_reference(kind, binary_data):
    """The generic `Head.score_chunk` (per-example gradients; what autodiff heads use), the per-example loss from
    logits and the curvature factor A_p = ∂²ℓ/∂z² (autograd in the logits) against tests/reference.py."""
    from winnow.core.curvature import fit_curvature
    from winnow.core.heads import Head

    X, y = binary_data[0][:50], binary_data[1][:50]
    if kind == "softmax":
        X, y = relu_embeddings(50, d=3, seed=5, k=3)
    head = _fitted(kind, X, y, l2=0.05)
    K, D = head.n_outputs, head.n_features_
    th = head.theta_.numpy()
    H = ref.risk_hessian(kind, X, y, th, K, head.l2)
    Hinv = ref.pinv_on_gradients(H, ref.bias_shift_direction(K, D) if kind == "softmax" else None)
    G = ref.per_example_grads(kind, X, y, th, K)
    s = Hinv @ G[:7].mean(0)
    curv = fit_curvature(head, (X, y))
    out = Head.score_chunk(head, X[10:30], y[10:30], direction=torch.as_tensor(s), curvature=curv, n_train=50,
                           pair_factors=torch.as_tensor(Hinv @ G[:3].T))
    np.testing.assert_allclose(out["influence"], -(G[10:30] @ s), rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(out["loss_change_if_removed"], G[10:30] @ s / 50, rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(out["self_influence"], np.einsum("ip,pq,iq->i", G[10:30], Hinv, G[10:30]),
                               rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(out["pairs"], -(G[10:30] @ Hinv @ G[:3].T), rtol=1e-9, atol=1e-13)
    buf = np.empty((20, 3))
    out = Head.score_chunk(head, X[10:30], y[10:30], direction=torch.as_tensor(s), curvature=None, n_train=50,
                           pair_factors=torch.as_tensor(Hinv @ G[:3].T), pairs_out=buf)
    assert out["pairs"] is buf and "self_influence" not in out
    np.testing.assert_allclose(buf, -(G[10:30] @ Hinv @ G[:3].T), rtol=1e-9, atol=1e-13)

    W, b = ref.split(th, K, D)
    Z = torch.as_tensor(X @ W.T + b)
    yt = torch.as_tensor(y)
    np.testing.assert_allclose(head.loss_from_logits(Z, yt).numpy(), ref.losses_np(kind, X, y, th, K), rtol=1e-12)
    A = head.curvature_factors(torch.as_tensor(X)).numpy()
    for i in (0, 17, 41):
        def loss_of_logits(z, i=i):
            if kind == "logistic":
                return torch.logaddexp(torch.zeros((), dtype=z.dtype), z[0]) - float(y[i]) * z[0]
            return torch.logsumexp(z, 0) - z[int(y[i])]
        np.testing.assert_allclose(A[i], torch.autograd.functional.hessian(loss_of_logits, Z[i]).numpy(),
                                   rtol=1e-10, atol=1e-14)


def test_fit_backtracks_from_a_saturated_start():
    """From a saturated warm start the full Newton step raises the risk (checked here in numpy); the fit must
    backtrack and still reach scipy's optimum."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 2))
    y = (X[:, 0] + 0.5 * rng.standard_normal(40) > 0).astype(np.int64)
    th0 = np.array([-8.0, 6.0, 3.0])
    Xa = np.c_[X, np.ones(40)]

    def risk(th):
        z = Xa @ th
        return np.mean(np.logaddexp(0, z) - y * z) + 0.5 * 1e-2 * (th[:2] ** 2).sum()

    s = 1 / (1 + np.exp(-(Xa @ th0)))
    g = Xa.T @ (s - y) / 40 + 1e-2 * np.r_[th0[:2], 0.0]
    H = Xa.T @ (Xa * (s * (1 - s))[:, None]) / 40 + 1e-2 * np.diag([1.0, 1.0, 0.0])
    assert risk(th0 - np.linalg.solve(H, g)) > risk(th0)  # the full step overshoots
    head = LogisticHead(l2=1e-2, tol=1e-10).fit(X, y, init=torch.as_tensor(th0))
    from scipy.optimize import minimize

    def risk_and_grad(th):
        p = 1 / (1 + np.exp(-(Xa @ th)))
        return risk(th), Xa.T @ (p - y) / 40 + 1e-2 * np.r_[th[:2], 0.0]

    opt = minimize(risk_and_grad, np.zeros(3), jac=True, method="BFGS", options={"gtol": 1e-12}).x
    np.testing.assert_allclose(head.theta_.numpy(), opt, rtol=1e-6, atol=1e-8)


def test_from_sklearn_refuses_an_l1_ratio_without_penalty():
    """Newer sklearn spells elastic net as ``l1_ratio`` > 0 with ``penalty`` left at its default: refused."""
    from types import SimpleNamespace

    model = SimpleNamespace(coef_=np.array([[0.5, -0.2]]), intercept_=np.array([0.1]), C=1.0, penalty="deprecated",
                            l1_ratio=0.5, fit_intercept=True)
    with pytest.raises(ValidationError, match="l1_ratio=0.5"):
        LogisticHead.from_sklearn(model, n_samples=10)
    model.l1_ratio = 0.0
    head = LogisticHead.from_sklearn(model, n_samples=10)
    assert head.l2 == pytest.approx(0.1)


@pytest.mark.parametrize("kind", ["logistic", "softmax"])
def test_gradient_stats_generic_and_closed_form_against_autograd(kind, binary_data, multiclass_data):
    """(Σ w_i g_i, Σ w_i ‖g_i‖∞): the sums of the stationarity check, by the generic per-example route (what
    autodiff heads use) and the closed form, against autograd's per-example gradients; with and without weights,
    and (closed form) on no rows."""
    from winnow.core.heads import Head

    X, y = binary_data if kind == "logistic" else multiclass_data
    X, y = X[:40], y[:40]
    head = LogisticHead(l2=1e-2) if kind == "logistic" else SoftmaxHead(l2=1e-2)
    head.fit(X[:20], y[:20])  # θ off the optimum of these 40 rows: the sums are not zero
    G = ref.per_example_grads(kind, X, y, head.theta_.numpy(), head.n_outputs)
    w = np.linspace(0.5, 2.0, 40)
    Xt, yt = torch.as_tensor(X), torch.as_tensor(y)
    for stats in (head.gradient_stats, lambda *a: Head.gradient_stats(head, *a)):
        g, s = stats(Xt, yt)
        np.testing.assert_allclose(g.numpy(), G.sum(0), rtol=1e-10, atol=1e-12)
        assert float(s) == pytest.approx(np.abs(G).max(1).sum(), rel=1e-10)
        g, s = stats(Xt, yt, torch.as_tensor(w))
        np.testing.assert_allclose(g.numpy(), (w[:, None] * G).sum(0), rtol=1e-10, atol=1e-12)
        assert float(s) == pytest.approx((w * np.abs(G).max(1)).sum(), rel=1e-10)
    g, s = head.gradient_stats(Xt[:0], yt[:0])  # the closed form also takes a block of no rows
    assert g.shape == (head.n_params,) and float(g.abs().sum()) == 0 and float(s) == 0


def test_saved_head_keeps_its_classes_and_blank_keeps_precision(tmp_path, binary_data, multiclass_data):
    X, y = binary_data
    head = LogisticHead(l2=1e-2).fit(X[:60], y[:60])
    head.classes_ = ("no", "yes")
    loaded = load_head(head.save(tmp_path / "h.npz"))
    assert loaded.classes_ == ("no", "yes")
    assert load_head(LogisticHead(l2=1e-2).fit(X[:60], y[:60]).save(tmp_path / "plain.npz")).classes_ is None
    Xm, ym = multiclass_data
    for h in (LogisticHead(l2=1e-2, precision="mixed"), SoftmaxHead(l2=1e-2, precision="float64")):
        h.fit(X[:60], y[:60]) if isinstance(h, LogisticHead) else h.fit(Xm[:60], ym[:60])
        assert h.blank().precision == h.precision


def test_negative_or_nonfinite_sample_weight_is_refused(binary_data):
    X, y = binary_data
    for bad in (-1.0, np.nan):
        w = np.ones(60)
        w[3] = bad
        with pytest.raises(ValidationError, match="sample_weight must be finite and >= 0"):
            LogisticHead(l2=1e-2).fit(X[:60], y[:60], sample_weight=w)


def test_logistic_leverage_of_confident_points_is_small(binary_data):
    """ℓev = s(1−s)·ũᵀH⁻¹ũ goes to 0 for points the head is sure of (s(1−s) → 0): the clamp at 0 only removes
    rounding below it; numpy reference on scaled-out rows."""
    X, y = binary_data
    head = LogisticHead(l2=1e-2).fit(X[:80], y[:80])
    Hinv = np.linalg.inv(ref.risk_hessian("logistic", X[:80], y[:80], head.theta_.numpy(), 1, head.l2))
    far = X[:6] * np.array([1.0, 3.0, 6.0, 10.0, 20.0, 40.0])[:, None]
    Ua = np.c_[far, np.ones(6)]
    z = Ua @ head.theta_.numpy()
    s = 1 / (1 + np.exp(-z))
    expected = s * (1 - s) * np.einsum("id,de,ie->i", Ua, Hinv, Ua)
    got = head.leverage(torch.as_tensor(far), torch.as_tensor(Hinv)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-15)
    assert (expected < 1).any()  # the check reaches leverages below 1
