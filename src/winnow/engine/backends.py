"""Backends of the pass engine (:mod:`winnow.engine.engine`): where the partition tasks of a pass run.

- ``LocalBackend``: one after the other in this process (bounded memory: one chunk at a time; a row-level
  progress bar).
- ``DaskBackend``: on a Dask cluster — ``workers=N`` starts a ``distributed.LocalCluster`` of N
  single-threaded worker processes; ``scheduler="tcp://host:8786"`` (or a ``distributed.Client``) uses an
  existing cluster, whose workers must see the input files and the output directory at the same paths.
  What every task shares (the source, the kernel) is shipped to the workers once.

Both run the same task function (:func:`winnow.engine.engine.task_steps`) and reduce partial sums in the same
fixed tree (:func:`winnow.engine.engine.tree_sum`), so they give the same numbers (to ~1e-15 relative in float64;
to ~1e-7 in mixed precision, whose float32 blocks follow the partitions).
A backend's ``run(job, tasks, ...)`` returns the tree-reduced sum (``reduce=True``) or the task results in
task order; with ``keep_going`` a task that fails on its input (a ``WinnowError``) is returned as its
exception and the others go on. ``iterate(job, tasks, ...)`` yields per-chunk results in row order.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any

import numpy as np
import torch

from .._moved import moved_names
from ..core.heads import Head
from ..errors import ClusterError, ValidationError, WinnowError
from ..io.parts import Partition
from ..progress import track_rows
from .columns import ColumnFunction
from .engine import Job, Task, _add_pair, _to_host, chunk_results, run_task, task_steps, tree_sum

__all__ = ["ClusterError", "LocalBackend", "DaskBackend", "make_backend", "on_device", "tree_sum",
           "partitioned_hessian", "fit_curvature_partitioned", "ColumnFunction", "ScoreColumnsFactory",
           ]


def _drive(job: Job, task: Task, results: list[Any], keep_going: bool) -> Iterator[range]:
    """Run ``task`` here, yielding a range per chunk (its ``len`` = rows, for the bar); append its result
    (or, with ``keep_going``, its input error) to ``results``."""
    steps = task_steps(job, task)
    done = 0
    try:
        while True:
            try:
                c = next(steps)
            except StopIteration as stop:
                results.append(stop.value)
                return
            done += c
            yield range(c)
    except WinnowError as e:
        if not keep_going:
            raise
        results.append(e)  # a bad input part: record it, carry on with the others
        yield range(task.n_rows - done)


class _Sized:
    """A chunk's result with its row count as ``len`` (for the progress bar)."""

    __slots__ = ("value", "rows")

    def __init__(self, value: Any, rows: int) -> None:
        self.value, self.rows = value, rows

    def __len__(self) -> int:
        return self.rows


