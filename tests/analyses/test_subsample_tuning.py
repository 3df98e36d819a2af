"""Subsampling choices made by cross-fitting on VALID, the memorize rule split by harm to VALID, and the
fixed-sharpness ``wang`` policy: each against an independent numpy/scipy computation."""

import numpy as np
import pytest
from scipy.special import expit, logit

from winnow.analyses.subsample import Subsampler, compute_scores, split_validation
from winnow.core.heads import LogisticHead
from winnow.errors import ValidationError

L2 = 1e-2


def _data(n, seed, flip=0.0):
    """Gaussian features, labels from a logistic model; a share ``flip`` of the labels flipped."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 4))
    y = (rng.random(n) < expit(X @ np.array([2.0, -1.5, 1.0, 0.5]) + 0.3)).astype(np.int64)
    if flip:
        idx = rng.choice(n, int(flip * n), replace=False)
        y[idx] ^= 1
    return X, y


def _fit(X, y):
    """Mean log-loss + (λ/2)‖w‖² (intercept not penalised), minimised by Newton's method in numpy: θ = (w, b)."""
    Xa = np.c_[X, np.ones(len(y))]
    R = L2 * np.diag(np.r_[np.ones(X.shape[1]), 0.0])
    th = np.zeros(Xa.shape[1])
    for _ in range(100):
        p = expit(Xa @ th)
        g = Xa.T @ (p - y) / len(y) + R @ th
        step = np.linalg.solve((Xa * (p * (1 - p))[:, None]).T @ Xa / len(y) + R, g)
        th -= step
        if np.abs(step).max() < 1e-13:
            break
    return th


def _logloss(th, X, y):
    z = np.c_[X, np.ones(len(y))] @ th
    return float(np.mean(np.logaddexp(0, z) - y * z))


def _influence(th, X, y, Xv, yv):
    """φ_i = −ḡ_validᵀ H⁻¹ g_i with H the Hessian of the mean training objective (> 0: harmful)."""
    Xa, Xva = np.c_[X, np.ones(len(y))], np.c_[Xv, np.ones(len(yv))]
    p = expit(Xa @ th)
    H = (Xa * (p * (1 - p))[:, None]).T @ Xa / len(y) + L2 * np.diag(np.r_[np.ones(X.shape[1]), 0.0])
    gv = Xva.T @ (expit(Xva @ th) - yv) / len(yv)
    return -((p - y)[:, None] * Xa) @ np.linalg.solve(H, gv)


def _fold_rows(fold):
    return np.sort(np.asarray(fold.ids(), dtype=np.int64))


def test_crossfitting_picks_what_an_independent_computation_picks():
    """Hard-threshold influence subsets (deterministic: the m_c lowest φ of each class) at three class
    ratios: the choice must be the ratio whose mean over the two folds of (φ on one half, VALID log-loss
    of the retrained head on the other half) is lowest, every figure recomputed here with scipy."""
    X, y = _data(400, 1, flip=0.25)
    Xv, yv = _data(200, 2)
    head = LogisticHead(l2=L2, tol=1e-12).fit(X, y)
    s = Subsampler(0.5, policy="influence", sharpness=1e12, tune_ratio="logloss", ratio_grid=[0.3, 0.5, 0.7],
                   tune_draws=1, seed=3).fit((X, y), head, (Xv, yv))
    folds = [_fold_rows(f) for f in s.folds_]
    assert len(folds[0]) + len(folds[1]) == 200 and not set(folds[0]) & set(folds[1])
    th = _fit(X, y)
    phis = [_influence(th, X, y, Xv[f], yv[f]) for f in folds]
    by_share = {}
    for cand in s.candidates_["ratio"]:
        budget = np.asarray(cand["class_budget"])
        figures = []
        for j in (0, 1):
            rows = np.concatenate([np.flatnonzero(y == c)[np.argsort(phis[j][y == c])[:budget[c]]] for c in (0, 1)])
            judge = folds[1 - j]
            figures.append(_logloss(_fit(X[rows], y[rows]), Xv[judge], yv[judge]))
            assert cand["folds"][j]["valid_logloss"] == pytest.approx(figures[-1], rel=1e-6)
        assert cand["valid_logloss"] == pytest.approx(np.mean(figures), rel=1e-6)
        by_share[tuple(budget)] = np.mean(figures)
    best = min(by_share, key=by_share.get)
    assert tuple(s.class_budget_) == best
    # the subset is drawn from the mean of the two judged policies: here the mean of two hard selections
    halves = np.zeros((2, len(y)))
    for j in (0, 1):
        for c in (0, 1):
            halves[j, np.flatnonzero(y == c)[np.argsort(phis[j][y == c])[:best[c]]]] = 1.0
    assert np.any(halves.mean(0) == 0.5)  # the halves disagree somewhere: the mean is not a hard selection
    np.testing.assert_allclose(s.inclusion_, halves.mean(0), atol=1e-9)
    assert len(set(np.round(list(by_share.values()), 6))) == len(by_share)  # the choice is not a tie
    summ = s.summary()
    assert summ["crossfitted"] and summ["valid_folds"] == [len(folds[0]), len(folds[1])]


