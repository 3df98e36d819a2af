"""Influence-guided subsampling: exact budgets, exact inclusion probabilities, unbiased weighting, planted
label noise, ratio tuning with a known optimum, SUBSET files and the CLI."""

import json
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import relu_embeddings
from scipy import stats
from sklearn.metrics import log_loss, roc_auc_score

from winnow.analyses.subsample import (
    Subsampler,
    allocate,
    budget_size,
    classification_metrics,
    compute_scores,
    evaluate_subset,
    fit_subset,
    load_subset,
    load_subset_weights,
    policy_inclusion,
    ratio_candidates,
    report_section,
    sigmoid_inclusion,
    split_validation,
    systematic_sample,
)
from winnow.core.heads import LogisticHead, SoftmaxHead
from winnow.errors import ValidationError


def _clean_data(n, seed, d_in=6, d=16):
    """ReLU features of Gaussian inputs with (almost) deterministic labels: planted flips stand out."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, d_in))
    A = np.random.default_rng(99).standard_normal((d_in, d)) / np.sqrt(d_in)
    w = np.random.default_rng(98).standard_normal(d_in)
    return np.maximum(Z @ A, 0.0), (Z @ w > 0).astype(np.int64)


@pytest.fixture(scope="module")
def setup():
    X, y = relu_embeddings(900, d_in=6, d=10, seed=4)
    train, valid = (X[:600], y[:600]), (X[600:], y[600:])
    head = LogisticHead(l2=1e-2, tol=1e-11).fit(*train)
    # the influence on each cross-fitting half of VALID (the Subsampler's default split, seed 0)
    scores = compute_scores(head, train, folds=split_validation(valid, 0.5, 0))
    return train, valid, head, scores


# --------------------------------------------------------------------------------------------- maths
@pytest.mark.parametrize("keep", [0.0, -0.1, 1.5, float("nan"), "half"])
def test_keep_outside_unit_interval_is_refused(keep):
    with pytest.raises(ValidationError, match="keep"):
        budget_size(keep, 100)
    with pytest.raises(ValidationError, match="keep"):
        Subsampler(keep)


def test_budget_is_round_of_fraction_times_n():
    assert budget_size(0.3, 1001) == round(0.3 * 1001) == 300
    assert budget_size(1.0, 17) == 17
    with pytest.raises(ValidationError, match="keeps no point"):
        budget_size(0.001, 100)


def test_allocate_is_exact_capped_and_proportional():
    rng = np.random.default_rng(0)
    for _ in range(200):
        K = int(rng.integers(2, 6))
        sizes = rng.integers(0, 50, K)
        sizes[0] = max(sizes[0], 1)
        m = int(rng.integers(1, sizes.sum() + 1))
        shares = rng.random(K)
        b = allocate(m, sizes, shares)
        assert b.sum() == m and np.all(b >= 0) and np.all(b <= sizes)
        if m >= (sizes > 0).sum():
            assert np.all(b[sizes > 0] >= 1)
    # proportional shares of an uncapped budget stay within one point of m·n_c/n
    sizes = np.array([700, 200, 100])
    b = allocate(333, sizes, sizes / sizes.sum())
    assert b.sum() == 333 and np.all(np.abs(b - 333 * sizes / 1000) < 1)


def test_systematic_sampling_has_exact_size_and_inclusion_probabilities():
    rng0 = np.random.default_rng(1)
    pi = sigmoid_inclusion(rng0.standard_normal(30), 9, 3.0)
    pi[:3] = [1.0, 0.0, 1.0]  # certain and impossible points
    pi[3:] *= (9 - 2) / pi[3:].sum()
    R = 20000
    counts = np.zeros(30)
    rng = np.random.default_rng(5)
    for _ in range(R):
        s = systematic_sample(pi, rng)
        assert s.shape[0] == 9 and np.unique(s).shape[0] == 9
        counts[s] += 1
    assert counts[0] == R and counts[2] == R and counts[1] == 0
    inner = pi[3:]
    z = (counts[3:] / R - inner) / np.sqrt(inner * (1 - inner) / R)
    assert np.abs(z).max() < 4.5


def test_sigmoid_inclusion_hits_budget_and_decreases_with_influence():
    phi = np.random.default_rng(2).standard_normal(200)
    for k in (0.0, 1.0, 10.0, 1000.0):
        pi = sigmoid_inclusion(phi, 57, k)
        assert pi.sum() == pytest.approx(57, abs=1e-9) and np.all((pi >= 0) & (pi <= 1))
        if k == 0:
            assert np.allclose(pi, 57 / 200)
        else:
            order = np.argsort(phi)
            assert np.all(np.diff(pi[order]) <= 1e-15)  # non-increasing in φ
    sharp = sigmoid_inclusion(phi, 57, 1e5)  # → keep the 57 lowest influences for sure
    assert set(np.flatnonzero(sharp > 0.5)) == set(np.argsort(phi)[:57])


# --------------------------------------------------------------------------------- exact budgets
@pytest.mark.parametrize("policy", ["paper", "influence", "random"])
@pytest.mark.parametrize("weighted", [False, True])
def test_exact_budget_and_class_counts(setup, policy, weighted):
    train, valid, head, scores = setup
    y = train[1]
    kw = {"memorize_quantile": 0.9} if policy == "paper" else {"sharpness": 10.0} if policy == "influence" else {}
    for keep in (0.13, 0.5, 1.0):
        s = Subsampler(keep, policy=policy, weighted=weighted, **kw).fit(train, head, valid, scores=scores)
        m = round(keep * 600)
        assert s.rows_.shape[0] == m and np.unique(s.rows_).shape[0] == m
        sizes = np.bincount(y, minlength=2)
        expected = allocate(m, sizes, sizes / 600)
        assert np.array_equal(np.bincount(y[s.rows_], minlength=2), expected)
        assert np.array_equal(s.class_budget_, expected)
        if weighted:
            assert np.allclose(s.weights_, 1.0 / s.inclusion_[s.rows_])
        else:
            assert np.all(s.weights_ == 1.0)
        if keep == 1.0:
            assert np.all(s.inclusion_ == 1.0) and np.all(s.weights_ == 1.0)
            np.testing.assert_allclose(s.fit_head().theta_.numpy(), head.theta_.numpy(), atol=1e-7)


def test_reproducible_under_a_seed(setup):
    train, valid, head, scores = setup

    def run(seed, **kw):
        return Subsampler(0.3, seed=seed, tune_draws=1, **kw).fit(train, head, valid, scores=scores)

    a, b, c = (run(s, policy="paper", weighted=True) for s in (7, 7, 8))
    assert np.array_equal(a.rows_, b.rows_) and np.array_equal(a.weights_, b.weights_)
    assert a.summary()["candidates"] == b.summary()["candidates"] and len(a.candidates_["policy"]) == 4
    assert not np.array_equal(a.rows_, c.rows_)
    d, e = (run(7, policy="influence", sharpness=10.0) for _ in range(2))
    assert np.array_equal(d.rows_, e.rows_) and not np.array_equal(d.rows_, run(9, policy="influence",
                                                                                 sharpness=10.0).rows_)


@pytest.mark.slow
def test_softmax_head_class_counts_and_ratio_candidates():
    X, y = relu_embeddings(500, seed=2, k=4, d=8)
    train, valid = (X[:350], y[:350]), (X[350:], y[350:])
    head = SoftmaxHead(l2=1e-2).fit(*train)
    s = Subsampler(0.2, policy="random", tune_ratio="logloss", tune_draws=1).fit(train, head, valid)
    assert s.rows_.shape[0] == 70
    assert np.array_equal(np.bincount(train[1][s.rows_], minlength=4), s.class_budget_)
    n_cands = len(ratio_candidates(70, np.bincount(train[1], minlength=4)))
    assert len(s.candidates_["ratio"]) == n_cands > 4


# ------------------------------------------------------------------------------------ unbiasedness
def test_weighted_subset_objective_is_unbiased_at_the_full_optimum(setup):
    """E[(1/n) Σ_S w_i g_i] + λθ̂_W = ∇R(θ̂) = 0 with w = 1/π and normaliser n; the unweighted mean is not."""
    train, valid, head, scores = setup
    X, y = train
    n, lam = len(y), head.l2
    th = head.theta_.numpy()
    Xa = np.c_[X, np.ones(n)]
    z = Xa @ th
    G = (1 / (1 + np.exp(-z)) - y)[:, None] * Xa  # per-example gradients, written out independently
    losses = np.logaddexp(0, z) - y * z
    reg = lam * np.r_[np.ones(X.shape[1]), 0.0] * th
    assert np.abs(G.mean(0) + reg).max() < 1e-9  # θ̂ is the full-data optimum
    s = Subsampler(0.3, policy="influence", sharpness=3.0, weighted=True).fit(train, head, valid, scores=scores)
    assert s.inclusion_.std() > 0.05  # genuinely unequal probabilities
    R = 1500
    gw, gu, tot = [], [], []
    for r in range(R):
        rows, w = s.resample(10**6 + r)
        gw.append((w[:, None] * G[rows]).sum(0) / n + reg)
        gu.append(G[rows].mean(0) + reg)
        tot.append((w * losses[rows]).sum())

    def hotelling(a):
        a = np.asarray(a)
        mu = a.mean(0)
        return R * mu @ np.linalg.solve(np.cov(a.T), mu)

    crit = stats.chi2.ppf(0.9999, df=G.shape[1])
    assert hotelling(gw) < crit
    assert hotelling(gu) > 10 * crit  # the test has power: selection without weights is biased
    tot = np.asarray(tot)
    assert abs(tot.mean() - losses.sum()) < 4.5 * tot.std(ddof=1) / np.sqrt(R)  # Horvitz–Thompson total


def test_weights_undo_a_shifted_class_ratio():
    """Case-control known answer: keeping all positives and 1/4 of the negatives shifts the unweighted
    logistic intercept by log 4; 1/π weights with normaliser n recover the full-data fit."""
    rng = np.random.default_rng(0)
    n = 20000
    X = rng.standard_normal((n, 3))
    y = (rng.random(n) < 1 / (1 + np.exp(-(X @ np.array([1.0, -0.5, 0.8]) - 1.5)))).astype(np.int64)
    head = LogisticHead(l2=1e-6).fit(X, y)
    sizes = np.bincount(y)
    budget = np.array([sizes[0] // 4, sizes[1]])
    pi, _ = policy_inclusion("random", y, budget)
    tw, tu = [], []
    neg = np.flatnonzero(y == 0)
    for s in range(5):
        rows = np.sort(np.r_[neg[systematic_sample(pi[neg], np.random.default_rng(s))], np.flatnonzero(y == 1)])
        tw.append(fit_subset(head, (X, y), rows, 1 / pi[rows], float(n)).theta_.numpy())
        tu.append(fit_subset(head, (X, y), rows).theta_.numpy())
    full = head.theta_.numpy()
    assert np.abs(np.mean(tw, 0) - full).max() < 0.03
    assert np.mean(tu, 0)[-1] - full[-1] == pytest.approx(np.log(sizes[0] / budget[0]), abs=0.05)


# --------------------------------------------------------------------------------- what gets kept
def test_planted_flipped_labels_are_dropped_first():
    Xtr, ytr = _clean_data(600, 1)
    Xva, yva = _clean_data(300, 2)
    flip = np.random.default_rng(0).choice(600, 30, replace=False)
    ytr[flip] ^= 1
    flipped = np.zeros(600, bool)
    flipped[flip] = True
    head = LogisticHead(l2=1e-2).fit(Xtr, ytr)
    s = Subsampler(0.9, policy="influence", sharpness=100.0).fit((Xtr, ytr), head, (Xva, yva))
    dropped = np.setdiff1d(np.arange(600), s.rows_)
    assert flipped[np.argsort(s.inclusion_)[:30]].mean() >= 0.5  # lowest π: mostly planted flips (base 5 %)
    assert flipped[dropped].sum() >= 18  # ≥ 60 % of flips among the 60 dropped (random: 10 %)
    r = Subsampler(0.9, policy="random").fit((Xtr, ytr), head)
    assert flipped[np.setdiff1d(np.arange(600), r.rows_)].sum() <= 10
    assert flipped[s.rows_].mean() < 0.4 * flipped.mean()


def test_ratio_tuning_finds_the_known_optimum():
    """Uninformative features: a retrained head predicts the kept positive share, so the validation
    log-loss is smallest when that share equals VALID's positive rate (0.2)."""
    rng = np.random.default_rng(3)
    Xtr = rng.standard_normal((1000, 4))
    ytr = np.r_[np.zeros(500), np.ones(500)].astype(np.int64)
    Xva = rng.standard_normal((2000, 4))
    yva = (np.arange(2000) < 400).astype(np.int64)
    head = LogisticHead(l2=1e-2).fit(Xtr, ytr)
    s = Subsampler(0.5, policy="random", tune_ratio="logloss", ratio_grid=[0.1, 0.2, 0.3, 0.5, 0.7],
                   tune_draws=2).fit((Xtr, ytr), head, (Xva, yva))
    assert s.summary()["positive_share"] == pytest.approx(0.2)
    shares = [c["positive_share"] for c in s.candidates_["ratio"]]
    assert 0.5 in shares  # the proportional (fixed) ratio was a candidate
    losses = {c["positive_share"]: c["valid_logloss"] for c in s.candidates_["ratio"]}
    assert losses[0.2] < losses[0.1] and losses[0.2] < losses[0.3] < losses[0.5]
    assert np.bincount(ytr[s.rows_]).tolist() == [400, 100]


