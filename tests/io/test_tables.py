"""Tables users already have: CSV/TSV files, pandas/polars/Arrow frames and Features, read with one
DataColumns (auto features, label mapping, string ids), against the same data given as arrays, and against
independent numpy/scikit-learn maths."""

from __future__ import annotations

import gzip
import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression

from winnow.analyses.influence import InfluenceAnalyzer
from winnow.api import fit_head
from winnow.core.heads import LogisticHead, load_head
from winnow.core.models import Features
from winnow.errors import ValidationError
from winnow.io.columns import DataColumns, join_names, parse_names
from winnow.io.sources import ParquetSource, open_source
from winnow.io.tables import ArrowSource, CsvSource

N = 300
L2 = 1e-2


@pytest.fixture(scope="module")
def cancer():
    """Breast cancer, standardised, first N rows: a frame with string ids, string labels ('yes' =
    malignant) and 30 feature columns whose names hold spaces; and the same data as arrays (y: 1 = yes)."""
    d = load_breast_cancer()
    X = d.data[:N]
    X = (X - X.mean(0)) / X.std(0)
    y = (d.target[:N] == 0).astype(np.int64)
    ids = np.array([f"p-{i}" for i in range(N)], dtype=object)
    df = pd.DataFrame(X, columns=list(d.feature_names))
    df.insert(0, "malignant", np.where(y == 1, "yes", "no"))
    df.insert(0, "id", ids)
    return {"df": df, "X": X, "y": y, "ids": ids, "names": list(d.feature_names)}


@pytest.fixture
def csv_path(cancer, tmp_path):
    p = tmp_path / "train.csv"
    cancer["df"].to_csv(p, index=False)
    return p


COLS = DataColumns(label_column="malignant", positive_label="yes")


def test_csv_reads_the_table_with_auto_features_and_mapped_labels(cancer, csv_path):
    src = open_source(csv_path, columns=COLS)
    assert isinstance(src, CsvSource) and len(src) == N and src.n_features == 30
    assert src.feature_columns == cancer["names"]  # every numeric column but the label and id, in order
    assert src.classes == ("no", "yes")
    chunks = list(src.chunks(64))
    X = np.concatenate([c.X for c in chunks])
    np.testing.assert_array_equal(X, cancer["X"])  # pandas writes floats exactly
    np.testing.assert_array_equal(np.concatenate([c.y for c in chunks]), cancer["y"])
    assert chunks[0].y.dtype == np.int64
    assert list(np.concatenate([c.ids for c in chunks])) == list(cancer["ids"])
    np.testing.assert_array_equal(src.labels(), cancer["y"])
    assert list(src.ids()) == list(cancer["ids"])
    rows = np.array([3, 64, 65, 299])
    (sel,) = list(src.chunks(10, rows=rows))
    np.testing.assert_array_equal(sel.X, cancer["X"][rows])
    assert list(sel.ids) == [f"p-{r}" for r in rows]


def test_tsv_and_gzip(cancer, tmp_path):
    tsv = tmp_path / "t.tsv"
    cancer["df"].to_csv(tsv, index=False, sep="\t")
    gz = tmp_path / "t.csv.gz"
    with gzip.open(gz, "wt") as f:
        cancer["df"].to_csv(f, index=False)
    for p in (tsv, gz):
        src = open_source(p, columns=COLS)
        np.testing.assert_array_equal(np.concatenate([c.X for c in src.chunks()]), cancer["X"])
        np.testing.assert_array_equal(src.labels(), cancer["y"])


def test_exclude_feature_columns_and_names_with_commas(cancer, tmp_path):
    df = cancer["df"].rename(columns={"mean radius": "radius, mean"})
    p = tmp_path / "c.csv"
    df.to_csv(p, index=False)
    src = open_source(p, columns=COLS, exclude=["radius, mean", "worst area"])
    assert src.n_features == 28 and "worst area" not in src.feature_columns
    names = parse_names('"radius, mean", mean texture')
    assert names == ("radius, mean", "mean texture")
    assert parse_names(join_names(names)) == names
    src = open_source(p, columns=COLS, feature_columns=names)
    np.testing.assert_array_equal(np.concatenate([c.X for c in src.chunks()]), cancer["X"][:, :2])


def _scores(head, train, test):
    return InfluenceAnalyzer(head).fit(train).score(test)


