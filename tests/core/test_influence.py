"""Influence quantities against an independent dense computation (autograd Hessian, per-example grads)."""

import numpy as np
import pytest
import torch

from winnow.core.curvature import fit_curvature
from winnow.core.heads import LogisticHead, SoftmaxHead, as_tensor
from winnow.core.influence import InfluenceAnalyzer
from winnow.errors import NotPositiveDefiniteError, ValidationError


def dense_reference(head, Xtr, ytr, Xte, yte):
    """I_loss matrix (T, n), self-influence (n,), H from autograd only (no closed forms)."""
    theta = head.theta_.clone()
    Xt, yt = as_tensor(Xtr), torch.as_tensor(ytr)

    def risk(th):
        return head.losses(Xt, yt, th).mean() + head.regulariser(th)

    H = torch.autograd.functional.hessian(risk, theta)

    def grads(X, y):
        out = []
        for i in range(len(y)):
            th = theta.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(head.losses(as_tensor(X[i:i + 1]), torch.as_tensor(y[i:i + 1]), th).sum(), th)
            out.append(g)
        return torch.stack(out)

    Gp, Gt = grads(Xtr, ytr), grads(Xte, yte)
    Hinv = torch.linalg.pinv(H, hermitian=True)  # pseudo-inverse: also right for the softmax bias null direction
    I = -(Gt @ Hinv @ Gp.T)
    self_infl = torch.einsum("ip,pq,iq->i", Gp, Hinv, Gp)
    return I.numpy(), self_infl.numpy(), (-(Hinv @ Gp.T).T).numpy()


@pytest.mark.parametrize("kind", ["logistic", "softmax"])
def test_influence_matches_dense_reference(kind, binary_data, multiclass_data):
    X, y = binary_data if kind == "logistic" else multiclass_data
    Xtr, ytr, Xte, yte = X[:120], y[:120], X[120:150], y[120:150]
    head = (LogisticHead(l2=1e-2) if kind == "logistic" else SoftmaxHead(l2=1e-2)).fit(Xtr, ytr)
    I_ref, self_ref, iup_ref = dense_reference(head, Xtr, ytr, Xte, yte)
    an = InfluenceAnalyzer(head, chunk_size=37).fit((Xtr, ytr))
    np.testing.assert_allclose(an.pairwise((Xte, yte)), I_ref, rtol=1e-8, atol=1e-10)
    scores = an.score((Xte, yte))
    np.testing.assert_allclose(scores["influence"].to_numpy(), I_ref.mean(0), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(scores["loss_change_if_removed"].to_numpy(), -I_ref.mean(0) / 120,
                               rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(scores["self_influence"].to_numpy(), self_ref, rtol=1e-8)
    assert (scores["self_influence"].to_numpy() >= 0).all()
    np.testing.assert_allclose(an.influence_up(Xtr[:5], ytr[:5]), iup_ref[:5], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(an.parameter_change_if_removed(Xtr[:5], ytr[:5]), -iup_ref[:5] / 120,
                               rtol=1e-8, atol=1e-12)
    np.testing.assert_array_equal(scores["id"].to_numpy(), np.arange(120))


@pytest.mark.parametrize("kind", ["logistic", "softmax"])
def test_streaming_equals_one_shot(kind, binary_data, multiclass_data):
    X, y = binary_data if kind == "logistic" else multiclass_data
    head = (LogisticHead(l2=1e-3) if kind == "logistic" else SoftmaxHead(l2=1e-3)).fit(X, y)
    test = (X[:50], y[:50])
    one = InfluenceAnalyzer(head, chunk_size=10**6).fit((X, y)).score(test)
    for cs in (1, 7, 64):
        many = InfluenceAnalyzer(head, chunk_size=cs).fit((X, y)).score(test)
        for col in ("influence", "self_influence", "loss_change_if_removed"):
            a, b = one[col].to_numpy(), many[col].to_numpy()
            assert np.max(np.abs(a - b)) <= 1e-12 * max(1.0, np.max(np.abs(a)))


def test_hessian_curvature_includes_l2_and_damping(binary_data):
    X, y = binary_data
    head = LogisticHead(l2=0.05).fit(X, y)
    c0 = fit_curvature(head, (X, y))
    c1 = fit_curvature(head, (X, y), damping=0.3)
    diff = (c1.hessian - c0.hessian).numpy()
    np.testing.assert_allclose(diff, 0.3 * np.eye(head.n_params), atol=1e-14)
    Xt = as_tensor(X)
    H = head.hessian_sum(Xt).numpy() / len(y) + 0.05 * np.diag(head.weight_mask().numpy())
    np.testing.assert_allclose(c0.hessian.numpy(), H, atol=1e-14)


def test_singular_hessian_suggests_damping():
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((100, 2))
    X = np.column_stack([Z, Z[:, 0] + Z[:, 1]])  # collinear
    y = (Z[:, 0] > 0).astype(int)
    head = LogisticHead.from_weights(np.array([0.5, -0.2, 0.1]), 0.0, l2=0.0)
    with pytest.raises(NotPositiveDefiniteError, match="damping"):
        InfluenceAnalyzer(head).fit((X, y))
    an = InfluenceAnalyzer(head, damping=1e-4).fit((X, y))
    assert np.isfinite(an.score((X[:5], y[:5]))["influence"].to_numpy()).all()


def test_feature_dimension_mismatch(binary_data):
    X, y = binary_data
    head = LogisticHead(l2=1e-2).fit(X, y)
    with pytest.raises(ValidationError, match="D = 16"):
        InfluenceAnalyzer(head).fit((X[:, :5], y))
    an = InfluenceAnalyzer(head).fit((X, y))
    with pytest.raises(ValidationError, match="test"):
        an.score((X[:10, :5], y[:10]))


def test_labels_outside_head_rejected(binary_data):
    X, y = binary_data
    head = LogisticHead(l2=1e-2).fit(X, y)
    an = InfluenceAnalyzer(head).fit((X, y))
    with pytest.raises(ValidationError, match=r"\{0, 1\}"):
        an.score((X[:10], np.full(10, 2)))
