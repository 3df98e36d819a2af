"""`model-influence` and `check-head` on a network that is not at a minimum: --curvature, --damping auto (chosen
and printed), --params, the dense build's time checked before it runs, and their bad inputs (one line, exit 2)."""

from __future__ import annotations

import json

import nets
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from clirun import run

FACTORY = ["--factory", "nets:small_mlp"]  # Linear(4, 3) → tanh → Linear(3, 1)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("curv")
    torch.manual_seed(0)
    model = nets.small_mlp().double()  # untrained: its exact Hessian is indefinite
    torch.save(model.state_dict(), d / "model.pt")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 4))
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int64)
    np.savez(d / "train.npz", X=X, y=y)
    np.savez(d / "test.npz", X=X[:6], y=y[:6])
    return d


def args(d, *more):
    return ["model-influence", d / "model.pt", "--train", d / "train.npz", "--test", d / "test.npz", *FACTORY, *more]


def test_auto_damping_is_chosen_printed_and_recorded(files, tmp_path, capsys):
    for curvature in ("hessian", "ggn"):
        out = tmp_path / f"{curvature}.parquet"
        assert run(args(files, "--out", out, "--curvature", curvature, "--solver", "cg")) == 0
        err = capsys.readouterr().err
        assert "chosen from the spectrum" in err and f"{curvature} curvature" in err, err
        meta = json.loads(pq.read_schema(out).metadata[b"winnow.damping"])
        assert meta["chosen"] == "from the spectrum" and meta["curvature"] == curvature and meta["damping"] > 0
        assert f"damping {meta['damping']:.3g} chosen from the spectrum" in err
    # --params restricts the parameters: the head only (3 weights + 1 bias)
    assert run(args(files, "--out", tmp_path / "p.parquet", "--params", "2", "--damping", "0.1")) == 0
    err = capsys.readouterr().err
    assert "4 parameters" in err and "damping 0.1 (given)" in err, err


def test_kfac_scores_the_whole_model_and_prints_its_damping(files, tmp_path, capsys):
    out, pairs = tmp_path / "k.parquet", tmp_path / "kp.parquet"
    assert run(args(files, "--out", out, "--pairs", pairs, "--curvature", "kfac", "--l2", "1e-3")) == 0
    err = capsys.readouterr().err
    assert "K-FAC damping per layer: 0 " in err and ", 2 " in err and "added to l2 0.001" in err, err
    assert "19 parameters, kfac curvature" in err
    meta = json.loads(pq.read_schema(out).metadata[b"winnow.damping"])
    assert meta["curvature"] == "kfac" and set(meta["damping"]) == {"0", "2"}
    t = pq.read_table(out)
    assert t.num_rows == 40 and np.isfinite(t["self_influence"].to_numpy()).all()
    assert pq.read_table(pairs).num_rows == 40 * 6


def test_check_head_takes_params_curvature_and_reports_its_damping(files, tmp_path, capsys):
    assert run(["check-head", files / "model.pt", "--head", "2", "--train", files / "train.npz", "--test",
                files / "test.npz", "--params", "0,2", "--curvature", "ggn", "--pairs-train", "10", "--pairs-test",
                "3", "--json", tmp_path / "c.json", "-q", *FACTORY]) == 0
    r = json.loads((tmp_path / "c.json").read_text())
    assert r["n_params"] == 4 * 3 + 3 + 3 + 1 and r["curvature"] == "ggn" and r["damping_rule"]
    out = capsys.readouterr().out
    assert "ggn curvature" in out and "damping added" in out


@pytest.mark.parametrize("more, message", [
    (["--damping", "lots"], "error: --damping must be 'auto' (chosen from the spectrum) or a number >= 0, got 'lots'"),
    (["--damping", "-1"], "error: --damping must be a finite number >= 0, got -1.0"),
    (["--curvature", "kfac", "--solver", "cg"],
     "error: --solver: the kfac curvature is inverted exactly through its Kronecker factors, so it takes no other "
     "solver: leave it at 'auto'"),
    (["--curvature", "kfac", "--damping", "0"], "error: --damping: the kfac curvature needs --l2 + damping > 0"),
    (["--solver", "dense", "--max-dense-seconds", "0", "--damping", "1"],
     "error: the dense Hessian needs P = 19 Hessian-vector products; the first 16 took"),
])
def test_bad_inputs_are_one_line_and_exit_2(files, tmp_path, capsys, more, message):
    out = tmp_path / "s.parquet"
    assert run(args(files, "--out", out, *more)) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(message), lines
    assert not out.exists()
    if "dense" in more:
        assert "lower --max-dense below 19" in lines[0] and "raise --max-dense-seconds" in lines[0]
        assert "restrict --params" in lines[0]