def _dense_memorization(head, X, y):
    """‖Λ⁻¹Qᵀg_p‖₁ from an explicitly built Hessian (numpy), independent of winnow's code."""
    th = head.theta_.numpy()
    Xa = np.c_[X, np.ones(len(y))]
    s = 1 / (1 + np.exp(-Xa @ th))
    H = (Xa * (s * (1 - s))[:, None]).T @ Xa / len(y) + head.l2 * np.diag(np.r_[np.ones(X.shape[1]), 0.0])
    lam, Q = np.linalg.eigh(H)
    G = (s - y)[:, None] * Xa
    return np.abs(G @ Q / lam).sum(1)


def test_paper_policy_keeps_memorizable_points_and_fills_uniformly(setup):
    train, valid, head, scores = setup
    X, y = train
    np.testing.assert_allclose(scores.memorization, _dense_memorization(head, X, y), rtol=1e-7)
    s = Subsampler(0.4, policy="paper", weighted=True, memorize_quantile=0.85,
                   split_memorize=False).fit(train, head, valid, scores=scores)
    D = np.quantile(scores.memorization, 0.85)
    mem = scores.memorization > D
    assert s.threshold_ == pytest.approx(D)
    assert np.all(np.isin(np.flatnonzero(mem), s.rows_))  # every D-memorizable point kept
    for c in (0, 1):
        gen = (~mem) & (y == c)
        expected = (s.class_budget_[c] - (mem & (y == c)).sum()) / gen.sum()
        assert np.allclose(s.inclusion_[gen], expected)
    kept_mem = mem[s.rows_]
    assert np.all(s.weights_[kept_mem] == 1.0)
    assert s.weights_.sum() == pytest.approx(600)  # Σ 1/π = n exactly for this design
    summ = s.summary()
    assert sum(summ["memorize_kept_by_class"]) == mem.sum()
    assert sum(summ["generalize_kept_by_class"]) == 240 - mem.sum()


