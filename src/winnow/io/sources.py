"""Training and test data as streams of chunks.

winnow never holds a whole data set in memory: every step reads a :class:`DataSource` as an iterator of
:class:`Chunk` objects (``X`` (c, D) float32/float64, ``y`` (c,) int64 encoded labels, ``ids`` (c,) int64 or
str). Sources:

* :class:`ArraySource` - arrays already in memory (or memory-mapped);
* :class:`NpzSource` - an ``.npz`` file with arrays ``X``, ``y`` and optional ``id`` (uncompressed members
  are memory-mapped, so only the rows being read are paged in);
* :class:`ParquetSource` - a Parquet file or a directory of them, read with bounded memory;
* :class:`~winnow.io.tables.CsvSource` and :class:`~winnow.io.tables.ArrowSource` - CSV/TSV files and data
  frames (pandas, polars, PyArrow).

Tables are read by one :class:`TablePlan` from a :class:`~winnow.io.columns.DataColumns` (which columns, how
labels map to classes). :func:`open_source` turns whatever a user passes into a source. Every chunk is
validated as it streams (finite features, integer or mapped labels, integer or string ids); an error names
the source, the column or argument and the first offending row id.
"""

from __future__ import annotations

import struct
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import ValidationError
from .columns import DEFAULT_FEATURES, DataColumns, format_id, format_value

__all__ = ["Chunk", "DataSource", "ArraySource", "NpzSource", "ParquetSource", "open_source"]

_INT64_MAX = np.iinfo(np.int64).max


# --------------------------------------------------------------------------------------------- chunk
@dataclass(frozen=True)
class Chunk:
    """A block of consecutive (or selected) rows of a data source.

    ``X``: (c, D) float32 or float64, C-contiguous, all finite unless read with ``chunks(...,
    check_finite=False)`` (the stored dtype, never upcast);
    ``y``: (c,) int64 labels (encoded 0..K-1); ``ids``: (c,) int64 row ids, or an object array of str for
    a string id column. Consumers must not modify the arrays.
    """

    X: np.ndarray
    y: np.ndarray
    ids: np.ndarray

    def __post_init__(self) -> None:
        xs, ys, ids = np.shape(self.X), np.shape(self.y), np.shape(self.ids)
        if len(xs) != 2 or len(ys) != 1 or len(ids) != 1 or not (xs[0] == ys[0] == ids[0]):
            raise ValidationError(f"Chunk expects X (c, D), y (c,) and ids (c,) with the same c; got X {xs}, "
                                  f"y {ys}, ids {ids}")

    def __len__(self) -> int:
        return int(self.X.shape[0])


def _slice_chunk(ch: Chunk, start: int, stop: int) -> Chunk:
    return Chunk(ch.X[start:stop], ch.y[start:stop], ch.ids[start:stop])


def _concat_chunks(parts: list[Chunk]) -> Chunk:
    if len(parts) == 1:
        return parts[0]
    return Chunk(np.concatenate([p.X for p in parts]), np.concatenate([p.y for p in parts]),
                 np.concatenate([p.ids for p in parts]))


def _rechunk(chunks: Iterable[Chunk], chunk_size: int) -> Iterator[Chunk]:
    """Re-block a stream of chunks (of at most ``chunk_size`` rows each) into chunks of exactly
    ``chunk_size`` rows (the last one may be shorter), preserving order."""
    buf: list[Chunk] = []
    count = 0
    for ch in chunks:
        n = len(ch)
        if n == 0:
            continue
        if not buf and n == chunk_size:
            yield ch
            continue
        buf.append(ch)
        count += n
        if count >= chunk_size:
            merged = _concat_chunks(buf)
            start = 0
            while count - start >= chunk_size:
                yield _slice_chunk(merged, start, start + chunk_size)
                start += chunk_size
            buf = [_slice_chunk(merged, start, count)] if start < count else []
            count -= start
    if buf:
        yield _concat_chunks(buf)


# ----------------------------------------------------------------------------------------- validation
def _check_chunk_size(chunk_size: Any) -> int:
    from ..validation import check_chunk_size

    return check_chunk_size(chunk_size)


def _check_rows(rows: Any, n: int, name: str) -> np.ndarray:
    """``rows`` as a sorted, unique int64 array of row positions in [0, n)."""
    r = np.asarray(rows)
    if r.ndim != 1:
        raise ValidationError(f"rows for {name} must be a 1-D array of row positions; got shape {r.shape}")
    if r.size == 0:
        return np.zeros(0, dtype=np.int64)
    if r.dtype.kind not in "iu":
        raise ValidationError(f"rows for {name} must be integer row positions; got dtype {r.dtype}")
    if r.dtype.kind == "u" and r.max() > _INT64_MAX:
        raise ValidationError(f"rows for {name} must be row positions in [0, {n}); got {r.max()}")
    r = r.astype(np.int64, copy=False)
    if r.size > 1 and not np.all(r[1:] > r[:-1]):
        i = int(np.flatnonzero(r[1:] <= r[:-1])[0])
        raise ValidationError(f"rows for {name} must be sorted and unique; rows[{i}] = {r[i]} is followed by "
                              f"rows[{i + 1}] = {r[i + 1]}")
    if r[0] < 0 or r[-1] >= n:
        bad = r[0] if r[0] < 0 else r[-1]
        raise ValidationError(f"rows for {name} must be row positions in [0, {n}); got {bad}")
    return r


def _to_int64(a: np.ndarray, where: str, what: str, row_ids: np.ndarray | None, *, kind: str = "labels",
              allow_bool: bool = True) -> np.ndarray:
    """Convert 1-D ``a`` to int64, exactly: integers, bools (if allowed) and integral floats are accepted.

    ``what`` names the array/column in messages, ``row_ids`` gives the id reported for an offending row
    (row positions are reported when it is None).
    """
    a = np.asarray(a)
    k = a.dtype.kind
    if k == "b" and allow_bool:
        return a.astype(np.int64)
    if k in "iu":
        if k == "u" and a.dtype.itemsize >= 8 and a.size and a.max() > _INT64_MAX:
            i = int(np.argmax(a > _INT64_MAX))
            raise ValidationError(f"{where}: {what} must hold int64 {kind}; value {a[i].item()} at "
                                  f"{_row_desc(row_ids, i)} does not fit in int64")
        return a.astype(np.int64, copy=False)
    if k == "f":
        with np.errstate(all="ignore"):
            ai = a.astype(np.int64)
            ok = np.isfinite(a) & (ai == a) & (np.abs(a) < 2.0**63)
        if not ok.all():
            i = int(np.flatnonzero(~ok)[0])
            raise ValidationError(
                f"{where}: {what} must hold integer {kind} (floats are accepted only when integral, e.g. 0.0 "
                f"and 1.0); got {a[i].item()!r} at {_row_desc(row_ids, i)}")
        return ai
    accepted = "integers, bools or integral floats" if allow_bool else "integers or integral floats"
    raise ValidationError(f"{where}: {what} must hold integer {kind} ({accepted}); got dtype {a.dtype}")


