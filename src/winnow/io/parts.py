"""Partitioned outputs: a directory of Parquet part files, each published atomically, resumable after a crash.

A long job over a large training set (``winnow influence`` on 1e7+ rows) splits the rows into
**partitions** (one per input Parquet file, or a run of row groups / consecutive rows) and writes one part
file per partition::

    OUT/_manifest.json        the job (head hash, inputs, options, partition plan) and its progress
    OUT/_state.npz            what the scoring pass needs, computed once: H (P, P), s = H⁻¹ḡ (P,), ...
    OUT/part-00000.parquet    rows of partition 0 (one row per training point, in input order)
    OUT/part-00001.parquet    ...

Every part is written to a hidden temporary name and renamed only once complete, and carries the job id
in its footer, so a part that exists with the right job id and row count is finished. After a crash
(even ``kill -9``) a rerun with ``resume=True`` re-checks that the job is the same (else it refuses),
reloads ``_state.npz`` instead of redoing the Hessian pass, skips finished parts and writes the rest: the
result equals an uninterrupted run. ``pyarrow.parquet.read_table(OUT)`` (or pandas / DuckDB / Spark) reads
the directory as one table; files starting with ``_`` or ``.`` are ignored by those readers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..core.heads import Head
from ..errors import OutputExistsError, ValidationError
from .outputs import ParquetStreamWriter, save_npz, write_json
from .sources import ArraySource, Chunk, DataSource, NpzSource, ParquetSource

__all__ = ["Partition", "plan_partitions", "read_partition", "PartsDirectory", "source_fingerprint",
           "head_fingerprint", "digest_array", "MANIFEST", "STATE", "FORMAT"]

MANIFEST = "_manifest.json"
STATE = "_state.npz"
FORMAT = "winnow.parts/1"
_JOB_KEY = "winnow.job_id"


# ------------------------------------------------------------------------------------------ partitions
@dataclass(frozen=True)
class Partition:
    """Rows ``start .. stop - 1`` (global row positions of the source) written to part file ``name``.

    ``file`` is the Parquet file holding them (None for array / .npz sources).
    """

    index: int
    start: int
    stop: int
    file: str | None = None

    @property
    def n_rows(self) -> int:
        return self.stop - self.start

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}"

    @property
    def filename(self) -> str:
        return f"{self.name}.parquet"

    def where(self) -> str:
        """A human description for error messages: the file and the rows."""
        src = f"{self.file}, " if self.file else ""
        return f"{src}rows {self.start}..{self.stop - 1}"

    def as_json(self) -> list[Any]:
        return [self.name, self.start, self.stop, self.file]


def plan_partitions(source: DataSource, partition_rows: int | None = None) -> list[Partition]:
    """Split ``source`` into partitions covering every row once, in order.

    Parquet: one partition per file; a file with more than ``partition_rows`` rows (default 2²⁰) is split
    at row-group boundaries (a row group is never split). Other sources: runs of ``partition_rows`` rows.
    """
    if partition_rows is None:
        partition_rows = 1 << 20
    if isinstance(partition_rows, bool) or not isinstance(partition_rows, (int, np.integer)) \
            or partition_rows < 1:
        raise ValidationError(f"partition_rows must be an integer >= 1; got {partition_rows!r}")
    partition_rows = int(partition_rows)
    parts: list[Partition] = []
    if isinstance(source, ParquetSource):
        pos = 0
        for f in source.files:
            md = pq.read_metadata(f)  # already read once by ParquetSource: cheap, and it names the file
            bounds = [pos]
            acc = 0
            for g in range(md.num_row_groups):
                m = md.row_group(g).num_rows
                if acc and acc + m > partition_rows:
                    bounds.append(bounds[-1] + acc)
                    acc = 0
                acc += m
            if acc:
                bounds.append(bounds[-1] + acc)
            for a, b in zip(bounds[:-1], bounds[1:]):
                parts.append(Partition(len(parts), int(a), int(b), str(f)))
            pos += md.num_rows
        if pos != len(source):  # pragma: no cover - a file changed between opening and planning
            raise ValidationError(f"{source.name}: files changed while planning partitions "
                                  f"({pos} rows now, {len(source)} when opened)")
    else:
        n = len(source)
        for a in range(0, n, partition_rows):
            parts.append(Partition(len(parts), a, min(a + partition_rows, n), None))
    return parts


def read_partition(source: DataSource, part: Partition, chunk_size: int = 65536,
                   rows: np.ndarray | None = None, prefetch: int = 1, check_finite: bool = True) -> Iterator[Chunk]:
    """Chunks of ``part``'s rows (or only ``rows``, global positions inside the partition), in order.

    ``prefetch`` chunks are read ahead by a background thread (decoding Parquet overlaps the maths on the
    previous chunk; memory grows by that many chunks); 0 reads in the calling thread. Reading errors from
    the Parquet library (a corrupt page, a file truncated after it was opened) are raised as
    ValidationError naming the file and rows. ``check_finite=False`` leaves the features unchecked (a source
    with ``defers_finite_check``): the caller then checks its results and calls ``check_chunk_features``.
    """
    sel = rows
    if rows is None and not (part.start == 0 and part.stop == len(source)):
        sel = np.arange(part.start, part.stop, dtype=np.int64)  # (a whole source is read without a selection)

    def chunks() -> Iterator[Chunk]:
        it = (source.chunks(chunk_size, rows=sel) if check_finite
              else source.chunks(chunk_size, rows=sel, check_finite=False))
        while True:
            try:
                ch = next(it)
            except StopIteration:
                return
            except (pa.ArrowException, OSError, EOFError) as e:
                raise ValidationError(f"{part.file or source.name}: cannot read {part.where()} "
                                      f"({type(e).__name__}: {e})") from None
            except ValidationError as e:  # bad values (NaN features, unknown labels...): name the argument
                raise _named(e, source) from None
            yield ch

    if prefetch < 1:
        yield from chunks()
    else:
        yield from _read_ahead(chunks(), prefetch)


def _named(e: ValidationError, source: DataSource) -> ValidationError:
    """A data error of ``source`` led by the argument it was given as (``train: ...``), when known."""
    argument = getattr(source, "argument", None)
    if argument is None:
        return e
    from ..validation import data_error

    return data_error(e, argument)


def check_chunk_features(source: DataSource, chunk: Chunk, where: str) -> None:
    """The finiteness check of a chunk read with ``check_finite=False``: raises the data error the reader
    would have raised (NaN or Inf features, naming ``where``, the first such row and the argument)."""
    from .sources import check_finite_features

    try:
        check_finite_features(chunk.X, where, chunk.ids)
    except ValidationError as e:
        raise _named(e, source) from None


_DONE = object()


def _read_ahead(it: Iterator[Any], depth: int) -> Iterator[Any]:
    """Yield the items of ``it`` while a daemon thread produces up to ``depth`` items ahead; an exception
    in the thread is raised here; closing this generator early stops the thread."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in it:
                if not put(("item", item)):
                    return
            put(("done", _DONE))
        except BaseException as e:  # handed to the consumer, raised there
            put(("error", e))

    t = threading.Thread(target=work, name="winnow-read-ahead", daemon=True)
    t.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "done":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
        t.join(timeout=5)


