"""The Python side of refit= / allow_nonstationary= on the analyses behind the commands: a head off the optimum
is refused by name, accepted as it is, or polished to scikit-learn's optimum (expected values in numpy)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from winnow.analyses.lep import two_sample_search
from winnow.analyses.memorization import MemorizationAnalyzer
from winnow.analyses.subsample import Subsampler
from winnow.analyses.theorems import check_theorems
from winnow.core.heads import LogisticHead
from winnow.errors import ValidationError

L2 = 1e-2


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((240, 3))
    y = (rng.random(240) < 1 / (1 + np.exp(-(X @ np.array([1.0, -0.7, 0.4]) - 0.1)))).astype(np.int64)
    Xtr, ytr = X[:180], y[:180]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = LogisticRegression(C=1 / (L2 * 180), tol=1e-12, max_iter=10_000).fit(Xtr, ytr)
    w, b = sk.coef_[0], float(sk.intercept_[0])
    off = LogisticHead.from_weights(w - 0.25, b + 0.3, l2=L2)
    return (Xtr, ytr), (X[180:], y[180:]), w, b, off


def numpy_memorization(X, y, w, b):
    """‖Λ⁻¹Qᵀg_p‖₁ with H = QΛQᵀ = (1/n) Σ s(1 − s) x̃x̃ᵀ + λ diag(1, …, 1, 0), written out."""
    Xa = np.column_stack([X, np.ones(len(X))])
    s = 1 / (1 + np.exp(-(Xa @ np.append(w, b))))
    H = (Xa * (s * (1 - s))[:, None]).T @ Xa / len(X) + np.diag(np.append(np.full(X.shape[1], L2), 0.0))
    lam, Q = np.linalg.eigh(H)
    return np.abs(((s - y)[:, None] * Xa) @ Q / lam).sum(1)


def test_memorization_analyzer(setup):
    train, _, w, b, off = setup
    with pytest.raises(ValidationError, match="refit=True.*allow_nonstationary=True") as e:
        MemorizationAnalyzer(off).fit(train)
    assert e.value.parameters == ("refit=True", "allow_nonstationary=True")
    raw = MemorizationAnalyzer(off, allow_nonstationary=True).fit(train)
    assert not raw.stationarity_.ok and not raw.stationarity_.refit
    polished = MemorizationAnalyzer(off, refit=True).fit(train)
    assert polished.stationarity_.refit and polished.stationarity_.relative < 1e-8
    np.testing.assert_allclose(polished.scores_, numpy_memorization(*train, w, b), rtol=1e-6)
    assert not np.allclose(raw.scores_, polished.scores_, rtol=1e-3)


def test_lep_theorems_and_subsampler(setup):
    train, test, w, b, off = setup
    fitted = LogisticHead.from_weights(w, b, l2=L2)
    for call in (lambda **kw: two_sample_search(off, train, test, start=60, max_size=120, **kw),
                 lambda **kw: check_theorems(off, train, test, pairs=200, l2_grid=None, removal_fraction=None, **kw),
                 lambda **kw: Subsampler(0.5, head=off, sharpness=1.0, score_fraction=0, **kw).fit(train, test)):
        with pytest.raises(ValidationError, match="not at an optimum"):
            call()
        assert call(allow_nonstationary=True) is not None
    lep_refit = two_sample_search(off, train, test, start=60, max_size=120, refit=True)
    lep_fitted = two_sample_search(fitted, train, test, start=60, max_size=120)
    assert lep_refit.stationarity["refit"] and not lep_fitted.stationarity["refit"]
    assert [s.statistics["spearman"] for s in lep_refit.steps] == pytest.approx(
        [s.statistics["spearman"] for s in lep_fitted.steps], rel=1e-6)
    chk = check_theorems(off, train, test, pairs=200, l2_grid=None, removal_fraction=None, refit=True)
    assert chk.summary()["stationarity"]["refit"] is True
    np.testing.assert_allclose(chk.memorization.scores, numpy_memorization(*train, w, b), rtol=1e-6)
    sub = Subsampler(0.5, head=off, sharpness=1.0, score_fraction=0, refit=True).fit(train, test)
    assert sub.summary()["stationarity"]["refit"] is True and sub.head_ is not off
    np.testing.assert_allclose(sub.head_.theta_.cpu().numpy(), np.append(w, b), rtol=1e-5, atol=1e-7)
