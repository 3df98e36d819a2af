"""End-to-end tests of the `winnow` command line (fit-head, influence, validate-loo) against the Python API,
and of every bad input the foundation must refuse with a clear error, a non-zero exit and no output file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from clirun import run
from conftest import relu_embeddings

import winnow.core.influence
from winnow.cli import app, main
from winnow.core.heads import LogisticHead, SoftmaxHead, load_head
from winnow.core.influence import InfluenceAnalyzer


def fails(argv: list[str], capsys, *needles: str) -> str:
    """Assert the command fails with a non-zero status and an error naming every needle; return stderr."""
    code = run(argv)
    err = capsys.readouterr().err
    assert code != 0, f"expected failure for {argv}, stderr: {err}"
    for needle in needles:
        assert needle.lower() in err.lower(), f"{needle!r} not in error message: {err}"
    return err


def write_npz(path: Path, X: np.ndarray, y: np.ndarray, ids: np.ndarray | None = None) -> Path:
    arrays = {"X": X, "y": y}
    if ids is not None:
        arrays["id"] = ids
    np.savez(path, **arrays)
    return path


def write_parquet(path: Path, X: np.ndarray, y: np.ndarray, ids: np.ndarray | None = None, *,
                  columns: bool = False, label: str = "label") -> Path:
    """Features as one fixed-size-list column ``features`` or (``columns``) as columns f0..f{D-1}."""
    cols: dict[str, pa.Array] = {}
    if ids is not None:
        cols["id"] = pa.array(ids, type=pa.int64())
    cols[label] = pa.array(y)
    if columns:
        for j in range(X.shape[1]):
            cols[f"f{j}"] = pa.array(X[:, j])
    else:
        cols["features"] = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), X.shape[1])
    pq.write_table(pa.table(cols), path)
    return path


def only_files(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


@pytest.fixture
def data(tmp_path):
    """Binary train/test sets (D = 6) as .npz, with non-trivial ids, and a head fitted by the CLI."""
    X, y = relu_embeddings(260, d=6, seed=3)
    ids = np.arange(260, dtype=np.int64) * 3 + 1000
    train = write_npz(tmp_path / "train.npz", X[:200], y[:200], ids[:200])
    test = write_npz(tmp_path / "test.npz", X[200:], y[200:], ids[200:])
    head = tmp_path / "head.npz"
    assert run(["fit-head", train, "--out", head, "--l2", "1e-2", "--quiet"]) == 0
    return {"X": X[:200], "y": y[:200], "ids": ids[:200], "Xte": X[200:], "yte": y[200:], "ids_te": ids[200:],
            "train": train, "test": test, "head": head, "dir": tmp_path}


# --------------------------------------------------------------------------------------------- happy paths
def test_every_command_has_help(capsys):
    names = sorted(typer.main.get_command(app).commands)
    assert {"fit-head", "influence", "validate-loo", "demo"} <= set(names)
    assert run(["--help"]) == 0
    for name in names:
        assert run([name, "--help"]) == 0, name
        out = capsys.readouterr().out
        assert "Usage" in out and "--help" in out, name


def test_fit_head_matches_python_fit(data):
    head = load_head(data["head"])
    ref = LogisticHead(l2=1e-2).fit(data["X"], data["y"])
    assert head.kind == "logistic" and head.l2 == 1e-2
    np.testing.assert_allclose(head.weight_, ref.weight_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(head.bias_, ref.bias_, rtol=1e-8, atol=1e-10)


def test_influence_scores_and_pairs_equal_python_api(data):
    out, pairs = data["dir"] / "scores.parquet", data["dir"] / "pairs.parquet"
    code = run(["influence", data["train"], "--head", data["head"], "--test", data["test"], "--out", out,
                "--pairs", pairs, "--chunk-size", "37", "--quiet"])
    assert code == 0
    table = pq.read_table(out)
    assert table.column_names == ["id", "label", "influence", "loss_change_if_removed", "self_influence"]
    head = load_head(data["head"])
    an = InfluenceAnalyzer(head).fit((data["X"], data["y"], data["ids"]))
    ref = an.score((data["Xte"], data["yte"]))
    np.testing.assert_array_equal(table["id"].to_numpy(), data["ids"])
    np.testing.assert_array_equal(table["label"].to_numpy(), data["y"])
    for col in ("influence", "loss_change_if_removed", "self_influence"):
        np.testing.assert_allclose(table[col].to_numpy(), ref[col].to_numpy(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(table["loss_change_if_removed"].to_numpy(), -table["influence"].to_numpy() / 200,
                               rtol=1e-12)
    meta = table.schema.metadata
    assert b"harmful" in meta[b"winnow.influence"]

    # long format: one row per (test, train) pair, equal to pairwise() (T, n)
    P = pq.read_table(pairs)
    assert P.column_names == ["test_id", "train_id", "influence"]
    T, n = len(data["yte"]), len(data["y"])
    assert P.num_rows == T * n
    M = an.pairwise((data["Xte"], data["yte"]))
    test_pos = {int(t): i for i, t in enumerate(data["ids_te"])}
    train_pos = {int(t): j for j, t in enumerate(data["ids"])}
    rows = np.array([test_pos[t] for t in P["test_id"].to_numpy()])
    cols = np.array([train_pos[t] for t in P["train_id"].to_numpy()])
    assert len(set(zip(rows.tolist(), cols.tolist()))) == T * n  # every pair exactly once
    np.testing.assert_allclose(P["influence"].to_numpy(), M[rows, cols], rtol=1e-10, atol=1e-14)
    # the aggregate is the mean over the test set of the pairwise influence
    np.testing.assert_allclose(table["influence"].to_numpy(), M.mean(0), rtol=1e-9, atol=1e-13)


def test_feature_columns_and_parquet_directory(tmp_path):
    X, y = relu_embeddings(180, d=4, seed=5, k=3)
    tr = tmp_path / "train"
    tr.mkdir()
    write_parquet(tr / "a.parquet", X[:70], y[:70], columns=True)
    write_parquet(tr / "b.parquet", X[70:150], y[70:150], columns=True)
    te = write_parquet(tmp_path / "test.parquet", X[150:], y[150:], columns=True)
    head, out = tmp_path / "head.npz", tmp_path / "s.parquet"
    cols = "f0, f1,f2,f3"
    assert run(["fit-head", tr, "--out", head, "--feature-columns", cols, "--l2", "1e-2", "-q"]) == 0
    h = load_head(head)
    assert isinstance(h, SoftmaxHead) and h.n_outputs == 3
    ref_head = SoftmaxHead(l2=1e-2).fit(X[:150], y[:150])
    np.testing.assert_allclose(h.weight_, ref_head.weight_, rtol=1e-7, atol=1e-9)
    assert run(["influence", tr, "--head", head, "--test", te, "--out", out, "--feature-columns", cols,
                "-q"]) == 0
    got = pq.read_table(out)
    ref = InfluenceAnalyzer(h).fit((X[:150], y[:150])).score((X[150:], y[150:]))
    np.testing.assert_array_equal(got["id"].to_numpy(), np.arange(150))  # ids default to global row numbers
    for col in ("influence", "self_influence"):
        np.testing.assert_allclose(got[col].to_numpy(), ref[col].to_numpy(), rtol=1e-10, atol=1e-14)


def test_validate_loo_prints_correlations_and_writes_json(data, capsys):
    js = data["dir"] / "loo.json"
    code = run(["validate-loo", data["train"], "--head", data["head"], "--test", data["test"], "--points", "6",
                "--seed", "1", "--json", js, "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "Pearson" in out and "Spearman" in out
    res = json.loads(js.read_text())
    assert len(res["predicted"]) == len(res["actual"]) == len(res["ids"]) == 6
    assert set(res["ids"]) <= set(data["ids"].tolist())
    assert res["n_train"] == 200
    printed = float(out.split("Pearson")[1].split(",")[0])
    assert printed == pytest.approx(res["pearson"], abs=1e-4)
    assert res["pearson"] > 0.95  # the influence prediction tracks actual retraining
    # refused a second time without --overwrite, accepted with it
    assert run(["validate-loo", data["train"], "--head", data["head"], "--test", data["test"], "--points", "3",
                "--json", js, "-q"]) != 0
    assert run(["validate-loo", data["train"], "--head", data["head"], "--test", data["test"], "--points", "3",
                "--json", js, "-q", "--overwrite"]) == 0
    assert len(json.loads(js.read_text())["ids"]) == 3


# --------------------------------------------------------------------------------------------- bad input
def test_output_exists_refused_unless_overwrite(data, capsys):
    out = data["dir"] / "scores.parquet"
    out.write_text("precious")
    base = ["influence", data["train"], "--head", data["head"], "--test", data["test"], "--out", out, "-q"]
    fails(base, capsys, "--out", "exists", "--overwrite")
    assert out.read_text() == "precious"
    fails(["fit-head", data["train"], "--out", data["head"], "-q"], capsys, "--out", "exists")
    pairs = data["dir"] / "pairs.parquet"
    pairs.write_text("keep")
    out.unlink()
    fails(base + ["--pairs", pairs], capsys, "--pairs", "exists")
    assert not out.exists() and pairs.read_text() == "keep"
    assert run(base + ["--pairs", pairs, "--overwrite"]) == 0
    assert pq.read_table(out).num_rows == 200 and pq.read_table(pairs).num_rows == 200 * 60


def test_feature_dimension_mismatch_head_vs_data_and_train_vs_test(data, capsys):
    d = data["dir"]
    narrow = write_npz(d / "narrow.npz", data["X"][:, :4], data["y"])
    out = d / "s.parquet"
    fails(["influence", narrow, "--head", data["head"], "--test", data["test"], "--out", out, "-q"], capsys,
          "narrow.npz", "D = 6", "mismatch")
    narrow_test = write_npz(d / "narrow_test.npz", data["Xte"][:, :5], data["yte"])
    fails(["influence", data["train"], "--head", data["head"], "--test", narrow_test, "--out", out, "-q"], capsys,
          "test", "narrow_test.npz", "D = 6")
    assert not out.exists()
    assert only_files(d) == {"train.npz", "test.npz", "head.npz", "narrow.npz", "narrow_test.npz"}


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["train", "test"])
def test_nan_or_inf_features(data, capsys, bad, where):
    d = data["dir"]
    X = (data["X"] if where == "train" else data["Xte"]).copy()
    X[17, 2] = bad
    y = data["y"] if where == "train" else data["yte"]
    ids = data["ids"] if where == "train" else data["ids_te"]
    path = write_npz(d / f"bad_{where}.npz", X, y, ids)
    args = {"train": data["train"], "test": data["test"], where: path}
    out = d / "s.parquet"
    fails(["influence", args["train"], "--head", data["head"], "--test", args["test"], "--out", out, "-q"], capsys,
          f"bad_{where}.npz", "finite", f"row id {int(ids[17])}")
    assert not out.exists()
    if where == "train":
        fails(["fit-head", path, "--out", d / "h2.npz", "-q"], capsys, "finite")
        assert not (d / "h2.npz").exists()


def test_labels_outside_label_set_or_not_integer(data, capsys, tmp_path):
    d = data["dir"]
    out = d / "s.parquet"
    y2 = data["yte"].copy()
    y2[3] = 2
    bad = write_npz(d / "y2.npz", data["Xte"], y2)
    fails(["influence", data["train"], "--head", data["head"], "--test", bad, "--out", out, "-q"], capsys,
          "y2.npz", "{0, 1}", "[2]")
    yf = data["y"].astype(np.float64)
    yf[5] = 0.5
    frac = write_npz(d / "yf.npz", data["X"], yf)
    fails(["influence", frac, "--head", data["head"], "--test", data["test"], "--out", out, "-q"], capsys,
          "yf.npz", "integer", "0.5")
    fails(["fit-head", frac, "--out", d / "h.npz", "-q"], capsys, "integer")
    assert not out.exists() and not (d / "h.npz").exists()
    # softmax: labels must lie in 0..K-1 of the head
    X, y = relu_embeddings(120, d=4, seed=2, k=3)
    tr = write_npz(tmp_path / "k3.npz", X, y)
    head = tmp_path / "k3_head.npz"
    assert run(["fit-head", tr, "--out", head, "--kind", "softmax", "-q"]) == 0
    y4 = y.copy()
    y4[0] = 3
    te = write_npz(tmp_path / "k3_bad.npz", X, y4)
    fails(["influence", tr, "--head", head, "--test", te, "--out", out, "-q"], capsys, "k3_bad.npz", "0..2", "[3]")
    yneg = y.copy()
    yneg[1] = -1
    fails(["fit-head", write_npz(tmp_path / "neg.npz", X, yneg), "--out", tmp_path / "n.npz", "--kind", "softmax",
           "-q"], capsys, "0..K-1", "-1 ×1", "--classes")
    fails(["fit-head", te, "--out", tmp_path / "h3.npz", "--kind", "logistic", "-q"], capsys, "{0, 1}")
    assert not out.exists() and not (tmp_path / "n.npz").exists() and not (tmp_path / "h3.npz").exists()


def test_fit_head_label_error_names_the_file(tmp_path, capsys):
    X, y = relu_embeddings(60, d=3, seed=2)
    y[4] = 2
    fails(["fit-head", write_npz(tmp_path / "three.npz", X, y), "--out", tmp_path / "h.npz", "--kind", "logistic",
           "-q"], capsys, "three.npz", "{0, 1}")


def test_empty_data(data, capsys):
    d = data["dir"]
    empty_npz = write_npz(d / "empty.npz", np.zeros((0, 6)), np.zeros(0, dtype=np.int64))
    out = d / "s.parquet"
    fails(["influence", empty_npz, "--head", data["head"], "--test", data["test"], "--out", out, "-q"], capsys,
          "empty.npz", "empty")
    empty_pq = write_parquet(d / "empty.parquet", np.zeros((0, 6), dtype=np.float32), np.zeros(0, dtype=np.int64))
    fails(["influence", data["train"], "--head", data["head"], "--test", empty_pq, "--out", out, "-q"], capsys,
          "empty.parquet", "empty")
    fails(["fit-head", empty_pq, "--out", d / "h.npz", "-q"], capsys, "empty")
    assert not out.exists() and not (d / "h.npz").exists()


def test_singular_hessian_suggests_damping(tmp_path, capsys):
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((150, 2))
    X = np.column_stack([Z, Z[:, 0] - Z[:, 1]])  # collinear
    y = (rng.random(150) < 1 / (1 + np.exp(-Z[:, 0]))).astype(np.int64)
    train = write_npz(tmp_path / "collinear.npz", X, y)
    head = LogisticHead.from_weights(np.array([0.4, -0.3, 0.2]), 0.1, l2=0.0).save(tmp_path / "h.npz")
    out = tmp_path / "s.parquet"
    fails(["influence", train, "--head", head, "--test", train, "--out", out, "-q"], capsys,
          "not positive definite", "--damping")
    assert not out.exists()
    assert run(["influence", train, "--head", head, "--test", train, "--out", out, "--damping", "1e-4", "-q",
                "--allow-nonstationary"]) == 0
    assert np.isfinite(pq.read_table(out)["influence"].to_numpy()).all()


def test_missing_label_column_and_bad_feature_columns(data, capsys):
    d = data["dir"]
    nolabel = write_parquet(d / "nolabel.parquet", data["X"], data["y"], label="target")
    out = d / "s.parquet"
    fails(["influence", nolabel, "--head", data["head"], "--test", data["test"], "--out", out, "-q"], capsys,
          "nolabel.parquet", "label column 'label' not found")
    # the user's own label column name works
    assert run(["influence", nolabel, "--head", data["head"], "--test", data["test"], "--out", out, "-q",
                "--label-column", "target"]) == 0
    cols = write_parquet(d / "cols.parquet", data["X"], data["y"], columns=True)
    fails(["fit-head", cols, "--out", d / "h.npz", "--feature-columns", "f0,f1,nope", "-q"], capsys, "nope",
          "not found")
    assert not (d / "h.npz").exists()
    # without --feature-columns every numeric column but the label and id is a feature
    assert run(["fit-head", cols, "--out", d / "h.npz", "-q"]) == 0
    assert load_head(d / "h.npz").n_features_ == data["X"].shape[1]




def test_bad_options_are_usage_errors(data, capsys):
    d = data["dir"]
    fails(["fit-head", data["train"], "--out", d / "h.npz", "--l2", "-1"], capsys, "--l2")
    fails(["influence", data["train"], "--head", data["head"], "--test", data["test"], "--out", d / "s.parquet",
           "--damping", "-1"], capsys, "--damping")
    fails(["influence", data["train"], "--head", data["head"], "--test", data["test"], "--out", d / "s.parquet",
           "--chunk-size", "0"], capsys, "--chunk-size")
    fails(["influence", data["train"], "--test", data["test"], "--out", d / "s.parquet"], capsys, "--head")
    assert not (d / "s.parquet").exists() and not (d / "h.npz").exists()


def test_missing_inputs_name_the_path(data, capsys):
    d = data["dir"]
    fails(["influence", data["train"], "--head", d / "missing.npz", "--test", data["test"], "--out",
           d / "s.parquet"], capsys, "missing.npz", "does not exist")
    fails(["influence", d / "nothere.parquet", "--head", data["head"], "--test", data["test"], "--out",
           d / "s.parquet"], capsys, "nothere.parquet", "does not exist")
    assert not (d / "s.parquet").exists() and not (d / "h.npz").exists()


def test_crash_in_later_parquet_part_leaves_no_output(tmp_path, capsys):
    """Training data whose last file has a NaN: the command fails naming the file and row, and nothing is
    left at --out (not even a temporary file)."""
    X, y = relu_embeddings(300, d=5, seed=7)
    tr = tmp_path / "train"
    tr.mkdir()
    write_parquet(tr / "part-0.parquet", X[:150].astype(np.float32), y[:150])
    Xb = X[150:].astype(np.float32)
    Xb[120, 1] = np.nan
    write_parquet(tr / "part-1.parquet", Xb, y[150:])
    te = write_parquet(tmp_path / "test.parquet", X[:40].astype(np.float32), y[:40])
    head = LogisticHead(l2=1e-2).fit(X[:150], y[:150]).save(tmp_path / "head.npz")
    out_dir = tmp_path / "out"
    out = out_dir / "scores.parquet"
    fails(["influence", tr, "--head", head, "--test", te, "--out", out, "--chunk-size", "64", "-q"], capsys,
          "part-1.parquet", "finite", "row id 270")
    assert not out.exists()
    assert not out_dir.exists() or only_files(out_dir) == set()


@pytest.mark.parametrize("exc", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_crash_during_scoring_pass_leaves_no_file(data, monkeypatch, capsys, exc):
    """A failure after some score chunks were written: no file at --out or --pairs, no temporary left."""
    real = winnow.core.heads.LinearHead.score_chunk
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise exc
        return real(*args, **kwargs)

    monkeypatch.setattr(winnow.core.heads.LinearHead, "score_chunk", flaky)
    out_dir = data["dir"] / "out"
    out, pairs = out_dir / "scores.parquet", out_dir / "pairs.parquet"
    argv = ["influence", data["train"], "--head", data["head"], "--test", data["test"], "--out", out,
            "--pairs", pairs, "--chunk-size", "50", "-q"]
    if isinstance(exc, KeyboardInterrupt):
        assert run(argv) == 130
    else:
        with pytest.raises(RuntimeError, match="disk on fire"):
            main([str(a) for a in argv])
    assert calls["n"] == 3
    assert not out.exists() and not pairs.exists()
    assert only_files(out_dir) == set()  # no hidden temporary files either
