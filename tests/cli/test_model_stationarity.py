"""The model commands and stationarity: `extract-features --head-out` polishes the head to its optimum (what
scikit-learn fits on the same features) unless --no-refit, whose raw head the influence commands then refuse;
`model-influence` and `check-head` measure ‖∇R(θ̂)‖∞ of the whole network (checked here against plain torch
autograd, example by example) and warn once above the threshold; the damping hint names --damping."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from clirun import run
from sklearn.linear_model import LogisticRegression

from winnow.core.heads import load_head

FACTORY = ["--factory", "nets:small_mlp"]  # Linear(4, 3) → tanh → Linear(3, 1) (tests/nets.py)



@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1)).double()
    torch.save(model.state_dict(), d / "model.pt")  # float64 weights: the model computes in float64
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 4))
    y = (X[:, 0] - 0.5 * X[:, 1] + 0.5 * rng.standard_normal(60) > 0).astype(np.int64)
    np.savez(d / "inputs.npz", X=X, y=y)
    np.savez(d / "test.npz", X=X[:10], y=y[:10])
    return {p.stem: p for p in d.iterdir()}


def test_head_out_is_polished_to_the_sklearn_optimum(files, tmp_path, capsys):
    l2 = 1e-2
    assert run(["extract-features", files["model"], files["inputs"], "--head", "2", "--out", tmp_path / "f.npz",
                "--head-out", tmp_path / "h.npz", "--l2", l2, *FACTORY]) == 0
    assert "refit the head: ‖∇R‖∞" in capsys.readouterr().err
    F = np.load(tmp_path / "f.npz")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = LogisticRegression(C=1 / (l2 * len(F["y"])), tol=1e-12, max_iter=10_000).fit(F["X"].astype(np.float64),
                                                                                       F["y"])
    head = load_head(tmp_path / "h.npz")
    np.testing.assert_allclose(head.weight_.reshape(-1), sk.coef_[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(np.asarray(head.bias_).reshape(-1)[0]), sk.intercept_[0], rtol=1e-5, atol=1e-7)
    # the polished head is accepted by the influence commands as it is
    assert run(["influence", tmp_path / "f.npz", "--head", tmp_path / "h.npz", "--test", tmp_path / "f.npz",
                "--out", tmp_path / "s.parquet", "-q"]) == 0


def test_no_refit_keeps_the_raw_weights_which_influence_refuses(files, tmp_path, capsys):
    assert run(["extract-features", files["model"], files["inputs"], "--head", "2", "--out", tmp_path / "f.npz",
                "--head-out", tmp_path / "h.npz", "--no-refit", *FACTORY]) == 0
    err = capsys.readouterr().err
    warned = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(warned) == 1 and "not at the optimum" in warned[0] and "--allow-nonstationary" in warned[0], err
    fc = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1)).double()
    fc.load_state_dict(torch.load(files["model"], weights_only=True))
    head = load_head(tmp_path / "h.npz")
    np.testing.assert_allclose(head.weight_.reshape(-1), fc[2].weight.detach().numpy().reshape(-1), rtol=1e-12)
    scores = ["influence", tmp_path / "f.npz", "--head", tmp_path / "h.npz", "--test", tmp_path / "f.npz", "--out",
              tmp_path / "s.parquet"]
    assert run(scores) == 2
    err = capsys.readouterr().err
    assert "--refit" in err and "--allow-nonstationary" in err and not (tmp_path / "s.parquet").exists()
    assert run([*scores, "--allow-nonstationary", "-q"]) == 0


def torch_stationarity(model_path: Path, X: np.ndarray, y: np.ndarray, l2: float) -> tuple[float, float]:
    """(‖∇R‖∞, (1/n) Σ ‖g_i‖∞) by plain autograd: R = mean BCE + (λ/2) Σ_(weights) ‖W‖², g_i one row's loss."""
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1)).double()
    net.load_state_dict(torch.load(model_path, weights_only=True))
    Xt, yt = torch.as_tensor(X), torch.as_tensor(y, dtype=torch.float64)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    R = bce(net(Xt)[:, 0], yt) + 0.5 * l2 * sum((p * p).sum() for p in net.parameters() if p.ndim >= 2)
    grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(R, list(net.parameters()))])
    per = []
    for i in range(len(y)):
        gi = torch.autograd.grad(bce(net(Xt[i:i + 1])[:, 0], yt[i:i + 1]), list(net.parameters()))
        per.append(max(float(g.abs().max()) for g in gi))
    return float(grad.abs().max()), float(np.mean(per))


def test_model_influence_records_and_warns_about_stationarity(files, tmp_path, capsys):
    l2 = 1e-2
    assert run(["model-influence", files["model"], "--train", files["inputs"], "--test", files["test"], "--out",
                tmp_path / "s.parquet", "--l2", l2, "--damping", "10", *FACTORY]) == 0
    err = capsys.readouterr().err
    warned = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(warned) == 1 and "not at a stationary point" in warned[0], err
    assert "stationarity of the model: ‖∇R(θ̂)‖∞" in err
    st = json.loads(pq.read_schema(tmp_path / "s.parquet").metadata[b"winnow.stationarity"])
    X, y = np.load(files["inputs"])["X"], np.load(files["inputs"])["y"]
    gnorm, scale = torch_stationarity(files["model"], X, y, l2)
    assert st["gradient_norm"] == pytest.approx(gnorm, rel=1e-9)
    assert st["gradient_scale"] == pytest.approx(scale, rel=1e-9)
    assert st["relative"] > st["threshold"] and st["refit"] is False
    # the CSV form carries the same figure in its sidecar
    assert run(["model-influence", files["model"], "--train", files["inputs"], "--test", files["test"], "--out",
                tmp_path / "s.csv", "--l2", l2, "--damping", "10", "-q", *FACTORY]) == 0
    side = json.loads((tmp_path / "s.csv.json").read_text())
    assert json.loads(side["winnow.stationarity"])["gradient_norm"] == pytest.approx(gnorm, rel=1e-9)


def test_check_head_records_the_relative_figure_and_warns_once(files, tmp_path, capsys):
    assert run(["check-head", files["model"], "--head", "2", "--train", files["inputs"], "--test", files["test"],
                "--l2", "0.01", "--pairs-train", "60", "--pairs-test", "3", "--json", tmp_path / "c.json", "-q",
                *FACTORY]) == 0
    out = capsys.readouterr()
    warned = [ln for ln in out.err.splitlines() if ln.startswith("warning:")]
    assert len(warned) == 1 and "not a stationary point" in warned[0], out.err
    assert "not a stationary point" not in out.out  # said once, as the warning, not again as a note
    r = json.loads((tmp_path / "c.json").read_text())
    X, y = np.load(files["inputs"])["X"], np.load(files["inputs"])["y"]
    gnorm, scale = torch_stationarity(files["model"], X, y, 0.01)
    # every training row is sampled (--pairs-train 60 = n): the scale is the exact mean
    assert r["stationarity"]["gradient_norm"] == pytest.approx(gnorm, rel=1e-9)
    assert r["stationarity"]["gradient_scale"] == pytest.approx(scale, rel=1e-9)


def test_indefinite_hessian_message_names_the_damping_flag(files, tmp_path, capsys):
    assert run(["model-influence", files["model"], "--train", files["inputs"], "--test", files["test"], "--out",
                tmp_path / "s.parquet", "--solver", "dense", "--damping", "0", *FACTORY]) == 2
    err = capsys.readouterr().err
    assert "not positive definite" in err and "Set --damping" in err and "damping=" not in err, err
    assert not (tmp_path / "s.parquet").exists()
