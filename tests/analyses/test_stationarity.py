"""Influence refuses a head that is not at an optimum of its objective; scikit-learn heads are mapped faithfully.

Expected values come from numpy (gradients of the paper's losses written out) and from scikit-learn itself."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.linear_model import LogisticRegression, SGDClassifier

from winnow.analyses.influence import InfluenceAnalyzer
from winnow.core.heads import LogisticHead, SoftmaxHead
from winnow.errors import ValidationError


def data(n=300, d=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = (rng.random(n) < 1 / (1 + np.exp(-(X @ np.linspace(1, -1, d) + 0.3)))).astype(np.int64)
    return X, y


def numpy_gradient(X, y, w, b, l2):
    """∇R = (1/n) Σ (σ(z) − y) [x, 1] + λ [w, 0] and s = (1/n) Σ ‖g_i‖∞, written out."""
    r = 1 / (1 + np.exp(-(X @ w + b))) - y
    G = np.column_stack([r[:, None] * X, r])
    grad = G.mean(0) + l2 * np.append(w, 0.0)
    return grad, np.abs(G).max(1).mean()


def numpy_influence(X, y, Xt, yt, w, b, l2):
    """−ḡ_testᵀH⁻¹g_p at (w, b) with H = (1/n) Σ s(1 − s) x̃x̃ᵀ + λ diag(1, …, 1, 0)."""
    Xa, Xta = np.column_stack([X, np.ones(len(X))]), np.column_stack([Xt, np.ones(len(Xt))])
    s = 1 / (1 + np.exp(-(Xa @ np.append(w, b))))
    H = (Xa * (s * (1 - s))[:, None]).T @ Xa / len(X) + np.diag(np.append(np.full(X.shape[1], l2), 0.0))
    st = 1 / (1 + np.exp(-(Xta @ np.append(w, b))))
    gbar = ((st - yt)[:, None] * Xta).mean(0)
    G = (s - y)[:, None] * Xa
    return -G @ np.linalg.solve(H, gbar)


REFUSED = ["refit=True", "allow_nonstationary=True"]


def sk(X, y, l2, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LogisticRegression(C=1 / (l2 * len(y)), **kw).fit(X, y, sample_weight=kw.pop("sw", None))


def test_figure_matches_numpy_and_lands_in_metadata(tmp_path):
    X, y = data()
    l2 = 1e-2
    w, b = np.array([0.5, -0.2, 0.1, 0.0, 0.3]), 0.1
    head = LogisticHead.from_weights(w, b, l2=l2)
    an = InfluenceAnalyzer(head, allow_nonstationary=True).fit((X, y))
    grad, scale = numpy_gradient(X, y, w, b, l2)
    st = an.stationarity_
    assert st.gradient_norm == pytest.approx(np.abs(grad).max(), rel=1e-10)
    assert st.gradient_scale == pytest.approx(scale, rel=1e-10)
    assert st.relative == pytest.approx(np.abs(grad).max() / scale, rel=1e-10)
    out = an.write_scores((X[:20], y[:20]), tmp_path / "s.parquet")
    meta = json.loads(pq.read_schema(out).metadata[b"winnow.stationarity"])
    assert meta["gradient_norm"] == pytest.approx(np.abs(grad).max(), rel=1e-10)
    assert meta["refit"] is False and meta["threshold"] == st.threshold
    # the scores are the raw head's
    np.testing.assert_allclose(pq.read_table(out)["influence"].to_numpy(),
                               numpy_influence(X, y, X[:20], y[:20], w, b, l2), rtol=1e-8, atol=1e-12)


def test_off_optimum_head_is_refused_and_refit_polishes_it():
    X, y = data()
    l2 = 1e-2
    head = LogisticHead.from_weights(np.array([0.5, -0.2, 0.1, 0.0, 0.3]), 0.1, l2=l2)
    with pytest.raises(ValidationError, match=r"not at an optimum.*relative .* > 1e-04.*refit=True") as e:
        InfluenceAnalyzer(head).fit((X, y))
    assert list(e.value.parameters) == REFUSED
    an = InfluenceAnalyzer(head, refit=True).fit((X, y))
    assert an.stationarity_.refit and an.stationarity_.ok and an.stationarity_.refit_from > 1e-2
    ref = sk(X, y, l2, tol=1e-12, max_iter=10_000)  # scikit-learn's own optimum of the same objective
    np.testing.assert_allclose(an.head.weight_[0], ref.coef_[0], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(an.score((X[:20], y[:20]))["influence"].to_numpy(),
                               numpy_influence(X, y, X[:20], y[:20], ref.coef_[0], ref.intercept_[0], l2),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(head.weight_[0], [0.5, -0.2, 0.1, 0.0, 0.3])  # the user's head is untouched


@pytest.mark.parametrize("route", ["max_iter=5", "sample_weight", "sgd"])
def test_sklearn_routes_off_the_optimum_name_refit(route):
    X, y = data(400)
    l2 = 1e-3
    n = len(y)
    if route == "max_iter=5":
        head = LogisticHead.from_sklearn(sk(X, y, l2, max_iter=5), n)
    elif route == "sample_weight":
        sw = np.random.default_rng(1).uniform(0.2, 2.0, n)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = LogisticRegression(C=1 / (l2 * n), tol=1e-10, max_iter=10_000).fit(X, y, sample_weight=sw)
        head = LogisticHead.from_sklearn(m, n)
    else:
        m = SGDClassifier(loss="log_loss", alpha=l2, max_iter=20, tol=None, random_state=0).fit(X, y)
        head = LogisticHead.from_weights(m.coef_, m.intercept_, l2=l2)
    with pytest.raises(ValidationError, match="refit=True") as e:
        InfluenceAnalyzer(head).fit((X, y))
    assert list(e.value.parameters) == REFUSED
    assert InfluenceAnalyzer(head, allow_nonstationary=True).fit((X, y)).stationarity_.relative > 1e-4


@pytest.mark.parametrize("kw, reason", [({"class_weight": "balanced"}, "class_weight"),
                                        ({"class_weight": {0: 1.0, 1: 3.0}}, "class_weight"),
                                        ({"solver": "liblinear"}, "liblinear"),
                                        ({"fit_intercept": False}, "fit_intercept"),
                                        ({"l1_ratio": 1.0, "solver": "saga"}, "L2")])
def test_from_sklearn_refuses_other_objectives(kw, reason):
    X, y = data()
    m = sk(X, y, 1e-3, **kw)
    with pytest.raises(ValidationError, match=reason):
        LogisticHead.from_sklearn(m, len(y))


def test_converged_lbfgs_passes_and_equals_winnow_fit():
    X, y = data(400)
    l2 = 1e-3
    m = sk(X, y, l2, tol=1e-10, max_iter=10_000)
    head = LogisticHead.from_sklearn(m, len(y))
    an = InfluenceAnalyzer(head).fit((X, y))  # no refusal
    assert an.stationarity_.ok and not an.stationarity_.refit
    own = LogisticHead(l2=l2).fit(X, y)
    np.testing.assert_allclose(head.theta_.numpy(), own.theta_.numpy(), rtol=1e-6, atol=1e-7)
    # equal class weights are C·w: the same objective with a larger C
    m2 = sk(X, y, l2 / 2, tol=1e-10, max_iter=10_000)
    m2w = LogisticRegression(C=1 / (l2 * len(y)), class_weight={0: 2.0, 1: 2.0}, tol=1e-10,
                             max_iter=10_000).fit(X, y)
    h2 = LogisticHead.from_sklearn(m2w, len(y))
    assert h2.l2 == pytest.approx(l2 / 2)
    np.testing.assert_allclose(h2.weight_[0], m2.coef_[0], rtol=1e-6, atol=1e-7)


def test_classes_follow_sklearn():
    X, y = data()
    labels = np.where(y == 1, "spam", "ham")
    m = sk(X, labels, 1e-3)
    head = LogisticHead.from_sklearn(m, len(y))
    assert head.classes_ == ("ham", "spam") and m.classes_[1] == "spam"  # classes_[1] is label 1
    ym = np.random.default_rng(0).integers(0, 3, len(y)) * 2 - 1  # labels −1, 1, 3
    m3 = sk(X, ym, 1e-3)
    h3 = SoftmaxHead.from_sklearn(m3, len(y))
    assert h3.classes_ == (-1, 1, 3) and all(isinstance(c, int) for c in h3.classes_)


def test_given_curvature_without_figure_gets_a_gradient_pass():
    from winnow.core.curvature import curvature_from_sum

    X, y = data()
    head = LogisticHead.from_weights(np.array([0.5, -0.2, 0.1, 0.0, 0.3]), 0.1, l2=1e-2)
    Xa = np.column_stack([X, np.ones(len(X))])
    s = 1 / (1 + np.exp(-(Xa @ head.theta_.numpy())))
    curv = curvature_from_sum(head, (Xa * (s * (1 - s))[:, None]).T @ Xa, len(X))
    with pytest.raises(ValidationError, match="not at an optimum"):
        InfluenceAnalyzer(head).fit((X, y), curvature=curv)
    with pytest.raises(ValidationError, match="either curvature= .* or refit=True"):
        InfluenceAnalyzer(head, refit=True).fit((X, y), curvature=curv)


def test_one_class_is_named_as_the_cause_not_the_stationarity(tmp_path):
    """A head scored on TRAIN holding one class cannot be at an optimum there; the refusal names the cause
    (one class), and refitting would not help (no optimum at finite weights)."""
    from winnow import InfluenceAnalyzer, LogisticHead, NotStationaryError, ValidationError
    from winnow.cli import main

    rng = np.random.default_rng(3)
    X = rng.standard_normal((80, 3))
    y = (X[:, 0] > 0).astype(np.int64)
    head = LogisticHead(l2=1e-2).fit(X, y)
    one = np.zeros(80, dtype=np.int64)
    for refit in (False, True):
        with pytest.raises(ValidationError) as e:
            InfluenceAnalyzer(head, refit=refit).fit((X, one))
        assert not isinstance(e.value, NotStationaryError)
        assert str(e.value) == "only one class (label 0) in train; a classifier needs at least two"
    np.savez(tmp_path / "one.npz", X=X, y=one)
    head.save(tmp_path / "h.npz")
    with pytest.raises(SystemExit) as ex:
        main(["influence", str(tmp_path / "one.npz"), "--head", str(tmp_path / "h.npz"), "--test",
              str(tmp_path / "one.npz"), "--out", str(tmp_path / "s.parquet"), "-q"])
    assert ex.value.code == 2 and not (tmp_path / "s.parquet").exists()


def test_a_refit_head_still_off_its_optimum_is_not_sent_back_to_refit():
    from winnow import NotStationaryError
    from winnow.core.curvature import Stationarity

    st = Stationarity(gradient_norm=1e-9, gradient_scale=1e-9, threshold=1e-4, refit=True)
    with pytest.raises(NotStationaryError) as e:
        st.check()
    assert "even after refitting" in str(e.value) and "refit=True" not in str(e.value)
    assert e.value.parameters == ("allow_nonstationary=True",)
    st.check(allow_nonstationary=True)  # allowed: no error
    fresh = Stationarity(gradient_norm=1e-2, gradient_scale=1.0, threshold=1e-4, refit=False)
    with pytest.raises(NotStationaryError) as e:
        fresh.check()
    assert "Pass refit=True to polish the head first" in str(e.value)


def test_the_figure_as_written_and_said():
    """The metadata keys are the contract other tools (and the report) read; describe() is what the CLI says."""
    from winnow.core.curvature import Stationarity

    st = Stationarity(gradient_norm=2e-3, gradient_scale=0.5, threshold=1e-4, refit=False)
    assert st.as_dict() == {"gradient_norm": 2e-3, "gradient_scale": 0.5, "relative": 4e-3, "threshold": 1e-4,
                            "refit": False}
    assert json.loads(st.metadata()["winnow.stationarity"]) == st.as_dict()
    assert st.describe() == "‖∇R(θ̂)‖∞ = 2.00e-03 (relative 4.0e-03)"
    polished = Stationarity(gradient_norm=3e-12, gradient_scale=0.5, threshold=1e-4, refit=True, refit_from=0.21,
                            refit_steps=6)
    assert polished.describe() == "refit the head: ‖∇R‖∞ 2.1e-01 -> 3.0e-12 in 6 Newton steps"
    # marked refit but without the starting figure (e.g. read back from a file): the plain figure
    assert Stationarity(gradient_norm=3e-12, gradient_scale=0.5, threshold=1e-4, refit=True).describe() == \
        "‖∇R(θ̂)‖∞ = 3.00e-12 (relative 6.0e-12)"
