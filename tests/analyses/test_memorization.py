"""Memorization scores (paper Definition 6) against an independent dense route: autograd Hessian and
per-example gradients, numpy eigendecomposition."""

import numpy as np
import pytest
import torch
from conftest import relu_embeddings

from winnow.analyses import memorization as mem
from winnow.core.curvature import fit_curvature
from winnow.core.heads import LogisticHead, SoftmaxHead
from winnow.errors import ValidationError
from winnow.report import Report


def dense_route(X, y, theta, l2, K):
    """(H (P, P), per-example gradients G (n, P)) by autograd on the plain loss formulas (K = 1: sigmoid)."""
    X = torch.as_tensor(X, dtype=torch.float64)
    y = torch.as_tensor(y)
    if K > 1:  # vmap cannot index by a batched label: use one-hot rows
        y = torch.nn.functional.one_hot(y, K).to(torch.float64)
    D = X.shape[1]
    k_out = 1 if K == 1 else K

    def loss_one(th, x, yy):
        Th = th.reshape(k_out, D + 1)
        z = Th[:, :-1] @ x + Th[:, -1]
        if K == 1:
            return torch.nn.functional.softplus(z[0]) - yy.to(torch.float64) * z[0]
        return torch.logsumexp(z, 0) - (z * yy).sum()

    def risk(th):
        Th = th.reshape(k_out, D + 1)
        per = torch.func.vmap(loss_one, in_dims=(None, 0, 0))(th, X, y)
        return per.mean() + 0.5 * l2 * (Th[:, :-1] ** 2).sum()

    th = torch.as_tensor(theta, dtype=torch.float64).clone()
    H = torch.autograd.functional.hessian(risk, th).numpy()
    G = torch.func.vmap(torch.func.grad(loss_one), in_dims=(None, 0, 0))(th, X, y).numpy()
    return H, G


def dense_scores(H, G, drop_null=False):
    ev, Q = np.linalg.eigh(H)
    if drop_null:  # softmax: the common bias shift has eigenvalue 0 and every gradient is orthogonal to it
        keep = ev > 1e-9 * ev.max()
        ev, Q = ev[keep], Q[:, keep]
    chi = G @ Q
    return (np.abs(chi) / ev).sum(1), ev, Q


@pytest.fixture
def logistic_setup():
    X, y = relu_embeddings(150, d_in=6, d=5, seed=3)
    head = LogisticHead(l2=1e-2, tol=1e-11).fit(X, y)
    return X, y, head


def test_scores_equal_dense_eigenbasis_l1_norm(logistic_setup):
    X, y, head = logistic_setup
    curv = fit_curvature(head, (X, y))
    got = mem.memorization_scores(head, curv, (X, y), chunk_size=17)  # several chunks, a ragged last one
    H, G = dense_route(X, y, head.theta_.numpy(), head.l2, 1)
    want, ev, Q = dense_scores(H, G)
    np.testing.assert_allclose(got, want, rtol=1e-8)
    # the same number as ‖H⁻¹g_p‖₁ written in H's eigenbasis (Definition 6), via an explicit solve
    v = np.linalg.solve(H, G.T).T @ Q
    np.testing.assert_allclose(got, np.abs(v).sum(1), rtol=1e-7)
    # it is not the plain L1 norm in parameter coordinates (the basis matters)
    assert not np.allclose(got, np.abs(np.linalg.solve(H, G.T)).sum(0), rtol=1e-3)


def test_softmax_scores_drop_the_null_direction():
    X, y = relu_embeddings(160, d_in=6, d=4, seed=5, k=3)
    head = SoftmaxHead(l2=1e-2, tol=1e-11).fit(X, y)
    curv = fit_curvature(head, (X, y))
    got = mem.memorization_scores(head, curv, (X, y), chunk_size=50)
    H, G = dense_route(X, y, head.theta_.numpy(), head.l2, 3)
    want, ev, _ = dense_scores(H, G, drop_null=True)
    assert ev.size == head.n_params - 1
    np.testing.assert_allclose(got, want, rtol=1e-7)