def _row_desc(row_ids: np.ndarray | None, i: int) -> str:
    return f"row position {i}" if row_ids is None else f"row id {format_id(row_ids[i])}"


def _check_feature_dtype(dtype: np.dtype, where: str, what: str) -> None:
    if dtype.kind not in "biuf":
        raise ValidationError(f"{where}: {what} must be a real numeric array (float32 or float64); "
                              f"got dtype {dtype}")


def _as_features(X: np.ndarray, where: str, ids: np.ndarray, check: bool = True) -> np.ndarray:
    """A (c, D) block as C-contiguous float32/float64, checked finite (unless ``check`` is False). float32
    and float64 are kept as stored; float16 becomes float32 and other numeric dtypes float64."""
    if X.dtype == np.float32 or X.dtype == np.float64:
        X = np.ascontiguousarray(X)
    elif X.dtype == np.float16:
        X = np.ascontiguousarray(X, dtype=np.float32)
    else:
        X = np.ascontiguousarray(X, dtype=np.float64)
    if check:
        check_finite_features(X, where, ids)
    return X


def check_finite_features(X: np.ndarray, where: str, ids: np.ndarray) -> None:
    """Raise the data error of features holding NaN or Inf, naming ``where`` and the first such row (by
    ``ids``); returns when every entry of the (c, D) block ``X`` is finite."""
    # A cheap test first (one read of the block, in its own dtype): the sum of all entries is finite iff the
    # block holds no NaN/Inf, barring overflow, which the exact test below resolves.
    with np.errstate(all="ignore"):
        s = X.sum()
    if np.isfinite(s):
        return
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValidationError(f"{where}: features must be finite but contain NaN or Inf (first at "
                              f"{_row_desc(ids, i)})")


# -------------------------------------------------------------------------------------------- sources
def row_blocks(n: int, chunk_size: int, rows: np.ndarray | None) -> Iterator[tuple[slice | np.ndarray,
                                                                                   np.ndarray]]:
    """The blocks an in-memory source yields: (index, row positions) for consecutive slices of at most
    ``chunk_size`` of its ``n`` rows, or of the sorted ``rows`` (index = the positions themselves, or their slice
    when they are consecutive)."""
    if rows is None:
        for s in range(0, n, chunk_size):
            e = min(s + chunk_size, n)
            yield slice(s, e), np.arange(s, e, dtype=np.int64)
    else:
        for s in range(0, rows.shape[0], chunk_size):
            idx = rows[s:s + chunk_size]
            # a run of consecutive rows is a slice: a view, not a gathered copy
            yield (slice(int(idx[0]), int(idx[-1]) + 1) if idx[-1] - idx[0] + 1 == idx.shape[0] else idx), idx


class DataSource(ABC):
    """A data set read as a stream of :class:`Chunk` objects, in storage order.

    Subclasses implement ``n_features``, ``__len__`` and ``chunks``; ``labels`` and ``ids`` default to a
    full pass over ``chunks`` and should be overridden when a cheaper way exists.
    """

    name: str = "data"
    #: the parameter the source was given as (``train``, ``test``...), named by errors found while reading rows
    argument: str | None = None
    #: the original label values, ``classes[i]`` encoded as label i (None: labels are stored as 0..K-1)
    classes: tuple[Any, ...] | None = None
    #: how the source was read, with the feature columns and classes written out (None: not a table)
    data_columns: DataColumns | None = None

    @property
    @abstractmethod
    def n_features(self) -> int:
        """The feature dimension D."""

    @abstractmethod
    def __len__(self) -> int:
        """The number of rows n, known without reading the data."""

    #: whether ``chunks`` takes ``check_finite`` (the sources of this package do)
    defers_finite_check = False

    @abstractmethod
    def chunks(self, chunk_size: int = 65536, rows: np.ndarray | None = None, *,
               check_finite: bool = True) -> Iterator[Chunk]:
        """Yield chunks of at most ``chunk_size`` rows in storage order.

        ``rows``: optional sorted, unique int64 array of row positions (0..n-1); only those rows are read.
        Arguments are validated when called, data errors are raised while iterating. ``check_finite=False``
        skips the scan for NaN/Inf features: only for a reader that checks its own results instead (the
        engine does, for kernels whose every result is non-finite when a feature is; see
        ``winnow.engine.engine.chunk_results``), so that a pass reads each chunk once.
        """

    def labels(self) -> np.ndarray:
        """All labels, (n,) int64."""
        parts = [ch.y for ch in self.chunks()]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def ids(self) -> np.ndarray:
        """All row ids, (n,) int64 (or object str ids)."""
        parts = [ch.ids for ch in self.chunks()]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def label_blocks(self, block_size: int = 1 << 20) -> Iterator[np.ndarray]:
        """The labels in row order, as int64 blocks of at most ``block_size`` rows (bounded memory where the
        source can read its label column alone; the default reads ``labels()`` once)."""
        block_size = _check_chunk_size(block_size)
        y = self.labels()
        for s in range(0, y.shape[0], block_size):
            yield y[s:s + block_size]

    def _check_args(self, chunk_size: Any, rows: Any) -> tuple[int, np.ndarray | None]:
        """Validate ``chunks`` arguments (for subclasses)."""
        c = _check_chunk_size(chunk_size)
        return c, (None if rows is None else _check_rows(rows, len(self), self.name))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, n={len(self)}, D={self.n_features})"


