"""Every command that computes influence from a head refuses one off the optimum of its training objective
(exit 2, naming --refit and --allow-nonstationary, no output), scores it as it is with --allow-nonstationary,
and with --refit gives what the properly fitted head gives. The fitted head comes from scikit-learn
(LogisticRegression with C = 1/(λn)), the expected influence from numpy."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from clirun import run
from sklearn.linear_model import LogisticRegression

from winnow.core.heads import LogisticHead

L2 = 1e-2



def data(n: int, d: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = (rng.random(n) < 1 / (1 + np.exp(-(X @ np.linspace(1.2, -0.8, d) + 0.2)))).astype(np.int64)
    return X, y


def sklearn_head(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """(w, b) of scikit-learn's L2 logistic regression on winnow's objective (1/n)Σℓ + (λ/2)‖w‖²."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = LogisticRegression(C=1 / (L2 * len(y)), tol=1e-12, max_iter=10_000).fit(X, y)
    return m.coef_[0], float(m.intercept_[0])


def numpy_influence(X, y, Xt, yt, w, b):
    """−ḡ_testᵀH⁻¹g_p with H = (1/n) Σ s(1 − s) x̃x̃ᵀ + λ diag(1, …, 1, 0), written out."""
    Xa, Xta = np.column_stack([X, np.ones(len(X))]), np.column_stack([Xt, np.ones(len(Xt))])
    s = 1 / (1 + np.exp(-(Xa @ np.append(w, b))))
    H = (Xa * (s * (1 - s))[:, None]).T @ Xa / len(X) + np.diag(np.append(np.full(X.shape[1], L2), 0.0))
    st = 1 / (1 + np.exp(-(Xta @ np.append(w, b))))
    gbar = ((st - yt)[:, None] * Xta).mean(0)
    return -((s - y)[:, None] * Xa) @ np.linalg.solve(H, gbar)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("refit")
    X, y = data(260)
    Xtr, ytr, Xte, yte = X[:200], y[:200], X[200:], y[200:]
    np.savez(d / "train.npz", X=Xtr, y=ytr, id=np.arange(200))
    np.savez(d / "test.npz", X=Xte, y=yte)
    w, b = sklearn_head(Xtr, ytr)
    LogisticHead.from_weights(w, b, l2=L2).save(d / "fitted.npz")
    LogisticHead.from_weights(w + 0.3, b - 0.2, l2=L2).save(d / "off.npz")  # relative gradient ≈ 1e-1
    np.save(d / "group.npy", np.arange(0, 40, 3, dtype=np.int64))
    return {p.stem: p for p in d.iterdir()} | {"w": w, "b": b, "X": X, "y": y}  # type: ignore[dict-item]


# each command with its outputs under ``out``; ``json`` names the file holding its numbers
COMMANDS = {
    "lep": lambda f, hd, out: ["lep", f["train"], "--head", hd, "--test", f["test"], "--full", "--start", "50",
                               "--max-size", "100", "--json", out / "r.json"],
    "lep-two-sample": lambda f, hd, out: ["lep", f["train"], "--head", hd, "--test", f["test"], "--start", "50",
                                          "--max-size", "100", "--json", out / "r.json"],
    "check-theorems": lambda f, hd, out: ["check-theorems", f["train"], "--head", hd, "--test", f["test"],
                                          "--l2-grid", "", "--removal-fraction", "0", "--pairs", "500",
                                          "--json", out / "r.json"],
    "subsample": lambda f, hd, out: ["subsample", f["train"], "--head", hd, "--valid", f["test"], "--keep", "0.5",
                                     "--sharpness", "1", "--score-fraction", "0", "--out", out / "subset.parquet",
                                     "--json", out / "r.json"],
    "validate-group": lambda f, hd, out: ["validate-group", f["train"], "--head", hd, "--test", f["test"],
                                          "--subset", f["group"], "--json", out / "r.json"],
    "evaluate-lds": lambda f, hd, out: ["evaluate-lds", f["train"], "--head", hd, "--test", f["test"], "--subsets",
                                        "10", "--json", out / "r.json"],
}


def numbers(cmd: str, out: Path) -> dict:
    """The figures each command computes from the head (not the run's bookkeeping)."""
    r = json.loads((out / "r.json").read_text())
    if cmd.startswith("lep"):
        return {"curve": [c["statistics"] for c in r["curve"]], "m": r["recommended_sample_size"]}
    if cmd == "check-theorems":
        return {"theorem3": r["theorem3"], "memorization": r["memorization"], "sign_rule": r["sign_rule"]}
    if cmd == "subsample":
        t = pq.read_table(out / "subset.parquet")
        return {"id": t["id"].to_pylist(), "influence": t["influence"].to_pylist()}
    if cmd == "validate-group":
        return {k: r[k] for k in ("first_order", "newton", "newton_exact", "actual")}
    return {k: r[k] for k in ("lds", "lds_newton_group", "per_test_spearman")}