def test_budget_smaller_than_memorize_set_keeps_highest_scores_and_says_so(setup):
    train, valid, head, scores = setup
    y = train[1]
    with pytest.warns(UserWarning, match="smaller than"):
        s = Subsampler(0.1, policy="paper", memorize_threshold=0.0, split_memorize=False).fit(
            train, head, valid, scores=scores)
    assert s.warnings_ and s.summary()["warnings"]
    for c in (0, 1):
        idx = np.flatnonzero(y == c)
        top = idx[np.argsort(-scores.memorization[idx], kind="stable")[: s.class_budget_[c]]]
        assert set(top) == set(s.rows_[y[s.rows_] == c])


def test_valid_set_missing_a_class_is_refused_for_auc(setup):
    train, valid, head, scores = setup
    X, yv = valid
    only0 = (X[yv == 0], yv[yv == 0])
    with pytest.raises(ValidationError, match="no examples of class 1"):
        Subsampler(0.3, policy="random", tune_ratio="auc").fit(train, head, only0, scores=scores)
    with pytest.raises(ValidationError, match="validation set"):
        Subsampler(0.3, policy="influence").fit(train, head, None)


def test_metrics_match_sklearn(setup):
    train, valid, head, _ = setup
    m = classification_metrics(head, valid)
    p = head.predict_proba(valid[0])
    assert m["logloss"] == pytest.approx(log_loss(valid[1], p), rel=1e-9)
    assert m["auc"] == pytest.approx(roc_auc_score(valid[1], p))
    assert m["accuracy"] == pytest.approx(np.mean((p > 0.5) == valid[1]))


