"""Tests of winnow.io.sources: every source yields exactly the rows it was written from, chunking and row
selection are exact, Parquet row selection reads only the row groups it needs, and bad input raises
ValidationError naming what is wrong."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from winnow.errors import ValidationError
from winnow.io.sources import ArraySource, Chunk, DataSource, NpzSource, ParquetSource, open_source

N, D = 53, 4


@pytest.fixture(scope="module")
def arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, D)).astype(np.float32)
    y = rng.integers(0, 3, size=N).astype(np.int64)
    ids = rng.permutation(10 * N)[:N].astype(np.int64)
    return X, y, ids


def _list_table(X: np.ndarray, y: np.ndarray, ids: np.ndarray | None, kind: str = "list",
                features: str = "features", label: str = "label") -> pa.Table:
    flat = pa.array(X.reshape(-1))
    if kind == "fixed":
        col = pa.FixedSizeListArray.from_arrays(flat, X.shape[1])
    else:
        offsets = np.arange(X.shape[0] + 1) * X.shape[1]
        if kind == "large":
            col = pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), flat)
        else:
            col = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), flat)
    cols = {features: col, label: pa.array(y)}
    if ids is not None:
        cols["id"] = pa.array(ids)
    return pa.table(cols)


def _write_npz(tmp_path: Path, compressed: bool, **arrays: np.ndarray) -> Path:
    p = tmp_path / ("c.npz" if compressed else "u.npz")
    (np.savez_compressed if compressed else np.savez)(p, **arrays)
    return p


# Each factory builds a source holding (X, y, ids) and returns (source, expected ids).
Factory = Callable[[Path, np.ndarray, np.ndarray, np.ndarray], tuple[DataSource, np.ndarray]]


def _array(tmp_path, X, y, ids):
    return ArraySource(X, y, ids), ids


def _npz(tmp_path, X, y, ids):
    return NpzSource(_write_npz(tmp_path, False, X=X, y=y, id=ids)), ids


def _npz_compressed(tmp_path, X, y, ids):
    return NpzSource(_write_npz(tmp_path, True, X=X, y=y, id=ids)), ids


def _parquet(kind):
    def make(tmp_path, X, y, ids):
        p = tmp_path / f"{kind}.parquet"
        pq.write_table(_list_table(X, y, ids, kind), p, row_group_size=10)
        return ParquetSource(p), ids
    return make


def _parquet_columns(tmp_path, X, y, ids):
    p = tmp_path / "cols.parquet"
    cols = {f"f{j}": X[:, j] for j in range(X.shape[1])}
    pq.write_table(pa.table({**cols, "target": y, "row": ids}), p, row_group_size=10)
    names = [f"f{j}" for j in range(D)]
    src = ParquetSource(p, label_column="target", id_column="row", feature_columns=names)
    return src, ids


def _parquet_dir(tmp_path, X, y, ids):
    d = tmp_path / "parts"
    d.mkdir()
    for k, (s, e) in enumerate([(0, 20), (20, 21), (21, len(X))]):
        pq.write_table(_list_table(X[s:e], y[s:e], None), d / f"part-{k:03d}.parquet", row_group_size=6)
    (d / "_SUCCESS").write_text("")
    return ParquetSource(d), np.arange(len(X), dtype=np.int64)


FACTORIES = {
    "array": _array, "npz": _npz, "npz_compressed": _npz_compressed, "parquet_list": _parquet("list"),
    "parquet_large_list": _parquet("large"), "parquet_fixed": _parquet("fixed"),
    "parquet_columns": _parquet_columns, "parquet_dir": _parquet_dir,
}


@pytest.fixture(params=sorted(FACTORIES))
def source(request, tmp_path, arrays) -> tuple[DataSource, np.ndarray]:
    X, y, ids = arrays
    return FACTORIES[request.param](tmp_path, X, y, ids)


def _collect(chunks) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    chunks = list(chunks)
    for ch in chunks:
        assert isinstance(ch, Chunk)
        assert ch.X.flags["C_CONTIGUOUS"] and ch.y.dtype == np.int64 and ch.ids.dtype == np.int64
    if not chunks:
        return np.zeros((0, D)), np.zeros(0, np.int64), np.zeros(0, np.int64), []
    return (np.concatenate([c.X for c in chunks]), np.concatenate([c.y for c in chunks]),
            np.concatenate([c.ids for c in chunks]), [len(c) for c in chunks])


# ----------------------------------------------------------------------------------------- round trips
def test_source_yields_exact_data(source, arrays):
    src, ids = source
    X, y, _ = arrays
    assert len(src) == N and src.n_features == D
    Xs, ys, idss, _ = _collect(src.chunks())
    assert Xs.dtype == np.float32  # stored dtype kept, not upcast
    np.testing.assert_array_equal(Xs, X)
    np.testing.assert_array_equal(ys, y)
    np.testing.assert_array_equal(idss, ids)
    np.testing.assert_array_equal(src.labels(), y)
    np.testing.assert_array_equal(src.ids(), ids)
    assert src.labels().dtype == np.int64 and src.ids().dtype == np.int64


@pytest.mark.parametrize("chunk_size", [1, 7, N, N + 10])
def test_chunk_sizes_give_same_rows(source, arrays, chunk_size):
    src, ids = source
    X, y, _ = arrays
    Xs, ys, idss, sizes = _collect(src.chunks(chunk_size))
    np.testing.assert_array_equal(Xs, X)
    np.testing.assert_array_equal(ys, y)
    np.testing.assert_array_equal(idss, ids)
    assert all(s == chunk_size for s in sizes[:-1]) and 0 < sizes[-1] <= chunk_size


@pytest.mark.parametrize("chunk_size", [3, 1000])
def test_rows_selects_exactly_those_rows(source, arrays, chunk_size):
    src, ids = source
    X, y, _ = arrays
    rows = np.array([0, 1, 5, 19, 20, 21, 22, 37, N - 1], dtype=np.int64)
    Xs, ys, idss, sizes = _collect(src.chunks(chunk_size, rows=rows))
    np.testing.assert_array_equal(Xs, X[rows])
    np.testing.assert_array_equal(ys, y[rows])
    np.testing.assert_array_equal(idss, ids[rows])
    assert max(sizes) <= chunk_size
    assert list(src.chunks(chunk_size, rows=np.array([], dtype=np.int64))) == []


def test_float64_kept(tmp_path, arrays):
    X, y, ids = arrays
    X64 = X.astype(np.float64)
    for src in (ArraySource(X64, y), NpzSource(_write_npz(tmp_path, False, X=X64, y=y)),
                _parquet("list")(tmp_path, X64, y, ids)[0]):
        ch = next(iter(src.chunks()))
        assert ch.X.dtype == np.float64
        np.testing.assert_array_equal(ch.X, X64[:len(ch)])


def test_array_source_no_copy_and_conversions(arrays):
    X, y, _ = arrays
    src = ArraySource(X, y.astype(np.float64))  # integral float labels are fine
    ch = next(iter(src.chunks(10)))
    assert np.shares_memory(ch.X, X)
    assert ch.y.dtype == np.int64 and np.array_equal(ch.y, y[:10])
    np.testing.assert_array_equal(ch.ids, np.arange(10))
    src = ArraySource(X.astype(np.int32), y > 0)  # int features -> float64, bool labels -> int64
    ch = next(iter(src.chunks()))
    assert ch.X.dtype == np.float64 and np.array_equal(ch.y, (y > 0).astype(np.int64))
    np.testing.assert_array_equal(src.labels(), (y > 0).astype(np.int64))
    F = np.asfortranarray(X)
    assert next(iter(ArraySource(F, y).chunks())).X.flags["C_CONTIGUOUS"]


def test_npz_uncompressed_is_memory_mapped(tmp_path, arrays):
    X, y, ids = arrays
    src = NpzSource(_write_npz(tmp_path, False, X=X, y=y, id=ids))
    assert isinstance(src.X, np.memmap) and isinstance(src.y, np.memmap) and isinstance(src.id, np.memmap)
    ch = next(iter(src.chunks(8)))
    base = ch.X
    while base is not None and not isinstance(base, np.memmap):
        base = base.base
    assert isinstance(base, np.memmap), "chunk X should be a view of the memory-mapped file"
    comp = NpzSource(_write_npz(tmp_path, True, X=X, y=y, id=ids))
    assert not isinstance(comp.X, np.memmap)


def test_npz_without_ids_and_fortran_order(tmp_path, arrays):
    X, y, _ = arrays
    p = tmp_path / "f.npz"
    np.savez(p, X=np.asfortranarray(X), y=y)
    src = open_source(str(p))
    assert isinstance(src, NpzSource)
    Xs, ys, idss, _ = _collect(src.chunks(5))
    np.testing.assert_array_equal(Xs, X)
    np.testing.assert_array_equal(idss, np.arange(N))


def test_parquet_rows_reads_only_needed_row_groups(tmp_path, arrays, monkeypatch):
    X, y, ids = arrays
    p = tmp_path / "small_groups.parquet"
    pq.write_table(_list_table(X, y, ids), p, row_group_size=5)  # 11 row groups
    assert pq.ParquetFile(p).metadata.num_row_groups == 11
    src = ParquetSource(p)
    read_groups: list[int] = []
    original = pq.ParquetFile.read_row_group

    def spy(self, i, *args, **kwargs):
        read_groups.append(i)
        return original(self, i, *args, **kwargs)

    def no_scan(self, *args, **kwargs):
        raise AssertionError("rows= must not scan the file with iter_batches")

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy)
    monkeypatch.setattr(pq.ParquetFile, "iter_batches", no_scan)
    rows = np.array([6, 8, 9, 42, 52])
    Xs, ys, idss, _ = _collect(src.chunks(2, rows=rows))
    assert read_groups == [1, 8, 10]
    np.testing.assert_array_equal(Xs, X[rows])
    np.testing.assert_array_equal(idss, ids[rows])


def test_parquet_dir_rows_span_files(tmp_path, arrays):
    X, y, ids = arrays
    src, expected_ids = _parquet_dir(tmp_path, X, y, ids)
    assert len(src.files) == 3
    rows = np.arange(15, 30)
    Xs, _, idss, _ = _collect(src.chunks(4, rows=rows))
    np.testing.assert_array_equal(Xs, X[rows])
    np.testing.assert_array_equal(idss, rows)


def test_parquet_labels_reads_only_label_column(tmp_path, arrays, monkeypatch):
    X, y, ids = arrays
    p = tmp_path / "a.parquet"
    pq.write_table(_list_table(X, y, ids), p)
    src = ParquetSource(p)
    seen = []
    original = pq.ParquetFile.iter_batches

    def spy(self, *args, columns=None, **kwargs):
        seen.append(tuple(columns))
        return original(self, *args, columns=columns, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    np.testing.assert_array_equal(src.labels(), y)
    np.testing.assert_array_equal(src.ids(), ids)
    assert seen == [("label",), ("id",)]


def test_parquet_float_and_bool_labels_converted(tmp_path, arrays):
    X, y, ids = arrays
    p = tmp_path / "a.parquet"
    t = _list_table(X, y, ids).set_column(1, "label", pa.array(y.astype(np.float64)))
    pq.write_table(t, p)
    np.testing.assert_array_equal(ParquetSource(p).labels(), y)
    t = t.set_column(1, "label", pa.array(y > 0))
    pq.write_table(t, p)
    src = ParquetSource(p)
    np.testing.assert_array_equal(src.labels(), (y > 0).astype(np.int64))
    np.testing.assert_array_equal(_collect(src.chunks())[1], (y > 0).astype(np.int64))


# --------------------------------------------------------------------------------------- open_source
def test_open_source_dispatch(tmp_path, arrays):
    X, y, ids = arrays
    src = ArraySource(X, y)
    assert open_source(src) is src
    assert isinstance(open_source((X, y)), ArraySource)
    s3 = open_source((X, y, ids), name="train")
    assert s3.name == "train" and np.array_equal(s3.ids(), ids)
    assert isinstance(open_source(_write_npz(tmp_path, False, X=X, y=y)), NpzSource)
    p = tmp_path / "a.parquet"
    pq.write_table(_list_table(X, y, None, features="emb", label="cls"), p)
    ps = open_source(str(p), features_column="emb", label_column="cls")
    assert isinstance(ps, ParquetSource) and ps.n_features == D
    d = tmp_path / "dir"
    d.mkdir()
    pq.write_table(_list_table(X, y, None), d / "x.parquet")
    assert isinstance(open_source(d), ParquetSource)


@pytest.mark.parametrize("spec, match", [
    (42, "int"),
    ([1, 2], "list"),
    ((np.zeros((2, 2)),), "tuple"),
    ("does/not/exist.parquet", "does not exist"),
])
def test_open_source_rejects(spec, match):
    with pytest.raises(ValidationError, match=match) as e:
        open_source(spec)
    assert "data" in str(e.value)


def test_open_source_rejects_unknown_extension_and_npz_options(tmp_path, arrays):
    X, y, _ = arrays
    p = tmp_path / "data.csv"
    p.write_text("1,2\n")
    with pytest.raises(ValidationError, match=r"\.csv"):
        open_source(p)
    with pytest.raises(ValidationError, match="train"):
        open_source(tmp_path / "missing.npz", argument="train")
    npz = _write_npz(tmp_path, False, X=X, y=y)
    with pytest.raises(ValidationError, match="label_column"):
        open_source(npz, label_column="y")


# ----------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("kwargs, match", [
    ({"X": np.zeros(5), "y": np.zeros(5)}, "X must be 2-D"),
    ({"X": np.zeros((5, 2)), "y": np.zeros((5, 1))}, "y must be 1-D"),
    ({"X": np.zeros((5, 2)), "y": np.zeros(4)}, "X has 5 rows but y has 4"),
    ({"X": np.zeros((5, 2)), "y": np.zeros(5), "ids": np.arange(4)}, "ids has 4"),
    ({"X": np.zeros((0, 2)), "y": np.zeros(0)}, "empty"),
    ({"X": np.zeros((5, 0)), "y": np.zeros(5)}, "0 features"),
    ({"X": np.array([["a", "b"]]), "y": np.zeros(1)}, "X must be a real numeric"),
    ({"X": np.zeros((3, 2)), "y": np.array([0.0, 0.5, 1.0])}, r"y must hold integer labels.*0\.5.*row id 1"),
    ({"X": np.zeros((3, 2)), "y": np.array([0.0, np.nan, 1.0])}, "y must hold integer labels"),
    ({"X": np.zeros((2, 2)), "y": np.array(["a", "b"])}, "y holds string values.*positive_label.*classes"),
    ({"X": np.zeros((3, 2)), "y": np.zeros(3), "ids": np.array([1.0, 2.5, 3.0])},
     "ids must hold integer ids"),
    ({"X": np.zeros((2, 2)), "y": np.zeros(2), "ids": np.array([b"a", b"b"])}, "ids must hold integer"),
    ({"X": np.zeros((3, 2)), "y": np.zeros(3), "ids": np.array([4, 7, 4])},
     r"id 4 appears twice \(rows 0 and 2.*ids must be unique"),
])
def test_array_source_rejects(kwargs, match):
    with pytest.raises(ValidationError, match=match) as e:
        ArraySource(name="mytrain", **kwargs)
    assert "mytrain" in str(e.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features_detected_while_streaming(arrays, bad):
    X, y, ids = arrays
    X = X.copy()
    X[25, 2] = bad
    src = ArraySource(X, y, ids, name="train")  # construction does not scan the features
    it = src.chunks(10)
    assert len(next(it)) == 10 and len(next(it)) == 10  # rows 0..19 are fine
    with pytest.raises(ValidationError, match=rf"train: .*NaN or Inf.*row id {ids[25]}"):
        next(it)


def test_overflowing_but_finite_features_accepted():
    X = np.full((3, 4), np.finfo(np.float64).max)
    ch = next(iter(ArraySource(X, np.zeros(3)).chunks()))
    assert np.isfinite(ch.X).all()


@pytest.mark.parametrize("chunk_size", [0, -3, 2.5, "7", True])
def test_bad_chunk_size(arrays, chunk_size):
    X, y, _ = arrays
    with pytest.raises(ValidationError, match="chunk_size"):
        ArraySource(X, y).chunks(chunk_size)


@pytest.mark.parametrize("rows, match", [
    (np.array([0, N]), r"\[0, 53\)"),
    (np.array([-1, 3]), r"\[0, 53\)"),
    (np.array([3, 1]), "sorted and unique"),
    (np.array([1, 1, 2]), "sorted and unique"),
    (np.array([[1, 2]]), "1-D"),
    (np.array([0.0, 1.0]), "integer"),
])
def test_bad_rows(source, rows, match):
    src, _ = source
    with pytest.raises(ValidationError, match=match) as e:
        src.chunks(4, rows=rows)  # raised when called, before iterating
    assert "rows" in str(e.value) and src.name in str(e.value)


def test_npz_rejects(tmp_path, arrays):
    X, y, ids = arrays
    with pytest.raises(ValidationError, match="does not exist"):
        NpzSource(tmp_path / "nope.npz")
    p = tmp_path / "bad.npz"
    np.savez(p, features=X, y=y)
    with pytest.raises(ValidationError, match=r"'X'.*found arrays: features, y") as e:
        NpzSource(p)
    assert str(p) in str(e.value)
    np.savez(p, X=X, y=y[:-1])
    with pytest.raises(ValidationError, match="array 'y' has 52"):
        NpzSource(p)
    np.savez(p, X=X, y=np.where(np.arange(N) == 30, 0.5, 1.0), id=ids)
    src = NpzSource(p)  # labels are checked as they stream
    with pytest.raises(ValidationError, match=rf"bad.npz: array 'y' must hold integer labels.*id {ids[30]}"):
        list(src.chunks(7))
    with pytest.raises(ValidationError, match="array 'y'"):
        src.labels()
    Xn = X.copy()
    Xn[3, 0] = np.nan
    np.savez(p, X=Xn, y=y)
    with pytest.raises(ValidationError, match="NaN or Inf.*row id 3"):
        list(NpzSource(p).chunks())
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValidationError, match="junk.npz"):
        NpzSource(tmp_path / "junk.npz")


def test_parquet_missing_columns(tmp_path, arrays):
    X, y, ids = arrays
    p = tmp_path / "a.parquet"
    pq.write_table(_list_table(X, y, ids, features="emb", label="target"), p)
    with pytest.raises(ValidationError, match=r"label column 'label' not found.*label_column.*'emb', 'target', 'id'"):
        ParquetSource(p)
    with pytest.raises(ValidationError, match=r"no numeric feature columns.*features_column.*'emb', 'target'"):
        ParquetSource(p, label_column="target")
    with pytest.raises(ValidationError, match=r"feature_columns 'f9' not found"):
        ParquetSource(p, label_column="target", feature_columns=["f9"])
    with pytest.raises(ValidationError, match="feature column 'emb' must be numeric"):
        ParquetSource(p, label_column="target", feature_columns=["emb"])
    with pytest.raises(ValidationError, match="does not exist"):
        ParquetSource(tmp_path / "missing.parquet")


def test_parquet_bad_types_and_values(tmp_path, arrays):
    X, y, ids = arrays
    p = tmp_path / "a.parquet"
    t = _list_table(X, y, ids)
    pq.write_table(t.set_column(1, "label", pa.array([str(v) for v in y])), p)
    with pytest.raises(ValidationError, match="label column 'label' holds string values.*positive_label.*classes"):
        ParquetSource(p)
    pq.write_table(t.set_column(0, "features", pa.array([[1, 2]] * N, pa.list_(pa.int64()))), p)
    with pytest.raises(ValidationError, match="features column 'features' must be a list.*float32 or float"):
        ParquetSource(p)
    labels = np.where(np.arange(N) == 12, 0.5, 1.0)
    pq.write_table(t.set_column(1, "label", pa.array(labels)), p)
    with pytest.raises(ValidationError, match=rf"a.parquet: label column 'label'.*0\.5.*row id {ids[12]}"):
        list(ParquetSource(p).chunks())
    nulls = pa.array([None if i == 4 else int(v) for i, v in enumerate(y)], pa.int64())
    pq.write_table(t.set_column(1, "label", nulls), p)
    with pytest.raises(ValidationError, match=rf"label column 'label' has a null value at row id {ids[4]}"):
        list(ParquetSource(p).chunks())
    Xn = X.copy()
    Xn[40, 1] = np.inf
    pq.write_table(_list_table(Xn, y, ids, "fixed"), p)
    with pytest.raises(ValidationError, match=rf"a.parquet: features must be finite.*row id {ids[40]}"):
        list(ParquetSource(p).chunks(16))
    pq.write_table(t.set_column(2, "id", pa.array([f"r{i}" for i in range(N)])), p)
    assert list(next(ParquetSource(p).chunks(3)).ids) == ["r0", "r1", "r2"]  # string ids are read as str
    pq.write_table(t.set_column(2, "id", pa.array([True] * N)), p)
    with pytest.raises(ValidationError, match="id column 'id' must hold integer or string ids"):
        ParquetSource(p)


def test_parquet_ragged_list_rows(tmp_path):
    rows = [[1.0, 2.0, 3.0]] * 9 + [[1.0, 2.0]] + [[1.0, 2.0, 3.0]] * 5
    p = tmp_path / "ragged.parquet"
    pq.write_table(pa.table({"features": pa.array(rows, pa.list_(pa.float32())), "label": [0] * 15}), p)
    src = ParquetSource(p)
    assert src.n_features == 3
    with pytest.raises(ValidationError, match=r"ragged.parquet: features column 'features' has 2 values at "
                                              r"row id 9; expected 3"):
        list(src.chunks(4))


def test_parquet_directory_errors(tmp_path, arrays):
    X, y, ids = arrays
    d = tmp_path / "empty_dir"
    d.mkdir()
    (d / "notes.txt").write_text("hi")
    with pytest.raises(ValidationError, match="empty_dir: directory contains no .parquet files"):
        ParquetSource(d)
    with pytest.raises(ValidationError, match="no .parquet files"):
        open_source(d)
    d = tmp_path / "mixed"
    d.mkdir()
    pq.write_table(_list_table(X[:20], y[:20], None), d / "a.parquet")
    pq.write_table(_list_table(X[20:].astype(np.float64), y[20:], None), d / "b.parquet")
    with pytest.raises(ValidationError, match=r"b.parquet: column 'features' has type list<.*double.*a.parq"):
        ParquetSource(d)
    (d / "b.parquet").unlink()
    pq.write_table(_list_table(X[20:], y[20:], ids[20:]), d / "b.parquet")
    with pytest.raises(ValidationError, match="b.parquet: has an id column 'id'"):
        ParquetSource(d)
    (d / "b.parquet").unlink()
    pq.write_table(_list_table(X[20:], y[20:], None, label="cls"), d / "b.parquet")
    with pytest.raises(ValidationError, match="b.parquet: column 'label' is missing"):
        ParquetSource(d)
    (d / "b.parquet").unlink()
    pq.write_table(_list_table(X[20:, :3], y[20:], None), d / "b.parquet")  # 3 values per row, not 4
    msg = r"b.parquet: features column 'features' has 3 values at row id 20; expected 4"
    with pytest.raises(ValidationError, match=msg):
        list(ParquetSource(d).chunks())


def test_parquet_empty_and_unreadable(tmp_path, arrays):
    X, y, ids = arrays
    p = tmp_path / "empty.parquet"
    pq.write_table(_list_table(X[:0], y[:0], ids[:0]), p)
    with pytest.raises(ValidationError, match="empty"):
        ParquetSource(p)
    q = tmp_path / "junk.parquet"
    q.write_bytes(b"definitely not parquet")
    with pytest.raises(ValidationError, match="junk.parquet: not a readable Parquet file"):
        ParquetSource(q)


def test_chunk_checks_shapes():
    with pytest.raises(ValidationError, match="Chunk"):
        Chunk(np.zeros((3, 2)), np.zeros(2, np.int64), np.zeros(3, np.int64))
    assert len(Chunk(np.zeros((3, 2)), np.zeros(3, np.int64), np.arange(3))) == 3
