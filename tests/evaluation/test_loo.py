"""Leave-one-out ground truth: our retrain against scikit-learn's, and predictions against retrains."""

import numpy as np
import pytest
from conftest import relu_embeddings
from sklearn.linear_model import LogisticRegression

from winnow.core.heads import LogisticHead, SoftmaxHead
from winnow.datasets import load_digits_embeddings
from winnow.evaluation.loo import leave_one_out


def test_retrain_matches_sklearn_on_remaining_points(binary_data):
    """(1/n)Σ_{i≠p}ℓ_i + (λ/2)‖w‖² is sklearn's objective on the n−1 points with C = 1/(λn)."""
    X, y = binary_data
    n, l2 = len(y), 1e-2
    head = LogisticHead(l2=l2).fit(X, y)
    res = leave_one_out(head, (X, y), (X[:100], y[:100]), points=np.array([3, 50]))
    for p, actual in zip([3, 50], res.actual):
        keep = np.arange(n) != p
        sk = LogisticRegression(C=1.0 / (l2 * n), tol=1e-12, max_iter=10000).fit(X[keep], y[keep])
        ref = LogisticHead.from_weights(sk.coef_, sk.intercept_, l2=l2)
        full = LogisticHead(l2=l2, tol=1e-11).fit(X, y)

        def test_loss(h):
            pr = np.clip(h.predict_proba(X[:100]), 1e-300, 1 - 1e-16)
            return np.mean(-(y[:100] * np.log(pr) + (1 - y[:100]) * np.log(1 - pr)))

        assert actual == pytest.approx(test_loss(ref) - test_loss(full), abs=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["digits-binary", "digits-10-class", "synthetic"])
def test_predicted_loss_change_matches_leave_one_out(case):
    if case == "synthetic":
        X, y = relu_embeddings(2500, d_in=12, d=24, seed=5)
        train, test, head = (X[:2000], y[:2000]), (X[2000:], y[2000:]), LogisticHead(l2=1e-3)
    else:
        d = load_digits_embeddings(binary=case == "digits-binary")
        train, test = (d.X_train, d.y_train), (d.X_test, d.y_test)
        head = LogisticHead(l2=1e-3) if case == "digits-binary" else SoftmaxHead(l2=1e-3)
    head.fit(*train)
    points = 25 if case == "digits-10-class" else 60  # the issue asks >= 50 on two sets; softmax retrains cost 10x
    res = leave_one_out(head, train, test, points=points, seed=1)
    assert len(res.actual) == points
    assert res.pearson >= 0.99, res.pearson
    assert res.spearman >= 0.98, res.spearman