# ---------------------------------------------------------------------------------- SUBSET files
def _subset_file(path, ids, weights):
    pq.write_table(pa.table({"id": np.asarray(ids, dtype=np.int64), "weight": np.asarray(weights, float)}), path)
    return path


def test_subset_file_round_trip_and_fit_with_weights(setup, tmp_path):
    train, valid, head, scores = setup
    X, y = train
    ids = np.arange(1000, 1600)
    src = (X, y, ids)
    s = Subsampler(0.3, policy="influence", weighted=True, sharpness=5.0).fit(src, head, valid, scores=scores)
    out = s.write(tmp_path / "subset.parquet", json_out=tmp_path / "subset.json")
    t = pq.read_table(out)
    assert t.num_rows == 180 and set(t.column_names) >= {"id", "weight", "inclusion_probability", "influence"}
    assert np.array_equal(t.column("id").to_numpy(), ids[s.rows_])
    summary = json.loads((tmp_path / "subset.json").read_text())
    assert summary["budget"] == 180 and summary["policy"] == "influence" and summary["normalizer"] == 600
    w, N = load_subset_weights(out, src, return_normalizer=True)
    assert N == 600 and w.shape == (600,) and np.count_nonzero(w) == 180
    # fit-head --weights path: a full-data fit with zero weights elsewhere equals the subset fit
    direct = LogisticHead(l2=head.l2, tol=1e-10).fit(X, y, sample_weight=w, normalizer=N)
    np.testing.assert_allclose(direct.theta_.numpy(), s.fit_head().theta_.numpy(), atol=1e-6)
    with pytest.raises(Exception, match="exists"):
        s.write(out)


