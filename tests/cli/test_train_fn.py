"""``--train-fn module:function`` on validate-loo, evaluate-lds, validate-group and evaluate-subset: the whole
model retrained by the user's routine (here scikit-learn, independent of winnow), and bad input in one line."""

import json
import sys
import textwrap

import numpy as np
import pytest
from clirun import run
from conftest import relu_embeddings
from sklearn.linear_model import LogisticRegression

L2 = 1e-2


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("trainfn")
    X, y = relu_embeddings(200, d_in=6, d=8, seed=4)
    np.savez(d / "train.npz", X=X[:160], y=y[:160])
    np.savez(d / "test.npz", X=X[160:], y=y[160:])
    (d / "usertrain.py").write_text(textwrap.dedent(f"""
        import numpy as np
        from sklearn.linear_model import LogisticRegression
        _d = np.load({str(d / "train.npz")!r})
        X, y = _d["X"], _d["y"]
        def fit(rows, weights, seed):
            return LogisticRegression(C=1.0 / ({L2} * len(rows)), tol=1e-10, max_iter=10000).fit(
                X[rows], y[rows], sample_weight=weights)
        def bad(rows, weights, seed):
            return "not a model"
        def two(rows, weights):
            return None
        number = 3
    """))
    sys.path.insert(0, str(d))
    assert run(["fit-head", d / "train.npz", "--out", d / "head.npz", "--l2", L2, "-q"]) == 0
    yield d, X[:160], y[:160], X[160:], y[160:]
    sys.path.remove(str(d))
    sys.modules.pop("usertrain", None)


def test_validate_loo_and_lds_with_train_fn(files, tmp_path):
    d, X, y, Xt, yt = files
    base = [d / "train.npz", "--head", d / "head.npz", "--test", d / "test.npz", "-q"]
    out = tmp_path / "loo.json"
    assert run(["validate-loo", *base, "--points", 4, "--train-fn", "usertrain:fit", "--seeds", 1,
                "--json", out]) == 0
    res = json.loads(out.read_text())
    p = res["ids"][0]

    def loss(m):
        return -np.mean(np.log(m.predict_proba(Xt)[np.arange(len(yt)), yt]))

    keep = np.arange(len(y)) != p
    full = LogisticRegression(C=1 / (L2 * 160), tol=1e-10, max_iter=10000).fit(X, y)
    drop = LogisticRegression(C=1 / (L2 * 159), tol=1e-10, max_iter=10000).fit(X[keep], y[keep])
    assert res["actual"][0] == pytest.approx(loss(drop) - loss(full), rel=1e-6, abs=1e-10)
    assert res["pearson"] > 0.9
    out = tmp_path / "lds.json"
    assert run(["evaluate-lds", *base, "--subsets", 10, "--train-fn", "usertrain:fit", "--json", out,
                "--retrain-dir", tmp_path / "r"]) == 0
    assert json.loads(out.read_text())["lds"] > 0.9
    assert len(list((tmp_path / "r").glob("subset*.npz"))) == 10


def test_evaluate_subset_with_train_fn(files, tmp_path, capsys):
    d, X, y, Xt, yt = files
    sub = tmp_path / "sub.parquet"
    assert run(["subsample", d / "train.npz", "--head", d / "head.npz", "--keep", 0.5, "--out", sub,
                "--policy", "random", "-q"]) == 0
    capsys.readouterr()
    out = tmp_path / "ev.json"
    assert run(["evaluate-subset", d / "train.npz", "--subset", sub, "--test", d / "test.npz", "--train-fn",
                "usertrain:fit", "--seeds", 2, "--json", out, "-q"]) == 0
    rows = json.loads(out.read_text())["results"]
    full = LogisticRegression(C=1 / (L2 * 160), tol=1e-10, max_iter=10000).fit(X, y)
    assert rows[0]["method"] == "full"
    assert rows[0]["logloss_mean"] == pytest.approx(
        -np.mean(np.log(full.predict_proba(Xt)[np.arange(len(yt)), yt])), rel=1e-6)
    assert rows[0]["accuracy_mean"] == pytest.approx(np.mean(full.predict(Xt) == yt))


@pytest.mark.parametrize("args, message", [
    (["--train-fn", "nosuchmodule:fit"], "error: --train-fn nosuchmodule:fit: cannot import module 'nosuchmodule'"),
    (["--train-fn", "usertrain"], "error: --train-fn must be written module:function"),
    (["--train-fn", "usertrain:nope"], "error: --train-fn usertrain:nope: usertrain has no attribute 'nope'"),
    (["--train-fn", "usertrain:number"], "error: --train-fn usertrain:number: number is not a function (type int)"),
    (["--train-fn", "usertrain:two"], "error: --train-fn usertrain:two must accept three arguments"),
    (["--train-fn", "usertrain:bad"], "error: --train-fn usertrain:bad (retrain full-s0: 160 rows, seed 0) returned "
                                      "a str, which cannot be evaluated"),
    (["--seeds", "2"], "error: --seeds applies only with --train-fn"),
    (["--train-fn", "usertrain:fit", "--resume"], "error: --resume needs --retrain-dir"),
])
def test_bad_train_fn_is_one_line_and_exit_2(files, capsys, args, message):
    d = files[0]
    code = run(["validate-loo", d / "train.npz", "--head", d / "head.npz", "--test", d / "test.npz", "--points", 2,
                "-q", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(message), err[0]
