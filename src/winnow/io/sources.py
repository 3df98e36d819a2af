"""Training and test data as streams of chunks.

winnow never holds a whole data set in memory: every step reads a :class:`DataSource` as an iterator of
:class:`Chunk` objects (``X`` (c, D) float32/float64, ``y`` (c,) int64, ``ids`` (c,) int64). Sources:

* :class:`ArraySource` - arrays already in memory (or memory-mapped);
* :class:`NpzSource` - an ``.npz`` file with arrays ``X``, ``y`` and optional ``id`` (uncompressed members
  are memory-mapped, so only the rows being read are paged in);
* :class:`ParquetSource` - a Parquet file or a directory of them, read with bounded memory.

:func:`open_source` turns whatever a user passes (a source, a tuple of arrays or a path) into a source.
Every chunk is validated as it streams (finite features, integer labels, integer ids); an error names the
source, the column or argument and the first offending row id.
"""

from __future__ import annotations

import struct
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import ValidationError

__all__ = ["Chunk", "DataSource", "ArraySource", "NpzSource", "ParquetSource", "open_source"]

_INT64_MAX = np.iinfo(np.int64).max


# --------------------------------------------------------------------------------------------- chunk
@dataclass(frozen=True)
class Chunk:
    """A block of consecutive (or selected) rows of a data source.

    ``X``: (c, D) float32 or float64, C-contiguous, all finite (the stored dtype, never upcast);
    ``y``: (c,) int64 labels; ``ids``: (c,) int64 row ids. Consumers must not modify the arrays.
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
    return f"row position {i}" if row_ids is None else f"row id {int(row_ids[i])}"


def _check_feature_dtype(dtype: np.dtype, where: str, what: str) -> None:
    if dtype.kind not in "biuf":
        raise ValidationError(f"{where}: {what} must be a real numeric array (float32 or float64); "
                              f"got dtype {dtype}")


def _as_features(X: np.ndarray, where: str, ids: np.ndarray) -> np.ndarray:
    """A (c, D) block as C-contiguous float32/float64, checked finite. float32 and float64 are kept as
    stored; float16 becomes float32 and other numeric dtypes float64."""
    if X.dtype == np.float32 or X.dtype == np.float64:
        X = np.ascontiguousarray(X)
    elif X.dtype == np.float16:
        X = np.ascontiguousarray(X, dtype=np.float32)
    else:
        X = np.ascontiguousarray(X, dtype=np.float64)
    _check_finite(X, where, ids)
    return X


def _check_finite(X: np.ndarray, where: str, ids: np.ndarray) -> None:
    # A cheap test first (one read of the block, in its own dtype): the sum of all entries is finite iff the
    # block holds no NaN/Inf, barring overflow, which the exact test below resolves.
    with np.errstate(all="ignore"):
        s = X.sum()
    if np.isfinite(s):
        return
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValidationError(f"{where}: features must be finite but contain NaN or Inf (first at row id "
                              f"{int(ids[i])})")


# -------------------------------------------------------------------------------------------- sources
class DataSource(ABC):
    """A data set read as a stream of :class:`Chunk` objects, in storage order.

    Subclasses implement ``n_features``, ``__len__`` and ``chunks``; ``labels`` and ``ids`` default to a
    full pass over ``chunks`` and should be overridden when a cheaper way exists.
    """

    name: str = "data"

    @property
    @abstractmethod
    def n_features(self) -> int:
        """The feature dimension D."""

    @abstractmethod
    def __len__(self) -> int:
        """The number of rows n, known without reading the data."""

    @abstractmethod
    def chunks(self, chunk_size: int = 65536, rows: np.ndarray | None = None) -> Iterator[Chunk]:
        """Yield chunks of at most ``chunk_size`` rows in storage order.

        ``rows``: optional sorted, unique int64 array of row positions (0..n-1); only those rows are read.
        Arguments are validated when called, data errors are raised while iterating.
        """

    def labels(self) -> np.ndarray:
        """All labels, (n,) int64."""
        parts = [ch.y for ch in self.chunks()]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def ids(self) -> np.ndarray:
        """All row ids, (n,) int64."""
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

    def chunks(self, chunk_size: int = 65536, rows: np.ndarray | None = None) -> Iterator[Chunk]:
        chunk_size, rows = self._check_args(chunk_size, rows)
        return self._iter(chunk_size, rows)

    def _iter(self, chunk_size: int, rows: np.ndarray | None) -> Iterator[Chunk]:
        n = len(self)
        if rows is None:
            for s in range(0, n, chunk_size):
                e = min(s + chunk_size, n)
                yield self._chunk(slice(s, e), np.arange(s, e, dtype=np.int64))
        else:
            for s in range(0, rows.shape[0], chunk_size):
                idx = rows[s:s + chunk_size]
                yield self._chunk(idx, idx)

    def _chunk(self, index: slice | np.ndarray, positions: np.ndarray) -> Chunk:
        if self.id is None:
            ids = positions
        else:
            ids = _to_int64(self.id[index], self.name, self._idname, positions, kind="ids", allow_bool=False)
        y = _to_int64(self.y[index], self.name, self._yname, ids)
        return Chunk(_as_features(self.X[index], self.name, ids), y, ids)

    def labels(self) -> np.ndarray:
        return _to_int64(self.y[:], self.name, self._yname, None)

    def ids(self) -> np.ndarray:
        if self.id is None:
            return np.arange(len(self), dtype=np.int64)
        return _to_int64(self.id[:], self.name, self._idname, None, kind="ids", allow_bool=False)

    _yname = "y"
    _idname = "ids"


class ArraySource(_ArrayBacked):
    """Arrays in memory (or memory-mapped): ``X`` (n, D) numeric, ``y`` (n,) integer labels, optional
    ``ids`` (n,) unique integers (default: 0..n-1).

    Labels and ids are validated and converted to int64 up front (cheap); features are checked finite as
    they stream. float32/float64 features are yielded as stored, without copying when C-contiguous.
    """

    def __init__(self, X: Any, y: Any, ids: Any = None, name: str = "arrays") -> None:
        self.name = str(name)
        X = np.asarray(X) if not isinstance(X, np.ndarray) else X
        y = np.asarray(y)
        ids_arr = None if ids is None else np.asarray(ids)
        self._validate_shapes(X, y, ids_arr, "X", "y", "ids")
        if ids_arr is not None:
            ids_arr = _to_int64(ids_arr, self.name, "ids", None, kind="ids", allow_bool=False)
            uniq, counts = np.unique(ids_arr, return_counts=True)
            if uniq.shape[0] != ids_arr.shape[0]:
                dup = int(uniq[np.argmax(counts > 1)])
                raise ValidationError(f"{self.name}: ids must be unique; id {dup} appears "
                                      f"{int(counts.max())} times or more")
        self.X = X
        self.id = ids_arr
        self.y = _to_int64(y, self.name, "y", ids_arr if ids_arr is not None else np.arange(y.shape[0]))


class NpzSource(_ArrayBacked):
    """An ``.npz`` file with arrays ``X`` (n, D), ``y`` (n,) and optional ``id`` (n,) (``ids`` is accepted
    too). Members stored uncompressed (``np.savez``) are memory-mapped copy-on-write, so only the rows read
    are paged in; compressed members (``np.savez_compressed``) are loaded into memory.

    Labels and ids are validated per chunk as they stream, like the features.
    """

    _yname = "array 'y'"
    _idname = "array 'id'"

    def __init__(self, path: str | Path) -> None:
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
        if self.y.dtype.kind not in "biuf":
            raise ValidationError(f"{p}: array 'y' must hold integer labels; got dtype {self.y.dtype}")
        if self.id is not None and self.id.dtype.kind not in "iuf":
            raise ValidationError(f"{p}: {self._idname} must hold integer ids; got dtype {self.id.dtype}")


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


class ParquetSource(DataSource):
    """A Parquet file, or a directory of ``*.parquet`` files read in name order as one table.

    Features are one list / large_list / fixed_size_list<float32|float64> column (``features_column``) or
    the numeric columns named by ``feature_columns``. ``label_column`` holds integer labels (bools and
    integral floats are converted). ``id_column`` is optional; without it the id of a row is its global
    row number (0..n-1 across files in order). Files must agree on the types of the columns used.

    Reading is bounded in memory: ``chunks`` streams record batches of ``chunk_size`` rows, ``chunks(rows=)``
    reads only the row groups holding the requested rows, ``labels``/``ids`` read only their column.
    """

    def __init__(self, path: str | Path, *, label_column: str = "label", id_column: str = "id",
                 features_column: str = "features", feature_columns: Sequence[str] | None = None) -> None:
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
        self.label_column = label_column
        if feature_columns is not None:
            if isinstance(feature_columns, str):
                feature_columns = [feature_columns]
            feature_columns = [str(c) for c in feature_columns]
            if not feature_columns:
                raise ValidationError(f"{p}: feature_columns is empty; name at least one numeric column")
        self.feature_columns = feature_columns
        self.features_column = None if feature_columns is not None else features_column

        self._id_request = id_column
        self._meta: list[pq.FileMetaData] = []
        sigs: dict[str, Any] | None = None
        for f in files:
            try:
                md = pq.read_metadata(f)
            except (pa.ArrowException, OSError) as e:
                raise ValidationError(f"{f}: not a readable Parquet file ({e})") from None
            schema = md.schema.to_arrow_schema()
            if sigs is None:
                self.id_column: str | None = id_column if id_column in schema.names else None
                sigs = self._plan(f, schema)
            else:
                self._check_agrees(f, schema, sigs)
            self._meta.append(md)
        counts = [md.num_rows for md in self._meta]
        self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._n = int(self._offsets[-1])
        if self._n == 0:
            raise ValidationError(f"{p}: the data is empty (0 rows)")
        if self.features_column is not None and self._list_kind == "list":
            self._D = self._first_row_length()
        self._columns = ([self.id_column] if self.id_column else []) + [label_column] + (
            self.feature_columns if self.feature_columns is not None else [self.features_column])

    # --- schema
    def _plan(self, f: Path, schema: pa.Schema) -> dict[str, Any]:
        """Check the first file's schema and record the column types the other files must match."""
        names = schema.names
        found = ", ".join(names)
        if self.label_column not in names:
            raise ValidationError(f"{f}: label column '{self.label_column}' not found (pass label_column=); "
                                  f"columns: {found}")
        lt = schema.field(self.label_column).type
        if not (pa.types.is_integer(lt) or pa.types.is_floating(lt) or pa.types.is_boolean(lt)):
            raise ValidationError(f"{f}: label column '{self.label_column}' must hold integer labels; "
                                  f"got type {lt}")
        if self.id_column is not None:
            it = schema.field(self.id_column).type
            if not (pa.types.is_integer(it) or pa.types.is_floating(it)):
                raise ValidationError(f"{f}: id column '{self.id_column}' must hold integer ids; "
                                      f"got type {it}")
        used = [self.label_column] + ([self.id_column] if self.id_column else [])
        if self.feature_columns is not None:
            missing = [c for c in self.feature_columns if c not in names]
            if missing:
                raise ValidationError(f"{f}: feature_columns {missing} not found; columns: {found}")
            dtypes = []
            for c in self.feature_columns:
                t = schema.field(c).type
                if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
                    raise ValidationError(f"{f}: feature column '{c}' must be numeric; got type {t}")
                dtypes.append(t)
            self._dtype = (np.dtype(np.float32) if all(t == pa.float32() for t in dtypes)
                           else np.dtype(np.float64))
            self._D = len(self.feature_columns)
            self._list_kind = "columns"
            used += self.feature_columns
        else:
            fc = self.features_column
            if fc not in names:
                raise ValidationError(
                    f"{f}: features column '{fc}' not found; pass features_column= (a list<float> column) or "
                    f"feature_columns= (numeric columns); columns: {found}")
            t = schema.field(fc).type
            is_fixed = pa.types.is_fixed_size_list(t)
            if not (is_fixed or pa.types.is_list(t) or pa.types.is_large_list(t)) or \
                    t.value_type not in (pa.float32(), pa.float64()):
                raise ValidationError(f"{f}: features column '{fc}' must be a list, large_list or "
                                      f"fixed_size_list of float32 or float64; got type {t}")
            self._dtype = np.dtype(np.float32 if t.value_type == pa.float32() else np.float64)
            self._list_kind = "fixed" if is_fixed else "list"
            if is_fixed:
                self._D = int(t.list_size)
                if self._D == 0:
                    raise ValidationError(f"{f}: features column '{fc}' has list size 0; expected >= 1")
            used.append(fc)
        return {c: _type_signature(schema.field(c).type) for c in used}

    def _check_agrees(self, f: Path, schema: pa.Schema, sigs: dict[str, Any]) -> None:
        first = self._files[0]
        for c, sig in sigs.items():
            if c not in schema.names:
                raise ValidationError(f"{f}: column '{c}' is missing but present in {first}; all files must "
                                      f"have the columns used; columns: {', '.join(schema.names)}")
            t = schema.field(c).type
            if _type_signature(t) != sig:
                raise ValidationError(f"{f}: column '{c}' has type {t} but {first} has "
                                      f"{_signature_str(sig)}; all files must agree on the column types")
        if self.id_column is None and self._id_request in schema.names:
            raise ValidationError(f"{f}: has an id column '{self._id_request}' but {first} does not; all "
                                  f"files must agree (or none has one, and ids are global row numbers)")

    def _first_row_length(self) -> int:
        for i, f in enumerate(self._files):
            if self._meta[i].num_rows == 0:
                continue
            with pq.ParquetFile(f, metadata=self._meta[i]) as pf:
                for batch in _iter_batches(pf, 1, [self.features_column]):
                    if batch.num_rows:
                        arr = batch.column(0)
                        if arr.null_count:
                            raise ValidationError(f"{f}: features column '{self.features_column}' has a null "
                                                  f"value at row position 0")
                        d = int(pc.list_value_length(arr)[0].as_py())
                        if d == 0:
                            raise ValidationError(f"{f}: features column '{self.features_column}' has an "
                                                  f"empty list in its first row; expected >= 1 values")
                        return d
        raise ValidationError(f"{self.name}: the data is empty (0 rows)")  # pragma: no cover

    # --- interface
    @property
    def n_features(self) -> int:
        return int(self._D)

    @property
    def dtype(self) -> np.dtype:
        """The dtype of ``Chunk.X``: float32 or float64 as stored."""
        return self._dtype

    @property
    def files(self) -> list[Path]:
        """The Parquet files read, in order."""
        return list(self._files)

    def __len__(self) -> int:
        return self._n

    def chunks(self, chunk_size: int = 65536, rows: np.ndarray | None = None) -> Iterator[Chunk]:
        chunk_size, rows = self._check_args(chunk_size, rows)
        pieces = self._stream(chunk_size) if rows is None else self._take(rows)
        return _rechunk(pieces, chunk_size)

    def labels(self) -> np.ndarray:
        return self._read_column(self.label_column, "labels")

    def label_blocks(self, block_size: int = 1 << 20) -> Iterator[np.ndarray]:
        block_size = _check_chunk_size(block_size)
        return self._column_blocks(self.label_column, "labels", block_size)

    def ids(self) -> np.ndarray:
        if self.id_column is None:
            return np.arange(self._n, dtype=np.int64)
        return self._read_column(self.id_column, "ids")

    # --- reading
    def _open(self, i: int) -> pq.ParquetFile:
        return pq.ParquetFile(self._files[i], metadata=self._meta[i])

    def _stream(self, chunk_size: int) -> Iterator[Chunk]:
        for i in range(len(self._files)):
            if self._meta[i].num_rows == 0:
                continue
            pos = int(self._offsets[i])
            with self._open(i) as pf:
                for batch in _iter_batches(pf, chunk_size, self._columns):
                    m = batch.num_rows
                    if m:
                        yield self._convert(batch, i, np.arange(pos, pos + m, dtype=np.int64))
                        pos += m

    def _take(self, rows: np.ndarray) -> Iterator[Chunk]:
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
                    table = pf.read_row_group(g, columns=self._columns)
                    table = table.take(pa.array(part_local - gstarts[g]))
                    yield self._convert(table, i, part_global)

    def _convert(self, data: pa.RecordBatch | pa.Table, i: int, positions: np.ndarray) -> Chunk:
        where = str(self._files[i])
        if self.id_column is not None:
            iname = f"id column '{self.id_column}'"
            raw = _scalar_numpy(_column(data, self.id_column), where, iname, positions)
            ids = _to_int64(raw, where, iname, positions, kind="ids", allow_bool=False)
        else:
            ids = positions
        lname = f"label column '{self.label_column}'"
        y = _to_int64(_scalar_numpy(_column(data, self.label_column), where, lname, ids), where, lname, ids)
        X = self._features(data, where, ids)
        _check_finite(X, where, ids)
        return Chunk(X, y, ids)

    def _features(self, data: pa.RecordBatch | pa.Table, where: str, ids: np.ndarray) -> np.ndarray:
        n, D = data.num_rows, self._D
        if self.feature_columns is not None:
            X = np.empty((n, D), dtype=self._dtype)
            for j, c in enumerate(self.feature_columns):
                X[:, j] = _scalar_numpy(_column(data, c), where, f"feature column '{c}'", ids)
            return X
        fc = self.features_column
        arr = _column(data, fc)
        if arr.null_count:
            i = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
            raise ValidationError(f"{where}: features column '{fc}' has a null value at row id {int(ids[i])}")
        if self._list_kind == "list":
            lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
            bad = np.flatnonzero(lengths != D)
            if bad.size:
                i = int(bad[0])
                raise ValidationError(f"{where}: features column '{fc}' has {int(lengths[i])} values at row "
                                      f"id {int(ids[i])}; expected {D} (every row must have the same length)")
        values = arr.flatten()
        if values.null_count:
            i = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0]) // D
            raise ValidationError(f"{where}: features column '{fc}' has a null value inside the list at row "
                                  f"id {int(ids[i])}")
        return values.to_numpy(zero_copy_only=False, writable=True).reshape(n, D)

    def _read_column(self, column: str, kind: str) -> np.ndarray:
        return np.concatenate(list(self._column_blocks(column, kind, 1 << 20)))

    def _column_blocks(self, column: str, kind: str, block_size: int) -> Iterator[np.ndarray]:
        """One integer column (labels or ids) in row order, in blocks of at most ``block_size`` rows."""
        what = f"{'label' if kind == 'labels' else 'id'} column '{column}'"
        for i in range(len(self._files)):
            if self._meta[i].num_rows == 0:
                continue
            where = str(self._files[i])
            pos = int(self._offsets[i])
            with self._open(i) as pf:
                for batch in _iter_batches(pf, block_size, [column]):
                    m = batch.num_rows
                    positions = np.arange(pos, pos + m, dtype=np.int64)
                    vals = _scalar_numpy(batch.column(0), where, what, None)
                    yield _to_int64(vals, where, what, None if self.id_column else positions, kind=kind,
                                    allow_bool=kind == "labels")
                    pos += m


