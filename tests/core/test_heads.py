"""Heads: closed-form derivatives against finite differences and autograd, fit against scikit-learn."""

import numpy as np
import pytest
import torch
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
    R = head.losses(Xt, yt, th).mean() + head.regulariser(th)
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
