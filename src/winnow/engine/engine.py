"""The pass engine: every pass over a data source maps one pure per-chunk kernel and reduces the results.

A **kernel** is a picklable callable ``kernel(chunk, weights) -> result`` (``chunk`` a
:class:`winnow.io.sources.Chunk`, ``weights`` the (c,) float64 row weights or None). It has no side effects,
so the same kernel runs in this process or on a Dask worker. A kernel with a ``head`` attribute has every
chunk's labels checked against that head before it runs (one place for that check).

The engine splits the source into partitions (:func:`winnow.io.parts.plan_partitions`: a Parquet file or a
run of row groups; runs of rows otherwise), runs one task per partition on its backend and reduces:

- :meth:`Engine.sum` — results are summed: within a partition chunk by chunk, then the partitions' float64
  partials in a fixed binary tree (:func:`tree_sum`), the same tree in-process and on Dask, so both give the
  same numbers (to rounding: ~1e-15 in float64, ~1e-7 in mixed precision). Results may be tensors, arrays,
  floats, or tuples/dicts of them.
- :meth:`Engine.map` — results are dicts of per-row columns ((c,) or (c, k)), concatenated in row order.
- :meth:`Engine.iter` — the same dicts, yielded chunk by chunk in row order (bounded memory in-process).
- :meth:`Engine.write_parts` — the dicts are written to one Parquet part file per partition, atomically.

Backends (:mod:`winnow.engine.backends`): ``LocalBackend`` runs the tasks one after the other here;
``DaskBackend`` runs them on a ``LocalCluster`` (``workers=N``) or an existing scheduler.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..errors import ValidationError
from ..io.parts import Partition, check_chunk_features, open_part, plan_partitions, read_partition, split_rows
from ..io.sources import Chunk, DataSource, NpzSource, open_source

__all__ = ["Kernel", "Engine", "Task", "tree_sum", "add_results", "check_rows", "current_engine"]

# the engine of the innermost ``with Engine(...)`` block: passes that are given no engine run on it
_CURRENT: contextvars.ContextVar[Engine | None] = contextvars.ContextVar("winnow_engine", default=None)


def current_engine() -> Engine | None:
    """The engine of the innermost active ``with Engine(...):`` block, or None."""
    return _CURRENT.get()


class Kernel(Protocol):
    """A pure per-chunk function (see the module docstring).

    A kernel may also set ``checks_features = True`` and define ``finite_witness(result)``: arrays of its
    result that are non-finite whenever any feature of the chunk is NaN or Inf (every feature of every row
    enters them through IEEE products). The engine then reads its chunks without a separate scan for
    non-finite features and checks the witness instead (see ``chunk_results``).
    """

    def __call__(self, chunk: Chunk, weights: np.ndarray | None) -> Any: ...


# ------------------------------------------------------------------------------------------ reductions
def _to_host(obj: Any) -> Any:
    """Tensors -> numpy (float64 stays float64), recursively through tuples, lists and dicts."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().numpy()
    if isinstance(obj, tuple):
        return tuple(_to_host(o) for o in obj)
    if isinstance(obj, list):
        return [_to_host(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _to_host(v) for k, v in obj.items()}
    return obj


def _owned(obj: Any) -> Any:
    """A copy of a kernel result that later in-place additions may modify (kernels may return views)."""
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, np.ndarray):
        return obj.copy()
    if isinstance(obj, (tuple, list)):
        return type(obj)(_owned(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _owned(v) for k, v in obj.items()}
    return obj


def add_results(a: Any, b: Any) -> Any:
    """a + b for kernel results: tensors and arrays (in place into ``a``), numbers, tuples/lists/dicts."""
    if isinstance(a, torch.Tensor):
        return a.add_(torch.as_tensor(b, device=a.device))
    if isinstance(a, np.ndarray):
        a += b
        return a
    if isinstance(a, (tuple, list)):
        return type(a)(add_results(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return {k: add_results(a[k], b[k]) for k in a}
    return a + b


def _add_pair(a: Any, b: Any) -> Any:
    """a + b without modifying either (for the tree of partition partials, which Dask may share)."""
    return add_results(_owned(a), b)


def tree_sum(items: Sequence[Any], add: Callable[[Any, Any], Any] = _add_pair) -> Any:
    """Pairwise sum in a fixed binary tree over ``items`` in order ((0+1)+(2+3))+... (the Dask reduction
    uses the same tree, so both give the same float64 bits for the same partials)."""
    level = list(items)
    if not level:
        raise ValidationError("tree_sum needs at least one item")
    while len(level) > 1:
        nxt = [add(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def _concat(parts: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    if not parts:
        return {}
    return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}


# ---------------------------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class Task:
    """One partition's work: its rows (global positions, None = all) and aligned row weights."""

    part: Partition
    rows: np.ndarray | None = None
    weights: np.ndarray | None = None
    metadata: Mapping[str, str] | None = None

    @property
    def n_rows(self) -> int:
        return self.part.n_rows if self.rows is None else int(len(self.rows))


@dataclass
class Job:
    """What every task of a pass shares (shipped to Dask workers once): the source (or how to reopen it),
    the kernel, the mode (``sum``, ``map``, ``chunks`` or ``write``), the chunk size and, to write, the
    output directory."""

    source: Any
    kernel: Any
    mode: str
    chunk_size: int
    directory: str | None = None

    def open(self) -> DataSource:
        spec = self.source
        if isinstance(spec, tuple) and len(spec) == 2 and spec[0] == "npz":
            return spec[1].reopen()
        return spec


class _NpzPath:
    """An .npz source shipped as its path and settings (its memory maps stay behind)."""

    def __init__(self, source: NpzSource) -> None:
        self.path, self.columns = source.name, getattr(source, "_columns", None)
        self.argument = source.argument

    def reopen(self) -> NpzSource:
        source = NpzSource(self.path, columns=self.columns, check_ids=False)
        source.argument = self.argument
        return source


def portable(source: DataSource) -> Any:
    """What to ship to workers: the source itself, or for .npz (memory-mapped) its path, reopened there."""
    if isinstance(source, NpzSource):
        return ("npz", _NpzPath(source))
    return source


def chunk_results(job: Job, task: Task) -> Iterator[tuple[int, Any]]:
    """(rows, kernel result) for every chunk of one task, in row order: "track rows, check labels, kernel"
    in one place. Raises if the partition holds fewer or more rows than planned (the input changed)."""
    source = job.open()
    part = task.part
    where = part.file or source.name
    kernel = job.kernel
    head = getattr(kernel, "head", None)
    # One read of each chunk: a kernel whose results are non-finite whenever a feature is (``checks_features``,
    # its ``finite_witness``) checks them instead of the reader scanning the features first; the features are
    # scanned only when a result is not finite, to raise the same error naming the first bad row.
    deferred = bool(getattr(kernel, "checks_features", False)) and bool(getattr(source, "defers_finite_check",
                                                                               False))
    start = 0
    for ch in read_partition(source, part, job.chunk_size, rows=task.rows, check_finite=not deferred):
        if head is not None:
            head.check_labels(ch.y, argument=where)
        w = None if task.weights is None else task.weights[start:start + len(ch)]
        start += len(ch)
        res = kernel(ch, w)
        if deferred and not all_finite(kernel.finite_witness(res)):
            check_chunk_features(source, ch, where)
        yield len(ch), res
    if start != task.n_rows:
        raise ValidationError(f"{where}: read {start} rows for {part.where()}, expected {task.n_rows} "
                              "(the input changed while the job ran?)")


def all_finite(values: Sequence[Any]) -> bool:
    """Whether every entry of every array (numpy or torch) in ``values`` is finite."""
    for v in values:
        if isinstance(v, torch.Tensor):
            if not bool(torch.isfinite(v).all()):
                return False
        elif not np.isfinite(np.asarray(v)).all():
            return False
    return True


def task_steps(job: Job, task: Task) -> Generator[int, None, Any]:
    """Run one task chunk by chunk, yielding the rows done after each chunk; returns the task's result:
    the float64 partial sum (``sum``), the concatenated columns (``map``), the list of per-chunk results
    (``chunks``) or the number of rows written (``write``)."""
    acc: Any = None
    outs: list[Any] = []
    writer = None
    rows = 0
    try:
        for c, res in chunk_results(job, task):
            rows += c
            if job.mode == "sum":
                acc = _owned(res) if acc is None else add_results(acc, res)
            elif job.mode == "write":
                cols = _to_host(res)
                if writer is None:
                    writer = open_part(job.directory, task.part, cols, task.metadata or {})
                writer.write(**cols)
            else:
                outs.append(_to_host(res))
            yield c
        if job.mode == "write":
            if writer is None:  # pragma: no cover - a planned partition always has rows
                raise ValidationError(f"no rows in {task.part.where()}")
            writer.close()
            return rows
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if job.mode == "sum":
        return _to_host(acc)
    if job.mode == "map":
        return _concat(outs)
    return outs


def run_task(job: Job, task: Task) -> Any:
    """A task run to the end (what a Dask worker executes)."""
    steps = task_steps(job, task)
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def check_rows(rows: Any, weights: Any, n: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Validate a row selection (sorted unique positions in [0, n)) and its aligned ``weights``; weights
    without rows apply to every row. Returns int64 rows (or None) and float64 weights (or None)."""
    if rows is None:
        if weights is None:
            return None, None
        rows = np.arange(n, dtype=np.int64)
    r = np.asarray(rows)
    if r.ndim != 1 or (r.size and r.dtype.kind not in "iu"):
        raise ValidationError(f"rows must be a 1-D array of integer row positions; got dtype {r.dtype}, "
                              f"shape {r.shape}")
    r = r.astype(np.int64)
    if r.size == 0:
        raise ValidationError("rows is empty: no rows to pass over (give at least one row position)")
    if np.any(np.diff(r) <= 0) or r[0] < 0 or r[-1] >= n:
        raise ValidationError(f"rows must be sorted, unique row positions in [0, {n})")
    w = None
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape != r.shape:
            raise ValidationError(f"row_weights must align with rows: shape {r.shape}; got {w.shape}")
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValidationError("row_weights must be finite and >= 0")
    return r, w


# --------------------------------------------------------------------------------------------- engine
class Engine:
    """Runs passes over data sources on one backend (see the module docstring).

    ``backend``: a ``LocalBackend`` (default) or ``DaskBackend``; or give ``workers`` (a local Dask cluster
    of N single-threaded processes) or ``scheduler`` (an address or a ``distributed.Client``).
    ``chunk_size`` rows per chunk (bounds memory); ``partition_rows`` most rows per partition (default 2²⁰;
    a Parquet file is one partition, split at row-group boundaries when larger); ``progress`` shows bars.

    Used as a context manager the backend (a Dask cluster) stays up for every pass inside the block, and
    every pass inside it that is given no engine of its own runs on this one (``current_engine()``) — so
    ``with Engine(workers=4): check_theorems(head, train, test)`` runs all of its passes on Dask.
    Otherwise each pass starts and stops the backend.
    """

    def __init__(self, backend: Any = None, *, workers: int | None = None, scheduler: Any = None,
                 chunk_size: int = 65536, partition_rows: int | None = None, progress: bool = False,
                 timeout: float = 30.0) -> None:
        from ..validation import check_chunk_size
        from .backends import make_backend

        chunk_size = check_chunk_size(chunk_size)
        if backend is not None and (workers is not None or scheduler is not None):
            raise ValidationError("pass either backend= or workers=/scheduler=, not both")
        self.backend = backend if backend is not None else make_backend(workers, scheduler, timeout=timeout)
        self.chunk_size = int(chunk_size)
        self.partition_rows = partition_rows
        self.progress = bool(progress)
        self._depth = 0

    @property
    def distributed(self) -> bool:
        """Whether passes run on a Dask cluster."""
        return getattr(self.backend, "name", "local") != "local"

    def __enter__(self) -> Engine:
        if self._depth == 0:
            self.backend.__enter__()
        self._depth += 1
        self._tokens = [*getattr(self, "_tokens", []), _CURRENT.set(self)]
        return self

    def __exit__(self, *exc: Any) -> None:
        _CURRENT.reset(self._tokens.pop())
        self._depth -= 1
        if self._depth == 0:
            self.backend.__exit__(*exc)

    def with_chunk_size(self, chunk_size: int) -> Engine:
        """This engine (same backend, same cluster) with another chunk size."""
        import copy

        if chunk_size == self.chunk_size:
            return self
        other = copy.copy(self)
        other.chunk_size = int(chunk_size)
        return other

    @contextmanager
    def _session(self) -> Iterator[Any]:
        with self:
            yield self.backend

    def plan(self, source: DataSource) -> list[Partition]:
        """The partitions of ``source`` (in row order)."""
        return plan_partitions(source, self.partition_rows)

    def tasks(self, source: DataSource, rows: Any = None, weights: Any = None) -> list[Task]:
        r, w = check_rows(rows, weights, len(source))
        return [Task(p, pr, pw) for p, pr, pw in split_rows(self.plan(source), r, w)]

    def _job(self, source: DataSource, kernel: Any, mode: str, directory: str | None = None) -> Job:
        return Job(portable(source), kernel, mode, self.chunk_size, directory)

    # ------------------------------------------------------------------------------------------ passes
    def sum(self, data: Any, kernel: Kernel, *, rows: Any = None, weights: Any = None,
            description: str = "pass") -> Any:
        """Σ over the chunks of ``data`` (or only ``rows``, with aligned ``weights``) of ``kernel``'s
        results, as float64 numpy (partials summed in a fixed tree). Raises if there are no rows."""
        source = open_source(data)
        tasks = self.tasks(source, rows, weights)
        if not tasks:
            raise ValidationError(f"{source.name}: no rows to pass over")
        with self._session() as be:
            return be.run(self._job(source, kernel, "sum"), tasks, description=description,
                          progress=self.progress, reduce=True)

    def map(self, data: Any, kernel: Kernel, *, rows: Any = None, description: str = "pass") -> dict[str, np.ndarray]:
        """The per-row columns ``kernel`` returns for every chunk of ``data`` (or only ``rows``),
        concatenated in row order."""
        source = open_source(data)
        tasks = self.tasks(source, rows)
        if not tasks:
            return {}
        with self._session() as be:
            parts = be.run(self._job(source, kernel, "map"), tasks, description=description,
                           progress=self.progress)
        return _concat([p for p in parts if p])

    def iter(self, data: Any, kernel: Kernel, *, rows: Any = None, description: str = "pass") -> Iterator[Any]:
        """``kernel``'s result for every chunk of ``data`` (or only ``rows``), yielded in row order. In
        this process one chunk is held at a time; on Dask one partition's results at a time."""
        source = open_source(data)
        tasks = self.tasks(source, rows)
        with self._session() as be:
            yield from be.iterate(self._job(source, kernel, "chunks"), tasks, description=description,
                                  progress=self.progress)

    def write_parts(self, data: Any, kernel: Kernel, directory: str | Path, parts: Sequence[Partition],
                    metadata: Callable[[Partition], Mapping[str, str]], *,
                    description: str = "scoring pass") -> list[tuple[Partition, BaseException]]:
        """Write ``kernel``'s columns for each of ``parts`` of ``data`` to its part file in ``directory``
        (atomically). A part whose input cannot be read fails alone: returns the (part, error) failures."""
        source = open_source(data)
        tasks = [Task(p, metadata=dict(metadata(p))) for p in parts]
        if not tasks:
            return []
        with self._session() as be:
            results = be.run(self._job(source, kernel, "write", str(directory)), tasks, description=description,
                             progress=self.progress, keep_going=True)
        return [(t.part, r) for t, r in zip(tasks, results) if isinstance(r, BaseException)]