# ---------------------------------------------------------------------------------------- open_source
_ACCEPTED = ("a DataSource, an (X, y) or (X, y, ids) tuple of arrays, or a path to an .npz file, a .parquet "
             "file or a directory of .parquet files")


def open_source(spec: Any, *, argument: str = "data", **kwargs: Any) -> DataSource:
    """Turn ``spec`` into a :class:`DataSource`.

    ``spec``: a DataSource (returned as is), an ``(X, y)`` or ``(X, y, ids)`` tuple of arrays
    (-> :class:`ArraySource`, kwargs such as ``name=`` passed on), or a path (str/Path): ``*.npz`` ->
    :class:`NpzSource`; ``*.parquet`` or a directory -> :class:`ParquetSource` (kwargs passed on).
    ``argument`` names the argument in error messages.
    """
    if isinstance(spec, DataSource):
        if kwargs:
            raise ValidationError(f"{argument}: options {sorted(kwargs)} cannot be applied to an already "
                                  f"opened data source")
        return spec
    if isinstance(spec, tuple):
        if len(spec) not in (2, 3):
            raise ValidationError(f"{argument}: a tuple must be (X, y) or (X, y, ids); got a tuple of "
                                  f"{len(spec)} items")
        try:
            return ArraySource(*spec, **kwargs)
        except TypeError as e:
            raise ValidationError(f"{argument}: invalid options for arrays ({e})") from None
    if isinstance(spec, (str, Path)):
        p = Path(spec)
        if not p.exists():
            raise ValidationError(f"{argument}: path {p} does not exist; expected {_ACCEPTED}")
        suffix = p.suffix.lower()
        if p.is_dir() or suffix == ".parquet":
            try:
                return ParquetSource(p, **kwargs)
            except TypeError as e:
                raise ValidationError(f"{argument}: invalid options for Parquet data ({e})") from None
        if suffix == ".npz":
            if kwargs:
                raise ValidationError(f"{argument}: options {sorted(kwargs)} do not apply to .npz data "
                                      f"(arrays X, y and optional id are read by name)")
            return NpzSource(p)
        raise ValidationError(f"{argument}: {p} has an unsupported extension {p.suffix or '(none)'}; "
                              f"expected {_ACCEPTED}")
    raise ValidationError(f"{argument}: cannot read data from a {type(spec).__name__}; expected {_ACCEPTED}")
