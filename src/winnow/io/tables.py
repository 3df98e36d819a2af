"""Tables users already have: CSV / TSV files and data frames (pandas, polars, PyArrow).

Both read their columns with a :class:`~winnow.io.sources.TablePlan` (the same rules as Parquet: features are
every numeric column except the label and id columns unless named; labels are integers or are mapped by
``classes`` / ``positive_label``; ids are integers or strings and must be unique).

* :class:`CsvSource` streams the file with PyArrow's CSV reader in blocks (bounded memory). Opening makes one
  streaming pass that counts the rows, fixes every column's type, collects the distinct labels and checks
  that the ids are unique.
* :class:`ArrowSource` holds a table in memory (a pandas or polars DataFrame is converted to Arrow once).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from ..errors import ValidationError
from .columns import DataColumns
from .sources import (
    Chunk,
    LabelSummary,
    TablePlan,
    _check_chunk_size,
    _ids_of,
    _is_numeric,
    _rechunk,
    _TableSource,
    check_unique_ids,
    row_blocks,
    summarize_labels,
)

__all__ = ["CsvSource", "ArrowSource", "as_arrow_table"]

_BLOCK_BYTES = 1 << 22  # CSV bytes parsed per block (4 MiB)


# ------------------------------------------------------------------------------------------- frames
def as_arrow_table(frame: Any, id_column: str | None = None) -> pa.Table:
    """A pandas / polars DataFrame or Arrow Table / RecordBatch as an Arrow table (pandas: the index is kept
    as a column only when it is named ``id_column``)."""
    if isinstance(frame, pa.Table):
        return frame
    if isinstance(frame, pa.RecordBatch):
        return pa.Table.from_batches([frame])
    if type(frame).__module__.startswith("polars"):
        return frame.to_arrow()
    keep = id_column is not None and getattr(frame.index, "name", None) == id_column
    return pa.Table.from_pandas(frame, preserve_index=keep)


class ArrowSource(_TableSource):
    """A table in memory: a PyArrow Table / RecordBatch, or a pandas or polars DataFrame (converted to Arrow
    once, without copying numeric columns where Arrow can share them). ``columns`` says which columns to
    read (:class:`~winnow.io.columns.DataColumns`)."""

    def __init__(self, table: Any, *, columns: DataColumns | None = None, name: str = "table") -> None:
        self.name = str(name)
        cols = columns or DataColumns()
        self.table = as_arrow_table(table, cols.id)
        if self.table.num_rows == 0:
            raise ValidationError(f"{self.name}: the data is empty (0 rows)")
        self.plan = TablePlan(self.table.schema, cols, self.name,
                              lambda c: summarize_labels([self.table.column(c)]))
        if self.plan.D is None:
            self.plan.D = self.plan.first_length(self.table.slice(0, 1), self.name)
        self.table = self.table.select(self.plan.read)
        if self.plan.id_column is not None:
            check_unique_ids(lambda: [self.ids()], self.name)

    def __len__(self) -> int:
        return int(self.table.num_rows)

    def chunks(self, chunk_size: int = 65536, rows: np.ndarray | None = None, *,
               check_finite: bool = True) -> Iterator[Chunk]:
        chunk_size, rows = self._check_args(chunk_size, rows)
        return self._iter(chunk_size, rows, check_finite)

    def _iter(self, chunk_size: int, rows: np.ndarray | None, check_finite: bool) -> Iterator[Chunk]:
        for index, positions in row_blocks(len(self), chunk_size, rows):
            part = (self.table.slice(index.start, index.stop - index.start) if isinstance(index, slice)
                    else self.table.take(pa.array(index)))
            yield self.plan.convert(part, self.name, positions, check_finite)

    def labels(self) -> np.ndarray:
        ids = None if self.plan.id_column is None else self.ids()
        return self.plan.codec.encode(self.table.column(self.plan.label_column), self.name, ids)

    def ids(self) -> np.ndarray:
        positions = np.arange(len(self), dtype=np.int64)
        if self.plan.id_column is None:
            return positions
        return _ids_of(self.table.column(self.plan.id_column), self.name, f"id column '{self.plan.id_column}'",
                       positions)


# ---------------------------------------------------------------------------------------------- CSV
class CsvSource(_TableSource):
    """A CSV (``.csv``) or tab-separated (``.tsv``) file with a header row, optionally gzip- or
    bzip2-compressed (``.csv.gz``), streamed with PyArrow's CSV reader in blocks of a few MiB.

    Opening reads the file once, streaming: it fixes each column's type (numbers that are not the label or id
    are read as float64), counts the rows, collects the distinct labels and checks that ids are unique (ids
    in increasing order need the memory of one block, others 8 bytes per row for int64 ids, more for
    strings, while they are sorted). Every later pass parses the file again; ``chunks(rows=)`` parses the
    whole file and keeps the rows asked for. ``delimiter``: None picks tab for ``.tsv``, else comma.
    """

    def __init__(self, path: str | Path, *, columns: DataColumns | None = None, delimiter: str | None = None,
                 check_ids: bool = True) -> None:
        p = Path(path)
        self.name = str(p)
        if not p.is_file():
            raise ValidationError(f"{p}: CSV file does not exist" if not p.exists()
                                  else f"{p}: expected a CSV file, found a directory")
        if delimiter is None:
            delimiter = "\t" if ".tsv" in p.name.lower() else ","
        self._parse = pacsv.ParseOptions(delimiter=delimiter)
        cols = columns or DataColumns()
        inferred = self._schema(pacsv.ConvertOptions())
        keep = {cols.label, cols.id}
        types: dict[str, pa.DataType] = {}
        for f in inferred:
            if f.name in keep:
                if pa.types.is_null(f.type):
                    types[f.name] = pa.string()
                elif pa.types.is_integer(f.type) and f.name == cols.id:
                    types[f.name] = pa.int64()
            elif _is_numeric(f.type):
                types[f.name] = pa.float64()  # a column of whole numbers may hold decimals further down
        self._types = types
        self._convert_opts = pacsv.ConvertOptions(column_types=types)
        schema = self._schema(self._convert_opts)
        summary: dict[str, LabelSummary] = {}
        self.plan = TablePlan(schema, cols, self.name, lambda c: summary.setdefault(c, self._summary(c)))
        n = 0
        for batch in self._batches([self.plan.label_column]):
            n += batch.num_rows
        if n == 0:
            raise ValidationError(f"{p}: the data is empty (0 rows)")
        self._n = n
        if check_ids and self.plan.id_column is not None:
            check_unique_ids(lambda: (self._id_block(b, pos) for b, pos in self._positioned([self.plan.id_column])),
                             self.name)

    # --- reading
    def _reader(self, convert: pacsv.ConvertOptions) -> pacsv.CSVStreamingReader:
        try:
            return pacsv.open_csv(self.name, read_options=pacsv.ReadOptions(block_size=_BLOCK_BYTES),
                                  parse_options=self._parse, convert_options=convert)
        except (pa.ArrowException, OSError) as e:
            raise ValidationError(f"{self.name}: not a readable CSV file ({e})") from None

    def _schema(self, convert: pacsv.ConvertOptions) -> pa.Schema:
        with self._reader(convert) as r:
            return r.schema

    def _batches(self, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        opts = self._convert_opts if columns is None else pacsv.ConvertOptions(column_types=self._types,
                                                                              include_columns=columns)
        with self._reader(opts) as r:
            while True:
                try:
                    batch = r.read_next_batch()
                except StopIteration:
                    return
                except pa.ArrowInvalid as e:
                    raise ValidationError(f"{self.name}: cannot read a value ({e}); every value of a feature "
                                          "column must be a number") from None
                if batch.num_rows:
                    yield batch

    def _positioned(self, columns: list[str] | None = None) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
        pos = 0
        for b in self._batches(columns):
            m = b.num_rows
            yield b, np.arange(pos, pos + m, dtype=np.int64)
            pos += m

    def _summary(self, column: str) -> LabelSummary:
        return summarize_labels(b.column(0) for b in self._batches([column]))

    def _id_block(self, batch: pa.RecordBatch, positions: np.ndarray) -> np.ndarray:
        return _ids_of(batch.column(0), self.name, f"id column '{self.plan.id_column}'", positions)

    # --- interface
    def __len__(self) -> int:
        return self._n

    def chunks(self, chunk_size: int = 65536, rows: np.ndarray | None = None, *,
               check_finite: bool = True) -> Iterator[Chunk]:
        chunk_size, rows = self._check_args(chunk_size, rows)
        return _rechunk(self._iter(rows, check_finite), chunk_size)

    def _iter(self, rows: np.ndarray | None, check_finite: bool) -> Iterator[Chunk]:
        for batch, positions in self._positioned(self.plan.read):
            if rows is None:
                yield self.plan.convert(batch, self.name, positions, check_finite)
                continue
            lo, hi = np.searchsorted(rows, [positions[0], positions[-1] + 1])
            if hi > lo:
                sel = rows[lo:hi]
                yield self.plan.convert(batch.take(pa.array(sel - positions[0])), self.name, sel, check_finite)

    def labels(self) -> np.ndarray:
        return np.concatenate(list(self.label_blocks()))

    def label_blocks(self, block_size: int = 1 << 20) -> Iterator[np.ndarray]:
        _check_chunk_size(block_size)
        cols = ([self.plan.id_column] if self.plan.id_column else []) + [self.plan.label_column]
        for batch, positions in self._positioned(cols):
            ids = self.plan.ids(batch, self.name, positions)
            yield self.plan.codec.encode(batch.column(self.plan.label_column), self.name, ids)

    def ids(self) -> np.ndarray:
        if self.plan.id_column is None:
            return np.arange(self._n, dtype=np.int64)
        parts = [self._id_block(b, pos) for b, pos in self._positioned([self.plan.id_column])]
        return np.concatenate(parts)
