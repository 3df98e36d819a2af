"""The Dask backend (winnow.engine.backends): same numbers as the local loop and as an explicit computation, worker
deaths, an unreachable scheduler, bad input parts."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

distributed = pytest.importorskip("distributed")
import dask  # noqa: E402  (after distributed: its config must be loaded before dask.config.set)
from conftest import relu_embeddings  # noqa: E402

from winnow.core.curvature import fit_curvature  # noqa: E402
from winnow.core.heads import LogisticHead, SoftmaxHead  # noqa: E402
from winnow.core.influence import InfluenceAnalyzer  # noqa: E402
from winnow.engine.backends import (  # noqa: E402
    ClusterError,
    ColumnFunction,
    DaskBackend,
    LocalBackend,
    fit_curvature_partitioned,
    make_backend,
    partitioned_hessian,
    write_influence_parts,
)
from winnow.errors import ValidationError  # noqa: E402


def write_parquet_dir(path: Path, X: np.ndarray, y: np.ndarray, sizes: list[int], row_group: int) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    start = 0
    for i, m in enumerate(sizes):
        s = slice(start, start + m)
        feats = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(X[s], np.float32).reshape(-1)),
                                                  X.shape[1])
        pq.write_table(pa.table({"label": y[s], "features": feats}), path / f"f{i:02d}.parquet",
                       row_group_size=row_group)
        start += m
    return path


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def explicit_influence(head: LogisticHead, X, y, Xt, yt):
    """numpy: H = (1/n)Σ s(1-s)x̃x̃ᵀ + λ·mask, influence = -gᵀH⁻¹ḡ_t, self-influence gᵀH⁻¹g."""
    theta = np.concatenate([head.weight_[0], head.bias_])
    Xa = np.hstack([np.asarray(X, np.float64), np.ones((len(X), 1))])
    s = 1 / (1 + np.exp(-Xa @ theta))
    H = (Xa.T * (s * (1 - s))) @ Xa / len(X) + head.l2 * np.diag(np.r_[np.ones(X.shape[1]), 0.0])
    G = (s - y)[:, None] * Xa
    Xta = np.hstack([np.asarray(Xt, np.float64), np.ones((len(Xt), 1))])
    gbar = ((1 / (1 + np.exp(-Xta @ theta)) - yt)[:, None] * Xta).mean(0)
    return {"influence": -G @ np.linalg.solve(H, gbar),
            "self_influence": np.einsum("ip,pi->i", G, np.linalg.solve(H, G.T))}


@pytest.fixture
def setup(tmp_path):
    X, y = relu_embeddings(1500, d_in=5, d=6, seed=0)
    X = X.astype(np.float32)
    Xt, yt = relu_embeddings(120, d_in=5, d=6, seed=4)
    train = write_parquet_dir(tmp_path / "train", X, y, [600, 400, 500], row_group=100)
    # float32 features, compared with float64 references to 1e-10: the float64 path, not "auto"'s mixed one
    head = LogisticHead(l2=1e-2, precision="float64").fit(X.astype(np.float64), y)
    return tmp_path, X, y, Xt, yt, train, head


# ------------------------------------------------------------------------------------------ same numbers
def test_dask_equals_local_and_explicit(setup, client):
    tmp, X, y, Xt, yt, train, head = setup
    kw = dict(test=(Xt, yt), chunk_size=64, partition_rows=200)
    loc = write_influence_parts(head, train, tmp / "local", **kw)
    dsk = write_influence_parts(head, train, tmp / "dask", scheduler=client, **kw)
    assert dsk.n_parts == loc.n_parts == 8 and dsk.written == 8
    a, b = pq.read_table(tmp / "local"), pq.read_table(tmp / "dask")
    assert a.column_names == b.column_names
    np.testing.assert_array_equal(a["id"].to_numpy(), b["id"].to_numpy())
    ref = explicit_influence(head, X, y, Xt, yt)
    for c in ("influence", "loss_change_if_removed", "self_influence"):
        assert rel_err(b[c].to_numpy(), a[c].to_numpy()) < 1e-10, c
    for c in ("influence", "self_influence"):
        assert rel_err(b[c].to_numpy(), ref[c]) < 1e-10, c
    # the partial Hessians are tree-reduced in the same order: the same sum as the local loop
    S_loc, n_loc = partitioned_hessian(head, train, chunk_size=64, partition_rows=200)
    S_dsk, n_dsk = partitioned_hessian(head, train, chunk_size=64, partition_rows=200,
                                       backend=DaskBackend(scheduler=client))
    assert n_loc == n_dsk == len(y) and rel_err(S_dsk, S_loc) < 1e-13


def test_dask_softmax_sampled_hessian_and_plugin_columns(tmp_path, client):
    """Relative influence's sampled Hessian (rows + weights, eq. 52) and extra column functions on Dask."""
    X, y = relu_embeddings(700, seed=2, k=3, d=5)
    Xt, yt = relu_embeddings(60, seed=3, k=3, d=5)
    head = SoftmaxHead(l2=1e-2).fit(X, y)
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(len(y), 250, replace=False))
    w = rng.uniform(0.5, 2.0, rows.size)

    def loss_chunk(h, Xc, yc):
        return {"loss": h.losses(torch.as_tensor(Xc, dtype=torch.float64), torch.as_tensor(yc))}

    kw = dict(test=(Xt, yt), hessian_rows=rows, hessian_weights=w, normalizer=250.0, chunk_size=50,
              partition_rows=128, columns=[ColumnFunction(loss_chunk, label="loss")])
    write_influence_parts(head, (X, y), tmp_path / "local", **kw)
    write_influence_parts(head, (X, y), tmp_path / "dask", scheduler=client, **kw)
    a, b = pq.read_table(tmp_path / "local"), pq.read_table(tmp_path / "dask")
    assert b.column_names == ["id", "label", "influence", "loss_change_if_removed", "self_influence", "loss"]
    for c in b.column_names[2:]:
        assert rel_err(b[c].to_numpy(), a[c].to_numpy()) < 1e-10, c
    # and the analyzer of the foundation on the same sampled curvature
    curv = fit_curvature(head, (X, y), rows=rows, row_weights=w, normalizer=250.0)
    ref = InfluenceAnalyzer(head).fit((X, y), curvature=curv).score((Xt, yt))
    for c in ("influence", "self_influence"):
        assert rel_err(b[c].to_numpy(), ref[c].to_numpy()) < 1e-10, c
    dcurv = fit_curvature_partitioned(head, (X, y), rows=rows, row_weights=w, normalizer=250.0,
                                      scheduler=client, partition_rows=100)
    assert rel_err(dcurv.hessian.numpy(), curv.hessian.numpy()) < 1e-12