def close(a, b) -> None:
    """Nested equality, floats to 1e-4 relative (both heads are converged optima, not bit-identical, and ratio
    statistics amplify the difference)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            close(a[k], b[k])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            close(u, v)
    elif isinstance(a, float) and a == a:
        assert a == pytest.approx(b, rel=1e-4, abs=1e-8)
    else:
        assert a == b or (a != a and b != b)


@pytest.mark.parametrize("cmd", list(COMMANDS))
def test_off_optimum_head_refused_allowed_and_refit(cmd, files, tmp_path, capsys):
    argv = COMMANDS[cmd]
    # refused: exit 2, one line naming both ways out in the command line's words, nothing written
    (tmp_path / "refused").mkdir()
    assert run(argv(files, files["off"], tmp_path / "refused")) == 2
    err = capsys.readouterr().err
    assert "not at an optimum" in err and "--refit" in err and "--allow-nonstationary" in err, err
    assert "refit=True" not in err and "allow_nonstationary" not in err, err
    assert not list((tmp_path / "refused").iterdir())
    # scored as it is: the figure is recorded, above the threshold, not marked refit
    (tmp_path / "allowed").mkdir()
    assert run([*argv(files, files["off"], tmp_path / "allowed"), "--allow-nonstationary", "-q"]) == 0, \
        capsys.readouterr().err
    st = stationarity_of(cmd, tmp_path / "allowed")
    assert st["relative"] > st["threshold"] and st["refit"] is False
    # polished: said on stderr, recorded, and the numbers are those of scikit-learn's optimum
    (tmp_path / "refit").mkdir()
    assert run([*argv(files, files["off"], tmp_path / "refit"), "--refit"]) == 0
    assert "refit the head: ‖∇R‖∞" in capsys.readouterr().err
    st = stationarity_of(cmd, tmp_path / "refit")
    assert st["relative"] < 1e-8 and st["refit"] is True
    (tmp_path / "fitted").mkdir()
    assert run([*argv(files, files["fitted"], tmp_path / "fitted"), "-q"]) == 0
    assert stationarity_of(cmd, tmp_path / "fitted")["refit"] is False
    close(numbers(cmd, tmp_path / "refit"), numbers(cmd, tmp_path / "fitted"))
    assert numbers(cmd, tmp_path / "allowed") != numbers(cmd, tmp_path / "fitted")


def stationarity_of(cmd: str, out: Path) -> dict:
    if cmd == "subsample":  # the SUBSET file's own metadata carries the summary
        meta = pq.read_schema(out / "subset.parquet").metadata
        return json.loads(meta[b"winnow.subsample"])["stationarity"]
    r = json.loads((out / "r.json").read_text())
    return r["stationarity"] if "stationarity" in r else r["extra"]["stationarity"]


def test_subsample_refit_scores_are_numpy_influence_at_sklearn_optimum(files, tmp_path):
    """The influence column of a subset chosen with --refit from the off head is −ḡ_validᵀH⁻¹g_p at
    scikit-learn's optimum, written out in numpy."""
    assert run([*COMMANDS["subsample"](files, files["off"], tmp_path), "--refit", "-q"]) == 0
    t = pq.read_table(tmp_path / "subset.parquet")
    X, y = files["X"], files["y"]
    expected = numpy_influence(X[:200], y[:200], X[200:], y[200:], files["w"], files["b"])
    rows = t["id"].to_numpy()
    np.testing.assert_allclose(t["influence"].to_numpy(), expected[rows], rtol=1e-6, atol=1e-10)


def test_validate_group_refit_first_order_is_numpy(files, tmp_path):
    """First order for the group = (1/n)·Σ_(p∈S) (−influence_p)... written out: Σ loss_change_if_removed."""
    assert run([*COMMANDS["validate-group"](files, files["off"], tmp_path), "--refit", "-q"]) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    X, y = files["X"], files["y"]
    infl = numpy_influence(X[:200], y[:200], X[200:], y[200:], files["w"], files["b"])
    rows = np.load(files["group"])
    assert r["first_order"] == pytest.approx(float(-infl[rows].sum() / 200), rel=1e-6)


def test_evaluate_subset_curve_refuses_and_accepts(files, tmp_path, capsys):
    """evaluate-subset scores points with --head only for --curve: refused off the optimum, with both flags
    named; the flags without --head are refused too."""
    assert run(["subsample", files["train"], "--head", files["fitted"], "--keep", "0.5", "--policy", "random",
                "--out", tmp_path / "subset.parquet", "-q"]) == 0
    base = ["evaluate-subset", files["train"], "--subset", tmp_path / "subset.parquet", "--test", files["test"],
            "--valid", files["test"], "--seeds", "1", "--json", tmp_path / "e.json"]
    assert run([*base, "--head", files["off"], "--curve"]) == 2
    err = capsys.readouterr().err
    assert "--refit" in err and "--allow-nonstationary" in err and not (tmp_path / "e.json").exists()
    assert run([*base, "--refit"]) == 2
    err = capsys.readouterr().err
    assert "--refit applies only with --head" in err, err
