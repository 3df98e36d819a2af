"""Safe output files: never overwrite by accident, never leave a half-written file behind.

Every writer here writes to a hidden temporary file next to the target (``.NAME.XXXXXXXX.tmp.EXT``) and
renames it over the target with :func:`os.replace` only once the content is complete; on an error the
temporary file is removed and the target is untouched. An existing target is refused unless
``overwrite=True`` (:class:`~winnow.errors.OutputExistsError`, naming the command-line argument).

An output's extension says its format (:data:`OUTPUT_FORMATS`): tables of one row per training point
(scores, pairs, points, subsets) are Parquet (``.parquet``) or CSV (``.csv``), JSON ``.json``, heads ``.npz``,
reports ``.html``; any other extension is refused before anything is computed. CSV has no place for
metadata: a CSV table whose Parquet twin would carry schema metadata gets it in a sidecar JSON file next to
it, ``<out>.json`` (e.g. ``scores.csv.json``), an object of the same key/value strings.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import secrets
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import OutputExistsError, ValidationError

__all__ = ["OUTPUT_FORMATS", "ARGUMENT_FORMATS", "check_output_path", "check_output_format", "check_output_dir",
           "atomic_path", "ParquetStreamWriter", "CsvStreamWriter", "table_writer", "read_table", "sidecar_path",
           "write_json", "save_npz"]

#: The extensions each kind of output may have; the extension chooses the format where there are several.
OUTPUT_FORMATS: dict[str, tuple[str, ...]] = {
    "table": (".parquet", ".csv"),   # scores, pairs, memorization points, subsets
    "parquet": (".parquet",),
    "features": (".parquet", ".npz"),
    "json": (".json",),
    "npz": (".npz",),
    "html": (".html",),
    "image": (".png", ".svg", ".pdf"),
}


#: The formats of the outputs whose argument says what they are (``--json`` is JSON wherever it appears); an
#: ``--out`` differs from command to command and is given explicitly.
ARGUMENT_FORMATS: dict[str, str] = {
    "json_out": "json", "--json": "json", "report": "html", "--report": "html", "pairs_out": "table",
    "--pairs": "table", "points_out": "table", "--points-out": "table", "head_out": "npz", "--head-out": "npz",
}


def check_output_format(path: str | os.PathLike[str], formats: str | Sequence[str],
                        argument: str = "--out") -> str:
    """The extension of ``path`` (lower case) if it is one of ``formats`` (a key of :data:`OUTPUT_FORMATS`
    or a list of extensions); otherwise a ValidationError naming ``argument`` and the extensions accepted."""
    allowed = OUTPUT_FORMATS[formats] if isinstance(formats, str) else tuple(formats)
    p = Path(path)
    ext = p.suffix.lower()
    if ext not in allowed:
        has = f"ends in {p.suffix!r}" if p.suffix else "has no extension"
        choices = " or ".join(allowed)
        raise ValidationError(f"{argument} {p} {has}; the extension chooses the format written: use a path "
                              f"ending in {choices}", parameters=(argument,))
    return ext


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """Where a CSV table's metadata goes: ``<path>.json``."""
    p = Path(path)
    return p.with_name(p.name + ".json")


def check_output_path(path: str | os.PathLike[str], overwrite: bool, argument: str = "--out",
                      formats: str | Sequence[str] | None = None) -> Path:
    """Check that ``path`` may be written and create its parent directories; return it as a Path.

    Raises OutputExistsError if ``path`` exists and ``overwrite`` is false, or if it is a directory;
    ValidationError if ``formats`` is given and ``path``'s extension is not one of them
    (:func:`check_output_format`; by default those :data:`ARGUMENT_FORMATS` gives for ``argument``). A
    ``.csv`` table's sidecar (``<path>.json``) is checked too.
    """
    p = Path(path)
    if formats is None:
        formats = ARGUMENT_FORMATS.get(argument)
    if formats is not None:
        ext = check_output_format(p, formats, argument)
        if ext == ".csv":
            check_output_path(sidecar_path(p), overwrite, argument, formats="json")
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


