"""Tests of winnow.io.outputs: outputs appear atomically, existing files are refused unless overwrite=True,
and a crash leaves neither the target nor a temporary file behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from winnow.errors import OutputExistsError, ValidationError
from winnow.io.outputs import ParquetStreamWriter, atomic_path, check_output_path, save_npz, write_json
from winnow.io.sources import NpzSource

SCHEMA = pa.schema([("id", pa.int64()), ("score", pa.float64())])


class Boom(RuntimeError):
    pass


def _files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


# ------------------------------------------------------------------------------------ check_output_path
def test_check_output_path_creates_parents_and_refuses_existing(tmp_path):
    p = check_output_path(tmp_path / "a" / "b" / "out.parquet", overwrite=False)
    assert p.parent.is_dir() and not p.exists()
    p.write_text("x")
    with pytest.raises(OutputExistsError, match=r"--scores .*out.parquet exists; pass --overwrite") as e:
        check_output_path(p, overwrite=False, argument="--scores")
    assert isinstance(e.value, FileExistsError)
    assert check_output_path(str(p), overwrite=True) == p
    with pytest.raises(OutputExistsError, match="directory"):
        check_output_path(tmp_path / "a", overwrite=True)


# ------------------------------------------------------------------------------------------ atomic_path
def test_atomic_path_success(tmp_path):
    target = tmp_path / "out.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and ".tmp" in tmp.name
        assert tmp.suffix == ".txt"
        tmp.write_text("hello")
        assert not target.exists()
    assert target.read_text() == "hello"
    assert _files(tmp_path) == ["out.txt"]


def test_atomic_path_crash_leaves_nothing(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(Boom):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise Boom
    assert _files(tmp_path) == []


def test_atomic_path_crash_keeps_existing_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(Boom):
        with atomic_path(target, overwrite=True) as tmp:
            tmp.write_text("new")
            raise Boom
    assert target.read_text() == "old" and _files(tmp_path) == ["out.txt"]


def test_atomic_path_existing(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(OutputExistsError, match="--out"):
        with atomic_path(target) as tmp:
            pytest.fail("body must not run")
    assert target.read_text() == "old"
    with atomic_path(target, overwrite=True) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and _files(tmp_path) == ["out.txt"]


def test_atomic_path_refuses_file_created_meanwhile(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(OutputExistsError, match="created while writing"):
        with atomic_path(target) as tmp:
            tmp.write_text("mine")
            target.write_text("someone else's")
    assert target.read_text() == "someone else's" and _files(tmp_path) == ["out.txt"]


def test_atomic_path_body_wrote_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="did not create"):
        with atomic_path(tmp_path / "out.txt"):
            pass
    assert _files(tmp_path) == []


# ---------------------------------------------------------------------------------- ParquetStreamWriter
def test_parquet_stream_writer_roundtrip(tmp_path):
    target = tmp_path / "scores.parquet"
    with ParquetStreamWriter(target, SCHEMA, metadata={"winnow.sign": "> 0 harmful"}) as w:
        w.write(id=np.arange(3), score=np.array([0.5, -1.0, 2.0]))
        assert not target.exists()
        w.write_table(pa.table({"score": [9.0], "id": pa.array([3], pa.int32())}))  # reordered + cast
        w.write(id=np.array([], np.int64), score=np.array([]))
    assert w.rows_written == 4
    assert _files(tmp_path) == ["scores.parquet"]
    t = pq.read_table(target)
    assert t.column("id").to_pylist() == [0, 1, 2, 3]
    assert t.column("score").to_pylist() == [0.5, -1.0, 2.0, 9.0]
    assert pq.read_schema(target).metadata[b"winnow.sign"] == b"> 0 harmful"
    assert pq.ParquetFile(target).metadata.num_row_groups >= 2  # written incrementally


def test_parquet_stream_writer_list_column(tmp_path):
    schema = pa.schema([("id", pa.int64()), ("features", pa.list_(pa.float32())),
                        ("fixed", pa.list_(pa.float64(), 2))])
    X = np.arange(12, dtype=np.float32).reshape(4, 3)
    with ParquetStreamWriter(tmp_path / "f.parquet", schema) as w:
        w.write(id=np.arange(4), features=X, fixed=np.ones((4, 2)))
    t = pq.read_table(tmp_path / "f.parquet")
    assert t.column("features").to_pylist()[1] == [3.0, 4.0, 5.0]
    assert t.column("fixed").to_pylist()[0] == [1.0, 1.0]


def test_parquet_stream_writer_crash_leaves_nothing(tmp_path):
    target = tmp_path / "scores.parquet"
    with pytest.raises(Boom):
        with ParquetStreamWriter(target, SCHEMA) as w:
            w.write(id=np.arange(3), score=np.zeros(3))
            assert len(_files(tmp_path)) == 1  # the hidden temporary file
            raise Boom
    assert _files(tmp_path) == []


def test_parquet_stream_writer_bad_write_cleans_up(tmp_path):
    target = tmp_path / "scores.parquet"
    with pytest.raises(ValidationError, match=r"missing \['score'\]"):
        with ParquetStreamWriter(target, SCHEMA) as w:
            w.write(id=np.arange(3), score=np.zeros(3))
            w.write(id=np.arange(3))
    with pytest.raises(ValidationError, match="differ in length"):
        with ParquetStreamWriter(target, SCHEMA) as w:
            w.write(id=np.arange(3), score=np.zeros(2))
    with pytest.raises(ValidationError, match="does not match the schema"):
        with ParquetStreamWriter(target, SCHEMA) as w:
            w.write_table(pa.table({"id": [1]}))
    assert _files(tmp_path) == []


def test_parquet_stream_writer_existing(tmp_path):
    target = tmp_path / "scores.parquet"
    target.write_bytes(b"old")
    with pytest.raises(OutputExistsError, match=r"--pairs .*scores.parquet exists"):
        ParquetStreamWriter(target, SCHEMA, argument="--pairs")
    assert target.read_bytes() == b"old"
    with ParquetStreamWriter(target, SCHEMA, overwrite=True) as w:
        w.write(id=np.arange(2), score=np.ones(2))
    assert pq.read_table(target).num_rows == 2 and _files(tmp_path) == ["scores.parquet"]


def test_parquet_stream_writer_empty_and_manual_close(tmp_path):
    w = ParquetStreamWriter(tmp_path / "empty.parquet", SCHEMA)
    assert w.close() == tmp_path / "empty.parquet"
    assert pq.read_table(tmp_path / "empty.parquet").num_rows == 0
    with pytest.raises(ValidationError, match="closed"):
        w.write(id=np.arange(1), score=np.ones(1))
    w2 = ParquetStreamWriter(tmp_path / "aborted.parquet", SCHEMA)
    w2.write(id=np.arange(1), score=np.ones(1))
    w2.abort()
    assert _files(tmp_path) == ["empty.parquet"]


def test_parquet_stream_writer_bad_metadata(tmp_path):
    with pytest.raises(ValidationError, match="metadata"):
        ParquetStreamWriter(tmp_path / "x.parquet", SCHEMA, metadata={"k": 1})  # type: ignore[dict-item]


# ---------------------------------------------------------------------------------------- json / npz
def test_write_json(tmp_path):
    obj = {"n": np.int64(3), "x": np.float32(0.5), "flag": np.bool_(True), "arr": np.arange(3),
           "path": tmp_path, np.int64(7): (1, 2)}
    p = write_json(tmp_path / "sub" / "r.json", obj)
    text = p.read_text()
    assert text.endswith("\n") and "\n  " in text  # indent=2
    assert json.loads(text) == {"n": 3, "x": 0.5, "flag": True, "arr": [0, 1, 2], "path": str(tmp_path),
                                "7": [1, 2]}
    with pytest.raises(OutputExistsError, match="--json"):
        write_json(p, {})
    write_json(p, {"a": 1}, overwrite=True)
    assert json.loads(p.read_text()) == {"a": 1}
    with pytest.raises(ValidationError, match="--json"):
        write_json(tmp_path / "bad.json", {"a": object()})
    assert _files(tmp_path) == ["sub"] and _files(tmp_path / "sub") == ["r.json"]


def test_save_npz(tmp_path):
    X = np.arange(12, dtype=np.float32).reshape(4, 3)
    y = np.array([0, 1, 0, 1])
    p = save_npz(tmp_path / "data.npz", X=X, y=y)
    assert p == tmp_path / "data.npz" and _files(tmp_path) == ["data.npz"]
    src = NpzSource(p)  # uncompressed, so memory-mappable
    assert isinstance(src.X, np.memmap) and np.array_equal(src.X, X)
    with pytest.raises(OutputExistsError, match="--out"):
        save_npz(p, X=X)
    save_npz(p, overwrite=True, X=X[:2])
    assert np.load(p)["X"].shape == (2, 3)
    q = save_npz(tmp_path / "head.npz", argument="path", weight=np.ones(3), kind=np.array("logistic"))
    assert q == tmp_path / "head.npz" and str(np.load(q)["kind"]) == "logistic"
    with pytest.raises(ValidationError, match=r"path .*head has no extension.*\.npz"):
        save_npz(tmp_path / "head", argument="path", weight=np.ones(3))
    assert _files(tmp_path) == ["data.npz", "head.npz"]
    with pytest.raises(ValidationError, match="at least one array"):
        save_npz(tmp_path / "none.npz")