def test_chunk_function_is_pure_and_columns(logistic_setup):
    X, y, head = logistic_setup
    Q, inv = mem.eigenbasis(fit_curvature(head, (X, y)))
    a = mem.memorization_chunk(head, X[:40], y[:40], Q.numpy(), inv.numpy())
    b = mem.memorization_chunk(head, X[:40], y[:40], Q, inv)
    np.testing.assert_array_equal(a, b)
    D = float(np.median(a))
    cols = mem.memorization_columns(head, X[:40], y[:40], Q, inv, D)
    assert set(cols) == set(mem.MEMORIZATION_COLUMNS)
    np.testing.assert_array_equal(cols["memorize"], a > D)
    assert cols["memorize"].dtype == bool and cols["memorization"].dtype == np.float64


def test_threshold_and_verdicts(logistic_setup):
    X, y, head = logistic_setup
    an = mem.MemorizationAnalyzer(quantile=0.8).fit(head, (X, y))
    assert an.threshold_ == pytest.approx(np.quantile(an.scores_, 0.8))
    assert abs(an.memorize_.mean() - 0.2) < 0.02
    np.testing.assert_array_equal(an.memorize_, an.scores_ > an.threshold_)
    cols = list(an.iter_columns(chunk_size=33))
    np.testing.assert_allclose(np.concatenate([c["memorization"] for c in cols]), an.scores_, rtol=1e-12)
    np.testing.assert_array_equal(np.concatenate([c["memorize"] for c in cols]), an.memorize_)
    res = an.result()
    counts = res.counts_by_label()
    assert sum(c["memorize"] for c in counts) == int(an.memorize_.sum())
    assert sum(c["n"] for c in counts) == len(y)
    # a given D; D = 0 makes every point with a nonzero gradient memorizable
    an0 = mem.MemorizationAnalyzer(threshold=0.0).fit(head, (X, y), curvature=an.curvature_)
    assert an0.memorize_.all() and an0.result().quantile is None
    D = float(an.scores_.max())
    assert not mem.memorize_verdicts(an.scores_, D).any()  # strict >: the largest score is not > itself


@pytest.mark.parametrize("bad", [-1e-9, -3.0, float("nan"), float("inf"), "x"])
def test_bad_thresholds(bad, logistic_setup):
    X, y, head = logistic_setup
    with pytest.raises(ValidationError, match="threshold"):
        mem.check_threshold(bad)
    with pytest.raises(ValidationError):
        mem.MemorizationAnalyzer(threshold=bad)


def test_bad_quantiles_and_arguments(logistic_setup):
    X, y, head = logistic_setup
    s = np.arange(10.0)
    for q in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValidationError, match="quantile"):
            mem.choose_threshold(s, q)
    with pytest.raises(ValidationError, match="empty"):
        mem.choose_threshold(np.zeros(0), 0.5)
    with pytest.raises(ValidationError, match="not both"):
        mem.MemorizationAnalyzer(threshold=1.0, quantile=0.5)
    curv = fit_curvature(head, (X, y))
    with pytest.raises(ValidationError, match="exactly one"):
        mem.resolve_threshold(head, curv, (X, y))
    with pytest.raises(ValidationError, match="threshold"):
        mem.resolve_threshold(head, curv, (X, y), threshold=-1.0)
    D = mem.resolve_threshold(head, curv, (X, y), quantile=0.5)
    assert D == pytest.approx(np.median(mem.memorization_scores(head, curv, (X, y))))
    with pytest.raises(ValidationError, match="features"):
        mem.memorization_scores(head, curv, (X[:, :3], y))