# ----------------------------------------------------------------------------------------- fingerprints
def digest_array(a: Any) -> str:
    """sha256 of an array's dtype, shape and bytes (a torch tensor is moved to the CPU first)."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    a = np.ascontiguousarray(np.asarray(a))
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes() if a.size else b"")
    return h.hexdigest()


def head_fingerprint(head: Head) -> dict[str, Any]:
    """What identifies a head: its kind, shape, λ, the sha256 of θ (float64) and its ``precision`` (a job
    resumed in another precision would mix parts computed two ways)."""
    return {"kind": head.kind or type(head).__name__, "n_features": int(head.n_features_),
            "n_outputs": int(head.n_outputs), "l2": float(head.l2), "theta_sha256": digest_array(head.theta_),
            "precision": str(getattr(head, "precision", "auto"))}


def _file_entry(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def source_fingerprint(source: DataSource) -> dict[str, Any]:
    """What identifies a data source without reading it: files with size, mtime and row count and the
    column options for Parquet / .npz; a sha256 of the contents for arrays in memory."""
    base: dict[str, Any] = {"type": type(source).__name__, "n": int(len(source)),
                            "n_features": int(source.n_features)}
    if isinstance(source, ParquetSource):
        files = []
        for f in source.files:
            e = _file_entry(Path(f))
            e["rows"] = int(pq.read_metadata(f).num_rows)
            files.append(e)
        base.update(files=files, label_column=source.label_column, id_column=source.id_column,
                    features_column=source.features_column,
                    feature_columns=None if source.feature_columns is None else list(source.feature_columns))
    elif isinstance(source, NpzSource):
        base["files"] = [_file_entry(Path(source.name))]
    elif isinstance(source, ArraySource):
        ids = None if source.id is None else source.id
        base["sha256"] = hashlib.sha256("".join(
            [digest_array(source.X), digest_array(source.y), digest_array(ids) if ids is not None else ""])
            .encode()).hexdigest()
    else:
        h = hashlib.sha256()
        for ch in source.chunks():
            for a in (ch.X, ch.y, ch.ids):
                if a.dtype.kind == "O":  # string ids: their text, not the object pointers
                    h.update("\0".join(map(str, a)).encode())
                else:
                    h.update(np.ascontiguousarray(a).tobytes())
        base["sha256"] = h.hexdigest()
    columns = getattr(source, "data_columns", None)
    if columns is not None:
        base["columns"] = columns.to_dict()
    return base


def _canonical(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples -> lists), so that comparisons survive a round trip."""
    return json.loads(json.dumps(obj, sort_keys=True))


