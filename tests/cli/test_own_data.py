"""A user's own table on the command line: breast cancer as CSV with a string label column, string ids and
30 feature columns whose names hold spaces. fit-head once with the column flags; every later command reads
the data the same way from the head, and gives the numbers of the same data as Parquet (features list, int
labels); bad labels and ids fail with exit 2, a message naming the fix and no output."""

from __future__ import annotations

import json
import shlex

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from clirun import run
from sklearn.datasets import load_breast_cancer

from winnow.core.heads import load_head

N = 300



def fails(argv: list, capsys, *needles: str) -> str:
    code = run(argv)
    err = capsys.readouterr().err
    assert code == 2, f"expected exit 2 for {argv}, got {code}, stderr: {err}"
    for needle in needles:
        assert needle in err, f"{needle!r} not in error message: {err}"
    return err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("own")
    data = load_breast_cancer()
    X = data.data[:N]
    X = (X - X.mean(0)) / X.std(0)
    y = (data.target[:N] == 0).astype(np.int64)
    df = pd.DataFrame(X, columns=list(data.feature_names))
    df.insert(0, "malignant", np.where(y == 1, "yes", "no"))
    df.insert(0, "id", [f"p-{i}" for i in range(N)])
    df.to_csv(d / "train.csv", index=False)
    df.iloc[:60].to_csv(d / "test.csv", index=False)
    df.iloc[60:120].to_csv(d / "valid.csv", index=False)
    for name, rows in (("train", slice(None)), ("test", slice(0, 60))):
        pq.write_table(pa.table({"id": np.arange(N)[rows], "label": y[rows],
                                 "features": pa.array(list(X[rows]), pa.list_(pa.float64()))}),
                       d / f"{name}.parquet")
    return {"dir": d, "df": df, "X": X, "y": y, "names": list(data.feature_names)}


@pytest.fixture(scope="module")
def head(files):
    d = files["dir"]
    code = run(["fit-head", d / "train.csv", "--label-column", "malignant", "--positive-label", "yes",
                "--out", d / "head.npz", "--l2", "0.01"])
    assert code == 0
    return d / "head.npz"


def test_fit_head_stores_the_columns_and_prints_the_mapping(files, capsys):
    d = files["dir"]
    assert run(["fit-head", d / "train.csv", "--label-column", "malignant", "--positive-label", "yes",
                "--out", d / "h1.npz"]) == 0
    assert "labels: 'no' -> 0, 'yes' -> 1" in capsys.readouterr().err
    h = load_head(d / "h1.npz")
    assert h.classes_ == ("no", "yes") and h.n_features_ == 30
    assert list(h.data_columns_.feature_columns) == files["names"]


