"""The damped head Hessian H = (1/N) Σ w_i ∇²ℓ_i + λ·mask + damping·I and its factorisations, against the
independent maths of tests/reference.py (autograd of the paper's losses, numpy.linalg)."""

import numpy as np
import pytest
import reference as ref
import torch
from conftest import relu_embeddings

from winnow.core.curvature import Curvature, fit_curvature, hessian_chunk, hessian_pass
from winnow.core.heads import LogisticHead, SoftmaxHead
from winnow.errors import NotPositiveDefiniteError, ValidationError
from winnow.io.sources import open_source


def _setup(kind, n=90, l2=0.2):
    if kind == "logistic":
        X, y = relu_embeddings(n, d=5, seed=11)
        return X, y, LogisticHead(l2=l2, tol=1e-11).fit(X, y), 1
    X, y = relu_embeddings(n, d=4, seed=12, k=3)
    return X, y, SoftmaxHead(l2=l2, tol=1e-11).fit(X, y), 3


@pytest.mark.parametrize("kind", ["logistic", "softmax"])
@pytest.mark.parametrize("damping", [0.0, 0.3])
def test_full_hessian_equals_autograd_of_the_risk(kind, damping):
    """H = ∇²[(1/n) Σ ℓ_i + (λ/2)‖W‖²] + damping·I: λ on the weights only (the bias is not regularised)."""
    X, y, head, K = _setup(kind)
    curv = fit_curvature(head, (X, y), damping=damping, chunk_size=23)
    H_ref = ref.risk_hessian(kind, X, y, head.theta_.numpy(), K, head.l2, damping)
    np.testing.assert_allclose(curv.hessian.numpy(), H_ref, rtol=1e-10, atol=1e-12)
    assert curv.n == len(y) and curv.l2 == head.l2 and curv.damping == damping


@pytest.mark.parametrize("kind", ["logistic", "softmax"])
def test_weighted_sample_hessian_eq52(kind):
    """Rows S with weights w and normalizer N: (1/N) Σ_S w_j ∇²ℓ_j + λ·mask; N defaults to Σ w_j."""
    X, y, head, K = _setup(kind)
    th = head.theta_.numpy()
    rows = np.array([1, 4, 5, 17, 30, 31, 60, 88])
    w = np.linspace(0.5, 2.0, rows.size)
    D = X.shape[1]
    mask = np.ones((K, D + 1))
    mask[:, D] = 0.0
    reg = head.l2 * np.diag(mask.reshape(-1))
    S_ref = ref.loss_hessian_sum(kind, X[rows], y[rows], th, K, weights=w)
    c = fit_curvature(head, (X, y), rows=rows, row_weights=w, normalizer=5.0, chunk_size=3, damping=0.1)
    np.testing.assert_allclose(c.hessian.numpy(), S_ref / 5.0 + reg + 0.1 * np.eye(K * (D + 1)), rtol=1e-10,
                               atol=1e-12)
    assert c.n == 5.0
    c = fit_curvature(head, (X, y), rows=rows, row_weights=w, chunk_size=3)
    np.testing.assert_allclose(c.hessian.numpy(), S_ref / w.sum() + reg, rtol=1e-10, atol=1e-12)
    assert c.n == pytest.approx(w.sum())
    c = fit_curvature(head, (X, y), rows=rows)  # eq. 52: w = 1, N = m
    np.testing.assert_allclose(c.hessian.numpy(),
                               ref.loss_hessian_sum(kind, X[rows], y[rows], th, K) / rows.size + reg,
                               rtol=1e-10, atol=1e-12)


def test_hessian_pass_returns_sum_and_total_weight():
    X, y, head, K = _setup("logistic")
    th = head.theta_.numpy()
    S, total = hessian_pass(head, open_source((X, y)), chunk_size=7)
    np.testing.assert_allclose(S.numpy(), ref.loss_hessian_sum("logistic", X, y, th, K), rtol=1e-10, atol=1e-12)
    assert total == len(y)
    rows = np.arange(0, 90, 3)
    w = np.full(rows.size, 0.25)
    S, total = hessian_pass(head, open_source((X, y)), rows=rows, row_weights=w, chunk_size=7)
    np.testing.assert_allclose(S.numpy(), ref.loss_hessian_sum("logistic", X[rows], y[rows], th, K, weights=w),
                               rtol=1e-10, atol=1e-12)
    assert total == pytest.approx(0.25 * rows.size)
    # one chunk, float32 features: the same sum up to the features' rounding
    part = hessian_chunk(head, X[:40].astype(np.float32), np.ones(40))
    np.testing.assert_allclose(part.numpy(), ref.loss_hessian_sum("logistic", X[:40].astype(np.float32), y[:40],
                                                                  th, K), rtol=1e-5, atol=1e-7)


