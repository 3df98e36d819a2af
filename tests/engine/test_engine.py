"""The pass engine: sums, maps and iterations equal explicit numpy; every analysis pass gives the same numbers
in-process and on Dask; an autodiff head runs on every path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import relu_embeddings

from winnow.analyses.influence import InfluenceAnalyzer, write_influence_parts
from winnow.analyses.memorization import memorization_scores
from winnow.analyses.theorems import check_theorems
from winnow.core.autodiff import AutodiffHead
from winnow.core.heads import LogisticHead, SoftmaxHead
from winnow.engine.columns import ColumnFunction
from winnow.engine.engine import Engine, tree_sum
from winnow.engine.passes import fit_curvature, load_rows, map_columns
from winnow.errors import ValidationError


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


class SquareSum:
    """Kernel: (Σ_i w_i x_i x_iᵀ, Σ_i w_i) over a chunk, in float64."""

    def __call__(self, chunk, weights=None):
        X = np.asarray(chunk.X, np.float64)
        w = np.ones(len(X)) if weights is None else weights
        return (X.T * w) @ X, float(w.sum())


class RowNorms:
    def __call__(self, chunk, weights=None):
        return {"norm": np.linalg.norm(chunk.X, axis=1), "id": chunk.ids}


@pytest.mark.parametrize("partition_rows", [7, 64, None])
def test_sum_map_iter_equal_explicit_numpy(partition_rows):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((203, 4)), rng.integers(0, 2, 203)
    eng = Engine(chunk_size=10, partition_rows=partition_rows)
    S, n = eng.sum((X, y), SquareSum())
    np.testing.assert_allclose(S, X.T @ X, rtol=1e-12)
    assert n == 203
    rows = np.sort(rng.choice(203, 50, replace=False))
    w = rng.uniform(0.5, 2, 50)
    S, tot = eng.sum((X, y), SquareSum(), rows=rows, weights=w)
    np.testing.assert_allclose(S, (X[rows].T * w) @ X[rows], rtol=1e-12)
    assert tot == pytest.approx(w.sum())
    cols = eng.map((X, y), RowNorms())
    np.testing.assert_allclose(cols["norm"], np.linalg.norm(X, axis=1))
    np.testing.assert_array_equal(cols["id"], np.arange(203))
    got = list(eng.iter((X, y), RowNorms(), rows=rows))
    assert all(len(c["norm"]) <= 10 for c in got)
    np.testing.assert_array_equal(np.concatenate([c["id"] for c in got]), rows)


def test_tree_sum_order_and_errors():
    assert tree_sum([1, 2, 3, 4, 5], add=lambda a, b: f"({a}+{b})") == "(((1+2)+(3+4))+5)"
    with pytest.raises(ValidationError, match="at least one"):
        tree_sum([])
    eng = Engine()
    X, y = np.ones((5, 2)), np.zeros(5, dtype=int)
    with pytest.raises(ValidationError, match="sorted, unique"):
        eng.sum((X, y), SquareSum(), rows=np.array([3, 1]))
    with pytest.raises(ValidationError, match="align"):
        eng.sum((X, y), SquareSum(), rows=np.array([1, 3]), weights=np.ones(3))
    with pytest.raises(ValidationError, match="chunk_size"):
        Engine(chunk_size=0)


def test_engine_checks_labels_against_the_kernels_head():
    X, y = relu_embeddings(50, d=3, seed=1)
    head = LogisticHead(l2=1e-2).fit(X, y)
    bad = y.copy()
    bad[7] = 2
    with pytest.raises(ValidationError, match=r"labels in \{0, 1\}"):
        fit_curvature(head, (X, bad))


# ------------------------------------------------------------------------------------------------- Dask
distributed = pytest.importorskip("distributed")


def mlp_head(d: int, seed: int = 0) -> AutodiffHead:
    torch.manual_seed(seed)
    module = torch.nn.Sequential(torch.nn.Linear(d, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
    return AutodiffHead(module, l2=1e-2)


def test_autodiff_head_on_every_path_local_and_dask(client, tmp_path):
    """The Hessian pass hands the labels to a nonlinear head on the partitioned/Dask path too."""
    X, y = relu_embeddings(300, d=5, seed=3)
    Xt, yt = relu_embeddings(40, d=5, seed=4)
    head = mlp_head(5).fit(X, y)
    local = fit_curvature(head, (X, y), damping=0.1, engine=Engine(partition_rows=70, chunk_size=32))
    dask = fit_curvature(head, (X, y), damping=0.1,
                         engine=Engine(scheduler=client, partition_rows=70, chunk_size=32))
    # independent: the autograd Hessian of the mean loss plus the penalty on the weights
    theta0 = head.theta_.clone().requires_grad_(True)

    def risk(th):
        return head.losses(torch.as_tensor(X), torch.as_tensor(y), th).mean() + head.regulariser(th)

    H = torch.autograd.functional.hessian(risk, theta0).numpy() + 0.1 * np.eye(head.n_params)
    assert rel_err(local.hessian.numpy(), H) < 1e-10
    assert rel_err(dask.hessian.numpy(), local.hessian.numpy()) < 1e-12
    a = InfluenceAnalyzer(head, damping=0.1).fit((X, y)).score((Xt, yt))
    res = write_influence_parts(head, (X, y), tmp_path / "parts", test=(Xt, yt), scheduler=client, damping=0.1,
                                partition_rows=70, chunk_size=32)
    b = pq.read_table(res.path)
    for c in ("influence", "self_influence"):
        assert rel_err(b[c].to_numpy(), a[c].to_numpy()) < 1e-10, c


def test_memorization_and_theorem_passes_equal_on_dask(client):
    X, y = relu_embeddings(400, d=6, seed=5)
    Xt, yt = relu_embeddings(60, d=6, seed=6)
    head = LogisticHead(l2=1e-2).fit(X, y)
    local_eng = Engine(partition_rows=90, chunk_size=40)
    dask_eng = Engine(scheduler=client, partition_rows=90, chunk_size=40)
    curv = fit_curvature(head, (X, y))
    a = memorization_scores(head, curv, (X, y), engine=local_eng)
    b = memorization_scores(head, curv, (X, y), engine=dask_eng)
    assert rel_err(b, a) < 1e-12
    kw = dict(pairs=500, seed=1, test_points=3, l2_grid=(1e-2, 1e-1), removal_fraction=0.1, sign_statistics=True)
    la = check_theorems(head, (X, y), (Xt, yt), engine=local_eng, **kw).summary()
    da = check_theorems(head, (X, y), (Xt, yt), engine=dask_eng, **kw).summary()

    def close(u, v, path=""):
        if isinstance(u, dict):
            assert u.keys() == v.keys(), path
            for k in u:
                close(u[k], v[k], f"{path}.{k}")
        elif isinstance(u, (list, tuple)):
            assert len(u) == len(v), path
            for i, (p, q) in enumerate(zip(u, v)):
                close(p, q, f"{path}[{i}]")
        elif isinstance(u, float) and np.isfinite(u):
            assert abs(u - v) <= 1e-10 * max(1.0, abs(u)), (path, u, v)
        else:
            assert u == v, (path, u, v)

    close(la, da)


def test_map_columns_and_load_rows_on_dask(client):
    X, y = relu_embeddings(150, d=3, k=3, seed=7)
    head = SoftmaxHead(l2=1e-2).fit(X, y)
    eng = Engine(scheduler=client, partition_rows=40, chunk_size=16)
    rows = np.array([3, 50, 51, 149])
    Xr, yr, ids = load_rows((X, y), rows, engine=eng)
    np.testing.assert_array_equal(Xr, X[rows])
    np.testing.assert_array_equal(ids, rows)

    def margin(h, Xc, yc):
        Z = h.logits(torch.as_tensor(Xc, dtype=torch.float64))
        return Z.max(1).values - Z.min(1).values

    got = map_columns(head, (X, y), margin, label="m", engine=eng)["m"]
    Z = X @ head.weight_.T + head.bias_
    np.testing.assert_allclose(got, Z.max(1) - Z.min(1), rtol=1e-12)
    col = ColumnFunction(margin, label="m")
    with pytest.raises(ValidationError, match="no head"):
        col.chunk(X[:2], y[:2])


def test_cli_influence_memorization_newton_on_two_workers_equals_in_process(tmp_path: Path):
    """`winnow influence ... --memorization --newton --workers 2` = the in-process run to 1e-10."""
    import pyarrow as pa

    from winnow.cli import main

    X, y = relu_embeddings(600, d=5, seed=8)
    Xt, yt = relu_embeddings(80, d=5, seed=9)
    head = LogisticHead(l2=1e-2).fit(X, y)
    head.save(tmp_path / "head.npz")
    for name, (A, b) in (("train", (X, y)), ("test", (Xt, yt))):
        feats = pa.FixedSizeListArray.from_arrays(pa.array(A.astype(np.float32).reshape(-1)), A.shape[1])
        pq.write_table(pa.table({"label": b, "features": feats}), tmp_path / f"{name}.parquet",
                       row_group_size=100)
    common = [str(tmp_path / "train.parquet"), "--head", str(tmp_path / "head.npz"), "--test",
              str(tmp_path / "test.parquet"), "--memorization", "--newton", "-q",
              "--precision", "float64"]  # float32 Parquet; in mixed precision the blocking shows at ~1e-7
    for argv in (["influence", *common, "--out", str(tmp_path / "one.parquet")],
                 ["influence", *common, "--out", str(tmp_path / "dask"), "--workers", "2",
                  "--partition-rows", "200"]):
        main(argv)  # returns on success; a failure exits with status 2
    a, b = pq.read_table(tmp_path / "one.parquet"), pq.read_table(tmp_path / "dask")
    assert set(a.column_names) == set(b.column_names)
    assert {"memorization", "memorize", "leverage", "loss_change_if_removed_newton"} <= set(a.column_names)
    np.testing.assert_array_equal(a["id"].to_numpy(), b["id"].to_numpy())
    for c in a.column_names:
        if c in ("id", "label", "memorize"):
            np.testing.assert_array_equal(a[c].to_numpy(), b[c].to_numpy())
        else:
            assert rel_err(b[c].to_numpy(), a[c].to_numpy()) < 1e-10, c


def test_autodiff_head_through_the_analyses():
    """A nonlinear head on the relative Hessian, memorization and Theorem 3 paths: each equals the same
    quantity computed from the autograd Hessian in the test."""
    from winnow.analyses.memorization import MemorizationAnalyzer
    from winnow.analyses.relative import RelativeHessian
    from winnow.analyses.theorems import theorem3

    X, y = relu_embeddings(200, d=4, seed=13)
    Xt, yt = relu_embeddings(20, d=4, seed=14)
    head = mlp_head(4, seed=1).fit(X, y)
    th = head.theta_.clone()
    damping = 0.1

    def risk_hessian(rows):
        def risk(t):
            return (head.losses(torch.as_tensor(X[rows]), torch.as_tensor(y[rows]), t).mean()
                    + head.regulariser(t))
        return torch.autograd.functional.hessian(risk, th).numpy() + damping * np.eye(head.n_params)

    rel = RelativeHessian(80, sampler="uniform", seed=2, damping=damping).fit(head, (X, y))
    assert rel_err(rel.curvature_.hessian.numpy(), risk_hessian(rel.sample_.rows)) < 1e-10
    H = risk_hessian(np.arange(len(y)))
    G = head.gradients(torch.as_tensor(X), torch.as_tensor(y)).numpy()
    ev, Q = np.linalg.eigh(H)
    expected = np.abs(G @ Q / ev).sum(1)  # ‖Λ⁻¹Qᵀg_p‖₁ (Definition 6)
    mem = MemorizationAnalyzer(quantile=0.5, damping=damping).fit(head, (X, y))
    assert rel_err(mem.scores_, expected) < 1e-8
    t3 = theorem3(head, mem.curvature_, (X, y), (Xt, yt), test_points=2, seed=0)
    assert all(r.n_positive + r.n_negative + r.n_zero == len(y) for r in t3)