def test_subset_ids_not_in_train_and_bad_weights_are_refused(setup, tmp_path):
    train, *_ = setup
    with pytest.raises(ValidationError, match="ids are not in train"):
        load_subset(_subset_file(tmp_path / "a.parquet", [1, 2, 5000], [1, 1, 1]), train)
    for bad in (0.0, -1.0, np.nan, np.inf):
        with pytest.raises(ValidationError, match="weights must be finite and > 0"):
            load_subset(_subset_file(tmp_path / "b.parquet", [1, 2, 3], [1.0, bad, 1.0]), train)
    with pytest.raises(ValidationError, match="unique"):
        load_subset(_subset_file(tmp_path / "c.parquet", [1, 1, 3], [1, 1, 1]), train)
    sub = load_subset(_subset_file(tmp_path / "d.parquet", [9, 3, 4], [1, 2, 3]), train)
    assert sub.rows.tolist() == [3, 4, 9] and sub.weights.tolist() == [2, 3, 1] and sub.normalizer is None


def test_evaluate_subset_retrains_and_compares(setup, tmp_path):
    train, valid, head, scores = setup
    X, y = relu_embeddings(400, d_in=6, d=10, seed=11)
    test = (X, y)
    s = Subsampler(1.0, policy="random").fit(train, head)
    s.write(tmp_path / "all.parquet")
    ev = evaluate_subset(train, tmp_path / "all.parquet", test, head=head, seeds=2)
    full, sub, rnd = ev.rows
    assert full["method"] == "full" and rnd["n_runs"] == 2
    for k in ("logloss_mean", "auc_mean", "accuracy_mean"):  # keep = 1: all three are the full fit
        assert sub[k] == pytest.approx(full[k], abs=1e-7) and rnd[k] == pytest.approx(full[k], abs=1e-7)
    ref = classification_metrics(fit_subset(head, train, np.arange(600)), test)
    assert full["logloss_mean"] == pytest.approx(ref["logloss"])