def job_id(job: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a job description."""
    return hashlib.sha256(json.dumps(_canonical(job), sort_keys=True).encode()).hexdigest()


def _first_difference(old: Any, new: Any, path: str = "") -> str:
    """A short description of where two job descriptions first differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            if k not in old or k not in new:
                return f"{path + k}: present in only one of the jobs"
            if old[k] != new[k]:
                return _first_difference(old[k], new[k], f"{path}{k}.")
    if isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            return f"{path.rstrip('.')}: {len(old)} entries before, {len(new)} now"
        for i, (a, b) in enumerate(zip(old, new)):
            if a != b:
                return _first_difference(a, b, f"{path}{i}.")
    o, n = (json.dumps(x)[:80] for x in (old, new))
    return f"{path.rstrip('.')}: was {o}, now {n}"


# ------------------------------------------------------------------------------------- parts directory
class PartsDirectory:
    """The output directory of a partitioned job (see the module docstring).

    ``prepare(job, resume, overwrite)`` decides between a fresh start and a resume; ``save_state`` writes
    ``_state.npz`` and the manifest (before any part); ``is_complete(part)`` tells a finished part;
    ``open_part`` gives the atomic writer of a part; ``finish`` marks the job complete.
    """

    def __init__(self, path: str | os.PathLike[str], argument: str = "--out") -> None:
        self.path = Path(path)
        self.argument = argument
        self.job: dict[str, Any] | None = None
        self.job_id: str | None = None

    # --- layout
    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def state_path(self) -> Path:
        return self.path / STATE

    def part_path(self, part: Partition) -> Path:
        return self.path / part.filename

    def _ours(self, p: Path) -> bool:
        """Files a winnow job writes here: parts, manifest, state and their hidden temporary files."""
        n = p.name
        if n in (MANIFEST, STATE) or (n.startswith("part-") and n.endswith(".parquet")):
            return True
        return n.startswith((".part-", f".{MANIFEST}.", f".{STATE}.")) and ".tmp" in n

    def _clear(self) -> None:
        for p in self.path.iterdir():
            if self._ours(p) and p.is_file():
                p.unlink()

    def _remove_temporaries(self) -> None:
        for p in self.path.iterdir():
            if p.name.startswith(".") and self._ours(p) and p.is_file():
                p.unlink()

    # --- decide: fresh start, resume, or refuse
    def prepare(self, job: Mapping[str, Any], *, resume: bool = False,
                overwrite: bool = False) -> dict[str, np.ndarray] | None:
        """Check the directory against ``job``. Returns the saved state when resuming the same job, None
        for a fresh start. Raises OutputExistsError if the directory holds a job and neither ``resume`` nor
        ``overwrite`` is given, ValidationError when resuming a different job. Creates nothing."""
        self.job = _canonical(dict(job))
        self.job_id = job_id(self.job)
        p = self.path
        if p.exists() and not p.is_dir():
            raise OutputExistsError(f"{self.argument} {p} is a file; partitioned output needs a directory "
                                    f"path (it will hold part-*.parquet files)")
        if not p.exists():
            return None
        if overwrite:
            return None  # cleared in start(), once the job is known to run
        if not self.manifest_path.exists():
            # a crash between writing _state.npz and the manifest leaves only our files: start afresh
            stray = [q.name for q in p.iterdir()
                     if not (self._ours(q) and (q.name.startswith(".") or q.name == STATE))]
            if stray:
                raise OutputExistsError(f"{self.argument} {p} exists and is not empty (holds {stray[:3]}) but "
                                        f"has no {MANIFEST}; choose another directory or pass --overwrite")
            return None
        if not resume:
            raise OutputExistsError(f"{self.argument} {p} holds a winnow job; pass --resume to finish it "
                                    f"(finished parts are kept) or --overwrite to start over")
        try:
            old = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValidationError(f"{self.argument} {p}: cannot read {MANIFEST} ({e}); pass --overwrite to "
                                  f"start over") from None
        if old.get("format") != FORMAT:
            raise ValidationError(f"{self.argument} {p}: {MANIFEST} has format {old.get('format')!r}, "
                                  f"expected {FORMAT!r}; pass --overwrite to start over")
        if old.get("job_id") != self.job_id:
            diff = _first_difference(old.get("job", {}), self.job)
            raise ValidationError(f"refusing to resume: {self.argument} {p} holds a different job ({diff}); "
                                  f"use another {self.argument} or pass --overwrite to start over")
        try:
            with np.load(self.state_path, allow_pickle=False) as z:
                state = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise ValidationError(f"{self.argument} {p}: cannot read {STATE} ({e}); pass --overwrite to "
                                  f"start over") from None
        for k, h in old.get("state_sha256", {}).items():
            if k not in state or digest_array(state[k]) != h:
                raise ValidationError(f"{self.argument} {p}: {STATE} does not match {MANIFEST} (array {k!r}); "
                                      f"pass --overwrite to start over")
        self._manifest = old
        self._remove_temporaries()
        return state

    def start(self, state: Mapping[str, np.ndarray], info: Mapping[str, Any], *,
              overwrite: bool = False) -> None:
        """Fresh start: create the directory, write ``_state.npz`` then ``_manifest.json`` (both atomic)."""
        if self.job is None:
            raise ValidationError("PartsDirectory.prepare(job) must be called before start()")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise ValidationError(f"{self.argument} {self.path}: cannot create the directory (a file is in "
                                  f"the way)") from None
        if overwrite:
            self._clear()
        else:
            self._remove_temporaries()
        save_npz(self.state_path, overwrite=True, argument=self.argument, **dict(state))
        self._manifest = {"format": FORMAT, "job_id": self.job_id, "job": self.job,
                          "state_sha256": {k: digest_array(v) for k, v in state.items()},
                          **_canonical(dict(info)), "complete": False}
        write_json(self.manifest_path, self._manifest, overwrite=True, argument=self.argument)

    # --- parts
    def is_complete(self, part: Partition) -> bool:
        """True when ``part``'s file exists, is readable and carries this job's id and row count."""
        p = self.part_path(part)
        if not p.is_file():
            return False
        try:
            md = pq.read_metadata(p)
        except (pa.ArrowException, OSError):
            return False
        meta = md.metadata or {}
        return meta.get(_JOB_KEY.encode()) == str(self.job_id).encode() and md.num_rows == part.n_rows

    def part_metadata(self, part: Partition, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {**(extra or {}), _JOB_KEY: str(self.job_id), "winnow.part": part.name,
                "winnow.rows": f"{part.start}..{part.stop - 1}"}

    def finish(self, info: Mapping[str, Any] | None = None) -> None:
        """Mark the job complete in the manifest (atomic rewrite)."""
        self._manifest.update(_canonical(dict(info or {})))
        self._manifest["complete"] = True
        write_json(self.manifest_path, self._manifest, overwrite=True, argument=self.argument)

    @property
    def manifest(self) -> dict[str, Any]:
        return dict(getattr(self, "_manifest", {}))

    def remove(self) -> None:  # pragma: no cover - convenience for callers that abandon a job
        shutil.rmtree(self.path, ignore_errors=True)


def part_schema(columns: Mapping[str, np.ndarray]) -> pa.Schema:
    """The Arrow schema for a chunk's output columns: 1-D arrays map to their type, 2-D (c, k) to lists."""
    fields = []
    for name, a in columns.items():
        a = np.asarray(a)
        if a.dtype.kind in "OU" and a.ndim == 1:  # string ids
            fields.append(pa.field(name, pa.string()))
            continue
        try:
            t = pa.from_numpy_dtype(a.dtype)
        except (pa.ArrowNotImplementedError, NotImplementedError, TypeError):
            raise ValidationError(f"output column {name!r} has dtype {a.dtype}, which cannot be written to "
                                  f"Parquet; return numeric arrays") from None
        if a.ndim == 2:
            t = pa.list_(t)
        elif a.ndim != 1:
            raise ValidationError(f"output column {name!r} must be 1-D (c,) or 2-D (c, k); got shape {a.shape}")
        fields.append(pa.field(name, t))
    return pa.schema(fields)


def open_part(directory: str | os.PathLike[str], part: Partition, columns: Mapping[str, np.ndarray],
              metadata: Mapping[str, str], argument: str = "--out") -> ParquetStreamWriter:
    """An atomic writer for ``part`` in ``directory`` with the schema of ``columns`` (a first chunk).
    A finished part of an earlier attempt of the same task is replaced (same content)."""
    return ParquetStreamWriter(Path(directory) / part.filename, part_schema(columns), overwrite=True,
                               argument=argument, metadata=dict(metadata))


def split_rows(parts: Sequence[Partition], rows: np.ndarray | None,
               weights: np.ndarray | None) -> list[tuple[Partition, np.ndarray | None, np.ndarray | None]]:
    """Assign sorted global ``rows`` (and aligned ``weights``) to the partitions holding them; partitions
    without a selected row are dropped. With ``rows`` None every partition is kept whole."""
    if rows is None:
        if weights is not None:
            raise ValidationError("row weights were given without rows; pass rows= with row_weights=")
        return [(p, None, None) for p in parts]
    starts = np.array([p.start for p in parts] + [parts[-1].stop if parts else 0], dtype=np.int64)
    cuts = np.searchsorted(rows, starts)
    out = []
    for i, p in enumerate(parts):
        a, b = int(cuts[i]), int(cuts[i + 1])
        if b > a:
            out.append((p, rows[a:b], None if weights is None else weights[a:b]))
    return out