class _ArrayBacked(DataSource):
    """Shared implementation for sources backed by (possibly memory-mapped) numpy arrays."""

    X: np.ndarray
    y: np.ndarray
    id: np.ndarray | None

    def _validate_shapes(self, X: np.ndarray, y: np.ndarray, ids: np.ndarray | None, xname: str,
                         yname: str, idname: str) -> None:
        where = self.name
        if X.ndim != 2:
            raise ValidationError(f"{where}: {xname} must be 2-D (n, D); got shape {X.shape}")
        _check_feature_dtype(X.dtype, where, xname)
        if y.ndim != 1:
            raise ValidationError(f"{where}: {yname} must be 1-D (n,); got shape {y.shape}")
        if y.shape[0] != X.shape[0]:
            raise ValidationError(f"{where}: {xname} has {X.shape[0]} rows but {yname} has {y.shape[0]} "
                                  f"labels; they must match")
        if ids is not None:
            if ids.ndim != 1:
                raise ValidationError(f"{where}: {idname} must be 1-D (n,); got shape {ids.shape}")
            if ids.shape[0] != X.shape[0]:
                raise ValidationError(f"{where}: {xname} has {X.shape[0]} rows but {idname} has "
                                      f"{ids.shape[0]} entries; they must match")
        if X.shape[0] == 0:
            raise ValidationError(f"{where}: the data is empty ({xname} has 0 rows)")
        if X.shape[1] == 0:
            raise ValidationError(f"{where}: {xname} has 0 features; expected at least one column")

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])

    def __len__(self) -> int:
        return int(self.X.shape[0])

    defers_finite_check = True

    def chunks(self, chunk_size: int = 65536, rows: np.ndarray | None = None, *,
               check_finite: bool = True) -> Iterator[Chunk]:
        chunk_size, rows = self._check_args(chunk_size, rows)
        return self._iter(chunk_size, rows, check_finite)

    def _iter(self, chunk_size: int, rows: np.ndarray | None, check_finite: bool = True) -> Iterator[Chunk]:
        for index, positions in row_blocks(len(self), chunk_size, rows):
            yield self._chunk(index, positions, check_finite)

    _codec: LabelCodec | None = None

    def _chunk(self, index: slice | np.ndarray, positions: np.ndarray, check_finite: bool = True) -> Chunk:
        ids = positions if self.id is None else self._ids(self.id[index], positions)
        return Chunk(_as_features(self.X[index], self.name, ids, check_finite), self._labels(self.y[index], ids),
                     ids)

    def _labels(self, y: np.ndarray, ids: np.ndarray | None) -> np.ndarray:
        if self._codec is not None:
            return self._codec.encode(pa.array(y), self.name, ids)
        return _to_int64(y, self.name, self._yname, ids)

    _ids_checked = False

    def _ids(self, a: np.ndarray, positions: np.ndarray | None) -> np.ndarray:
        if self._ids_checked:
            return a
        if a.dtype.kind in "UO":
            return _string_ids(a, self.name, self._idname)
        return _to_int64(a, self.name, self._idname, positions, kind="ids", allow_bool=False)

    def _set_labels(self, columns: DataColumns | None) -> None:
        """A label codec when labels are mapped (or are not numbers, to say how to map them)."""
        cols = columns or DataColumns()
        if cols.maps_labels or self.y.dtype.kind not in "biuf":
            codec = LabelCodec(pa.array(self.y[:0]).type if self.y.dtype.kind != "O" else pa.string(), cols,
                               self.name, self._yname, lambda: summarize_labels([pa.array(self.y[:])]))
            self._codec = codec if codec.value_set is not None else None
            self.classes = codec.classes

    def labels(self) -> np.ndarray:
        return self._labels(self.y[:], None)

    def ids(self) -> np.ndarray:
        if self.id is None:
            return np.arange(len(self), dtype=np.int64)
        return self._ids(self.id[:], None)

    _yname = "y"
    _idname = "ids"


class ArraySource(_ArrayBacked):
    """Arrays in memory (or memory-mapped): ``X`` (n, D) numeric, ``y`` (n,) labels, optional ``ids`` (n,)
    unique integers or strings (default: 0..n-1).

    Labels are integers 0..K-1, or any values mapped by ``columns.classes`` / ``columns.positive_label``
    (see :class:`~winnow.io.columns.DataColumns`). Labels and ids are validated and converted (int64 labels,
    int64 or str ids) up front (cheap); features are checked finite as they stream. float32/float64 features
    are yielded as stored, without copying when C-contiguous.
    """

    def __init__(self, X: Any, y: Any, ids: Any = None, name: str = "arrays", *,
                 columns: DataColumns | None = None) -> None:
        self.name = str(name)
        X = np.asarray(X) if not isinstance(X, np.ndarray) else X
        if not X.flags.writeable:  # torch warns on read-only arrays; a copy once is cheaper than a warning a chunk
            X = X.copy()
        y = np.asarray(y)
        ids_arr = None if ids is None else np.asarray(ids)
        self._validate_shapes(X, y, ids_arr, "X", "y", "ids")
        if ids_arr is not None:
            ids_arr = self._ids(ids_arr, None)
            check_unique_ids(lambda: [ids_arr], self.name)
        self.X = X
        self.id = ids_arr
        self._ids_checked = True  # converted and checked once, above
        self.y = y
        self._set_labels(columns)
        self.y = self._labels(y, ids_arr if ids_arr is not None else np.arange(y.shape[0]))
        self._codec = None


class NpzSource(_ArrayBacked):
    """An ``.npz`` file with arrays ``X`` (n, D), ``y`` (n,) and optional ``id`` (n,) (``ids`` is accepted
    too). Members stored uncompressed (``np.savez``) are memory-mapped copy-on-write, so only the rows read
    are paged in; compressed members (``np.savez_compressed``) are loaded into memory.

    Labels and ids are validated per chunk as they stream, like the features.
    """

    _yname = "array 'y'"
    _idname = "array 'id'"

    def __init__(self, path: str | Path, *, columns: DataColumns | None = None, check_ids: bool = True) -> None:
        p = Path(path)
        self.name = str(p)
        if not p.is_file():
            raise ValidationError(f"{p}: .npz file does not exist" if not p.exists()
                                  else f"{p}: expected an .npz file, found a directory")
        try:
            with zipfile.ZipFile(p) as zf:
                members = {info.filename[:-4]: info for info in zf.infolist()
                           if info.filename.endswith(".npy")}
                if "X" not in members or "y" not in members:
                    found = ", ".join(sorted(members)) or "none"
                    raise ValidationError(f"{p}: expected arrays 'X' (n, D) and 'y' (n,) (optional 'id'); "
                                          f"found arrays: {found}")
                idkey = "id" if "id" in members else ("ids" if "ids" in members else None)
                arrays = {k: _npz_member(p, zf, members[k]) for k in ("X", "y", idkey) if k is not None}
        except zipfile.BadZipFile as e:
            raise ValidationError(f"{p}: not a valid .npz file ({e})") from None
        if idkey is not None:
            self._idname = f"array '{idkey}'"
        self.X = arrays["X"]
        self.y = arrays["y"]
        self.id = arrays.get(idkey) if idkey is not None else None
        self._validate_shapes(self.X, self.y, self.id, "array 'X'", "array 'y'", self._idname)
        if self.y.dtype.kind not in "biufU":
            raise ValidationError(f"{p}: array 'y' must hold integer labels; got dtype {self.y.dtype}")
        if self.id is not None and self.id.dtype.kind not in "iufU":
            raise ValidationError(f"{p}: {self._idname} must hold integer or string ids; got dtype "
                                  f"{self.id.dtype}")
        self._columns = columns
        self._set_labels(columns)
        if check_ids and self.id is not None:
            check_unique_ids(lambda: (self._ids(self.id[s:s + (1 << 20)], None)
                                      for s in range(0, len(self), 1 << 20)), self.name)