def check_output_dir(path: str | os.PathLike[str], overwrite: bool, argument: str = "--out") -> Path:
    """Check that the folder ``path`` may be written into and create it; return it as a Path.

    An existing folder that holds anything is refused unless ``overwrite`` (its files of the same names are
    then replaced), with the message every output gives; a file in the way is refused always.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputExistsError(f"{argument} {p} is an existing file; expected a folder", parameters=(argument,))
    if p.is_dir() and any(p.iterdir()) and not overwrite:
        raise OutputExistsError(f"{argument} {p} exists; pass --overwrite to replace it", parameters=(argument,))
    try:
        p.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValidationError(f"{argument} {p}: cannot create the folder (a file is in the way)",
                              parameters=(argument,)) from None
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
                argument: str = "--out", formats: str | Sequence[str] | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` to write to; on success it is renamed to ``path``.

    On an exception (including KeyboardInterrupt) the temporary file is removed, nothing appears at
    ``path`` and the exception propagates. The body must create the file at the yielded path. ``formats``:
    the extensions ``path`` may have (:func:`check_output_format`).
    """
    p = check_output_path(path, overwrite, argument, formats)
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

    suffix = ".parquet"

    def __init__(self, path: str | os.PathLike[str], schema: pa.Schema, overwrite: bool = False,
                 argument: str = "--out", metadata: Mapping[str, str] | None = None) -> None:
        check_output_format(path, (self.suffix,), argument)
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
        self._late: dict[str, str] = {}

    def add_metadata(self, metadata: Mapping[str, str]) -> None:
        """Key/value strings known only once the rows are written (e.g. a figure the scoring pass measured),
        added to the file's schema metadata when it is closed."""
        bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise ValidationError(f"{self.argument}: metadata keys and values must be strings; bad entries "
                                  f"for keys {bad!r}")
        self._late.update(metadata)

    def _write_late_metadata(self) -> None:
        """Rewrite the finished temporary file with the metadata added by :meth:`add_metadata` (one pass over
        its row groups: the schema metadata is fixed when a Parquet file is opened)."""
        if not self._late:
            return
        schema = self.schema.with_metadata({**(self.schema.metadata or {}),
                                            **{k.encode(): v.encode() for k, v in self._late.items()}})
        src = pq.ParquetFile(self._tmp)
        tmp = _tmp_path(self.path)
        try:
            with pq.ParquetWriter(tmp, schema) as w:
                for i in range(src.num_row_groups):
                    w.write_table(src.read_row_group(i).replace_schema_metadata(schema.metadata))
                if src.num_row_groups == 0:
                    w.write_table(schema.empty_table())
        except BaseException:
            _remove(tmp)
            raise
        finally:
            src.close()
        _remove(self._tmp)
        self._tmp = tmp

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
            self._write_late_metadata()
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


