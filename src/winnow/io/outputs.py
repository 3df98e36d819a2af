"""Safe output files: never overwrite by accident, never leave a half-written file behind.

Every writer here writes to a hidden temporary file next to the target (``.NAME.XXXXXXXX.tmp.EXT``) and
renames it over the target with :func:`os.replace` only once the content is complete; on an error the
temporary file is removed and the target is untouched. An existing target is refused unless
``overwrite=True`` (:class:`~winnow.errors.OutputExistsError`, naming the command-line argument).
"""

from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import OutputExistsError, ValidationError

__all__ = ["check_output_path", "atomic_path", "ParquetStreamWriter", "write_json", "save_npz"]


def check_output_path(path: str | os.PathLike[str], overwrite: bool, argument: str = "--out") -> Path:
    """Check that ``path`` may be written and create its parent directories; return it as a Path.

    Raises OutputExistsError if ``path`` exists and ``overwrite`` is false, or if it is a directory.
    """
    p = Path(path)
    if p.is_dir():
        raise OutputExistsError(f"{argument} {p} is an existing directory; expected a file path",
                                parameters=(argument,))
    if (p.exists() or p.is_symlink()) and not overwrite:
        raise OutputExistsError(f"{argument} {p} exists; pass --overwrite to replace it", parameters=(argument,))
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValidationError(f"{argument} {p}: cannot create the parent directory {p.parent} "
                              f"(a file of that name is in the way)", parameters=(argument,)) from None
    return p


def _tmp_path(p: Path) -> Path:
    """A hidden sibling of ``p`` ending in ``.tmp`` plus ``p``'s own extension (writers that look at the
    suffix, like np.savez, then behave)."""
    return p.with_name(f".{p.name}.{secrets.token_hex(4)}.tmp{p.suffix}")


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _commit(tmp: Path, p: Path, overwrite: bool, argument: str) -> None:
    """Move a finished ``tmp`` to ``p`` (re-checking that ``p`` did not appear meanwhile)."""
    if not overwrite and (p.exists() or p.is_symlink()):
        _remove(tmp)
        raise OutputExistsError(f"{argument} {p} exists (created while writing); pass --overwrite to "
                                f"replace it", parameters=(argument,))
    os.replace(tmp, p)


@contextmanager
def atomic_path(path: str | os.PathLike[str], overwrite: bool = False,
                argument: str = "--out") -> Iterator[Path]:
    """Yield a temporary path next to ``path`` to write to; on success it is renamed to ``path``.

    On an exception (including KeyboardInterrupt) the temporary file is removed, nothing appears at
    ``path`` and the exception propagates. The body must create the file at the yielded path.
    """
    p = check_output_path(path, overwrite, argument)
    tmp = _tmp_path(p)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{argument} {p}: the writer did not create the temporary file {tmp}")
        _commit(tmp, p, overwrite, argument)
    except BaseException:
        _remove(tmp)
        raise