def test_dask_memorization_equals_local(setup, client):
    pytest.importorskip("winnow.analyses.memorization")
    tmp, X, y, Xt, yt, train, head = setup
    write_influence_parts(head, train, tmp / "m", memorization=True, scheduler=client, partition_rows=300)
    got = pq.read_table(tmp / "m")
    assert got.column_names == ["id", "label", "self_influence", "memorization"]
    # explicit: ‖Λ⁻¹Qᵀg‖₁ from numpy's eigendecomposition of the dense Hessian
    theta = np.concatenate([head.weight_[0], head.bias_])
    Xa = np.hstack([X.astype(np.float64), np.ones((len(X), 1))])
    s = 1 / (1 + np.exp(-Xa @ theta))
    H = (Xa.T * (s * (1 - s))) @ Xa / len(X) + head.l2 * np.diag(np.r_[np.ones(X.shape[1]), 0.0])
    lam, Q = np.linalg.eigh(H)
    ref = np.abs(((s - y)[:, None] * Xa) @ Q) @ (1 / lam)
    assert rel_err(got["memorization"].to_numpy(), ref) < 1e-10


# ---------------------------------------------------------------------------------------------- failures
def test_unreachable_scheduler_fails_after_timeout(setup):
    tmp, X, y, Xt, yt, train, head = setup
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(ClusterError, match=rf"127\.0\.0\.1:{port}.*within 2 s"):
        write_influence_parts(head, train, tmp / "o", test=(Xt, yt), scheduler=f"tcp://127.0.0.1:{port}",
                              timeout=2)
    assert time.monotonic() - t0 < 30
    assert not (tmp / "o").exists()
    with pytest.raises(ValidationError, match="not both"):
        make_backend(workers=2, scheduler="tcp://x:1")
    assert isinstance(make_backend(), LocalBackend)