def _string_ids(a: np.ndarray, where: str, what: str) -> np.ndarray:
    """String ids as an object array of str (None is refused)."""
    out = a.astype(object) if a.dtype.kind == "U" else a
    if out.dtype.kind == "O":
        bad = [i for i, v in enumerate(out) if not isinstance(v, str)]
        if bad:
            raise ValidationError(f"{where}: {what} must hold integer or string ids; got "
                                  f"{out[bad[0]]!r} at row position {bad[0]}")
    return out


def _npz_member(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """One array of an .npz: memory-mapped when stored uncompressed, else read into memory."""
    fmt = np.lib.format
    if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1:
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(30)
            if len(local) == 30 and local[:4] == b"PK\x03\x04":
                name_len, extra_len = struct.unpack("<HH", local[26:30])
                f.seek(info.header_offset + 30 + name_len + extra_len)
                try:
                    version = fmt.read_magic(f)
                    if version == (1, 0):
                        shape, fortran, dtype = fmt.read_array_header_1_0(f)
                    else:
                        shape, fortran, dtype = fmt.read_array_header_2_0(f)
                except ValueError as e:
                    raise ValidationError(f"{path}: member {info.filename} is not a valid .npy array "
                                          f"({e})") from None
                offset = f.tell()
                if not dtype.hasobject and int(np.prod(shape)) > 0:
                    return np.memmap(path, dtype=dtype, mode="c", offset=offset, shape=shape,
                                     order="F" if fortran else "C")
    try:
        with zf.open(info) as f:
            return fmt.read_array(f, allow_pickle=False)
    except ValueError as e:
        raise ValidationError(f"{path}: cannot read member {info.filename} ({e})") from None


# -------------------------------------------------------------------------------------------- parquet
def _type_signature(t: pa.DataType) -> Any:
    """What must agree between files for a column: list and large_list of the same value type are
    interchangeable; item field names are ignored."""
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return ("list", t.value_type)
    if pa.types.is_fixed_size_list(t):
        return ("fixed_size_list", t.value_type, t.list_size)
    return t


def _signature_str(sig: Any) -> str:
    if isinstance(sig, tuple):
        return f"{sig[0]}<{sig[1]}" + (f", {sig[2]}>" if len(sig) > 2 else ">")
    return str(sig)


def _column(data: pa.RecordBatch | pa.Table, name: str) -> pa.Array:
    col = data.column(name)
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _scalar_numpy(arr: pa.Array, where: str, what: str, row_ids: np.ndarray | None) -> np.ndarray:
    if arr.null_count:
        i = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValidationError(f"{where}: {what} has a null value at {_row_desc(row_ids, i)}")
    return arr.to_numpy(zero_copy_only=False, writable=True)


def _iter_batches(pf: pq.ParquetFile, batch_size: int, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """``pf``'s record batches, one row group at a time.

    ``ParquetFile.iter_batches`` over a whole file pre-buffers every row group of it before the first batch,
    so its memory grows with the file; row group by row group it is bounded by one row group.
    """
    for g in range(pf.metadata.num_row_groups):
        if pf.metadata.row_group(g).num_rows:
            yield from pf.iter_batches(batch_size=batch_size, row_groups=[g], columns=columns)


# ------------------------------------------------------------------------------------- labels and ids
def _decode(arr: pa.Array) -> pa.Array:
    return arr.dictionary_decode() if pa.types.is_dictionary(arr.type) else arr


def _value_type(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def _is_text(t: pa.DataType) -> bool:
    t = _value_type(t)
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


LabelSummary = list[tuple[Any, int]]


def summarize_labels(arrays: Iterable[pa.Array | pa.ChunkedArray]) -> LabelSummary:
    """(value, count) of every distinct non-null label value, sorted by value (mixed types by their text)."""
    counts: dict[Any, int] = {}
    for arr in arrays:
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        vc = pc.value_counts(_decode(arr))
        for v, c in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist(), strict=True):
            if v is not None:
                counts[v] = counts.get(v, 0) + int(c)
    try:
        return sorted(counts.items())
    except TypeError:
        return sorted(counts.items(), key=lambda kv: str(kv[0]))


def describe_labels(summary: LabelSummary, limit: int = 6) -> str:
    """``'no' ×212, 'yes' ×88`` (the first ``limit`` values, then how many more)."""
    out = ", ".join(f"{format_value(v)} ×{c}" for v, c in summary[:limit])
    if len(summary) > limit:
        out += f" and {len(summary) - limit} more values"
    return out


class LabelCodec:
    """Encodes a label column's values as int64 class indices: ``classes[i]`` -> i.

    Built from the column's Arrow type and the settings (``classes``, or ``positive_label`` with the distinct
    values read by ``summary()``); ``classes`` is then the resolved tuple of original values (scikit-learn's
    ``classes_``). Without a mapping, labels must be integers (or bools, integral floats) stored as is.
    """

    def __init__(self, label_type: pa.DataType, columns: DataColumns, where: str, what: str,
                 summary: Callable[[], LabelSummary]) -> None:
        from ..validation import fail

        t = _value_type(label_type)
        self.what = what
        self.value_set: pa.Array | None = None
        self.classes: tuple[Any, ...] | None = None
        if not columns.maps_labels:
            if not (_is_numeric(t) or pa.types.is_boolean(t)):
                raise fail(f"{where}: {what} holds {t} values ({describe_labels(summary())}); map them to "
                           "class indices with positive_label (binary: the value that means 1) or classes (every "
                           "value, in class order); labels not mapped must be integers 0..K-1",
                           "positive_label", "classes")
            return
        if columns.classes is not None:
            values = list(columns.classes)
        else:
            pos = self._cast([columns.positive_label], t, where, "positive_label")[0]
            found = summary()
            seen = [v for v, _ in found]
            if pos not in seen:
                raise fail(f"{where}: positive_label {format_value(pos)} is not a value of the {what} (found "
                           f"{describe_labels(found)}); pass one of them", "positive_label")
            others = [v for v in seen if v != pos]
            if not others:
                raise fail(f"{where}: only one class (label {format_value(pos)}) in the {what}; a classifier "
                           "needs at least two", "train")
            if len(others) > 1:
                raise fail(f"{where}: positive_label needs exactly two label values, but the {what} holds "
                           f"{len(seen)} ({describe_labels(found)}); pass classes with every value in class "
                           "order instead", "positive_label", "classes")
            values = [others[0], pos]
        cast = self._cast(values, t, where, "classes")
        if len(set(cast)) != len(cast):
            raise fail(f"{where}: classes {values} name the same label value twice once read as {t}",
                       "classes")
        if cast == list(range(len(cast))) and (_is_numeric(t) or pa.types.is_boolean(t)):
            self.classes = None  # 0..K-1 stored as is: nothing to map
            return
        self.value_set = pa.array(cast, type=t)
        self.classes = tuple(cast)

    @staticmethod
    def _cast(values: list[Any], t: pa.DataType, where: str, parameter: str) -> list[Any]:
        from ..validation import fail

        try:
            arr = pa.array(values)
        except (pa.ArrowException, TypeError, ValueError):
            arr = pa.array([str(v) for v in values])
        if arr.type != t:
            try:
                arr = arr.cast(t) if not (pa.types.is_string(t) or pa.types.is_large_string(t)) \
                    else pa.array([str(v) for v in values], type=t)
            except (pa.ArrowException, TypeError, ValueError):
                raise fail(f"{where}: {parameter} {values} cannot be read as the label column's type {t}",
                           parameter) from None
        return arr.to_pylist()

    def encode(self, arr: pa.Array | pa.ChunkedArray, where: str, ids: np.ndarray | None) -> np.ndarray:
        """(c,) int64 labels of ``arr`` (ids name an offending row; row positions when None)."""
        from ..validation import fail

        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        arr = _decode(arr)
        if self.value_set is None:
            return _to_int64(_scalar_numpy(arr, where, self.what, ids), where, self.what, ids)
        if arr.null_count:
            _scalar_numpy(arr, where, self.what, ids)  # raises, naming the row
        if arr.type != self.value_set.type:
            arr = arr.cast(self.value_set.type)
        idx = pc.index_in(arr, value_set=self.value_set)
        if idx.null_count:
            i = int(np.flatnonzero(idx.is_null().to_numpy(zero_copy_only=False))[0])
            known = ", ".join(f"{format_value(v)} -> {k}" for k, v in enumerate(self.classes or ()))
            raise fail(f"{where}: label {format_value(arr[i].as_py())} at {_row_desc(ids, i)} is not one of the "
                       f"known label values ({known}); list every value in classes (in class order) when "
                       "fitting the head, or drop the rows with other labels", "classes")
        return idx.to_numpy(zero_copy_only=False).astype(np.int64)


def _ids_of(arr: pa.Array | pa.ChunkedArray, where: str, what: str, positions: np.ndarray) -> np.ndarray:
    """Ids of one block: int64, or an object array of str for a string id column."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = _decode(arr)
    raw = _scalar_numpy(arr, where, what, positions)
    if _is_text(arr.type):
        return raw.astype(object, copy=False)
    return _to_int64(raw, where, what, positions, kind="ids", allow_bool=False)


def duplicate_id_error(ids: np.ndarray, where: str) -> ValidationError | None:
    """The error for the first repeated id of ``ids`` (the one whose second occurrence comes first), or None
    when every id is unique. Sorts a copy: O(n) memory and O(n log n) time."""
    ids = np.asarray(ids)
    if ids.shape[0] < 2:
        return None
    order = np.argsort(ids, kind="stable")
    s = ids[order]
    same = np.flatnonzero(s[1:] == s[:-1])
    if same.size == 0:
        return None
    k = int(same[np.argmin(order[same + 1])])
    value = s[k]
    rows = np.sort(order[s == value])
    times = "twice" if rows.size == 2 else f"{rows.size} times"
    from ..validation import fail

    return fail(f"{where}: id {format_id(value)} appears {times} (rows {int(rows[0])} and {int(rows[1])}, "
                "counting data rows from 0); ids must be unique", "id_column")


def check_unique_ids(blocks: Callable[[], Iterable[np.ndarray]], where: str) -> None:
    """Raise if an id repeats. ``blocks()`` yields the ids in row order; ids stored in increasing order
    (the common case) are checked in one pass with the memory of one block, others are read again into
    memory (8 bytes per row for int64 ids) and sorted."""
    last = None
    for b in blocks():
        if b.shape[0] == 0:
            continue
        if (last is not None and not b[0] > last) or (b.shape[0] > 1 and not np.all(b[1:] > b[:-1])):
            break
        last = b[-1]
    else:
        return
    parts = list(blocks())
    err = duplicate_id_error(np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64), where)
    if err is not None:
        raise err


# ------------------------------------------------------------------------------------------- tables
def _list_names(names: Sequence[str], limit: int = 40) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


class TablePlan:
    """The columns of one table schema resolved from :class:`DataColumns`, and the conversion of its record
    batches to :class:`Chunk` objects (shared by Parquet, CSV and in-memory tables).

    Features: ``feature_columns`` when set; else the list column ``features_column`` (or a list column
    named ``features``); else every integer or floating column except the label and id columns and
    ``exclude``. The id column is optional unless named. ``label_summary(column)`` is called only when the
    distinct label values are needed (``positive_label``, or a message about labels that are not integers).
    """

    def __init__(self, schema: pa.Schema, columns: DataColumns | None, where: str,
                 label_summary: Callable[[str], LabelSummary]) -> None:
        from ..validation import fail

        cols = columns if columns is not None else DataColumns()
        self.columns = cols
        names = list(schema.names)
        found = _list_names(names)
        lc = cols.label
        if lc not in names:
            raise fail(f"{where}: label column '{lc}' not found; name it with label_column (columns: {found})",
                       "label_column")
        self.label_column = lc
        idc = cols.id
        self.id_column: str | None = None
        if idc in names and idc != lc:
            it = _value_type(schema.field(idc).type)
            if not (_is_numeric(it) or _is_text(it)):
                raise fail(f"{where}: id column '{idc}' must hold integer or string ids; got type {it}",
                           "id_column")
            self.id_column = idc
        elif cols.id_column is not None:
            raise fail(f"{where}: id column '{idc}' not found; name it with id_column or leave it out (ids "
                       f"are then row numbers) (columns: {found})", "id_column")
        used = {lc} | ({self.id_column} if self.id_column else set())
        self.feature_columns: list[str] | None = None
        self.features_column: str | None = None
        fc = cols.features_column or DEFAULT_FEATURES
        if cols.feature_columns is not None:
            missing = [c for c in cols.feature_columns if c not in names]
            if missing:
                raise fail(f"{where}: feature_columns {_list_names(missing)} not found (columns: {found})",
                           "feature_columns")
            self.feature_columns = list(cols.feature_columns)
        elif cols.features_column is not None or (fc in names and _is_list(schema.field(fc).type)):
            if fc not in names:
                raise fail(f"{where}: features column '{fc}' not found; pass features_column (a list<float> "
                           f"column) or feature_columns (numeric columns) (columns: {found})",
                           "features_column")
            self.features_column = fc
        else:
            exclude = list(cols.exclude or ())
            missing = [c for c in exclude if c not in names]
            if missing:
                raise fail(f"{where}: exclude names {_list_names(missing)}, not columns of the data (columns: "
                           f"{found})", "exclude")
            auto = [n for n in names if n not in used and n not in exclude and _is_numeric(schema.field(n).type)
                    and not n.startswith("__index_level_")]
            if not auto:
                raise fail(f"{where}: no numeric feature columns besides the label and id columns; name them "
                           f"with feature_columns, or a list column with features_column (columns: {found})",
                           "feature_columns")
            self.feature_columns = auto
        if self.feature_columns is not None:
            for c in self.feature_columns:
                if c in used:
                    raise fail(f"{where}: column '{c}' is the label or id column and cannot also be a feature",
                               "feature_columns")
                t = schema.field(c).type
                if not _is_numeric(t):
                    raise fail(f"{where}: feature column '{c}' must be numeric; got type {t}", "feature_columns")
            self.dtype = (np.dtype(np.float32) if all(schema.field(c).type == pa.float32()
                                                      for c in self.feature_columns) else np.dtype(np.float64))
            self.D: int | None = len(self.feature_columns)
            self.list_kind = "columns"
        else:
            t = schema.field(fc).type
            if not _is_list(t) or t.value_type not in (pa.float32(), pa.float64()):
                raise fail(f"{where}: features column '{fc}' must be a list, large_list or fixed_size_list of "
                           f"float32 or float64; got type {t}", "features_column")
            self.dtype = np.dtype(np.float32 if t.value_type == pa.float32() else np.float64)
            self.list_kind = "fixed" if pa.types.is_fixed_size_list(t) else "list"
            self.D = int(t.list_size) if self.list_kind == "fixed" else None
            if self.D == 0:
                raise fail(f"{where}: features column '{fc}' has list size 0; expected >= 1", "features_column")
        self.codec = LabelCodec(schema.field(lc).type, cols, where, f"label column '{lc}'",
                                lambda: label_summary(lc))
        self.read = ([self.id_column] if self.id_column else []) + [lc] + (
            self.feature_columns if self.feature_columns is not None else [self.features_column])

    @property
    def classes(self) -> tuple[Any, ...] | None:
        """The resolved label values (``classes[i]`` encoded as i), None when labels are stored as 0..K-1."""
        return self.codec.classes

    def resolved(self) -> DataColumns:
        """The settings with the feature columns and classes written out (what a fitted head stores)."""
        return self.columns.with_resolved(feature_columns=self.feature_columns, classes=self.classes)

    def signatures(self, schema: pa.Schema) -> dict[str, Any]:
        return {c: _type_signature(schema.field(c).type) for c in self.read}

    def ids(self, data: pa.RecordBatch | pa.Table, where: str, positions: np.ndarray) -> np.ndarray:
        if self.id_column is None:
            return positions
        return _ids_of(_column(data, self.id_column), where, f"id column '{self.id_column}'", positions)

    def convert(self, data: pa.RecordBatch | pa.Table, where: str, positions: np.ndarray,
                check_finite: bool = True) -> Chunk:
        ids = self.ids(data, where, positions)
        y = self.codec.encode(_column(data, self.label_column), where, ids)
        X = self.features(data, where, ids)
        if check_finite:
            check_finite_features(X, where, ids)
        return Chunk(X, y, ids)

    def features(self, data: pa.RecordBatch | pa.Table, where: str, ids: np.ndarray) -> np.ndarray:
        n = data.num_rows
        if self.feature_columns is not None:
            X = np.empty((n, len(self.feature_columns)), dtype=self.dtype)
            for j, c in enumerate(self.feature_columns):
                X[:, j] = _scalar_numpy(_column(data, c), where, f"feature column '{c}'", ids)
            return X
        fc, D = self.features_column, self.D
        arr = _column(data, fc)
        if arr.null_count:
            i = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
            raise ValidationError(f"{where}: features column '{fc}' has a null value at {_row_desc(ids, i)}")
        if self.list_kind == "list":
            lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
            if D is None and n:
                D = int(lengths[0])
            bad = np.flatnonzero(lengths != D)
            if bad.size:
                i = int(bad[0])
                raise ValidationError(f"{where}: features column '{fc}' has {int(lengths[i])} values at "
                                      f"{_row_desc(ids, i)}; expected {D} (every row must have the same length)")
        values = arr.flatten()
        if values.null_count:
            i = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0]) // D
            raise ValidationError(f"{where}: features column '{fc}' has a null value inside the list at "
                                  f"{_row_desc(ids, i)}")
        # a copy, not a view of Arrow's buffer: views kept the decoded batches alive longer and the peak memory
        # of a long stream grew with its length (tests/io/test_memory.py)
        return values.to_numpy(zero_copy_only=False, writable=True).reshape(n, D)

    def first_length(self, data: pa.RecordBatch | pa.Table, where: str) -> int:
        """D of a variable-length list column, from the first row of ``data``."""
        arr = _column(data, self.features_column)
        fc = self.features_column
        if arr.null_count and arr.is_null()[0].as_py():
            raise ValidationError(f"{where}: features column '{fc}' has a null value at row position 0")
        d = int(pc.list_value_length(arr)[0].as_py())
        if d == 0:
            raise ValidationError(f"{where}: features column '{fc}' has an empty list in its first row; "
                                  "expected >= 1 values")
        return d


class _TableSource(DataSource):
    """What the table sources share: a :class:`TablePlan`, ``classes`` and the resolved ``data_columns``."""

    plan: TablePlan
    defers_finite_check = True

    @property
    def n_features(self) -> int:
        return int(self.plan.D or 0)

    @property
    def dtype(self) -> np.dtype:
        """The dtype of ``Chunk.X``: float32 or float64 as stored."""
        return self.plan.dtype

    @property
    def classes(self) -> tuple[Any, ...] | None:  # type: ignore[override]
        return self.plan.classes

    @property
    def data_columns(self) -> DataColumns:  # type: ignore[override]
        return self.plan.resolved()

    # the attribute names of earlier releases
    @property
    def label_column(self) -> str:
        return self.plan.label_column

    @property
    def id_column(self) -> str | None:
        return self.plan.id_column

    @property
    def feature_columns(self) -> list[str] | None:
        return self.plan.feature_columns

    @property
    def features_column(self) -> str | None:
        return self.plan.features_column


def _columns_from(columns: DataColumns | None, label_column: str | None, id_column: str | None,
                  features_column: str | None, feature_columns: Sequence[str] | str | None) -> DataColumns:
    """Keyword column options folded into ``columns`` (the keywords win)."""
    kw = DataColumns(label_column=label_column, id_column=id_column, features_column=features_column,
                     feature_columns=feature_columns)
    return (columns or DataColumns()).merged(kw)


class ParquetSource(_TableSource):
    """A Parquet file, or a directory of ``*.parquet`` files read in name order as one table.

    Which columns are read is a :class:`~winnow.io.columns.DataColumns` (``columns=``, or the keyword
    options ``label_column``, ``id_column``, ``features_column``, ``feature_columns``): features are one
    list / large_list / fixed_size_list<float32|float64> column or numeric columns (by default every numeric
    column except the label and id columns); labels are integers, or any values mapped by ``classes`` /
    ``positive_label``; the id column (int64 or string) is optional, without it the id of a row is its global
    row number (0..n-1 across files in order). Files must agree on the types of the columns used.

    Reading is bounded in memory: ``chunks`` streams record batches of ``chunk_size`` rows, ``chunks(rows=)``
    reads only the row groups holding the requested rows, ``labels``/``ids`` read only their column. Opening
    reads the id column once to check that ids are unique (ids in increasing order need the memory of one
    block; other orders hold every id, 8 bytes per row for int64 ids).
    """

    def __init__(self, path: str | Path, *, label_column: str | None = None, id_column: str | None = None,
                 features_column: str | None = None, feature_columns: Sequence[str] | None = None,
                 columns: DataColumns | None = None, check_ids: bool = True) -> None:
        p = Path(path)
        self.name = str(p)
        if not p.exists():
            raise ValidationError(f"{p}: Parquet path does not exist")
        if p.is_dir():
            files = sorted(f for f in p.iterdir()
                           if f.suffix == ".parquet" and f.is_file() and not f.name.startswith((".", "_")))
            if not files:
                raise ValidationError(f"{p}: directory contains no .parquet files")
        else:
            files = [p]
        self._files = files
        cols = _columns_from(columns, label_column, id_column, features_column, feature_columns)
        self._meta: list[pq.FileMetaData] = []
        sigs: dict[str, Any] | None = None
        first_schema: pa.Schema | None = None
        for f in files:
            try:
                md = pq.read_metadata(f)
            except (pa.ArrowException, OSError) as e:
                raise ValidationError(f"{f}: not a readable Parquet file ({e})") from None
            self._meta.append(md)
            schema = md.schema.to_arrow_schema()
            if sigs is None:
                first_schema = schema
                self.plan = TablePlan(schema, cols, str(f), self._label_summary)
                sigs = self.plan.signatures(schema)
            else:
                self._check_agrees(f, schema, sigs, first_schema)
        counts = [md.num_rows for md in self._meta]
        self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._n = int(self._offsets[-1])
        if self._n == 0:
            raise ValidationError(f"{p}: the data is empty (0 rows)")
        if self.plan.D is None:
            self.plan.D = self._first_row_length()
        if check_ids and self.plan.id_column is not None:
            check_unique_ids(lambda: self._column_blocks(self.plan.id_column, "ids", 1 << 20), self.name)

    def _label_summary(self, lc: str) -> LabelSummary:
        out = []
        for i in range(len(self._meta)):
            with pq.ParquetFile(self._files[i], metadata=self._meta[i]) as pf:
                for batch in _iter_batches(pf, 1 << 20, [lc]):
                    out.append(batch.column(0))
        return summarize_labels(out)

    def _check_agrees(self, f: Path, schema: pa.Schema, sigs: dict[str, Any], first_schema: Any) -> None:
        first = self._files[0]
        for c, sig in sigs.items():
            if c not in schema.names:
                raise ValidationError(f"{f}: column '{c}' is missing but present in {first}; all files must "
                                      f"have the columns used; columns: {', '.join(schema.names)}")
            t = schema.field(c).type
            if _type_signature(t) != sig:
                raise ValidationError(f"{f}: column '{c}' has type {t} but {first} has "
                                      f"{_signature_str(sig)}; all files must agree on the column types")
        idc = self.plan.columns.id
        if self.plan.id_column is None and idc in schema.names and idc != self.plan.label_column:
            raise ValidationError(f"{f}: has an id column '{idc}' but {first} does not; all "
                                  f"files must agree (or none has one, and ids are global row numbers)")

    def _first_row_length(self) -> int:
        for i, f in enumerate(self._files):
            if self._meta[i].num_rows == 0:
                continue
            with pq.ParquetFile(f, metadata=self._meta[i]) as pf:
                for batch in _iter_batches(pf, 1, [self.plan.features_column]):
                    if batch.num_rows:
                        return self.plan.first_length(batch, str(f))
        raise ValidationError(f"{self.name}: the data is empty (0 rows)")  # pragma: no cover

    # --- interface
    @property
    def files(self) -> list[Path]:
        """The Parquet files read, in order."""
        return list(self._files)

    def __len__(self) -> int:
        return self._n

    def chunks(self, chunk_size: int = 65536, rows: np.ndarray | None = None, *,
               check_finite: bool = True) -> Iterator[Chunk]:
        chunk_size, rows = self._check_args(chunk_size, rows)
        pieces = self._stream(chunk_size, check_finite) if rows is None else self._take(rows, check_finite)
        return _rechunk(pieces, chunk_size)

    def labels(self) -> np.ndarray:
        return np.concatenate(list(self._column_blocks(self.plan.label_column, "labels", 1 << 20)))

    def label_blocks(self, block_size: int = 1 << 20) -> Iterator[np.ndarray]:
        block_size = _check_chunk_size(block_size)
        return self._column_blocks(self.plan.label_column, "labels", block_size)

    def ids(self) -> np.ndarray:
        if self.plan.id_column is None:
            return np.arange(self._n, dtype=np.int64)
        return np.concatenate(list(self._column_blocks(self.plan.id_column, "ids", 1 << 20)))

    # --- reading
    def _open(self, i: int) -> pq.ParquetFile:
        return pq.ParquetFile(self._files[i], metadata=self._meta[i])

    def _stream(self, chunk_size: int, check_finite: bool = True) -> Iterator[Chunk]:
        for i in range(len(self._files)):
            if self._meta[i].num_rows == 0:
                continue
            pos = int(self._offsets[i])
            where = str(self._files[i])
            with self._open(i) as pf:
                for batch in _iter_batches(pf, chunk_size, self.plan.read):
                    m = batch.num_rows
                    if m:
                        yield self.plan.convert(batch, where, np.arange(pos, pos + m, dtype=np.int64),
                                                check_finite)
                        pos += m

    def _take(self, rows: np.ndarray, check_finite: bool = True) -> Iterator[Chunk]:
        bounds = np.searchsorted(rows, self._offsets)
        for i in range(len(self._files)):
            sel = rows[bounds[i]:bounds[i + 1]]
            if sel.size == 0:
                continue
            local = sel - self._offsets[i]
            md = self._meta[i]
            sizes = [md.row_group(g).num_rows for g in range(md.num_row_groups)]
            gstarts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
            groups = np.searchsorted(gstarts, local, side="right") - 1
            cuts = np.flatnonzero(np.diff(groups)) + 1
            starts = np.concatenate([[0], cuts])
            with self._open(i) as pf:
                for start, part_local, part_global in zip(starts, np.split(local, cuts), np.split(sel, cuts),
                                                          strict=True):
                    g = int(groups[start])
                    table = pf.read_row_group(g, columns=self.plan.read)
                    lo = int(part_local[0] - gstarts[g])
                    if part_local[-1] - part_local[0] + 1 == part_local.shape[0]:  # consecutive rows: no gather
                        table = table.slice(lo, part_local.shape[0])
                    else:
                        table = table.take(pa.array(part_local - gstarts[g]))
                    yield self.plan.convert(table, str(self._files[i]), part_global, check_finite)

    def _column_blocks(self, column: str, kind: str, block_size: int) -> Iterator[np.ndarray]:
        """The labels (encoded) or the ids in row order, in blocks of at most ``block_size`` rows."""
        for i in range(len(self._files)):
            if self._meta[i].num_rows == 0:
                continue
            where = str(self._files[i])
            pos = int(self._offsets[i])
            with self._open(i) as pf:
                for batch in _iter_batches(pf, block_size, [column]):
                    m = batch.num_rows
                    positions = np.arange(pos, pos + m, dtype=np.int64)
                    if kind == "labels":
                        yield self.plan.codec.encode(batch.column(0), where,
                                                     None if self.plan.id_column else positions)
                    else:
                        yield _ids_of(batch.column(0), where, f"id column '{column}'", positions)
                    pos += m


# ---------------------------------------------------------------------------------------- open_source
#: the inputs accepted, in the words of the command line (a path) and of Python (any other object)
ACCEPTED_FILES = ".csv, .tsv (optionally .gz), .parquet, a directory of Parquet files, .npz"
_ACCEPTED = (f"a path ({ACCEPTED_FILES}), a pandas or polars DataFrame, a PyArrow Table, an (X, y) or "
             "(X, y, ids) tuple of arrays, Features or a DataSource")
_CSV_SUFFIXES = (".csv", ".tsv", ".csv.gz", ".tsv.gz", ".csv.bz2", ".tsv.bz2")


def is_csv_path(p: Path) -> bool:
    return p.name.lower().endswith(_CSV_SUFFIXES)


def _is_frame(spec: Any) -> bool:
    """A pandas or polars DataFrame, or a PyArrow Table / RecordBatch (without importing pandas/polars)."""
    import sys

    if isinstance(spec, (pa.Table, pa.RecordBatch)):
        return True
    for mod in ("pandas", "polars"):
        m = sys.modules.get(mod)
        if m is not None and isinstance(spec, m.DataFrame):
            return True
    return False


def _is_features(spec: Any) -> bool:
    return type(spec).__name__ == "Features" and hasattr(spec, "as_tuple") and hasattr(spec, "path")


def open_source(spec: Any, *, argument: str = "data", columns: DataColumns | None = None,
                defaults: DataColumns | None = None, **kwargs: Any) -> DataSource:
    """Turn ``spec`` into a :class:`DataSource`.

    ``spec``: a DataSource (returned as is); an ``(X, y)`` or ``(X, y, ids)`` tuple of arrays or
    :class:`~winnow.core.models.Features` (-> :class:`ArraySource`, ``name=`` passed on); a pandas or
    polars DataFrame or a PyArrow Table / RecordBatch (-> :class:`~winnow.io.tables.ArrowSource`); or a
    path: ``*.csv`` / ``*.tsv`` (optionally ``.gz``) -> :class:`~winnow.io.tables.CsvSource`; ``*.parquet``
    or a directory -> :class:`ParquetSource`; ``*.npz`` -> :class:`NpzSource`.
    ``columns`` (:class:`~winnow.io.columns.DataColumns`, or the keywords ``label_column``, ``id_column``,
    ``features_column``, ``feature_columns``, ``exclude``, ``classes``, ``positive_label``) says how to read a
    table; ``defaults`` are settings used where ``columns`` leaves a field unset (a head's stored settings:
    on arrays and .npz only its ``classes`` apply, and only to labels that are not numbers: integer labels in
    arrays are taken as encoded 0..K-1). ``argument`` names the argument in error messages.
    """
    from ..validation import fail
    from .columns import _FEATURE_FIELDS

    col_kw = {k: kwargs.pop(k) for k in list(kwargs) if k in DataColumns.__dataclass_fields__}
    if col_kw:
        columns = (columns or DataColumns()).merged(DataColumns(**col_kw))
    explicit = columns or DataColumns()
    cols = (defaults or DataColumns()).merged(explicit)
    mapping = DataColumns(classes=cols.classes, positive_label=cols.positive_label)

    def array_mapping(y: Any) -> DataColumns:
        # integer labels in arrays are taken as encoded already, unless the mapping is given explicitly
        if explicit.maps_labels or np.asarray(y).dtype.kind not in "biuf":
            return mapping
        return DataColumns()
    names_given = [k for k in ("label_column", "id_column", *_FEATURE_FIELDS) if explicit.is_set(k)]
    if isinstance(spec, DataSource):
        if kwargs or explicit != DataColumns():
            raise ValidationError(f"{argument}: options {sorted(kwargs) + sorted(explicit.to_dict())} cannot be "
                                  f"applied to an already opened data source")
        return spec
    if _is_features(spec):
        if spec.X is None:
            spec = spec.path
        else:
            spec = tuple(spec.as_tuple())
    if isinstance(spec, tuple):
        if len(spec) not in (2, 3):
            raise ValidationError(f"{argument}: a tuple must be (X, y) or (X, y, ids); got a tuple of "
                                  f"{len(spec)} items")
        if names_given:
            raise fail(f"{argument}: {', '.join(names_given)} name table columns and do not apply to arrays",
                       *names_given)
        try:
            return ArraySource(*spec, columns=array_mapping(spec[1]), **kwargs)
        except TypeError as e:
            raise ValidationError(f"{argument}: invalid options for arrays ({e})") from None
    if _is_frame(spec):
        from .tables import ArrowSource

        return ArrowSource(spec, columns=cols, name=kwargs.pop("name", argument), **kwargs)
    if isinstance(spec, (str, Path)):
        p = Path(spec)
        if not p.exists():
            raise ValidationError(f"{argument}: path {p} does not exist; expected {ACCEPTED_FILES}")
        suffix = p.suffix.lower()
        try:
            if p.is_dir() or suffix == ".parquet":
                return ParquetSource(p, columns=cols, **kwargs)
            if is_csv_path(p):
                from .tables import CsvSource

                return CsvSource(p, columns=cols, **kwargs)
        except TypeError as e:
            raise ValidationError(f"{argument}: invalid options for {p.name} ({e})") from None
        if suffix == ".npz":
            if kwargs or names_given:
                raise fail(f"{argument}: {', '.join(sorted(kwargs) + names_given)} do not apply to .npz data "
                           f"(arrays X, y and optional id are read by name)", *names_given)
            src = NpzSource(p)
            mapped = array_mapping(src.y[:0])
            if mapped != DataColumns():
                src._columns = mapped
                src._set_labels(mapped)
            return src
        raise fail(f"{argument}: {p} has an unsupported extension {p.suffix or '(none)'}; expected "
                   f"{ACCEPTED_FILES}", argument)
    raise fail(f"{argument}: cannot read data from a {type(spec).__name__}; expected {_ACCEPTED}", argument)