class ParquetStreamWriter:
    """Write a Parquet file incrementally, one row group per ``write``, published atomically.

    ``schema``: the columns and types; ``metadata``: key/value strings stored in the file's schema
    metadata (e.g. to document sign conventions). Use as a context manager: the file appears at ``path``
    only when the block exits normally; on an exception the temporary file is removed. Outside a ``with``
    block call ``close()`` (publish) or ``abort()`` (discard).
    """

    def __init__(self, path: str | os.PathLike[str], schema: pa.Schema, overwrite: bool = False,
                 argument: str = "--out", metadata: Mapping[str, str] | None = None) -> None:
        if not isinstance(schema, pa.Schema):
            raise ValidationError(f"{argument}: schema must be a pyarrow.Schema; got {type(schema).__name__}")
        if metadata:
            bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
            if bad:
                raise ValidationError(f"{argument}: metadata keys and values must be strings; bad entries "
                                      f"for keys {bad!r}")
            schema = schema.with_metadata({**(schema.metadata or {}), **{k.encode(): v.encode()
                                                                         for k, v in metadata.items()}})
        self.path = check_output_path(path, overwrite, argument)
        self.schema = schema
        self.overwrite = overwrite
        self.argument = argument
        self.rows_written = 0
        self._tmp = _tmp_path(self.path)
        self._writer: pq.ParquetWriter | None = None
        self._closed = False

    def _ensure_open(self) -> pq.ParquetWriter:
        if self._closed:
            raise ValidationError(f"{self.argument} {self.path}: the writer is already closed")
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._tmp, self.schema)
        return self._writer

    def write(self, **columns: Any) -> None:
        """Append rows given as one array per column (1-D, or 2-D (c, k) for list columns), all of the
        same length; every schema column must be given, no others."""
        names = self.schema.names
        missing = [c for c in names if c not in columns]
        extra = [c for c in columns if c not in names]
        if missing or extra:
            raise ValidationError(f"{self.argument} {self.path}: write() expects exactly the columns "
                                  f"{names}; missing {missing}, unexpected {extra}")
        arrays = [_to_arrow(columns[f.name], f, self.argument) for f in self.schema]
        lengths = {f.name: len(a) for f, a in zip(self.schema, arrays, strict=True)}
        if len(set(lengths.values())) > 1:
            raise ValidationError(f"{self.argument} {self.path}: write() columns differ in length: {lengths}")
        self.write_table(pa.Table.from_arrays(arrays, schema=self.schema))

    def write_table(self, table: pa.Table) -> None:
        """Append the rows of ``table``, whose columns must match the schema (they are cast if needed)."""
        if not table.schema.equals(self.schema, check_metadata=False):
            try:
                table = table.select(self.schema.names).cast(self.schema)
            except (KeyError, ValueError, pa.ArrowException) as e:
                raise ValidationError(f"{self.argument} {self.path}: table does not match the schema "
                                      f"{self.schema.names} ({e})") from None
        else:
            table = table.replace_schema_metadata(self.schema.metadata)
        self._ensure_open().write_table(table)
        self.rows_written += table.num_rows

    def close(self) -> Path:
        """Finish the file and rename it to ``path`` (a file with no rows is written if nothing was)."""
        if self._closed:
            return self.path
        try:
            self._ensure_open().close()
            self._closed = True
            _commit(self._tmp, self.path, self.overwrite, self.argument)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Discard everything written: close and remove the temporary file; ``path`` is untouched."""
        self._closed = True
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # the file is being discarded anyway
                pass
            self._writer = None
        _remove(self._tmp)

    def __enter__(self) -> ParquetStreamWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _to_arrow(values: Any, field: pa.Field, argument: str) -> pa.Array:
    """A numpy column (1-D, or 2-D for list types) as an Arrow array of ``field``'s type."""
    t = field.type
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values.cast(t) if values.type != t else values
    a = np.asarray(values)
    try:
        is_list = pa.types.is_list(t) or pa.types.is_large_list(t)
        if a.ndim == 2 and (is_list or pa.types.is_fixed_size_list(t)):
            n, k = a.shape
            flat = pa.array(np.ascontiguousarray(a).reshape(-1), type=t.value_type)
            if pa.types.is_fixed_size_list(t):
                return pa.FixedSizeListArray.from_arrays(flat, type=t)
            odtype = np.int64 if pa.types.is_large_list(t) else np.int32
            offsets = pa.array(np.arange(n + 1, dtype=odtype) * k)
            cls = pa.LargeListArray if pa.types.is_large_list(t) else pa.ListArray
            return cls.from_arrays(offsets, flat, type=t)
        if a.ndim != 1:
            raise ValidationError(f"{argument}: column '{field.name}' must be 1-D; got shape {a.shape}")
        return pa.array(a, type=t)
    except (pa.ArrowException, ValueError, TypeError) as e:
        if isinstance(e, ValidationError):
            raise
        raise ValidationError(f"{argument}: column '{field.name}' cannot be stored as {t} ({e})") from None


def _jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays, paths and tuples converted to plain JSON types."""
    if isinstance(obj, dict):
        return {_json_key(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return [_jsonable(v) for v in sorted(obj, key=repr)]
    return obj


def _json_key(k: Any) -> Any:
    if isinstance(k, np.generic):
        k = k.item()
    if isinstance(k, float) and not math.isfinite(k):
        return str(k)
    return k if isinstance(k, (str, int, float, bool)) or k is None else str(k)


def write_json(path: str | os.PathLike[str], obj: Any, overwrite: bool = False,
               argument: str = "--json") -> Path:
    """Write ``obj`` as indented JSON (numpy scalars/arrays converted), atomically; return the path."""
    data = _jsonable(obj)
    try:
        text = json.dumps(data, indent=2)
    except (TypeError, ValueError) as e:
        raise ValidationError(f"{argument}: cannot write {path} as JSON ({e})") from None
    p = Path(path)
    with atomic_path(p, overwrite, argument) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    return p


def save_npz(path: str | os.PathLike[str], overwrite: bool = False, argument: str = "--out",
             **arrays: Any) -> Path:
    """Save ``arrays`` uncompressed (so that they can be memory-mapped) to an .npz file, atomically.

    Like ``np.savez``, ``.npz`` is appended to ``path`` if it has another suffix; the path written is
    returned.
    """
    if not arrays:
        raise ValidationError(f"{argument}: save_npz needs at least one array to save")
    p = Path(path)
    if p.suffix != ".npz":
        p = p.with_name(p.name + ".npz")
    with atomic_path(p, overwrite, argument) as tmp:
        np.savez(tmp, **arrays)
    return p