def test_frames_and_features_give_the_scores_of_arrays(cancer):
    pl = pytest.importorskip("polars")
    X, y, ids, df = cancer["X"], cancer["y"], cancer["ids"], cancer["df"]
    head = fit_head((X, y), l2=L2)
    want = _scores(head, (X, y, ids), (X[:40], y[:40]))
    frames = {"pandas": df, "polars": pl.from_pandas(df), "arrow": pa.Table.from_pandas(df, preserve_index=False)}
    for name, frame in frames.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no copy or read-only-array warnings
            got = _scores(head, ArrowSource(frame, columns=COLS),
                          ArrowSource(frame.slice(0, 40) if name == "arrow" else frame[:40], columns=COLS))
        np.testing.assert_allclose(got["influence"].to_numpy(), want["influence"].to_numpy(), rtol=1e-12,
                                   atol=1e-15, err_msg=name)
        assert got["id"].to_pylist() == list(ids), name
    feats = Features(X=X.astype(np.float64), y=y, ids=np.arange(N), shape=(30,), head_name="fc", n=N)
    got = _scores(head, feats, (X[:40], y[:40]))
    np.testing.assert_allclose(got["influence"].to_numpy(), want["influence"].to_numpy(), rtol=1e-12, atol=1e-15)


def test_a_head_fitted_on_a_frame_reads_later_frames_the_same_way(cancer, tmp_path):
    df = cancer["df"]
    head = fit_head(df, label_column="malignant", positive_label="yes", l2=L2)
    assert head.classes_ == ("no", "yes")
    assert head.data_columns_.label_column == "malignant"
    assert list(head.data_columns_.feature_columns) == cancer["names"]
    # fitted on the same optimum as sklearn's (C = 1/(n λ), bias not penalised)
    sk = LogisticRegression(C=1 / (N * L2), tol=1e-12, max_iter=10_000).fit(cancer["X"], cancer["y"])
    np.testing.assert_allclose(head.weight_[0], sk.coef_[0], rtol=1e-5, atol=1e-6)
    # no column settings needed now: the head's are used (here on a frame with its columns shuffled)
    shuffled = df[list(reversed(df.columns))]
    got = InfluenceAnalyzer(head).fit(shuffled).score(df.iloc[:40])
    # independent influence: -g_pᵀ H⁻¹ ḡ_test with H = (1/n) Σ s(1-s) ũũᵀ + λ·diag(1..1, 0)
    Xa = np.hstack([cancer["X"], np.ones((N, 1))])
    theta = np.append(head.weight_[0], head.bias_[0])
    s = 1 / (1 + np.exp(-Xa @ theta))
    H = (Xa * (s * (1 - s))[:, None]).T @ Xa / N + L2 * np.diag(np.r_[np.ones(30), 0.0])
    G = Xa * (s - cancer["y"])[:, None]
    want = -G @ np.linalg.solve(H, G[:40].mean(0))
    np.testing.assert_allclose(got["influence"].to_numpy(), want, rtol=1e-8, atol=1e-12)
    assert got.schema.metadata[b"winnow.classes"] == b'["no", "yes"]'
    # the settings travel with the saved head
    path = head.save(tmp_path / "h.npz")
    back = load_head(path)
    assert back.classes_ == ("no", "yes") and back.data_columns_ == head.data_columns_
    # a head file without them (earlier releases) still loads
    np.savez(tmp_path / "old.npz", weight=head.weight_, bias=head.bias_, kind=np.array("logistic"),
             l2=np.array(L2))
    old = load_head(tmp_path / "old.npz")
    assert old.classes_ is None and old.data_columns_ is None


def test_label_mapping_by_classes_and_unknown_labels(cancer, tmp_path):
    df = cancer["df"]
    src = ArrowSource(df, columns=DataColumns(label_column="malignant", classes=("yes", "no")))
    np.testing.assert_array_equal(src.labels(), 1 - cancer["y"])  # 'yes' -> 0 now
    head = fit_head(df, label_column="malignant", positive_label="yes", l2=L2)
    bad = df.iloc[:20].copy()
    bad.loc[7, "malignant"] = "maybe"
    an = InfluenceAnalyzer(head).fit(df)
    with pytest.raises(ValidationError, match=r"label 'maybe' at row id 'p-7' is not one of the known label "
                                              r"values \('no' -> 0, 'yes' -> 1\).*classes"):
        an.score(bad)
    with pytest.raises(ValidationError, match=r"positive_label needs exactly two label values.*3.*classes"):
        ArrowSource(pd.concat([df, bad]), columns=COLS)
    with pytest.raises(ValidationError, match="positive_label 'Yes' is not a value.*'no' ×"):
        ArrowSource(df, columns=DataColumns(label_column="malignant", positive_label="Yes"))


