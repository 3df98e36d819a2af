"""Newton / leverage-corrected removal and group effects against dense autograd solves and actual retraining."""

import json

import numpy as np
import pytest
import reference as ref  # tests/reference.py: independent maths
import torch
from conftest import relu_embeddings

import winnow.analyses.fidelity as fid
import winnow.cli.fidelity  # noqa: F401  (registers the commands until cli/__init__ imports it)
from winnow.cli import main
from winnow.core.curvature import fit_curvature
from winnow.core.heads import LogisticHead, SoftmaxHead, as_tensor
from winnow.core.influence import InfluenceAnalyzer
from winnow.datasets import load_breast_cancer_embeddings, load_digits_embeddings
from winnow.errors import ValidationError
from winnow.evaluation.loo import leave_one_out, retrain_without


def _head(kind, l2=1e-2):
    return LogisticHead(l2=l2, tol=1e-11) if kind == "logistic" else SoftmaxHead(l2=l2, tol=1e-11)


def _data(kind, n=60, d=6, seed=3):
    return relu_embeddings(n, d=d, seed=seed, k=3 if kind == "softmax" else 2)  # "softmax2": two classes


def _kind(head):
    return ("logistic", 1) if isinstance(head, LogisticHead) else ("softmax", head.n_outputs)


def _dense(head, X, y):
    """Independent objects (tests/reference.py): H of R, per-example gradients."""
    kind, K = _kind(head)
    th = head.theta_.numpy()
    H = torch.as_tensor(ref.risk_hessian(kind, X, y, th, K, head.l2))
    G = torch.as_tensor(ref.per_example_grads(kind, X, y, th, K))
    return H, G


def _hess_i(head, X, y, i):
    kind, K = _kind(head)
    return torch.as_tensor(ref.loss_hessian_sum(kind, X[i:i + 1], y[i:i + 1], head.theta_.numpy(), K))


@pytest.mark.parametrize("kind", ["logistic", "softmax"])
def test_leverage_corrected_step_equals_explicit_leave_one_out_hessian_solve(kind):
    X, y = _data(kind)
    n = len(y)
    head = _head(kind).fit(X, y)
    H, G = _dense(head, X, y)
    curv = fit_curvature(head, (X, y))
    rows = np.arange(12)
    delta, lev = fid.newton_parameter_change_chunk(head, X[rows], y[rows], h_inv=curv.inverse(), n_train=n)
    Hpinv = torch.linalg.pinv(H, hermitian=True)
    for j, p in enumerate(rows):
        Hp = _hess_i(head, X, y, p)
        H_minus = H - Hp / n                       # H₋ₚ of the ε = −1/n objective
        ref = torch.linalg.pinv(H_minus, hermitian=True) @ G[p] / n
        torch.testing.assert_close(delta[j], ref, rtol=1e-8, atol=1e-12)
        ev = torch.linalg.eigvals(Hpinv @ Hp / n).real   # leverage: largest eigenvalue of H⁻¹∇²ℓ_p / n
        assert float(lev[j]) == pytest.approx(float(ev.max()), rel=1e-8, abs=1e-12)
        assert 0 <= float(lev[j]) < 1
    if kind == "logistic":  # the scalar form (1/n) s(1 − s) ũᵀH⁻¹ũ and H₋ₚ⁻¹g = H⁻¹g / (1 − h)
        s = head.predict_proba(X[rows])
        Xa = np.hstack([X[rows], np.ones((len(rows), 1))])
        h = s * (1 - s) * np.einsum("ip,pq,iq->i", Xa, Hpinv.numpy(), Xa) / n
        np.testing.assert_allclose(lev.numpy(), h, rtol=1e-8)
        first = (Hpinv @ G[rows].T).T / n
        torch.testing.assert_close(delta, first / (1 - torch.as_tensor(h))[:, None], rtol=1e-8, atol=1e-13)