def test_dask_corrupt_part_fails_alone(setup, client):
    tmp, X, y, Xt, yt, train, head = setup
    curv = fit_curvature(head, (X, y))
    bad = train / "f01.parquet"
    col = pq.read_metadata(bad).row_group(2).column(1)
    b = bytearray(bad.read_bytes())
    for i in range(col.data_page_offset + 8, col.data_page_offset + col.total_compressed_size - 8):
        b[i] = (b[i] * 7 + 13) % 256
    bad.write_bytes(bytes(b))
    out = tmp / "o"
    with pytest.raises(ValidationError, match=r"f01\.parquet.*1 of 3 parts were not written"):
        write_influence_parts(head, train, out, test=(Xt, yt), curvature=curv, scheduler=client)
    assert sorted(p.name for p in out.glob("part-*")) == ["part-00000.parquet", "part-00002.parquet"]
    assert not list(out.glob(".*tmp*"))
    ref = explicit_influence(head, X, y, Xt, yt)["influence"]
    assert rel_err(pq.read_table(out / "part-00002.parquet")["influence"].to_numpy(), ref[1000:]) < 1e-10
    # the Hessian pass meets the corrupt page too: the job stops there, naming the file, writing nothing
    with pytest.raises(ValidationError, match=r"f01\.parquet"):
        write_influence_parts(head, train, tmp / "o2", test=(Xt, yt), scheduler=client)
    assert not (tmp / "o2").exists()


# ------------------------------------------------------------------------ worker processes that die
MAIN_PID = os.getpid()


def die_in_worker(head, X, y, marker: str, main_pid: int, always: bool):
    """A column function that SIGKILLs the Dask worker process running it: once (when ``marker`` does not
    exist yet), or every time."""
    if os.getpid() != main_pid and (always or not os.path.exists(marker)):
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return {"rows_seen": np.full(len(y), len(y), dtype=np.int64)}


@pytest.fixture
def by_value():
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # worker processes need not import tests/
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.mark.slow
def test_worker_killed_during_scoring_gives_identical_output(setup, by_value):
    """``workers=2`` (a LocalCluster of nanny-managed processes): a worker is SIGKILLed in the middle of the
    scoring pass; Dask reruns its task on another worker and the output equals the local run."""
    tmp, X, y, Xt, yt, train, head = setup
    marker = tmp / "killed-once"
    col = ColumnFunction(die_in_worker, {"marker": str(marker), "main_pid": MAIN_PID, "always": False},
                         label="rows_seen")
    res = write_influence_parts(head, train, tmp / "dask", test=(Xt, yt), columns=[col], workers=2,
                                partition_rows=200, chunk_size=100)
    assert marker.exists() and res.written == res.n_parts == 8
    write_influence_parts(head, train, tmp / "local", test=(Xt, yt), columns=[col], partition_rows=200,
                          chunk_size=100)
    a, b = pq.read_table(tmp / "local"), pq.read_table(tmp / "dask")
    np.testing.assert_array_equal(a["id"].to_numpy(), b["id"].to_numpy())
    for c in ("influence", "loss_change_if_removed", "self_influence"):
        assert rel_err(b[c].to_numpy(), a[c].to_numpy()) < 1e-10, c
    assert not list((tmp / "dask").glob(".*tmp*"))


@pytest.mark.slow
def test_worker_dying_repeatedly_fails_with_the_cause(setup, by_value):
    tmp, X, y, Xt, yt, train, head = setup
    col = ColumnFunction(die_in_worker, {"marker": str(tmp / "m"), "main_pid": MAIN_PID, "always": True},
                         label="rows_seen")
    t0 = time.monotonic()
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        with pytest.raises(ClusterError, match=r"part-0000\d.*died.*KilledWorker.*resume=True"):
            write_influence_parts(head, train, tmp / "o", test=(Xt, yt), columns=[col], workers=2,
                                  partition_rows=500)
    assert time.monotonic() - t0 < 240
    man = (tmp / "o" / "_manifest.json").read_text()
    assert '"complete": false' in man