@pytest.mark.slow
def test_evaluate_subset_curve_and_report(setup, tmp_path):
    from winnow.report import Report

    train, valid, head, scores = setup
    X, y = relu_embeddings(400, d_in=6, d=10, seed=11)
    s = Subsampler(0.3, policy="paper", memorize_quantile=0.9).fit(train, head, valid, scores=scores)
    s.write(tmp_path / "sub.parquet")
    ev = evaluate_subset(train, tmp_path / "sub.parquet", (X, y), valid=valid, head=head, seeds=2, curve=True,
                         fractions=(0.2, 0.5), policies=("paper", "random"))
    pols = {(p["policy"], p["weighted"]) for p in ev.curve}
    assert pols == {("paper", False), ("paper", True), ("random", False), ("full", False)}
    assert all(p["n_kept"] == round(p["keep"] * 600) for p in ev.curve if p["policy"] != "full")
    html = report_section(Report("t"), ev).html()
    assert "memorize kept" in html and "data:image/png" in html


# ------------------------------------------------------------------------------------------- CLI
def _cli(args):
    import winnow.cli.subsample  # noqa: F401  (registers the commands until cli/__init__ imports it)
    from winnow.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            main(args)
        except SystemExit as e:
            return e.code
    return 0


def _write_npz(path, X, y):
    np.savez(path, X=X, y=y)
    return str(path)


def test_cli_subsample_and_evaluate(setup, tmp_path, capsys):
    train, valid, head, _ = setup
    tr = _write_npz(tmp_path / "train.npz", *train)
    va = _write_npz(tmp_path / "valid.npz", *valid)
    te = _write_npz(tmp_path / "test.npz", *relu_embeddings(300, d_in=6, d=10, seed=12))
    hp = str(head.save(tmp_path / "head.npz"))
    out, js = str(tmp_path / "sub.parquet"), str(tmp_path / "sub.json")
    assert _cli(["subsample", tr, "--head", hp, "--valid", va, "--keep", "0.25", "--out", out,
                 "--policy", "influence", "--sharpness", "10", "--weighted", "--json", js, "--quiet"]) == 0
    t = pq.read_table(out)
    assert t.num_rows == 150 and json.loads(open(js).read())["weighted"] is True
    assert _cli(["subsample", tr, "--head", hp, "--keep", "0.25", "--out", out, "--policy", "random",
                 "--quiet"]) == 2  # exists
    assert "exists" in capsys.readouterr().err
    assert _cli(["subsample", tr, "--head", hp, "--keep", "1.5", "--out", str(tmp_path / "x.parquet"),
                 "--policy", "random", "--quiet"]) == 2
    assert "--keep" in capsys.readouterr().err
    assert _cli(["subsample", tr, "--head", hp, "--keep", "0.5", "--out", str(tmp_path / "y.parquet"),
                 "--policy", "influence", "--quiet"]) == 2
    assert "validation set" in capsys.readouterr().err
    rep, ej = str(tmp_path / "r.html"), str(tmp_path / "e.json")
    assert _cli(["evaluate-subset", tr, "--subset", out, "--test", te, "--head", hp, "--seeds", "2",
                 "--json", ej, "--report", rep, "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "full" in printed and "random (same size and class counts)" in printed
    res = json.loads(open(ej).read())["results"]
    assert [r["method"] for r in res][0] == "full" and res[1]["weighted"] is True
    bad = _subset_file(tmp_path / "bad.parquet", [1, 2, 9999], [1, 1, 1])
    assert _cli(["evaluate-subset", tr, "--subset", str(bad), "--test", te, "--quiet"]) == 2
    assert "not in TRAIN" in capsys.readouterr().err