@pytest.mark.parametrize("kind", ["logistic", "softmax", "softmax2"])
def test_newton_columns_match_dense_test_loss(kind, monkeypatch):
    X, y = _data(kind, n=80)
    Xtr, ytr, Xte, yte = X[:60], y[:60], X[60:], y[60:]
    n = len(ytr)
    head = _head(kind).fit(Xtr, ytr)
    H, G = _dense(head, Xtr, ytr)
    th = head.theta_.clone()
    Xte_t, yte_t = as_tensor(Xte), torch.as_tensor(yte)

    kind_, K = _kind(head)

    def test_loss(t):
        return ref.losses_torch(kind_, Xte_t, yte_t, t, K).mean()

    gbar = torch.autograd.functional.jacobian(test_loss, th)
    Ht = torch.autograd.functional.hessian(test_loss, th)
    curv = fit_curvature(head, (Xtr, ytr))
    ctx = fid.prepare_newton(head, curv, (Xte, yte), n_train=n, exact=True, chunk_size=7)
    monkeypatch.setattr(fid, "_BLOCK_ELEMENTS", 3 * head.n_params)   # force several internal blocks
    cols = fid.newton_columns_chunk(head, Xtr, ytr, ctx, leverage_corrected=True)
    Hpinv = torch.linalg.pinv(H, hermitian=True)
    first = (G @ Hpinv @ gbar / n).numpy()
    for p in range(0, n, 4):
        d = torch.linalg.pinv(H - _hess_i(head, Xtr, ytr, p) / n, hermitian=True) @ G[p] / n
        assert cols[fid.LEVERAGE_CORRECTED_COLUMN][p] == pytest.approx(float(gbar @ d), rel=1e-7, abs=1e-14)
        assert cols["loss_change_if_removed_newton"][p] == pytest.approx(float(gbar @ d + 0.5 * d @ Ht @ d),
                                                                         rel=1e-7, abs=1e-14)
        assert cols[fid.NEWTON_EXACT_COLUMN][p] == pytest.approx(float(test_loss(th + d) - test_loss(th)),
                                                                 rel=1e-7, abs=1e-14)
    if kind == "logistic":
        np.testing.assert_allclose(cols[fid.LEVERAGE_CORRECTED_COLUMN], first / (1 - cols["leverage"]), rtol=1e-8)
    # the first-order column of the analyzer is what the leverage correction rescales
    an = InfluenceAnalyzer(head).fit((Xtr, ytr))
    np.testing.assert_allclose(an.score((Xte, yte))["loss_change_if_removed"].to_numpy(), first, rtol=1e-8,
                               atol=1e-14)
    ctx2 = fid.prepare_newton(head, curv, (Xte, yte), n_train=n)
    assert set(fid.newton_columns_chunk(head, Xtr[:5], ytr[:5], ctx2)) == set(fid.NEWTON_COLUMNS)


@pytest.mark.parametrize("kind,renormalize", [("logistic", False), ("softmax", False), ("logistic", True)])
def test_group_newton_is_the_second_order_model_of_the_retrain_objective(kind, renormalize):
    """Δ_S minimises the second-order Taylor expansion at θ̂ of the explicitly written reduced objective."""
    X, y = _data(kind, n=50)
    Xtr, ytr, Xte, yte = X[:40], y[:40], X[40:], y[40:]
    n = len(ytr)
    head = _head(kind).fit(Xtr, ytr)
    S = np.array([1, 4, 9, 16, 25, 33])
    keep = np.setdiff1d(np.arange(n), S)
    Xk, yk = as_tensor(Xtr[keep]), torch.as_tensor(ytr[keep])
    norm = len(keep) if renormalize else n

    kind, K = _kind(head)

    def reduced(t):
        return ref.risk_torch(kind, Xk, yk, t, K, head.l2, normalizer=norm)

    th = head.theta_.clone()
    g = torch.autograd.functional.jacobian(reduced, th)
    Hr = torch.autograd.functional.hessian(reduced, th)
    want = -torch.linalg.pinv(Hr, hermitian=True) @ g
    curv = fit_curvature(head, (Xtr, ytr))
    ctx = fid.prepare_newton(head, curv, (Xte, yte), n_train=n, exact=True)
    pred, d_first, d_newton = fid.predict_group_removal(head, curv, ctx, Xtr[S], ytr[S], renormalize=renormalize)
    torch.testing.assert_close(d_newton, want, rtol=1e-8, atol=1e-12)
    H = torch.as_tensor(ref.risk_hessian(kind, Xtr, ytr, th.numpy(), K, head.l2))
    # first order: −H⁻¹ times the gradient of the reduced objective written with normaliser n
    torch.testing.assert_close(d_first, -torch.linalg.pinv(H, hermitian=True) @ g * (norm / n), rtol=1e-8,
                               atol=1e-12)
    # Newton: closer to the actual retrain than first order, in θ and in the test loss
    base = fid.refit_tight(head, Xtr, ytr, 1e-11)
    actual_theta = retrain_without(base, Xtr, ytr, S, renormalize=renormalize).theta_ - base.theta_
    assert float((d_newton - actual_theta).norm()) < 0.5 * float((d_first - actual_theta).norm())
    pred.actual = fid.retrain_loss_change(base, Xtr, ytr, S, ctx, renormalize=renormalize)
    assert abs(pred.newton_exact - pred.actual) < 0.5 * abs(pred.first_order - pred.actual)