class LocalBackend:
    """Run partition tasks one after the other in this process (bounded memory, a row-level progress bar)."""

    name = "local"

    def __enter__(self) -> LocalBackend:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def run(self, job: Job, tasks: Sequence[Task], *, description: str, progress: bool, reduce: bool = False,
            keep_going: bool = False) -> Any:
        results: list[Any] = []

        def steps() -> Iterator[range]:
            for task in tasks:
                yield from _drive(job, task, results, keep_going)

        for _ in track_rows(steps(), sum(t.n_rows for t in tasks), description, progress):
            pass
        return tree_sum(results) if reduce else results

    def iterate(self, job: Job, tasks: Sequence[Task], *, description: str, progress: bool) -> Iterator[Any]:
        def results() -> Iterator[_Sized]:
            for task in tasks:
                for c, res in chunk_results(job, task):
                    yield _Sized(_to_host(res), c)

        for r in track_rows(results(), sum(t.n_rows for t in tasks), description, progress):
            yield r.value

    def each(self, fn: Any, shared: Any, items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        """(i, ``fn(shared, items[i])``) for every item, here, one after the other (independent tasks such as
        retrains: the caller saves each result as it comes)."""
        for i, item in enumerate(items):
            yield i, fn(shared, item)


def _value(obj: Any) -> Any:
    return obj


class DaskBackend:
    """Run partition tasks on a Dask cluster.

    ``workers``: start a ``LocalCluster`` of that many worker processes (one thread each; ``processes=False``
    for threads in this process); ``scheduler``: the address of an existing scheduler
    (``tcp://host:8786``) or a ``distributed.Client``. ``timeout`` (s) bounds connecting and waiting for a
    first worker (ClusterError after it, never a hang). A task whose worker dies is retried by Dask on
    another worker; when workers keep dying on it (``distributed.scheduler.allowed-failures``) the job
    stops with a ClusterError naming the partition.
    """

    name = "dask"

    def __init__(self, workers: int | None = None, scheduler: Any = None, *, timeout: float = 30.0,
                 processes: bool = True, threads_per_worker: int = 1) -> None:
        if (workers is None) == (scheduler is None):
            raise ValidationError("DaskBackend needs exactly one of workers= (start a LocalCluster) or "
                                  "scheduler= (an address or a distributed.Client)")
        from ..validation import check_integer, check_number

        if workers is not None:
            workers = check_integer(workers, "workers", minimum=1)
        timeout = check_number(timeout, "timeout", minimum=0.0, min_open=True)
        self.workers = workers
        self.scheduler = scheduler
        self.timeout = float(timeout)
        self.processes = processes
        self.threads_per_worker = int(threads_per_worker)

    def __enter__(self) -> DaskBackend:
        try:
            import distributed
        except ImportError as e:  # pragma: no cover - dask is an optional dependency
            raise ClusterError(f"the Dask backend needs dask.distributed (pip install 'winnow[dask]'): {e}") from None
        self._own: list[Any] = []
        if isinstance(self.scheduler, distributed.Client):
            self.client = self.scheduler
        elif self.scheduler is not None:
            addr = str(self.scheduler)
            try:
                self.client = distributed.Client(addr, timeout=self.timeout, set_as_default=False)
            except (OSError, TimeoutError, ValueError) as e:
                raise ClusterError(f"scheduler {addr}: cannot connect to a Dask scheduler within "
                                   f"{self.timeout:g} s ({type(e).__name__}: {e}); check the address "
                                   f"(e.g. tcp://host:8786) and that the scheduler is running",
                                   parameters=("scheduler",)) from None
            self._own.append(self.client)
        else:
            cluster = distributed.LocalCluster(n_workers=int(self.workers), threads_per_worker=self.threads_per_worker,
                                               processes=self.processes, dashboard_address=":0",
                                               silence_logs=logging.ERROR)
            self.client = distributed.Client(cluster, set_as_default=False)
            self._own += [self.client, cluster]
        try:
            self.client.wait_for_workers(1, timeout=self.timeout)
        except (TimeoutError, OSError) as e:
            self.__exit__(None, None, None)
            raise ClusterError(f"no Dask worker joined the scheduler within {self.timeout:g} s ({e})") from None
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for obj in getattr(self, "_own", []):
            try:
                obj.close()
            except Exception:  # closing is best effort; the job's own error matters more
                pass
        self._own = []

    def _broadcast(self, obj: Any) -> Any:
        """A future for ``obj`` held by every worker. Unlike ``scatter``, the object lives in the task graph,
        so if every worker holding it dies the scheduler recreates it instead of losing it."""
        fut = self.client.submit(_value, obj, pure=False)
        try:
            self.client.replicate([fut])  # copy it to every worker once, up front
        except Exception:  # best effort: workers that lack it fetch it from a peer on first use
            pass
        return fut

    def _failure(self, f: Any, part: Partition) -> BaseException:
        """The exception for a future that did not finish (error, or cancelled / lost by the cluster)."""
        if f.status == "error":
            exc = f.exception()
            return self._cluster_error(part, exc) if self._killed(exc) else exc
        return ClusterError(f"the Dask task for partition {part.name} ({part.where()}) ended with status "
                            f"{f.status!r} (the cluster lost it, or it was cancelled); finished parts are kept: "
                            f"rerun with resume=True", parameters=("resume=True",))

    def _killed(self, exc: BaseException) -> bool:
        from distributed import KilledWorker

        return isinstance(exc, KilledWorker)

    def _cluster_error(self, part: Partition, exc: BaseException) -> ClusterError:
        return ClusterError(f"the Dask workers running partition {part.name} ({part.where()}) died while running "
                            f"it, on every retry ({type(exc).__name__}: {exc}); the job is stopped. Finished "
                            f"parts are kept: fix the cause (often a worker's memory limit) and rerun with "
                            f"resume=True", parameters=("resume=True",))

    def _submit(self, job: Job, tasks: Sequence[Task]) -> list[Any]:
        shared = self._broadcast(job)
        return [self.client.submit(run_task, shared, t, pure=False) for t in tasks]

    def _done(self, futs: Sequence[Any], tasks: Sequence[Task], failures: list[Any] | None) -> Iterator[range]:
        """Wait for ``futs``, yielding each finished task's rows; a failed task raises (or, when
        ``failures`` is a list, an input error is recorded there and the others go on)."""
        from distributed import as_completed

        task_of = {f.key: t for f, t in zip(futs, tasks)}
        for f in as_completed(futs, loop=self.client.loop):
            task = task_of[f.key]
            if f.status != "finished":
                exc = self._failure(f, task.part)
                if failures is None or isinstance(exc, ClusterError) or not isinstance(exc, WinnowError):
                    self.client.cancel(futs)
                    raise exc
                failures.append((f.key, exc))
            yield range(task.n_rows)

    def run(self, job: Job, tasks: Sequence[Task], *, description: str, progress: bool, reduce: bool = False,
            keep_going: bool = False) -> Any:
        futs = self._submit(job, tasks)
        failures: list[Any] | None = [] if keep_going else None
        for _ in track_rows(self._done(futs, tasks, failures), sum(t.n_rows for t in tasks), description,
                            progress):
            pass
        if reduce:
            # reduce on the workers, in the same fixed tree as tree_sum (float64 numpy throughout)
            root = tree_sum(futs, add=lambda a, b: self.client.submit(_add_pair, a, b, pure=False))
            try:
                return root.result()
            except BaseException as exc:
                if self._killed(exc):
                    raise ClusterError(f"Dask workers died while summing the partial results ({exc})") from None
                raise
        failed = dict(failures or [])
        return [failed[f.key] if f.key in failed else f.result() for f in futs]

    def iterate(self, job: Job, tasks: Sequence[Task], *, description: str, progress: bool) -> Iterator[Any]:
        """Per-chunk results in row order, one partition's results at a time."""
        futs = self._submit(job, tasks)
        try:
            for f, task in zip(futs, tasks):
                try:
                    chunks = f.result()
                except BaseException as exc:
                    if self._killed(exc):
                        raise self._cluster_error(task.part, exc) from None
                    raise
                yield from chunks
        finally:
            self.client.cancel(futs)


    def each(self, fn: Any, shared: Any, items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        """(i, ``fn(shared, items[i])``) for every item, in the order the workers finish them; ``shared`` is
        shipped to every worker once. A task whose workers keep dying stops the run with a ClusterError."""
        from distributed import as_completed

        if not items:
            return
        common = self._broadcast(shared)
        futs = [self.client.submit(fn, common, item, pure=False) for item in items]
        index = {f.key: i for i, f in enumerate(futs)}
        try:
            for f in as_completed(futs, loop=self.client.loop):
                try:
                    result = f.result()
                except BaseException as exc:
                    if self._killed(exc):
                        raise ClusterError(f"the Dask workers running task {index[f.key]} died while running it, "
                                           f"on every retry ({type(exc).__name__}: {exc}); finished results are "
                                           "kept: fix the cause (often a worker's memory limit) and rerun with "
                                           "resume=True", parameters=("resume=True",)) from None
                    raise
                yield index[f.key], result
        finally:
            self.client.cancel(futs)


def make_backend(workers: int | None = None, scheduler: Any = None, *, timeout: float = 30.0,
                 processes: bool = True) -> LocalBackend | DaskBackend:
    """LocalBackend when neither ``workers`` nor ``scheduler`` is given, else a DaskBackend."""
    if workers is None and scheduler is None:
        return LocalBackend()
    if workers is not None and scheduler is not None:
        raise ValidationError("pass either workers (start a local Dask cluster) or scheduler (use an "
                              "existing one), not both", parameters=("workers", "scheduler"))
    return DaskBackend(workers, scheduler, timeout=timeout, processes=processes)


def on_device(head: Head, device: torch.device | str | None) -> Head:
    """``head`` itself, or a shallow copy whose θ and ``device`` are on ``device`` (chunks follow it)."""
    if device is None or torch.device(device) == head.device:
        return head
    h = copy.copy(head)
    h.device = torch.device(device)
    h.theta_ = head.theta_.to(h.device)
    return h


def partitioned_hessian(head: Head, train: Any, *, rows: Any = None, row_weights: Any = None,
                        backend: LocalBackend | DaskBackend | None = None, chunk_size: int = 65536,
                        partition_rows: int | None = None, progress: bool = False) -> tuple[np.ndarray, float]:
    """(Σ w_i ∇²ℓ_i (P, P) float64, Σ w_i) over ``train`` (or only ``rows``, global positions, with
    ``row_weights``), one task per partition, tree-reduced."""
    from .engine import Engine
    from .passes import hessian_pass

    eng = Engine(backend, chunk_size=chunk_size, partition_rows=partition_rows, progress=progress)
    S, total = hessian_pass(head, train, rows=rows, row_weights=row_weights, engine=eng)
    return S.cpu().numpy(), total


def fit_curvature_partitioned(head: Head, train: Any, *, damping: float = 0.0, rows: Any = None,
                              row_weights: Any = None, normalizer: float | None = None,
                              workers: int | None = None, scheduler: Any = None, chunk_size: int = 65536,
                              partition_rows: int | None = None, device: torch.device | str | None = None,
                              progress: bool = False, timeout: float = 30.0) -> Any:
    """:func:`winnow.engine.passes.fit_curvature` (full or sampled Hessian, paper eqs. 4 and 52) on an engine
    with these settings; ``device`` moves the head (and so every chunk) there."""
    from .engine import Engine
    from .passes import fit_curvature

    eng = Engine(workers=workers, scheduler=scheduler, chunk_size=chunk_size, partition_rows=partition_rows,
                 progress=progress, timeout=timeout)
    return fit_curvature(on_device(head, device), train, damping=damping, rows=rows, row_weights=row_weights,
                         normalizer=normalizer, engine=eng)


def ScoreColumnsFactory(columns: Any) -> Any:  # noqa: N802 - kept for the old import path
    """The column set itself: partitioned jobs take :class:`winnow.engine.columns.ScoreColumns` directly."""
    return columns


# the partitioned influence job is the analyzer's (winnow.analyses.influence)
__getattr__ = moved_names(__name__, __package__, {
    "write_influence_parts": "..analyses.influence",
    "PartsResult": "..analyses.influence",
})
