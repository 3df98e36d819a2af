"""Mislabel detection: flipping, the found-vs-checked curve, the rankings, bad input."""

import json

import numpy as np
import pytest
from conftest import relu_embeddings

import winnow.cli.fidelity  # noqa: F401  (registers the commands until cli/__init__ imports it)
from winnow.cli import main
from winnow.errors import ValidationError
from winnow.evaluation.mislabel import RANKINGS, evaluate_mislabel, flip_labels, found_curve


def test_flip_labels_binary_and_multiclass():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=1000)
    f, rows = flip_labels(y, 0.1, 2, np.random.default_rng(1))
    assert len(rows) == 100 and len(np.unique(rows)) == 100
    np.testing.assert_array_equal(f[rows], 1 - y[rows])
    same = np.setdiff1d(np.arange(1000), rows)
    np.testing.assert_array_equal(f[same], y[same])
    y3 = rng.integers(0, 4, size=4000)
    f3, rows3 = flip_labels(y3, 0.25, 4, np.random.default_rng(2))
    assert len(rows3) == 1000
    assert np.all(f3[rows3] != y3[rows3]) and np.all((f3 >= 0) & (f3 < 4))
    np.testing.assert_array_equal(np.delete(f3, rows3), np.delete(y3, rows3))
    shift = (f3[rows3] - y3[rows3]) % 4   # a uniformly random *other* class: shifts 1, 2, 3 about equally often
    counts = np.bincount(shift, minlength=4)
    assert counts[0] == 0 and counts[1:].min() > 280


def test_found_curve_counts_flips_in_the_checked_prefix():
    n = 50
    flipped = np.array([3, 10, 20, 40, 41])
    perfect = np.concatenate([flipped, np.setdiff1d(np.arange(n), flipped)])
    fr = np.array([0.02, 0.1, 0.5, 1.0])
    np.testing.assert_allclose(found_curve(perfect, flipped, n, fr), [1 / 5, 1.0, 1.0, 1.0])
    worst = perfect[::-1]
    np.testing.assert_allclose(found_curve(worst, flipped, n, fr), [0, 0, 0, 1.0])
    order = np.arange(n)   # flips at positions 3, 10, 20, 40, 41
    np.testing.assert_allclose(found_curve(order, flipped, n, np.array([0.1, 0.3, 0.82, 0.84])),
                               [1 / 5, 2 / 5, 4 / 5, 1.0])


@pytest.mark.parametrize("flip", [0.0, 0.5, 0.6, -0.1, float("nan")])
def test_flip_outside_open_interval_is_refused(flip):
    X, y = relu_embeddings(100, seed=0)
    with pytest.raises(ValidationError, match="flip must be strictly between 0 and 0.5"):
        evaluate_mislabel((X, y), flip=flip, seeds=1)


def test_rankings_find_flips_far_better_than_random():
    X, y = relu_embeddings(600, d_in=6, d=24, seed=4)
    res = evaluate_mislabel((X, y), l2=1e-3, flip=0.1, seeds=2, valid_fraction=0.25)
    assert res.n_train == 450 and res.n_flipped == 45
    assert set(res.at) == set(RANKINGS)
    assert res.at["self_influence"].shape == (2, 4)
    at30 = {r: res.at[r][:, 3].mean() for r in RANKINGS}
    for r in ("self_influence", "loss", "valid_influence"):
        assert at30[r] > at30["random"] + 0.25, at30
    assert abs(at30["random"] - 0.3) < 0.2
    assert np.all(np.diff(res.curves["loss"], axis=1) >= 0)          # curves never decrease
    np.testing.assert_allclose(res.curves["random"][:, -1], 1.0)     # checking everything finds everything
    assert len(res.table()) == 4 and len(res.header()) == 5


def test_given_validation_set_and_softmax():
    X, y = relu_embeddings(500, d_in=6, d=10, seed=5, k=3)
    res = evaluate_mislabel((X[:400], y[:400]), head_kind="softmax", flip=0.2, seeds=1, valid=(X[400:], y[400:]))
    assert res.n_train == 400 and res.n_flipped == 80 and res.head_kind == "softmax"
    assert res.valid == "given validation set"
    assert res.at["loss"][0, 3] > res.at["random"][0, 3]
    with pytest.raises(ValidationError, match="logistic head needs labels"):
        evaluate_mislabel((X, y), head_kind="logistic", seeds=1)


def test_cli_evaluate_mislabel(tmp_path, capsys):
    X, y = relu_embeddings(300, d=8, seed=6)
    np.savez(tmp_path / "train.npz", X=X, y=y)
    args = ["evaluate-mislabel", str(tmp_path / "train.npz"), "--seeds", "1", "--quiet"]
    main(args + ["--flip", "0.1", "--json", str(tmp_path / "m.json"), "--report", str(tmp_path / "m.html")])
    out = json.loads((tmp_path / "m.json").read_text())
    assert set(out["found_mean"]) == set(RANKINGS) and out["n_flipped"] == 24
    assert "found at 10 % checked" in capsys.readouterr().out
    assert "Mislabel detection" in (tmp_path / "m.html").read_text()
    with pytest.raises(SystemExit) as e:
        main(args + ["--flip", "0.7"])
    assert e.value.code == 2
    assert "flip must be strictly between 0 and 0.5" in capsys.readouterr().err