def test_group_newton_error_is_second_order_in_the_group_weight():
    """Group fixed, rest replicated r times: the group's share ε ~ 1/r and both errors in θ fall like ε²."""
    X0, y0 = relu_embeddings(30, d=5, seed=11)
    G, yG = relu_embeddings(4, d=5, seed=12)
    errs = {"first": [], "newton": []}
    for r in (2, 4, 8):
        X, y = np.vstack([np.tile(X0, (r, 1)), G]), np.concatenate([np.tile(y0, r), yG])
        S = np.arange(len(y) - 4, len(y))
        head = LogisticHead(l2=1e-2, tol=1e-12).fit(X, y)
        curv = fit_curvature(head, (X, y))
        ctx = fid.prepare_newton(head, curv, (X0, y0), n_train=len(y))
        _, d1, dn = fid.predict_group_removal(head, curv, ctx, X[S], y[S])
        act = retrain_without(head, X, y, S).theta_ - head.theta_
        errs["first"].append(float((d1 - act).norm()))
        errs["newton"].append(float((dn - act).norm()))
    for k in errs:
        ratios = np.array(errs[k][1:]) / np.array(errs[k][:-1])
        assert np.all((ratios > 0.15) & (ratios < 0.4)), (k, ratios)   # ε halves -> error / 4
    assert np.all(np.array(errs["newton"]) < np.array(errs["first"]))


def test_group_effect_single_point_and_first_order_sum(binary_data):
    X, y = binary_data
    Xtr, ytr, Xte, yte = X[:200], y[:200], X[200:260], y[200:260]
    ids = np.arange(1000, 1200)
    head = LogisticHead(l2=1e-2).fit(Xtr, ytr)
    one = fid.group_effect(head, (Xtr, ytr, ids), (Xte, yte), [1007])
    loo = leave_one_out(head, (Xtr, ytr, ids), (Xte, yte), points=np.array([7, 8]))
    assert one.actual == pytest.approx(loo.actual[0], rel=1e-6)
    assert one.first_order == pytest.approx(loo.predicted[0], rel=1e-8)
    S = [1003, 1050, 1100, 1199, 1010]
    g = fid.group_effect(head, (Xtr, ytr, ids), (Xte, yte), S, retrain=False)
    base = fid.refit_tight(head, Xtr, ytr, 1e-11)
    scores = InfluenceAnalyzer(base).fit((Xtr, ytr, ids)).score((Xte, yte))
    lc = dict(zip(scores["id"].to_numpy(), scores["loss_change_if_removed"].to_numpy()))
    assert g.first_order == pytest.approx(sum(lc[i] for i in S), rel=1e-9)
    assert np.isnan(g.actual)


def test_group_renormalize_retrain_is_a_plain_fit_on_the_kept_rows(binary_data):
    X, y = binary_data
    Xtr, ytr = X[:150], y[:150]
    head = LogisticHead(l2=1e-2, tol=1e-11).fit(Xtr, ytr)
    rows = np.arange(0, 150, 3)
    keep = np.setdiff1d(np.arange(150), rows)
    got = retrain_without(head, Xtr, ytr, rows, renormalize=True)
    ref = LogisticHead(l2=1e-2, tol=1e-11).fit(Xtr[keep], ytr[keep])
    torch.testing.assert_close(got.theta_, ref.theta_, rtol=1e-7, atol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["digits", "breast-cancer"])
