"""Commands that pass over TRAIN run on Dask with --workers and give the numbers of the in-process run."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import relu_embeddings

from winnow.cli import main
from winnow.core.heads import LogisticHead

pytest.importorskip("distributed")


def _close(u, v, path=""):
    if isinstance(u, dict):
        assert u.keys() == v.keys(), path
        for k in u:
            if "second" not in k and "speedup" not in k:  # timings differ from run to run
                _close(u[k], v[k], f"{path}.{k}")
    elif isinstance(u, list):
        assert len(u) == len(v), path
        for i, (a, b) in enumerate(zip(u, v)):
            _close(a, b, f"{path}[{i}]")
    elif isinstance(u, float) and np.isfinite(u):
        assert abs(u - v) <= 1e-10 * max(1.0, abs(u)), (path, u, v)
    elif not isinstance(u, str):  # strings carry timings and paths
        assert u == v or (u != u and v != v), (path, u, v)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("workers")
    X, y = relu_embeddings(500, d=5, seed=21)
    Xt, yt = relu_embeddings(80, d=5, seed=22)
    np.savez(d / "train.npz", X=X, y=y)
    np.savez(d / "test.npz", X=Xt, y=yt)
    LogisticHead(l2=1e-2).fit(X, y).save(d / "head.npz")
    return d


@pytest.mark.parametrize("command", ["check-theorems", "lep", "subsample"])
def test_workers_equal_in_process(data, command):
    d = data
    base = [command, str(d / "train.npz"), "--head", str(d / "head.npz"), "-q"]
    extra = {"check-theorems": ["--test", str(d / "test.npz"), "--pairs", "400", "--l2-grid", "1e-2",
                                "--removal-fraction", "0.1"],
             "lep": ["--test", str(d / "test.npz"), "--full", "--max-size", "300"],
             "subsample": ["--valid", str(d / "test.npz"), "--keep", "0.5", "--sharpness", "1"]}[command]
    outs = []
    for tag, opts in (("local", []), ("dask", ["--workers", "2"])):
        out = d / f"{command}-{tag}"
        argv = base + extra + opts + ["--json", str(out) + ".json"]
        if command == "subsample":
            argv += ["--out", str(out) + ".parquet"]
        main(argv)
        outs.append(json.loads((d / f"{command}-{tag}.json").read_text()))
    _close(outs[0], outs[1])
    if command == "subsample":
        a, b = (pq.read_table(d / f"subsample-{t}.parquet") for t in ("local", "dask"))
        np.testing.assert_array_equal(a["id"].to_numpy(), b["id"].to_numpy())
        np.testing.assert_allclose(b["weight"].to_numpy(), a["weight"].to_numpy(), rtol=1e-10)
