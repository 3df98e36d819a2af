"""The torch.func head against closed forms and plain autograd."""

import numpy as np
import pytest
import torch
from conftest import relu_embeddings

from winnow.core.autodiff import AutodiffHead, ModelFunction, autodiff_curvature
from winnow.core.heads import LogisticHead, SoftmaxHead, as_tensor
from winnow.core.influence import InfluenceAnalyzer
from winnow.errors import ValidationError


def mlp(d: int, h: int, k: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(d, h), torch.nn.Tanh(), torch.nn.Linear(h, k)).double()


def test_per_example_gradients_equal_an_autograd_loop():
    X, y = relu_embeddings(25, d=6, seed=3, k=3)
    m = mlp(6, 5, 3)
    fn = ModelFunction(m)
    G = fn.per_example_grads(fn.theta, fn.prepare(X), torch.as_tensor(y), "softmax")
    for i in range(len(y)):
        m.zero_grad()
        out = m(torch.as_tensor(X[i:i + 1]))
        loss = torch.nn.functional.cross_entropy(out, torch.as_tensor(y[i:i + 1]))
        grads = torch.autograd.grad(loss, list(m.parameters()))
        np.testing.assert_allclose(G[i].numpy(), torch.cat([g.reshape(-1) for g in grads]).numpy(), rtol=1e-12,
                                   atol=1e-14)


@pytest.mark.parametrize("kind", ["logistic", "softmax"])
def test_linear_autodiff_head_equals_closed_form(kind, binary_data, multiclass_data):
    X, y = binary_data if kind == "logistic" else multiclass_data
    Xtr, ytr, Xte, yte = X[:150], y[:150], X[150:170], y[150:170]
    closed = (LogisticHead(l2=1e-2) if kind == "logistic" else SoftmaxHead(l2=1e-2)).fit(Xtr, ytr)
    lin = torch.nn.Linear(X.shape[1], closed.n_outputs).double()
    with torch.no_grad():
        lin.weight.copy_(torch.as_tensor(closed.weight_))
        lin.bias.copy_(torch.as_tensor(closed.bias_))
    ad = AutodiffHead(lin, l2=1e-2)
    assert ad.n_params == closed.n_params and ad.loss == kind
    # same numbers, different parameter order: W row-major then b (module) vs [W | b] rows (closed form)
    K, D = closed.n_outputs, X.shape[1]
    perm = np.concatenate([np.arange(K * (D + 1)).reshape(K, D + 1)[:, :D].reshape(-1),
                           np.arange(K * (D + 1)).reshape(K, D + 1)[:, D]])
    Xt, yt = as_tensor(Xtr), torch.as_tensor(ytr)
    np.testing.assert_allclose(ad.gradients(Xt, yt).numpy(), closed.gradients(Xt, yt)[:, perm].numpy(),
                               rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ad.hessian_sum(Xt, y=yt).numpy(), closed.hessian_sum(Xt)[perm][:, perm].numpy(),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ad.losses(Xt, yt).numpy(), closed.losses(Xt, yt).numpy(), rtol=1e-13)
    assert ad.null_directions().shape[1] == (1 if kind == "softmax" else 0)
    a = InfluenceAnalyzer(closed).fit((Xtr, ytr))
    b = InfluenceAnalyzer(ad).fit((Xtr, ytr), curvature=autodiff_curvature(ad, (Xtr, ytr)))
    sa, sb = a.score((Xte, yte)), b.score((Xte, yte))
    for col in ("influence", "loss_change_if_removed", "self_influence"):
        np.testing.assert_allclose(sb[col].to_numpy(), sa[col].to_numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b.pairwise((Xte, yte)), a.pairwise((Xte, yte)), rtol=1e-10, atol=1e-12)


def test_mlp_head_hessian_matches_autograd_and_fit_is_stationary():
    X, y = relu_embeddings(80, d=5, seed=4, k=3)
    head = AutodiffHead(mlp(5, 4, 3, seed=1), l2=1e-2, tol=1e-10).fit(X, y)
    assert head.grad_norm_ <= 1e-10
    Xt, yt = as_tensor(X), torch.as_tensor(y)

    def risk(th):
        return head.losses(Xt, yt, th).mean() + head.regulariser(th)

    H_ref = torch.autograd.functional.hessian(risk, head.theta_.clone())
    H = head.hessian_sum(Xt, y=yt) / len(y) + torch.diag(head.l2 * head.weight_mask())
    np.testing.assert_allclose(H.numpy(), H_ref.numpy(), rtol=1e-9, atol=1e-12)
    g = torch.autograd.functional.jacobian(risk, head.theta_.clone())
    assert float(g.abs().max()) <= 1e-9
    # the last bias shift is a null direction of the softmax loss
    v = head.null_directions()
    assert v.shape[1] == 1
    assert float((head.hessian_sum(Xt, y=yt) @ v).abs().max()) < 1e-10
    # the label-free interface refuses instead of silently returning a wrong Hessian
    with pytest.raises(ValidationError, match="labels"):
        head.hessian_sum(Xt)


def test_mlp_head_influence_predicts_leave_one_out():
    """Influence through InfluenceAnalyzer + autodiff_curvature vs retraining the MLP head (Newton)."""
    X, y = relu_embeddings(60, d=4, seed=5, k=2)
    m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1)).double()
    torch.manual_seed(2)
    head = AutodiffHead(m, l2=0.05, regularize="all", tol=1e-11, max_iter=200).fit(X, y)
    Xte, yte = relu_embeddings(40, d=4, seed=6, k=2)
    an = InfluenceAnalyzer(head).fit((X, y), curvature=autodiff_curvature(head, (X, y)))
    pred = an.score((Xte, yte))["loss_change_if_removed"].to_numpy()
    rows = np.arange(0, 60, 4)
    base = float(head.losses(as_tensor(Xte), torch.as_tensor(yte)).mean())
    actual = []
    for p in rows:
        w = np.ones(60)
        w[p] = 0.0
        h2 = AutodiffHead(m, l2=0.05, regularize="all", tol=1e-11, max_iter=200)
        h2.fit(X, y, sample_weight=w, normalizer=60, init=head.theta_)
        actual.append(float(h2.losses(as_tensor(Xte), torch.as_tensor(yte), h2.theta_).mean()) - base)
    r = np.corrcoef(pred[rows], actual)[0, 1]
    assert r >= 0.95, r


def test_bad_inputs():
    m = mlp(5, 4, 3)
    with pytest.raises(ValidationError, match="loss"):
        AutodiffHead(m, loss="hinge")
    with pytest.raises(ValidationError, match="1 output"):
        AutodiffHead(m, loss="logistic")
    head = AutodiffHead(m)
    with pytest.raises(ValidationError, match="3 outputs.*labels"):
        head.check_labels(np.array([0, 1, 5]))
    with pytest.raises(ValidationError, match="features per row"):
        head.fit(np.zeros((4, 7)), np.zeros(4, dtype=int))
    with pytest.raises(ValidationError, match="n_features"):
        AutodiffHead(torch.nn.Sequential(torch.nn.Conv1d(1, 1, 1)))
    with pytest.raises(ValidationError, match="theta"):
        head.set_theta(np.zeros(3))