def test_fold_influences_average_to_the_influence_on_all_of_valid():
    X, y = _data(300, 4)
    Xv, yv = _data(101, 5)
    head = LogisticHead(l2=L2, tol=1e-12).fit(X, y)
    folds = split_validation((Xv, yv), 0.5, 0)
    sc = compute_scores(head, (X, y), folds=folds, memorization=False)
    th = _fit(X, y)
    rows = [_fold_rows(f) for f in folds]
    for j in (0, 1):
        np.testing.assert_allclose(sc.influence_folds[j], _influence(th, X, y, Xv[rows[j]], yv[rows[j]]),
                                   rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(sc.influence, _influence(th, X, y, Xv, yv), rtol=1e-5, atol=1e-9)


def test_split_memorize_rule_does_not_keep_a_planted_harmful_memorized_point():
    X, y = _data(300, 6)
    Xv, yv = _data(200, 7)
    # an isolated point far out along the third feature with the label the model does not predict there
    # (logit ≈ +6, label 0): a flipped point, memorizable and harmful to VALID
    X = np.r_[X, [[0.0, 0.0, 6.0, 0.0]]]
    y = np.r_[y, 0]
    bad = len(y) - 1
    head = LogisticHead(l2=L2, tol=1e-12).fit(X, y)
    phi = _influence(_fit(X, y), X, y, Xv, yv)
    assert phi[bad] > 0
    sc = compute_scores(head, (X, y), folds=split_validation((Xv, yv), 0.5, 0))
    D = float(np.quantile(sc.memorization, 0.9))
    assert sc.memorization[bad] > D  # memorizable
    kw = dict(policy="paper", memorize_threshold=D, seed=0)
    split = Subsampler(0.5, **kw).fit((X, y), head, (Xv, yv), scores=sc)
    plain = Subsampler(0.5, split_memorize=False, **kw).fit((X, y), head, (Xv, yv), scores=sc)
    assert plain.inclusion_[bad] == 1.0  # the paper's rule keeps it with certainty
    assert split.inclusion_[bad] < 0.6  # the split rule does not
    # the memorizable points that do not harm VALID are kept; the harmful one is sampled with the
    # generalizable points of its class at their common uniform rate
    mem = (sc.memorization > D) & ~(phi > 0)
    assert mem.sum() > 5 and np.all(split.inclusion_[mem] == 1.0)
    c = y[bad]
    rest = (y == c) & ~mem
    assert split.inclusion_[bad] == pytest.approx((split.class_budget_[c] - (mem & (y == c)).sum()) / rest.sum())
    summ = split.summary()
    assert sum(summ["memorize_harmful_by_class"]) == int(((sc.memorization > D) & (phi > 0)).sum())
    t = split.table().to_pydict()
    assert all(m == bool(mem[i]) for i, m in zip(t["id"], t["memorize"]))


@pytest.mark.parametrize("weighted", [False, True])
def test_wang_policy_sums_to_the_class_budgets_with_a_fixed_slope(weighted):
    X, y = _data(500, 8, flip=0.2)
    Xv, yv = _data(200, 9)
    head = LogisticHead(l2=L2, tol=1e-12).fit(X, y)
    s = Subsampler(0.3, policy="wang", alpha=0.7, weighted=weighted, seed=0).fit((X, y), head, (Xv, yv))
    pi = s.inclusion_
    phi = _influence(_fit(X, y), X, y, Xv, yv)  # the final subset uses the influence on all of VALID
    np.testing.assert_allclose(s.scores_.influence, phi, rtol=1e-5, atol=1e-9)
    for c in (0, 1):
        assert pi[y == c].sum() == pytest.approx(s.class_budget_[c], abs=1e-9)
        slope = np.polyfit(phi[y == c], logit(pi[y == c]), 1)[0]
        assert slope == pytest.approx(-0.7 / phi.std(), rel=1e-4)  # π = σ(α(τ_c − φ)/sd(φ))
    assert np.bincount(y[s.rows_]).tolist() == s.class_budget_.tolist()
    expected_w = 1 / pi[s.rows_] if weighted else np.ones(len(s.rows_))
    np.testing.assert_allclose(s.weights_, expected_w)
    assert s.summary()["alpha"] == 0.7 and s.candidates_["policy"] == []


@pytest.mark.parametrize("kw, parameter", [
    (dict(policy="influence", sharpness_grid=[]), "sharpness_grid"),
    (dict(policy="influence", sharpness_grid=[1.0, -2.0]), "sharpness_grid"),
    (dict(policy="influence", sharpness_grid=[1.0, float("nan")]), "sharpness_grid"),
    (dict(policy="influence", sharpness=2.0, sharpness_grid=[1.0]), "sharpness_grid"),
    (dict(policy="paper", sharpness_grid=[1.0]), "sharpness_grid"),
    (dict(policy="wang", alpha=0.0), "alpha"),
    (dict(policy="wang", alpha=-1.0), "alpha"),
    (dict(policy="influence", alpha=0.5), "alpha"),
])
def test_bad_tuning_settings_are_refused_in_one_line(kw, parameter):
    with pytest.raises(ValidationError) as e:
        Subsampler(0.5, **kw)
    msg = str(e.value)
    assert "\n" not in msg and parameter in msg and parameter in e.value.parameters


def test_scores_without_folds_are_refused_when_crossfitting():
    X, y = _data(200, 10)
    Xv, yv = _data(100, 11)
    head = LogisticHead(l2=L2).fit(X, y)
    sc = compute_scores(head, (X, y), (Xv, yv), memorization=False)
    with pytest.raises(ValidationError, match="crossfit"):
        Subsampler(0.5, sharpness=1.0).fit((X, y), head, (Xv, yv), scores=sc)
    s = Subsampler(0.5, sharpness=1.0, crossfit=False, score_fraction=0).fit((X, y), head, (Xv, yv), scores=sc)
    assert not s.summary()["crossfitted"]


# ------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tuning-cli")
    X, y = _data(300, 12, flip=0.2)
    Xv, yv = _data(120, 13)
    np.savez(d / "train.npz", X=X, y=y)
    np.savez(d / "valid.npz", X=Xv, y=yv)
    LogisticHead(l2=L2).fit(X, y).save(d / "head.npz")
    return d


@pytest.mark.parametrize("extra, flag", [
    (["--policy", "wang", "--alpha", "0"], "--alpha"),
    (["--policy", "wang", "--alpha", "-1"], "--alpha"),
    (["--policy", "influence", "--alpha", "0.5"], "--alpha"),
    (["--policy", "influence", "--sharpness-grid", ""], "--sharpness-grid"),
    (["--policy", "influence", "--sharpness-grid", "1,x"], "--sharpness-grid"),
    (["--policy", "influence", "--sharpness-grid", "1,-3"], "--sharpness-grid"),
])
def test_cli_bad_tuning_flags_exit_2_with_one_line(files, extra, flag, capsys):
    from clirun import run

    out = files / "never.parquet"
    code = run(["subsample", files / "train.npz", "--head", files / "head.npz", "--valid", files / "valid.npz",
                "--keep", "0.5", "--out", out, "--quiet", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and err.startswith("error: ") and flag in err
    assert "_" not in err.split(":", 1)[1] and not out.exists()


def test_cli_wang_and_split_memorize(files, capsys):
    import json

    from clirun import run

    js = files / "wang.json"
    assert run(["subsample", files / "train.npz", "--head", files / "head.npz", "--valid", files / "valid.npz",
                "--keep", "0.4", "--policy", "wang", "--alpha", "2", "--weighted", "--out", files / "w.parquet",
                "--json", js, "--quiet"]) == 0
    summ = json.loads(js.read_text())
    assert summ["policy"] == "wang" and summ["alpha"] == 2.0 and summ["budget"] == 120 and summ["crossfitted"]
    js = files / "paper.json"
    assert run(["subsample", files / "train.npz", "--head", files / "head.npz", "--valid", files / "valid.npz",
                "--keep", "0.4", "--policy", "paper", "--memorize-quantile", "0.9", "--no-split-memorize",
                "--no-crossfit", "--out", files / "p.parquet", "--json", js, "--quiet"]) == 0
    summ = json.loads(js.read_text())
    assert summ["split_memorize"] is False and "memorize_harmful_by_class" not in summ
    assert sum(summ["memorize_by_class"]) == 30  # the top 10 % of 300
    code = run(["subsample", files / "train.npz", "--head", files / "head.npz", "--keep", "0.4", "--policy",
                "paper", "--memorize-quantile", "0.9", "--out", files / "q.parquet", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--valid" in err and "--no-split-memorize" in err and "split_memorize" not in err


def test_sharpness_is_the_gentlest_within_one_standard_error_of_the_best():
    X, y = _data(500, 14, flip=0.3)
    Xv, yv = _data(300, 15)
    head = LogisticHead(l2=L2, tol=1e-12).fit(X, y)
    grid = [0.0, 1.0, 3.0, 10.0, 30.0, 100.0]
    s = Subsampler(0.4, policy="influence", sharpness_grid=grid, tune_draws=2, seed=1).fit((X, y), head, (Xv, yv))
    cands = s.candidates_["policy"]
    assert [c["sharpness"] for c in cands] == grid
    loss = np.array([c["valid_logloss"] for c in cands])
    best = int(np.argmin(loss))
    # equal halves: the mean of the paired per-row differences is the difference of the two figures
    assert s.summary()["valid_folds"] == [150, 150]
    for c, v in zip(cands, loss):
        assert c["valid_logloss_excess"] == pytest.approx(v - loss[best], abs=1e-10)
        assert c["valid_logloss_excess_se"] >= 0
    ok = [c["sharpness"] for c in cands if c["valid_logloss_excess"] <= c["valid_logloss_excess_se"]]
    assert s.sharpness_ == min(ok) and grid[best] in ok
    assert "standard error" in s.summary()["sharpness_rule"]
    assert s.sharpness_ > 0  # 30 % flipped labels: a random subset is clearly worse on VALID