def test_newton_predictions_match_actual_leave_one_out(case):
    d = load_digits_embeddings(binary=True) if case == "digits" else load_breast_cancer_embeddings()
    head = LogisticHead(l2=1e-3).fit(d.X_train, d.y_train)
    res = fid.compare_removal_methods(head, (d.X_train, d.y_train), (d.X_test, d.y_test), points=40, seed=2)
    assert res.pearson["newton"] >= 0.995, res.pearson
    assert res.pearson["newton_exact"] >= 0.995, res.pearson
    # the Newton step removes most of the first-order error (1 − Pearson shrinks at least tenfold)
    assert 1 - res.pearson["newton_exact"] < 0.1 * (1 - res.pearson["first_order"]), res.pearson
    assert len(res.table()) == 4


def test_group_divergence_rows(binary_data):
    X, y = binary_data
    head = LogisticHead(l2=1e-2).fit(X[:200], y[:200])
    res = fid.group_divergence(head, (X[:200], y[:200]), (X[200:260], y[200:260]), fractions=(0.05, 0.5),
                               random_groups=2)
    assert len(res.groups) == 2 * (2 + 2)
    assert {g.kind for g in res.groups} == {"random", "most harmful", "most helpful"}
    harmful = [g for g in res.groups if g.kind == "most harmful"]
    assert all(g.actual < 0 for g in harmful)   # removing the most harmful points lowers the test loss
    assert len(res.summary_rows()) == 2 * 3
    with pytest.raises(ValidationError, match="fractions"):
        fid.group_divergence(head, (X[:200], y[:200]), (X[200:260], y[200:260]), fractions=(0.0,))


def test_subset_ids_bad_inputs(tmp_path):
    ids = np.array([5, 7, 9, 11])
    np.testing.assert_array_equal(fid.rows_for_ids(ids, [11, 5]), [0, 3])
    with pytest.raises(ValidationError, match="not training ids.*13"):
        fid.rows_for_ids(ids, [5, 13])
    with pytest.raises(ValidationError, match="more than once"):
        fid.rows_for_ids(ids, [5, 5])
    with pytest.raises(ValidationError, match="empty"):
        fid.rows_for_ids(ids, [])
    with pytest.raises(ValidationError, match="integer"):
        fid.rows_for_ids(ids, [5.5])
    with pytest.raises(ValidationError, match="not unique"):
        fid.rows_for_ids(np.array([1, 1, 2]), [2])
    np.save(tmp_path / "s.npy", np.array([7, 9]))
    (tmp_path / "a.csv").write_text("id,x\n7,0\n9,1\n")
    (tmp_path / "b.csv").write_text("7\n9\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": [7, 9]}), tmp_path / "s.parquet")
    for name in ("s.npy", "a.csv", "b.csv", "s.parquet"):
        np.testing.assert_array_equal(fid.read_subset_ids(tmp_path / name), [7, 9])
    with pytest.raises(ValidationError, match="no column"):
        fid.read_subset_ids(tmp_path / "s.parquet", column="row")
    with pytest.raises(ValidationError, match="does not exist"):
        fid.read_subset_ids(tmp_path / "missing.npy")


def test_group_removing_everything_is_refused(binary_data):
    X, y = binary_data
    head = LogisticHead(l2=1e-2).fit(X[:30], y[:30])
    with pytest.raises(ValidationError, match="nothing to train on"):
        fid.group_effect(head, (X[:30], y[:30]), (X[30:40], y[30:40]), np.arange(30), retrain=False)


def _write_npz(path, X, y, ids=None):
    kw = {} if ids is None else {"id": ids}
    np.savez(path, X=X, y=y, **kw)
    return path


