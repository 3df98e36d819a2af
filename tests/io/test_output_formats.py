"""An output's extension chooses its format or is refused; per-row tables as Parquet or CSV (metadata in a
``<out>.json`` sidecar); strict JSON."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import relu_embeddings

from winnow.analyses.influence import InfluenceAnalyzer
from winnow.analyses.memorization import MemorizationResult, write_points
from winnow.core.heads import LogisticHead
from winnow.errors import OutputExistsError, ValidationError
from winnow.io.outputs import (
    ParquetStreamWriter,
    check_output_path,
    read_table,
    save_npz,
    table_writer,
    write_json,
)


def strict_loads(text: str) -> object:
    """json.loads that refuses Infinity / NaN (which Python's json accepts by default)."""
    def refuse(name: str) -> None:
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


@pytest.mark.parametrize("name, formats, ok", [
    ("s.parquet", "table", True), ("s.csv", "table", True), ("s.CSV", "table", True), ("s.txt", "table", False),
    ("s", "table", False), ("r.json", "json", True), ("r.jsn", "json", False), ("h.npz", "npz", True),
    ("h.npy", "npz", False), ("r.html", "html", True), ("r.htm", "html", False)])
def test_extension_must_name_the_format(tmp_path, name, formats, ok):
    if ok:
        assert check_output_path(tmp_path / name, False, "out", formats=formats) == tmp_path / name
    else:
        with pytest.raises(ValidationError) as e:
            check_output_path(tmp_path / name, False, "out", formats=formats)
        assert e.value.parameters == ("out",) and str(e.value).startswith(f"out {tmp_path / name} ")
        assert "use a path ending in" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_json_and_report_arguments_imply_their_format(tmp_path):
    with pytest.raises(ValidationError, match=r"json_out .*ends in '\.txt'.*\.json"):
        check_output_path(tmp_path / "a.txt", False, "json_out")
    with pytest.raises(ValidationError, match=r"report .*\.html"):
        check_output_path(tmp_path / "a.png", False, "report")
    with pytest.raises(ValidationError, match=r"\.parquet or \.csv"):
        check_output_path(tmp_path / "a.json", False, "pairs_out")


def test_write_json_is_strict_json(tmp_path):
    obj = {"inf": float("inf"), "ninf": -np.inf, "nan": np.float32("nan"), "i": np.int64(3), "b": np.bool_(True),
           "arr": np.array([1.5, np.inf, np.nan]), "nested": [{"x": (np.float64(2.5), math.nan)}], "ok": 0.25}
    p = write_json(tmp_path / "out.json", obj)
    got = strict_loads(p.read_text())
    assert got == {"inf": None, "ninf": None, "nan": None, "i": 3, "b": True, "arr": [1.5, None, None],
                   "nested": [{"x": [2.5, None]}], "ok": 0.25}
    with pytest.raises(ValidationError, match=r"--json .*out\.txt.*\.json"):
        write_json(tmp_path / "out.txt", {"a": 1})
    assert sorted(f.name for f in tmp_path.iterdir()) == ["out.json"]


def test_save_npz_refuses_another_extension(tmp_path):
    with pytest.raises(ValidationError, match=r"out .*h\.npy ends in '\.npy'.*\.npz"):
        save_npz(tmp_path / "h.npy", argument="out", X=np.ones(2))
    assert list(tmp_path.iterdir()) == []


def test_parquet_writer_refuses_a_csv_name(tmp_path):
    with pytest.raises(ValidationError, match=r"\.parquet"):
        ParquetStreamWriter(tmp_path / "a.csv", pa.schema([("x", pa.float64())]))


def test_csv_table_streams_rows_and_writes_metadata_sidecar(tmp_path):
    schema = pa.schema([("id", pa.int64()), ("v", pa.float64()), ("flag", pa.bool_())])
    v = np.array([0.1, -2.5e-17, 1 / 3, 7.0, -1e300])
    with table_writer(tmp_path / "t.csv", schema, metadata={"winnow.note": "x > 0 harmful"}) as w:
        w.write(id=np.arange(3), v=v[:3], flag=np.array([True, False, True]))
        w.write(id=np.arange(3, 5), v=v[3:], flag=np.array([False, False]))
    header, rows = read_csv(tmp_path / "t.csv")
    assert header == ["id", "v", "flag"]
    assert [int(r[0]) for r in rows] == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal([float(r[1]) for r in rows], v)  # doubles round-trip exactly
    assert [r[2] for r in rows] == ["true", "false", "true", "false", "false"]
    assert strict_loads((tmp_path / "t.csv.json").read_text()) == {"winnow.note": "x > 0 harmful"}
    table, meta = read_table(tmp_path / "t.csv")
    assert table.column_names == ["id", "v", "flag"] and meta == {"winnow.note": "x > 0 harmful"}
    assert sorted(f.name for f in tmp_path.iterdir()) == ["t.csv", "t.csv.json"]


def test_csv_refuses_vector_columns_and_an_existing_sidecar(tmp_path):
    with pytest.raises(ValidationError, match=r"one vector per row.*\.parquet"):
        table_writer(tmp_path / "f.csv", pa.schema([("features", pa.list_(pa.float32(), 3))]))
    (tmp_path / "s.csv.json").write_text("{}")
    with pytest.raises(OutputExistsError, match="s.csv.json exists"):
        check_output_path(tmp_path / "s.csv", False, "out", formats="table")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["s.csv.json"]


def test_a_failed_csv_write_leaves_nothing(tmp_path):
    schema = pa.schema([("id", pa.int64())])
    with pytest.raises(RuntimeError):
        with table_writer(tmp_path / "t.csv", schema, metadata={"k": "v"}) as w:
            w.write(id=np.arange(3))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def fitted():
    X, y = relu_embeddings(150, d=5, seed=11)
    head = LogisticHead(l2=1e-2).fit(X[:120], y[:120])
    return head, (X[:120], y[:120]), (X[120:], y[120:])


def test_scores_as_csv_hold_the_parquet_columns_and_numbers(fitted, tmp_path):
    head, train, test = fitted
    an = InfluenceAnalyzer(head).fit(train)
    an.write_scores(test, tmp_path / "s.parquet", pairs_out=tmp_path / "p.parquet")
    an.write_scores(test, tmp_path / "s.csv", pairs_out=tmp_path / "p.csv")
    for stem in ("s", "p"):
        ref = pq.read_table(tmp_path / f"{stem}.parquet")
        header, rows = read_csv(tmp_path / f"{stem}.csv")
        assert header == ref.column_names
        for j, name in enumerate(header):
            want = ref.column(name).to_numpy()
            got = np.array([float(r[j]) for r in rows])
            np.testing.assert_array_equal(got, want)
        meta = {k.decode(): v.decode() for k, v in (ref.schema.metadata or {}).items()}
        assert strict_loads((tmp_path / f"{stem}.csv.json").read_text()) == meta
    _, rows = read_csv(tmp_path / "s.csv")
    infl = np.array([float(r[2]) for r in rows])
    np.testing.assert_allclose([float(r[3]) for r in rows], -infl / 120, rtol=1e-15)  # loss_change = -I/n


def test_scores_refuse_an_unknown_extension_before_any_pass(fitted, tmp_path):
    head, train, test = fitted
    an = InfluenceAnalyzer(head).fit(train)
    with pytest.raises(ValidationError, match=r"--out .*s\.txt ends in '\.txt'.*\.parquet or \.csv"):
        an.write_scores(test, tmp_path / "s.txt")
    with pytest.raises(ValidationError, match=r"--pairs .*\.parquet or \.csv"):
        an.write_scores(test, tmp_path / "s.parquet", pairs_out=tmp_path / "p.npz")
    assert list(tmp_path.iterdir()) == []


def test_memorization_points_as_csv(tmp_path):
    res = MemorizationResult(ids=np.array([5, 6, 7]), labels=np.array([0, 1, 1]), scores=np.array([0.5, 2.0, 1.0]),
                             threshold=0.9, quantile=None, memorize=np.array([False, True, True]))
    write_points(res, tmp_path / "m.csv")
    header, rows = read_csv(tmp_path / "m.csv")
    assert header == ["id", "label", "memorization", "memorize"]
    assert rows == [["5", "0", "0.5", "false"], ["6", "1", "2", "true"], ["7", "1", "1", "true"]]
    assert strict_loads((tmp_path / "m.csv.json").read_text())["winnow.memorize_threshold"] == "0.9"


def test_a_csv_subset_reads_back_like_the_parquet_one(fitted, tmp_path):
    from winnow.analyses.subsample import Subsampler
    from winnow.io.subsets import load_subset

    head, train, _ = fitted
    X, y = train
    valid = (X[:60], y[:60])
    s = Subsampler(0.5, policy="random", weighted=True, seed=3).fit(train, head, valid)
    s.write(tmp_path / "sub.parquet")
    s.write(tmp_path / "sub.csv")
    a, b = load_subset(tmp_path / "sub.parquet", train), load_subset(tmp_path / "sub.csv", train)
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_array_equal(a.weights, b.weights)
    assert a.summary == b.summary and b.summary["policy"] == "random" and a.weighted and b.weighted
