"""Ground truth by retraining the user's own model (train_fn): a train_fn that is exactly the head fit gives the
head's results, an independent trainer (scikit-learn) scores the head's influence, resume, Dask, bad input."""

import numpy as np
import pytest
import torch
from conftest import relu_embeddings
from sklearn.linear_model import LogisticRegression

from winnow.analyses.fidelity import group_effect
from winnow.core.heads import LogisticHead, SoftmaxHead
from winnow.errors import ValidationError
from winnow.evaluation.lds import linear_datamodeling_score
from winnow.evaluation.loo import leave_one_out
from winnow.evaluation.retrain import (
    Retrain,
    group_by_retraining,
    lds_by_retraining,
    lds_retrained,
    leave_one_out_retrained,
    loo_by_retraining,
    model_outputs,
    retrain_metrics,
    run_retrains,
)

L2 = 1e-2
X, Y = relu_embeddings(180, d_in=6, d=8, seed=11)
XTR, YTR, XTE, YTE = X[:150], Y[:150], X[150:], Y[150:]
N = len(YTR)
CALLS: list[int] = []


def head_fit_removal(rows, weights, seed):
    """Exactly the head's leave-one-out retrain: the ε = −1/n objective (normaliser n), fitted tightly."""
    CALLS.append(seed)
    return LogisticHead(l2=L2, tol=1e-11).fit(XTR[rows], YTR[rows], normalizer=N)


def head_fit(rows, weights, seed):
    """The usual head fit on the kept rows (normaliser |S|), as the head's LDS retrains."""
    CALLS.append(seed)
    return LogisticHead(l2=L2, tol=1e-11).fit(XTR[rows], YTR[rows])


def sklearn_fit(rows, weights, seed):
    """An independent trainer of the same objective: (1/m) Σ ℓ + (λ/2)‖w‖² is C = 1/(λ m), bias unpenalised."""
    return LogisticRegression(C=1.0 / (L2 * len(rows)), tol=1e-10, max_iter=10000).fit(XTR[rows], YTR[rows])


def noisy_fit(rows, weights, seed):
    """A seed-dependent trainer: the head fit on a random 90 % of the given rows."""
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(rows, size=int(0.9 * len(rows)), replace=False))
    return LogisticHead(l2=L2, tol=1e-9).fit(XTR[keep], YTR[keep])


@pytest.fixture(scope="module")
def head():
    return LogisticHead(l2=L2, tol=1e-11).fit(XTR, YTR)


def test_head_fit_as_train_fn_reproduces_leave_one_out(head):
    rows = np.array([3, 17, 40, 99, 120])
    ref = leave_one_out(head, (XTR, YTR), (XTE, YTE), points=rows)
    got = leave_one_out_retrained(head, head_fit_removal, (XTR, YTR), (XTE, YTE), points=rows, seeds=1)
    np.testing.assert_allclose(got.actual, ref.actual, rtol=1e-6, atol=1e-11)
    np.testing.assert_allclose(got.predicted, ref.predicted, rtol=1e-10, atol=1e-15)
    assert got.pearson == pytest.approx(ref.pearson, abs=1e-6)
    np.testing.assert_array_equal(got.ids, ref.ids)
    # the actual changes, by an independent route: mean log-loss of two plain fits
    full = LogisticRegression(C=1.0 / (L2 * N), tol=1e-12, max_iter=10000).fit(XTR, YTR)
    keep = np.arange(N) != rows[1]
    drop = LogisticRegression(C=1.0 / (L2 * N), tol=1e-12, max_iter=10000).fit(XTR[keep], YTR[keep])

    def loss(m):
        return -np.mean(np.log(m.predict_proba(XTE)[np.arange(len(YTE)), YTE]))

    assert got.actual[1] == pytest.approx(loss(drop) - loss(full), abs=1e-7)


def test_seeds_are_paired_and_their_noise_reported():
    truth = loo_by_retraining(noisy_fit, (XTR, YTR), (XTE, YTE), points=np.array([5, 6]), seeds=3)

    def mean_loss(rows, s):
        losses, _ = model_outputs(noisy_fit(rows, None, s), XTE, YTE)
        return losses.mean()

    full = np.array([mean_loss(np.arange(N), s) for s in range(3)])
    np.testing.assert_allclose(truth.full_loss, full, rtol=1e-12)
    assert truth.seed_noise == pytest.approx(np.std(full, ddof=1)) and truth.seed_noise > 0
    eff = [mean_loss(np.delete(np.arange(N), 6), s) - full[s] for s in range(3)]
    assert truth.actual[1] == pytest.approx(np.mean(eff), rel=1e-10)
    assert truth.actual_std[1] == pytest.approx(np.std(eff, ddof=1), rel=1e-10)


