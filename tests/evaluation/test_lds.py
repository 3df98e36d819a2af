"""Linear datamodeling score: the per-point Spearman, the sign of the prediction, the retrains, bad input."""

import json

import numpy as np
import pytest
from conftest import relu_embeddings
from scipy import stats

import winnow.cli.fidelity  # noqa: F401  (registers the commands until cli/__init__ imports it)
from winnow.cli import main
from winnow.core.heads import LogisticHead, SoftmaxHead
from winnow.core.influence import InfluenceAnalyzer
from winnow.errors import ValidationError
from winnow.evaluation.lds import linear_datamodeling_score, rowwise_spearman


def test_rowwise_spearman_matches_scipy():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((15, 6))
    b = a + rng.standard_normal((15, 6))
    b[:, 2] = 1.0                                   # constant column: NaN
    a[3, 4] = a[5, 4]                               # a tie
    got = rowwise_spearman(a, b)
    for t in (0, 1, 3, 4, 5):
        assert got[t] == pytest.approx(stats.spearmanr(a[:, t], b[:, t]).statistic, rel=1e-12)
    assert np.isnan(got[2])


@pytest.mark.parametrize("kind", ["logistic", "softmax"])
def test_lds_prediction_sign_and_retrains(kind):
    X, y = relu_embeddings(240, d_in=6, d=10, seed=7, k=2 if kind == "logistic" else 3)
    Xtr, ytr, Xte, yte = X[:200], y[:200], X[200:], y[200:]
    head = (LogisticHead(l2=1e-2) if kind == "logistic" else SoftmaxHead(l2=1e-2)).fit(Xtr, ytr)
    res = linear_datamodeling_score(head, (Xtr, ytr), (Xte, yte), subsets=12, seed=3)
    assert res.kept.shape == (12, 200) and np.all(res.kept.sum(1) == 100)
    # predicted τ_t(S) = +(1/n) Σ_{p∈S} I_loss(t, p), from an independent analyzer on a fresh tight fit
    fresh = (LogisticHead(l2=1e-2, tol=1e-11) if kind == "logistic" else SoftmaxHead(l2=1e-2, tol=1e-11))
    I = InfluenceAnalyzer(fresh.fit(Xtr, ytr)).fit((Xtr, ytr)).pairwise((Xte, yte))
    np.testing.assert_allclose(res.predicted, res.kept @ I.T / 200, rtol=1e-6, atol=1e-12)
    # actual: the test losses of a plain fit on the kept rows
    m = 4
    ref = (LogisticHead(l2=1e-2, tol=1e-11) if kind == "logistic" else SoftmaxHead(l2=1e-2, tol=1e-11, n_classes=3))
    ref.fit(Xtr[res.kept[m]], ytr[res.kept[m]])
    proba = ref.predict_proba(Xte)
    p_true = np.where(yte == 1, proba, 1 - proba) if kind == "logistic" else proba[np.arange(len(yte)), yte]
    np.testing.assert_allclose(res.actual[m], -np.log(p_true), rtol=1e-6)
    assert res.score > 0.8, res.score            # a flipped sign would give a strongly negative score
    assert res.score_newton > 0.8
    assert res.score == pytest.approx(np.nanmean(rowwise_spearman(res.predicted, res.actual)))


def test_lds_bad_inputs(tmp_path, capsys):
    X, y = relu_embeddings(120, seed=8)
    head = LogisticHead(l2=1e-2).fit(X[:100], y[:100])
    with pytest.raises(ValidationError, match="subsets must be an integer >= 10.*Spearman"):
        linear_datamodeling_score(head, (X[:100], y[:100]), (X[100:], y[100:]), subsets=9)
    for f in (0.0, 1.0, 1.5):
        with pytest.raises(ValidationError, match="fraction"):
            linear_datamodeling_score(head, (X[:100], y[:100]), (X[100:], y[100:]), subsets=10, fraction=f)
    np.savez(tmp_path / "tr.npz", X=X[:100], y=y[:100])
    np.savez(tmp_path / "te.npz", X=X[100:], y=y[100:])
    head.save(tmp_path / "h.npz")
    args = ["evaluate-lds", str(tmp_path / "tr.npz"), "--head", str(tmp_path / "h.npz"), "--test",
            str(tmp_path / "te.npz"), "--quiet"]
    with pytest.raises(SystemExit) as e:
        main(args + ["--subsets", "5"])
    assert e.value.code == 2
    assert "error: --subsets must be an integer >= 10" in capsys.readouterr().err
    main(args + ["--subsets", "10", "--json", str(tmp_path / "l.json"), "--report", str(tmp_path / "l.html")])
    out = json.loads((tmp_path / "l.json").read_text())
    assert out["subsets"] == 10 and -1 <= out["lds"] <= 1
    assert "LDS over 10 subsets" in capsys.readouterr().out