def test_logistic_solve_whiten_inverse_eigh():
    X, y, head, K = _setup("logistic")
    H = ref.risk_hessian("logistic", X, y, head.theta_.numpy(), K, head.l2)
    curv = fit_curvature(head, (X, y))
    P = H.shape[0]
    B = np.random.default_rng(0).standard_normal((P, 4))
    np.testing.assert_allclose(curv.solve(torch.as_tensor(B)).numpy(), np.linalg.solve(H, B), rtol=1e-9,
                               atol=1e-12)
    np.testing.assert_allclose(curv.solve(torch.as_tensor(B[:, 0])).numpy(), np.linalg.solve(H, B[:, 0]),
                               rtol=1e-9, atol=1e-12)
    W = curv.whiten(torch.as_tensor(B.T)).numpy()  # (P, 4)
    np.testing.assert_allclose(W.T @ W, B.T @ np.linalg.solve(H, B), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(curv.inverse().numpy(), np.linalg.inv(H), rtol=1e-9, atol=1e-12)
    Li = curv.inverse_factor().numpy()
    np.testing.assert_allclose(np.triu(Li, 1), 0.0, atol=0)
    np.testing.assert_allclose(Li.T @ Li, np.linalg.inv(H), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(Li @ H @ Li.T, np.eye(P), atol=1e-10)
    ev, Q = curv.eigh()
    np.testing.assert_allclose(ev.numpy(), np.linalg.eigvalsh(H), rtol=1e-10)
    np.testing.assert_allclose(Q.numpy() @ np.diag(ev.numpy()) @ Q.numpy().T, H, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(Q.numpy().T @ Q.numpy(), np.eye(P), atol=1e-12)
    assert curv.n_params == P


def test_softmax_null_direction_is_handled_as_the_pseudo_inverse():
    X, y, head, K = _setup("softmax")
    D = X.shape[1]
    H = ref.risk_hessian("softmax", X, y, head.theta_.numpy(), K, head.l2)
    v = ref.bias_shift_direction(K, D)
    np.testing.assert_allclose(H @ v, 0.0, atol=1e-12)  # singular: the common bias shift
    curv = fit_curvature(head, (X, y))
    Hp = ref.pinv_on_gradients(H, v)
    G = ref.per_example_grads("softmax", X[:6], y[:6], head.theta_.numpy(), K)
    np.testing.assert_allclose(G @ v, 0.0, atol=1e-12)  # every gradient is orthogonal to it
    np.testing.assert_allclose(curv.solve(torch.as_tensor(G.T)).numpy(), Hp @ G.T, rtol=1e-8, atol=1e-11)
    W = curv.whiten(torch.as_tensor(G)).numpy()
    np.testing.assert_allclose(W.T @ W, G @ Hp @ G.T, rtol=1e-8, atol=1e-11)
    Hi = curv.inverse().numpy()
    np.testing.assert_allclose(G @ Hi @ G.T, G @ Hp @ G.T, rtol=1e-8, atol=1e-11)
    ev, Q = curv.eigh()
    P = K * (D + 1)
    assert ev.shape == (P - 1,) and Q.shape == (P, P - 1)
    ev_ref = np.linalg.eigvalsh(H)[1:]  # drop the zero eigenvalue
    np.testing.assert_allclose(ev.numpy(), ev_ref, rtol=1e-9)
    np.testing.assert_allclose(Q.numpy().T @ v, 0.0, atol=1e-10)
    np.testing.assert_allclose(Q.numpy() @ np.diag(ev.numpy()) @ Q.numpy().T, H, rtol=1e-9, atol=1e-11)


def test_not_positive_definite_and_bad_damping():
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((60, 2))
    X = np.column_stack([Z, Z[:, 0] - Z[:, 1]])  # collinear, λ = 0: singular H
    y = (Z[:, 0] > 0).astype(int)
    head = LogisticHead.from_weights(np.array([0.3, -0.1, 0.2]), 0.1, l2=0.0)
    with pytest.raises(NotPositiveDefiniteError, match="damping"):
        fit_curvature(head, (X, y))
    c = fit_curvature(head, (X, y), damping=1e-3, allow_nonstationary=True)  # the maths at an arbitrary θ
    H = ref.risk_hessian("logistic", X, y, head.theta_.numpy(), 1, 0.0, 1e-3)
    np.testing.assert_allclose(c.hessian.numpy(), H, rtol=1e-10, atol=1e-13)
    for bad in (-1e-3, float("nan"), float("inf")):
        with pytest.raises(ValidationError, match="damping"):
            fit_curvature(head, (X, y), damping=bad)
    with pytest.raises(NotPositiveDefiniteError):
        Curvature(hessian=torch.tensor([[1.0, 0.0], [0.0, -1e-3]], dtype=torch.float64), n=1, l2=0.0)
    with pytest.raises(NotPositiveDefiniteError, match="NaN"):
        Curvature(hessian=torch.tensor([[1.0, float("nan")], [0.0, 1.0]], dtype=torch.float64), n=1, l2=0.0)
    with pytest.raises(ValidationError, match="no rows"):
        fit_curvature(head, (X, y), rows=np.array([], dtype=np.int64))


def test_chunk_sums_every_row_block_and_empty_chunk_is_zero(monkeypatch):
    """A chunk longer than one working block is the sum over all its blocks; an empty chunk gives a zero sum."""
    import winnow.core.curvature as curvature

    X, y = relu_embeddings(300, d=5, seed=13)
    head = LogisticHead.from_weights(np.linspace(-0.4, 0.5, 5), 0.2, l2=0.1)
    th = head.theta_.numpy()
    monkeypatch.setattr(curvature, "row_block", lambda n_cols, device=None: 128)  # three blocks: 128, 128, 44
    w = np.linspace(0.2, 1.5, 300)
    np.testing.assert_allclose(hessian_chunk(head, X, w).numpy(),
                               ref.loss_hessian_sum("logistic", X, y, th, 1, weights=w), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(hessian_chunk(head, X[:0]).numpy(), np.zeros((6, 6)))


def test_normalizer_below_one_is_allowed():
    """N only has to be positive: a sample with Σ w = 0.5 gives S/0.5 + λ·mask."""
    X, y, head, K = _setup("logistic")
    rows = np.array([2, 9])
    w = np.array([0.2, 0.3])
    c = fit_curvature(head, (X, y), rows=rows, row_weights=w)
    D = X.shape[1]
    reg = head.l2 * np.diag(np.r_[np.ones(D), 0.0])
    S = ref.loss_hessian_sum("logistic", X[rows], y[rows], head.theta_.numpy(), K, weights=w)
    np.testing.assert_allclose(c.hessian.numpy(), S / 0.5 + reg, rtol=1e-10, atol=1e-12)
    assert c.n == pytest.approx(0.5)


def test_eigh_without_null_directions_keeps_every_pair():
    """No null directions: eigh is the full eigendecomposition of H (numpy.linalg.eigh)."""
    H = np.array([[2.0, 0.3, 0.0], [0.3, 1.0, 0.1], [0.0, 0.1, 0.5]])
    c = Curvature(hessian=torch.as_tensor(H), n=1, l2=0.0)
    ev, Q = c.eigh()
    assert ev.shape == (3,) and Q.shape == (3, 3)
    np.testing.assert_allclose(ev.numpy(), np.linalg.eigvalsh(H), rtol=1e-12)
    np.testing.assert_allclose(Q.numpy() @ np.diag(ev.numpy()) @ Q.numpy().T, H, atol=1e-12)


def test_null_direction_of_a_small_hessian_is_the_one_dropped():
    """H with a null direction v and tiny eigenvalues (trace < 1): the factorised matrix must still put v above
    λ_max, so eigh drops v and keeps the true eigenpairs; solves act as the pseudo-inverse."""
    H = np.diag([0.01, 0.02, 0.0])
    v = torch.tensor([[0.0], [0.0], [1.0]], dtype=torch.float64)
    c = Curvature(hessian=torch.as_tensor(H), n=1, l2=0.0, null=v)
    ev, Q = c.eigh()
    np.testing.assert_allclose(ev.numpy(), [0.01, 0.02], rtol=1e-12)
    np.testing.assert_allclose(np.abs(Q.numpy()), [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], atol=1e-12)
    np.testing.assert_allclose(c.solve(torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)).numpy(),
                               [100.0, 50.0, 0.0], rtol=1e-10, atol=1e-12)


def test_positive_definiteness_threshold_is_relative_to_the_largest_eigenvalue():
    """Refused when λ_min <= 1e-13 · λ_max (equality included), accepted above it."""
    def curv(d):
        return Curvature(hessian=torch.as_tensor(np.diag(d)), n=1, l2=0.0)

    with pytest.raises(NotPositiveDefiniteError, match="smallest eigenvalue"):
        curv([1e-13, 1.0])  # exactly at the threshold
    with pytest.raises(NotPositiveDefiniteError, match="smallest eigenvalue"):
        curv([5e-11, 1e3])  # ratio 5e-14
    curv([1e-9, 1e3])  # ratio 1e-12: accepted


def test_old_import_path_of_the_hessian_passes():
    """`winnow.core.curvature.fit_curvature` / `hessian_pass` still resolve (to the engine's passes)."""
    import winnow.core.curvature as curvature
    from winnow.engine import passes

    assert curvature.fit_curvature is passes.fit_curvature
    assert curvature.hessian_pass is passes.hessian_pass
    with pytest.raises(AttributeError, match="no_such_name"):
        curvature.no_such_name  # noqa: B018