def test_sign_statistics_against_dense_pairwise(logistic_setup, monkeypatch):
    X, y, head = logistic_setup
    Xt, yt = relu_embeddings(70, d_in=6, d=5, seed=4)
    monkeypatch.setattr(mem, "_PAIR_BLOCK", 256)  # force several test blocks per chunk
    curv = fit_curvature(head, (X, y))
    st = mem.sign_statistics(head, curv, (X, y), (Xt, yt), chunk_size=32)
    H, G = dense_route(X, y, head.theta_.numpy(), head.l2, 1)
    _, Gt = dense_route(Xt, yt, head.theta_.numpy(), head.l2, 1)
    I = -(Gt @ np.linalg.solve(H, G.T))  # (T, n)
    np.testing.assert_allclose(st["helps_fraction"], (I < 0).mean(0))
    np.testing.assert_allclose(st["hurts_fraction"], (I > 0).mean(0))
    assert 0 < st["helps_fraction"].mean() < 1


def test_report_section(logistic_setup, tmp_path):
    X, y, head = logistic_setup
    Xt, yt = relu_embeddings(40, d_in=6, d=5, seed=4)
    res = mem.MemorizationAnalyzer(quantile=0.9).fit(head, (X, y)).result(test=(Xt, yt))
    rep = mem.report_section(Report("t"), res)
    path = rep.write(tmp_path / "r.html")
    text = path.read_text()
    assert "Memorization" in text and "Sign statistics" in text and "data:image/png;base64" in text
    s = res.summary()
    assert s["memorize"] + s["generalize"] == len(y) and s["mean_helps_fraction"] is not None


def test_influence_scores_gain_memorization_columns(logistic_setup, tmp_path):
    """Runs once influence.py has the ``memorize_threshold`` option (see docs/memorization.md)."""

    import pyarrow.parquet as pq

    from winnow.analyses.memorization import MemorizationColumns
    from winnow.core.influence import InfluenceAnalyzer

    X, y, head = logistic_setup
    Xt, yt = relu_embeddings(40, d_in=6, d=5, seed=4)
    an = InfluenceAnalyzer(head, chunk_size=64).fit((X, y))
    cols = MemorizationColumns(quantile=0.75)
    H, G = dense_route(X, y, head.theta_.numpy(), head.l2, 1)
    want, _, _ = dense_scores(H, G)
    path = an.write_scores((Xt, yt), tmp_path / "s.parquet", extra=[cols])
    D = cols.threshold_
    assert D == pytest.approx(np.quantile(want, 0.75), rel=1e-8)
    t = pq.read_table(path)
    np.testing.assert_allclose(t.column("memorization").to_numpy(), want, rtol=1e-8)
    np.testing.assert_array_equal(t.column("memorize").to_numpy(), t.column("memorization").to_numpy() > D)
    assert float(t.schema.metadata[b"winnow.memorize_threshold"]) == D
    with pytest.raises(ValidationError, match="threshold"):
        an.score((Xt, yt), extra=[MemorizationColumns(threshold=-1.0)])


def test_write_points_round_trip_with_metadata(logistic_setup, tmp_path):
    """One row per training point with the verdicts and sign fractions, read back with pyarrow; the threshold
    and the sign convention of the fractions travel in the file's metadata."""
    import pyarrow.parquet as pq

    X, y, head = logistic_setup
    Xt, yt = relu_embeddings(40, d_in=6, d=5, seed=4)
    res = mem.MemorizationAnalyzer(threshold=30.0).fit(head, (X, y)).result(test=(Xt, yt))
    path = mem.write_points(res, tmp_path / "points.parquet")
    table = pq.read_table(path)
    assert table.column_names == ["id", "label", "memorization", "memorize", "helps_fraction", "hurts_fraction"]
    np.testing.assert_array_equal(table["memorization"].to_numpy(), res.scores)
    np.testing.assert_array_equal(table["memorize"].to_numpy(), res.scores > 30.0)
    np.testing.assert_array_equal(table["hurts_fraction"].to_numpy(), res.hurts_fraction)
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    assert float(meta["winnow.memorize_threshold"]) == 30.0
    assert "< 0" in meta["winnow.helps_fraction"] and "> 0" in meta["winnow.hurts_fraction"]