def test_labels_that_are_not_0_to_k_minus_1_are_refused_with_the_mapping_to_use(cancer):
    X, y = cancer["X"], cancer["y"]
    with pytest.raises(ValidationError, match=r"found 1 ×\d+, 2 ×\d+.*positive_label.*classes") as e:
        fit_head((X, y + 1))
    assert set(e.value.parameters) >= {"positive_label", "classes"}
    with pytest.raises(ValidationError, match=r"found 0 ×\d+, 2 ×\d+.*classes"):
        fit_head((X, 2 * y), kind="softmax")  # an empty class 1
    with pytest.raises(ValidationError, match=r"only one class \(label 1\) in train; a classifier needs at least"):
        fit_head((X, np.ones(N, dtype=np.int64)))
    # mapped, the same labels fit: 1 -> 0, 2 -> 1
    head = fit_head((X, y + 1), classes=[1, 2], l2=L2)
    assert head.classes_ == (1, 2)
    ref = fit_head((X, y), l2=L2)
    np.testing.assert_allclose(head.weight_, ref.weight_, rtol=1e-10)
    with pytest.raises(ValidationError, match="labels must be integers|holds string values"):
        fit_head((X, np.where(y == 1, "yes", "no")))


def test_string_labels_without_a_mapping_name_the_fix(cancer, csv_path):
    with pytest.raises(ValidationError, match=r"holds string values \('no' ×\d+, 'yes' ×\d+\); map them.*"
                                              r"positive_label.*classes"):
        open_source(csv_path, label_column="malignant")
    with pytest.raises(ValidationError, match=r"label column 'label' not found; name it with label_column.*"
                                              r"'malignant'") as e:
        open_source(csv_path)
    assert "label_column" in e.value.parameters


@pytest.mark.parametrize("kind", ["csv", "parquet", "npz", "arrays", "pandas"])
def test_duplicate_ids_are_refused_naming_the_first(cancer, tmp_path, kind):
    df = cancer["df"].copy()
    df.loc[40, "id"] = "p-16"
    ids = df["id"].to_numpy()
    if kind == "csv":
        spec = tmp_path / "d.csv"
        df.to_csv(spec, index=False)
    elif kind == "parquet":
        spec = tmp_path / "d.parquet"
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), spec)
    elif kind == "npz":
        spec = tmp_path / "d.npz"
        np.savez(spec, X=cancer["X"], y=cancer["y"], id=ids.astype(str))
    elif kind == "arrays":
        spec = (cancer["X"], cancer["y"], ids)
    else:
        spec = df
    kw = {} if kind in ("npz", "arrays") else {"columns": COLS}
    with pytest.raises(ValidationError, match=r"id 'p-16' appears twice \(rows 16 and 40.*ids must be unique"):
        open_source(spec, **kw)


def test_unsorted_integer_ids_and_parquet_string_ids(cancer, tmp_path):
    perm = np.random.default_rng(0).permutation(N)
    t = pa.table({"id": perm, "label": cancer["y"], "features": list(cancer["X"])})
    pq.write_table(t, tmp_path / "ok.parquet")
    assert list(ParquetSource(tmp_path / "ok.parquet").ids()) == list(perm)
    perm[10] = perm[200]
    pq.write_table(t.set_column(0, "id", pa.array(perm)), tmp_path / "dup.parquet")
    with pytest.raises(ValidationError, match=rf"id {perm[10]} appears twice \(rows 10 and 200"):
        ParquetSource(tmp_path / "dup.parquet")


def test_unsupported_inputs_name_the_accepted_formats(tmp_path):
    p = tmp_path / "x.xlsx"
    p.write_text("x")
    with pytest.raises(ValidationError, match=r"unsupported extension .xlsx; expected .csv, .tsv.*\.parquet, a "
                                              r"directory of Parquet files, .npz"):
        open_source(p)
    with pytest.raises(ValidationError, match="cannot read data from a dict; expected.*DataFrame"):
        open_source({"a": 1})


def test_parquet_auto_features_and_string_labels(cancer, tmp_path):
    p = tmp_path / "c.parquet"
    pq.write_table(pa.Table.from_pandas(cancer["df"], preserve_index=False), p)
    src = ParquetSource(p, columns=COLS)
    assert src.n_features == 30 and src.classes == ("no", "yes")
    np.testing.assert_array_equal(np.concatenate([c.X for c in src.chunks(50)]), cancer["X"])
    np.testing.assert_array_equal(np.concatenate(list(src.label_blocks(70))), cancer["y"])
    head = LogisticHead(l2=1e-2).fit(cancer["X"], cancer["y"])
    a = _scores(head, src, src)
    b = _scores(head, (cancer["X"], cancer["y"]), (cancer["X"], cancer["y"]))
    np.testing.assert_allclose(a["influence"].to_numpy(), b["influence"].to_numpy(), rtol=1e-12, atol=1e-15)