class CsvStreamWriter(ParquetStreamWriter):
    """:class:`ParquetStreamWriter`'s twin for ``.csv``: the same columns streamed as CSV (a header line, then
    the rows), published atomically. CSV has no metadata: ``metadata`` goes to the sidecar ``<path>.json``
    (:func:`sidecar_path`), published with the table. List columns (one vector per row) cannot be CSV."""

    suffix = ".csv"

    def __init__(self, path: str | os.PathLike[str], schema: pa.Schema, overwrite: bool = False,
                 argument: str = "--out", metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(path, schema, overwrite, argument, metadata)
        nested = [f.name for f in self.schema if pa.types.is_nested(f.type)]
        if nested:
            raise ValidationError(f"{argument} {self.path}: columns {nested} hold one vector per row, which CSV "
                                  f"cannot store; use a path ending in .parquet", parameters=(argument,))
        self.sidecar = sidecar_path(self.path) if self.schema.metadata else None
        if self.sidecar is not None:
            check_output_path(self.sidecar, overwrite, argument, formats="json")

    def _ensure_open(self) -> pq.ParquetWriter:
        if self._closed:
            raise ValidationError(f"{self.argument} {self.path}: the writer is already closed")
        if self._writer is None:
            from pyarrow import csv

            self._writer = csv.CSVWriter(str(self._tmp), self.schema.remove_metadata())  # type: ignore[assignment]
        return self._writer  # type: ignore[return-value]

    def write_table(self, table: pa.Table) -> None:
        super().write_table(table.replace_schema_metadata(None) if table.schema.metadata else table)

    def _write_late_metadata(self) -> None:
        """Nothing to rewrite: a CSV's metadata is its sidecar, written by :meth:`close`."""

    def close(self) -> Path:
        """Finish the file (and its metadata sidecar) and rename them into place."""
        if self._closed:
            return self.path
        if self.sidecar is None and self._late:
            self.sidecar = sidecar_path(self.path)
            check_output_path(self.sidecar, self.overwrite, self.argument, formats="json")
        if self.sidecar is not None:
            meta = {k.decode(): v.decode() for k, v in (self.schema.metadata or {}).items()}
            meta.update(self._late)
            try:
                write_json(self.sidecar, meta, overwrite=self.overwrite, argument=self.argument)
            except BaseException:
                self.abort()
                raise
        try:
            return super().close()
        except BaseException:
            if self.sidecar is not None:
                _remove(self.sidecar)
            raise


def table_writer(path: str | os.PathLike[str], schema: pa.Schema, overwrite: bool = False,
                 argument: str = "--out", metadata: Mapping[str, str] | None = None) -> ParquetStreamWriter:
    """A streaming writer for a table of rows, in the format ``path``'s extension names: Parquet for
    ``.parquet``, CSV (metadata in ``<path>.json``) for ``.csv``; other extensions are refused."""
    ext = check_output_format(path, "table", argument)
    cls = CsvStreamWriter if ext == ".csv" else ParquetStreamWriter
    return cls(path, schema, overwrite=overwrite, argument=argument, metadata=metadata)


def csv_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The metadata of a CSV table written by :func:`table_writer`: its sidecar ``<path>.json`` (empty if
    absent)."""
    side = sidecar_path(path)
    meta = json.loads(side.read_text(encoding="utf-8")) if side.is_file() else {}
    return {str(k): str(v) for k, v in meta.items()}


def read_table(path: str | os.PathLike[str], columns: Sequence[str] | None = None) -> tuple[pa.Table, dict[str, str]]:
    """A table written by :func:`table_writer` and its metadata: Parquet (schema metadata) or CSV (the
    sidecar ``<path>.json``, empty if absent). ``columns``: those of them to read (missing ones are skipped).
    Raises what pyarrow raises for an unreadable file."""
    p = Path(path)
    if p.suffix.lower() == ".csv":
        from pyarrow import csv

        table = csv.read_csv(p)
        if columns is not None:
            table = table.select([c for c in columns if c in table.column_names])
        return table, csv_metadata(p)
    pf = pq.ParquetFile(p)
    names = pf.schema_arrow.names
    table = pf.read(columns=None if columns is None else [c for c in columns if c in names])
    return table, {k.decode(): v.decode() for k, v in (pf.schema_arrow.metadata or {}).items()}


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
    """``obj`` with numpy scalars/arrays, paths and tuples converted to plain JSON types, and non-finite
    floats (inf, nan) written as null: strict JSON has no Infinity or NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {_json_key(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return [_jsonable(v) for v in sorted(obj, key=repr)]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    return obj


def _json_key(k: Any) -> Any:
    if isinstance(k, np.generic):
        k = k.item()
    if isinstance(k, float) and not math.isfinite(k):
        return str(k)
    return k if isinstance(k, (str, int, float, bool)) or k is None else str(k)


def write_json(path: str | os.PathLike[str], obj: Any, overwrite: bool = False,
               argument: str = "--json") -> Path:
    """Write ``obj`` as indented strict JSON, atomically; return the path. numpy scalars and arrays become
    numbers and lists, non-finite floats (inf, nan) null; ``path`` must end in .json."""
    check_output_format(path, "json", argument)
    data = _jsonable(obj)
    try:
        text = json.dumps(data, indent=2, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValidationError(f"{argument}: cannot write {path} as JSON ({e})") from None
    p = Path(path)
    with atomic_path(p, overwrite, argument, formats="json") as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    return p


def save_npz(path: str | os.PathLike[str], overwrite: bool = False, argument: str = "--out",
             **arrays: Any) -> Path:
    """Save ``arrays`` uncompressed (so that they can be memory-mapped) to an .npz file, atomically; ``path``
    must end in .npz. Returns the path written.
    """
    if not arrays:
        raise ValidationError(f"{argument}: save_npz needs at least one array to save")
    p = Path(path)
    with atomic_path(p, overwrite, argument, formats="npz") as tmp:
        np.savez(tmp, **arrays)
    return p