def test_influence_from_csv_equals_parquet(files, head):
    d = files["dir"]
    assert run(["influence", d / "train.csv", "--head", head, "--test", d / "test.csv", "--out",
                d / "csv_scores.parquet", "--pairs", d / "csv_pairs.parquet", "-q"]) == 0
    # the same data as Parquet: a features list, int labels, int ids; the head's stored columns are
    # overridden by the flags given
    assert run(["influence", d / "train.parquet", "--head", head, "--test", d / "test.parquet",
                "--features-column", "features", "--label-column", "label", "--classes", "0,1",
                "--out", d / "pq_scores.parquet", "-q"]) == 0
    a, b = pq.read_table(d / "csv_scores.parquet"), pq.read_table(d / "pq_scores.parquet")
    np.testing.assert_allclose(a["influence"].to_numpy(), b["influence"].to_numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(a["self_influence"].to_numpy(), b["self_influence"].to_numpy(), rtol=1e-12,
                               atol=1e-15)
    assert a.schema.field("id").type == pa.string() and a["id"].to_pylist()[:2] == ["p-0", "p-1"]
    np.testing.assert_array_equal(a["label"].to_numpy(), files["y"])
    assert json.loads(a.schema.metadata[b"winnow.classes"]) == ["no", "yes"]
    pairs = pq.read_table(d / "csv_pairs.parquet")
    assert pairs.schema.field("test_id").type == pa.string() and pairs.num_rows == 60 * N
    assert pairs["train_id"][0].as_py() == "p-0"


def test_every_command_reads_the_table_from_the_head(files, head, capsys):
    d = files["dir"]
    tr, te = d / "train.csv", d / "test.csv"
    capsys.readouterr()
    assert run(["check-theorems", tr, "--head", head, "--test", te, "--test-points", "3", "-q"]) == 0
    assert run(["validate-loo", tr, "--head", head, "--test", te, "--points", "3", "-q",
                "--json", d / "loo.json"]) == 0
    assert all(i.startswith("p-") for i in json.loads((d / "loo.json").read_text())["ids"])
    assert run(["subsample", tr, "--head", head, "--valid", d / "valid.csv", "--keep", "0.5", "--out",
                d / "subset.parquet", "-q"]) == 0
    sub = pq.read_table(d / "subset.parquet")
    assert sub.schema.field("id").type == pa.string()
    # the SUBSET's string ids map back onto TRAIN's rows
    assert run(["fit-head", tr, "--label-column", "malignant", "--positive-label", "yes", "--weights",
                d / "subset.parquet", "--out", d / "h_sub.npz", "-q"]) == 0
    assert load_head(d / "h_sub.npz").classes_ == ("no", "yes")


def test_lep_prints_a_command_that_runs(files, head, capsys, monkeypatch):
    d = files["dir"]
    monkeypatch.chdir(d)
    capsys.readouterr()
    assert run(["lep", "train.csv", "--head", head, "--test", "test.csv", "--start", "100", "--threshold",
                "0.5", "-q"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("use: "))
    assert "--label-column" not in line  # the head knows the columns
    assert run(shlex.split(line[len("use: "):])[1:]) == 0
    assert pq.read_table(d / "scores.parquet").num_rows == N
    # flags given are repeated, quoted for the shell (names with spaces)
    cols = ",".join(files["names"])
    assert run(["lep", "train.csv", "--head", head, "--test", "test.csv", "--start", "100", "--threshold",
                "0.5", "--feature-columns", cols, "-q"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("use: "))
    argv = shlex.split(line[len("use: "):])
    assert argv[argv.index("--feature-columns") + 1] == cols
    assert run(argv[1:] + ["--overwrite"]) == 0


def _variant(files, name, change) -> str:
    df = files["df"].copy()
    change(df)
    p = files["dir"] / name
    df.to_csv(p, index=False)
    return p


def test_bad_labels_and_ids_fail_naming_the_fix(files, head, capsys):
    d = files["dir"]
    out = d / "bad.npz"

    def l12(df):
        df["malignant"] = np.where(df["malignant"] == "yes", 2, 1)

    fails(["fit-head", _variant(files, "l12.csv", l12), "--label-column", "malignant", "--out", out], capsys,
          "found 1 ×", "2 ×", "--classes", "--positive-label")
    fails(["fit-head", _variant(files, "l12.csv", l12), "--label-column", "malignant", "--kind", "softmax",
           "--out", out], capsys, "--classes")

    def one(df):
        df["malignant"] = "yes"

    fails(["fit-head", _variant(files, "one.csv", one), "--label-column", "malignant", "--positive-label", "yes",
           "--out", out], capsys, "only one class (label 'yes')", "needs at least two")

    def dup(df):
        df.loc[40, "id"] = "p-16"

    fails(["fit-head", _variant(files, "dup.csv", dup), "--label-column", "malignant", "--positive-label", "yes",
           "--out", out], capsys, "id 'p-16' appears twice (rows 16 and 40", "ids must be unique")
    fails(["fit-head", d / "train.csv", "--out", out], capsys, "label column 'label' not found",
          "--label-column", "'malignant'")
    fails(["fit-head", d / "train.csv", "--label-column", "malignant", "--out", out], capsys,
          "holds string values", "--positive-label", "--classes")
    (d / "t.xlsx").write_text("x")
    fails(["fit-head", d / "t.xlsx", "--out", out], capsys, ".csv, .tsv", ".parquet, a directory of Parquet")
    assert not out.exists()

    def unknown(df):
        df.loc[3, "malignant"] = "maybe"

    scores = d / "bad_scores.parquet"
    fails(["influence", d / "train.csv", "--head", head, "--test", _variant(files, "unk.csv", unknown),
           "--out", scores, "-q"], capsys, "label 'maybe' at row id 'p-3'", "--classes")
    assert not scores.exists()


def test_later_commands_on_csv_equal_parquet(files, head, capsys):
    """validate-loo, check-theorems and subsample read the CSV through the head's stored columns and give the
    numbers of the same data as Parquet (features list, int labels, int ids) to 1e-12."""
    d = files["dir"]
    X, y = files["X"], files["y"]
    pq.write_table(pa.table({"id": np.arange(60, 120), "label": y[60:120],
                             "features": pa.array(list(X[60:120]), pa.list_(pa.float64()))}), d / "valid.parquet")
    as_parquet = ["--features-column", "features", "--label-column", "label", "--classes", "0,1"]
    out = {}
    for route, ext, flags in (("csv", "csv", []), ("pq", "parquet", as_parquet)):
        tr, te, va = d / f"train.{ext}", d / f"test.{ext}", d / f"valid.{ext}"
        assert run(["validate-loo", tr, "--head", head, "--test", te, "--points", "4", "-q", *flags,
                    "--json", d / f"loo_{route}.json"]) == 0
        assert run(["check-theorems", tr, "--head", head, "--test", te, "--test-points", "2", "-q", *flags,
                    "--json", d / f"thm_{route}.json"]) == 0
        assert run(["subsample", tr, "--head", head, "--valid", va, "--keep", "0.5", "-q", *flags,
                    "--out", d / f"sub_{route}.parquet"]) == 0
        assert run(["lep", tr, "--head", head, "--test", te, "--start", "100", "--threshold", "0.5", "-q", *flags,
                    "--json", d / f"lep_{route}.json"]) == 0
        out[route] = (json.loads((d / f"loo_{route}.json").read_text()),
                      json.loads((d / f"thm_{route}.json").read_text()),
                      pq.read_table(d / f"sub_{route}.parquet"),
                      json.loads((d / f"lep_{route}.json").read_text()))
    (loo_c, thm_c, sub_c, lep_c), (loo_p, thm_p, sub_p, lep_p) = out["csv"], out["pq"]
    assert lep_c["recommended_sample_size"] == lep_p["recommended_sample_size"]
    assert lep_c["reached"] == lep_p["reached"] and len(lep_c["curve"]) == len(lep_p["curve"])
    for a, b in zip(lep_c["curve"], lep_p["curve"], strict=True):
        assert a["size"] == b["size"]
        for key, value in a["statistics"].items():
            np.testing.assert_allclose(value, b["statistics"][key], rtol=1e-12, atol=1e-15, err_msg=key)
    np.testing.assert_allclose(lep_c["stationarity"]["relative"], lep_p["stationarity"]["relative"], rtol=1e-12)
    for key in ("predicted", "actual"):
        np.testing.assert_allclose(loo_c[key], loo_p[key], rtol=1e-12, atol=1e-15)
    assert [int(i.removeprefix("p-")) for i in loo_c["ids"]] == [int(i) for i in loo_p["ids"]]
    for a, b in zip(thm_c["theorem3"]["test_points"], thm_p["theorem3"]["test_points"], strict=True):
        assert a["test_row"] == b["test_row"] and a["test_id"] == f"p-{b['test_id']}"
        for key in ("lambda_min", "max_abs_psi", "D_plus", "D_minus", "n_positive", "n_negative"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-12, atol=1e-15)
    assert thm_c["sign_rule"]["table"] == thm_p["sign_rule"]["table"]
    np.testing.assert_allclose(thm_c["memorization"]["threshold"], thm_p["memorization"]["threshold"], rtol=1e-12)
    assert [int(i.removeprefix("p-")) for i in sub_c["id"].to_pylist()] == sub_p["id"].to_pylist()
    np.testing.assert_allclose(sub_c["weight"].to_numpy(), sub_p["weight"].to_numpy(), rtol=1e-12)