def test_head_fit_as_train_fn_reproduces_lds(head):
    ref = linear_datamodeling_score(head, (XTR, YTR), (XTE, YTE), subsets=10, seed=4, newton=False, tol=1e-11)
    got = lds_retrained(head, head_fit, (XTR, YTR), (XTE, YTE), subsets=10, seed=4)
    np.testing.assert_array_equal(got.kept, ref.kept)
    np.testing.assert_allclose(got.actual, ref.actual, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(got.predicted, ref.predicted, rtol=1e-9, atol=1e-15)
    assert got.score == pytest.approx(ref.score, abs=1e-9)


def test_lds_of_a_logistic_model_against_independent_retraining(head):
    """scikit-learn retrains each subset (independent code, predict_proba route); the head's influence must
    rank the retrained test losses almost perfectly."""
    res = lds_retrained(head, sklearn_fit, (XTR, YTR), (XTE, YTE), subsets=20, seed=1)
    assert res.score >= 0.95, res.score
    # the retrained losses are sklearn's own log-loss on the kept rows
    m = 7
    sk = sklearn_fit(np.flatnonzero(res.kept[m]), None, 0)
    np.testing.assert_allclose(res.actual[m], -np.log(sk.predict_proba(XTE)[np.arange(len(YTE)), YTE]), rtol=1e-12)
    # the influence matrix against the same retrains: a flipped sign gives the opposite score
    from winnow.analyses.influence import InfluenceAnalyzer

    I = InfluenceAnalyzer(head).fit((XTR, YTR)).pairwise((XTE, YTE))
    truth = lds_by_retraining(sklearn_fit, (XTR, YTR), (XTE, YTE), subsets=20, seed=1)
    assert truth.against(I).score == pytest.approx(res.score, abs=1e-12)
    assert truth.against(-I).score == pytest.approx(-res.score, abs=1e-12)


def test_group_removal_by_head_fit_matches_group_effect(head):
    ids = np.array([2, 8, 30, 31, 77, 140])
    ref = group_effect(head, (XTR, YTR), (XTE, YTE), ids)
    got = group_by_retraining(head_fit_removal, (XTR, YTR), (XTE, YTE), ids, head=head, seeds=1)
    assert got.actual == pytest.approx(ref.actual, rel=1e-6, abs=1e-11)
    assert got.first_order == pytest.approx(ref.first_order, rel=1e-10)


def test_resume_skips_finished_retrains(tmp_path):
    d = tmp_path / "retrains"
    CALLS.clear()
    a = loo_by_retraining(head_fit, (XTR, YTR), (XTE, YTE), points=3, seeds=2, retrain_dir=d)
    assert len(CALLS) == 8 and len(list(d.glob("*.npz"))) == 8
    CALLS.clear()
    b = loo_by_retraining(head_fit, (XTR, YTR), (XTE, YTE), points=3, seeds=2, retrain_dir=d, resume=True)
    assert CALLS == []
    np.testing.assert_array_equal(a.actual, b.actual)
    (d / "full-s1.npz").unlink()                  # one missing result is retrained, with its seed
    b = loo_by_retraining(head_fit, (XTR, YTR), (XTE, YTE), points=3, seeds=2, retrain_dir=d, resume=True)
    assert CALLS == [1]
    np.testing.assert_allclose(a.actual, b.actual, rtol=1e-12)
    with pytest.raises(ValidationError, match="retrain_dir .* already holds retrains; pass resume=True"):
        loo_by_retraining(head_fit, (XTR, YTR), (XTE, YTE), points=3, seeds=2, retrain_dir=d)
    with pytest.raises(ValidationError, match="holds retrains of another run .*seeds 2 -> 3"):
        loo_by_retraining(head_fit, (XTR, YTR), (XTE, YTE), points=3, seeds=3, retrain_dir=d, resume=True)


def test_dask_workers_give_the_same_numbers(tmp_path):
    """The retrains as Dask tasks (a cluster of two single-threaded workers in this process, as the engine's
    Dask tests use): the same test losses, each saved as it finishes."""
    import distributed

    here = lds_by_retraining(noisy_fit, (XTR, YTR), (XTE, YTE), subsets=10, seeds=2)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as c, \
            distributed.Client(c, set_as_default=False) as client:
        there = lds_by_retraining(noisy_fit, (XTR, YTR), (XTE, YTE), subsets=10, seeds=2, scheduler=client,
                                  retrain_dir=tmp_path / "r")
    np.testing.assert_allclose(there.actual, here.actual, rtol=1e-12, atol=1e-15)
    assert len(list((tmp_path / "r").glob("subset*-s*.npz"))) == 20


def test_torch_module_is_evaluated_by_its_logits():
    torch.manual_seed(0)
    lin = torch.nn.Linear(XTE.shape[1], 3).double()
    y3 = np.arange(len(YTE)) % 3
    losses, proba = model_outputs(lin, XTE, y3)
    Z = XTE @ lin.weight.detach().numpy().T + lin.bias.detach().numpy()
    P = np.exp(Z) / np.exp(Z).sum(1, keepdims=True)
    np.testing.assert_allclose(losses, -np.log(P[np.arange(len(y3)), y3]), rtol=1e-10)
    np.testing.assert_allclose(proba, P, rtol=1e-10)
    one = torch.nn.Linear(XTE.shape[1], 1).double()
    losses, proba = model_outputs(one, XTE, YTE)
    z = (XTE @ one.weight.detach().numpy().T + one.bias.detach().numpy())[:, 0]
    p = 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(losses, -(YTE * np.log(p) + (1 - YTE) * np.log(1 - p)), rtol=1e-9)
    with pytest.raises(ValidationError, match="model gives 3 logits per point but the test labels go up to 3"):
        model_outputs(lin, XTE, np.full(len(YTE), 3))


def test_softmax_head_as_model_and_user_loss_fn():
    X3, y3 = relu_embeddings(90, d_in=5, d=6, seed=2, k=3)
    h = SoftmaxHead(l2=L2).fit(X3, y3)
    losses, proba = model_outputs(h, X3, y3)
    np.testing.assert_allclose(losses, -np.log(proba[np.arange(90), y3]), rtol=1e-9)
    got, _ = model_outputs(object(), X3, y3, loss_fn=lambda m, t: np.arange(len(t[1]), dtype=float))
    np.testing.assert_array_equal(got, np.arange(90.0))


def lin3_fit(rows, weights, seed):
    """A fixed-seed linear softmax model (untrained: its logits are all that matters here)."""
    torch.manual_seed(seed)
    return torch.nn.Linear(XTE.shape[1], 3).double()


def test_retrain_metrics_match_sklearn():
    from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

    y3 = np.arange(len(YTE)) % 3
    (losses, proba), = run_retrains(lin3_fit, [Retrain("a", np.arange(5), None, 4)], (XTE, y3)).values()
    torch.manual_seed(4)
    lin = torch.nn.Linear(XTE.shape[1], 3).double()
    Z = XTE @ lin.weight.detach().numpy().T + lin.bias.detach().numpy()
    P = np.exp(Z - Z.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    got = retrain_metrics(losses, proba, y3)
    assert got["logloss"] == pytest.approx(log_loss(y3, P, labels=[0, 1, 2]), rel=1e-9)
    assert got["accuracy"] == pytest.approx(accuracy_score(y3, P.argmax(1)))
    assert got["auc"] == pytest.approx(roc_auc_score(y3, P, multi_class="ovr", average="macro"), rel=1e-12)
    # binary probabilities P(y = 1); a class missing from y: no AUC; no probabilities: log-loss only
    p = 1 / (1 + np.exp(-Z[:, 0]))
    lb = -(YTE * np.log(p) + (1 - YTE) * np.log(1 - p))
    got = retrain_metrics(lb, p, YTE)
    assert got["auc"] == pytest.approx(roc_auc_score(YTE, p), rel=1e-12)
    assert got["accuracy"] == pytest.approx(accuracy_score(YTE, p > 0.5))
    assert np.isnan(retrain_metrics(losses, proba, np.zeros(len(YTE), dtype=np.int64))["auc"])
    none = retrain_metrics(np.array([0.5, 1.5]), None, np.array([0, 1]))
    assert none["logloss"] == 1.0 and np.isnan(none["accuracy"]) and np.isnan(none["auc"])


def bad_returns(rows, weights, seed):
    return "not a model"


def raises(rows, weights, seed):
    raise RuntimeError("out of memory")


def test_bad_train_fn():
    data = ((XTR, YTR), (XTE, YTE))
    with pytest.raises(ValidationError, match=r"train_fn .*bad_returns .* returned a str, which cannot be evaluated"):
        loo_by_retraining(bad_returns, *data, points=2, seeds=1)
    with pytest.raises(ValidationError, match=r"train_fn .*raises .*raised RuntimeError: out of memory"):
        loo_by_retraining(raises, *data, points=2, seeds=1)
    with pytest.raises(ValidationError, match="train_fn must be a function"):
        loo_by_retraining(3, *data, points=2)
    with pytest.raises(ValidationError, match=r"must accept three arguments \(rows, weights, seed\)"):
        loo_by_retraining(lambda rows: None, *data, points=2)
    with pytest.raises(ValidationError, match="loss_fn must return one loss per test point"):
        loo_by_retraining(head_fit, *data, points=2, seeds=1, loss_fn=lambda m, t: np.zeros(3))
    with pytest.raises(ValidationError, match="subsets must be an integer >= 10"):
        lds_by_retraining(head_fit, *data, subsets=5)
    with pytest.raises(ValidationError, match="seeds must be an integer >= 1"):
        lds_by_retraining(head_fit, *data, subsets=10, seeds=0)
