"""Ground truth judges the head it is given: predictions are the given head's influence (computed here
independently in numpy), actual changes come from retraining from that head's weights."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from winnow.core.heads import LogisticHead
from winnow.errors import ValidationError
from winnow.evaluation.loo import leave_one_out


def data(n=120, d=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = (rng.random(n) < 1 / (1 + np.exp(-(X @ np.linspace(1, -1, d))))).astype(np.int64)
    Xt = rng.standard_normal((40, d))
    yt = (rng.random(40) < 1 / (1 + np.exp(-(Xt @ np.linspace(1, -1, d))))).astype(np.int64)
    return X, y, Xt, yt


def aug(X):
    return np.column_stack([X, np.ones(len(X))])


def loss_change(X, y, Xt, yt, theta, l2):
    """+(1/n) ḡ_testᵀH⁻¹g_p at θ (numpy), for every training row."""
    Xa, Xta = aug(X), aug(Xt)
    s = 1 / (1 + np.exp(-Xa @ theta))
    H = (Xa * (s * (1 - s))[:, None]).T @ Xa / len(X) + np.diag(np.append(np.full(X.shape[1], l2), 0.0))
    gbar = ((1 / (1 + np.exp(-Xta @ theta)) - yt)[:, None] * Xta).mean(0)
    return ((s - y)[:, None] * Xa) @ np.linalg.solve(H, gbar) / len(X)


def scipy_fit(X, y, w, l2, theta0):
    """argmin (1/n) Σ w_i ℓ_i + (λ/2)‖W‖² by scipy (the ε = −1/n objective when a weight is 0)."""
    Xa, n = aug(X), len(y)

    def f(th):
        z = Xa @ th
        r = 1 / (1 + np.exp(-z)) - y
        val = (w * (np.logaddexp(0, z) - y * z)).sum() / n + 0.5 * l2 * (th[:-1] ** 2).sum()
        return val, Xa.T @ (w * r) / n + l2 * np.append(th[:-1], 0.0)

    return minimize(f, theta0, jac=True, method="BFGS", options={"gtol": 1e-12, "maxiter": 10_000}).x


def mean_test_loss(Xt, yt, theta):
    z = aug(Xt) @ theta
    return float((np.logaddexp(0, z) - yt * z).mean())


def test_loo_predicts_from_the_given_head_not_a_refit():
    X, y, Xt, yt = data()
    l2 = 1e-2
    opt = LogisticHead(l2=l2).fit(X, y)
    raw = opt.theta_.numpy() + np.array([0.2, -0.15, 0.1, 0.05, -0.1])
    head = LogisticHead.from_weights(raw[:-1], raw[-1], l2=l2)
    rows = np.array([3, 17, 42, 77, 101])
    with pytest.raises(ValidationError, match="refit=True"):
        leave_one_out(head, (X, y), (Xt, yt), points=rows)
    res = leave_one_out(head, (X, y), (Xt, yt), points=rows, allow_nonstationary=True)
    want = loss_change(X, y, Xt, yt, raw, l2)[rows]
    np.testing.assert_allclose(res.predicted, want, rtol=1e-8, atol=1e-14)
    star = scipy_fit(X, y, np.ones(len(y)), l2, raw)
    assert np.abs(want - loss_change(X, y, Xt, yt, star, l2)[rows]).max() > 1e-3 * np.abs(want).max()
    # the actual changes: retraining from the full-data optimum, with and without each point
    base = mean_test_loss(Xt, yt, star)
    for j, p in enumerate(rows):
        w = np.ones(len(y))
        w[p] = 0.0
        actual = mean_test_loss(Xt, yt, scipy_fit(X, y, w, l2, star)) - base
        assert res.actual[j] == pytest.approx(actual, rel=1e-5, abs=1e-10)
    assert res.extra["stationarity"]["refit"] is False and res.extra["stationarity"]["relative"] > 1e-4
    # refit=True: the predictions are the polished head's
    res2 = leave_one_out(head, (X, y), (Xt, yt), points=rows, refit=True)
    np.testing.assert_allclose(res2.predicted, loss_change(X, y, Xt, yt, star, l2)[rows], rtol=1e-6, atol=1e-12)
    assert res2.extra["stationarity"]["refit"] is True