def test_cli_validate_group(tmp_path, binary_data, capsys):
    X, y = binary_data
    tr = _write_npz(tmp_path / "train.npz", X[:150], y[:150])
    te = _write_npz(tmp_path / "test.npz", X[150:200], y[150:200])
    LogisticHead(l2=1e-2).fit(X[:150], y[:150]).save(tmp_path / "head.npz")
    np.save(tmp_path / "sub.npy", np.array([2, 3, 40]))
    args = ["validate-group", str(tr), "--head", str(tmp_path / "head.npz"), "--test", str(te), "--quiet"]
    main(args + ["--subset", str(tmp_path / "sub.npy"), "--json", str(tmp_path / "g.json")])
    out = json.loads((tmp_path / "g.json").read_text())
    assert out["size"] == 3 and np.isfinite(out["actual"]) and np.isfinite(out["newton_exact"])
    assert "Newton" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:   # refuses the existing output
        main(args + ["--subset", str(tmp_path / "sub.npy"), "--json", str(tmp_path / "g.json")])
    assert e.value.code == 2
    np.save(tmp_path / "bad.npy", np.array([2, 999]))
    with pytest.raises(SystemExit) as e:
        main(args + ["--subset", str(tmp_path / "bad.npy")])
    assert e.value.code == 2
    assert "999" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    main(args + ["--sweep", "--fractions", "0.1", "--random-groups", "1", "--report", str(tmp_path / "r.html")])
    assert "Group removal" in (tmp_path / "r.html").read_text()


def test_influence_newton_columns_end_to_end(tmp_path, binary_data):
    """`winnow influence --newton-exact` (once wired into influence.py/cli/core.py) writes the chunk columns."""

    import pyarrow.parquet as pq

    X, y = binary_data
    tr = _write_npz(tmp_path / "train.npz", X[:150], y[:150])
    te = _write_npz(tmp_path / "test.npz", X[150:200], y[150:200])
    head = LogisticHead(l2=1e-2).fit(X[:150], y[:150])
    head.save(tmp_path / "head.npz")
    main(["influence", str(tr), "--head", str(tmp_path / "head.npz"), "--test", str(te), "--out",
          str(tmp_path / "s.parquet"), "--newton-exact", "--chunk-size", "40", "--quiet"])
    t = pq.read_table(tmp_path / "s.parquet")
    curv = fit_curvature(head, (X[:150], y[:150]))
    ctx = fid.prepare_newton(head, curv, (X[150:200], y[150:200]), n_train=150, exact=True)
    ref = fid.newton_columns_chunk(head, X[:150], y[:150], ctx)
    for c in (*fid.NEWTON_COLUMNS, fid.NEWTON_EXACT_COLUMN):
        np.testing.assert_allclose(t[c].to_numpy(), ref[c], rtol=1e-6, atol=1e-15)
    assert b"winnow.leverage" in t.schema.metadata
    tbl = InfluenceAnalyzer(head).fit((X[:150], y[:150])).score((X[150:200], y[150:200]),
                                                                   extra=[fid.NewtonColumns()])
    np.testing.assert_allclose(tbl["loss_change_if_removed_newton"].to_numpy(), ref["loss_change_if_removed_newton"],
                               rtol=1e-8, atol=1e-15)


def test_removal_methods_table_rows():
    """Table rows: [label, Pearson, Spearman, max |predicted − actual| / max |actual|] (NaN predictions skipped)."""
    actual = np.array([0.5, -2.0, 1.0])
    predicted = {m: actual + np.array([0.1, -0.3, 0.0]) * (i + 1) for i, m in enumerate(fid.METHODS)}
    predicted["newton_exact"][2] = np.nan
    res = fid.RemovalMethodsResult(ids=np.arange(3), actual=actual, predicted=predicted, leverage=np.zeros(3),
                                   pearson={m: 0.9 for m in fid.METHODS}, spearman={m: 0.8 for m in fid.METHODS},
                                   n_train=10, tol=1e-9)
    rows = res.table()
    assert [r[0] for r in rows] == [fid.METHOD_LABELS[m] for m in fid.METHODS]
    assert [r[3] for r in rows] == pytest.approx([0.3 * (i + 1) / 2.0 for i in range(4)], rel=1e-12)
    assert rows[0][1:3] == [0.9, 0.8]
