"""Partitioned passes over a training set, run in-process or on a Dask cluster, with resumable outputs.

The same pure chunk functions as the in-process loop (:func:`winnow.core.curvature.hessian_chunk`,
:func:`winnow.core.influence.score_chunk`, and any column function that plugs in) run once per **partition**
(a Parquet file or a run of row groups, see :mod:`winnow.io.parts`):

1. **Hessian pass.** Each partition task returns its partial sum Σ_{i∈part} w_i ∇²ℓ_i (P, P) in float64;
   the partials are summed by a fixed binary tree in partition order (the same tree locally and on Dask),
   then H = S/N + λ·mask + damping·I (paper eq. 4, or eq. 52 for a sample of rows with weights) is
   factorised once, on the client.
2. **Test pass.** ḡ = (1/T) Σ_t g_t and the one solve s = H⁻¹ḡ, on the client.
3. **Scoring pass.** H's factor and s are broadcast once (``client.scatter(..., broadcast=True)``); each
   partition task computes its columns chunk by chunk and writes its own part file atomically.

``workers=N`` starts a ``distributed.LocalCluster`` of N single-threaded worker processes;
``scheduler="tcp://host:8786"`` (or a ``distributed.Client``) uses an existing cluster, whose workers must see
the input files and the output directory at the same paths. Without either, the partitions run one after
the other in this process (bounded memory: one chunk at a time). Both give the same numbers (the local run
and the Dask run agree to ~1e-15 relative).

Signs are those of :mod:`winnow.core.influence`: ``influence`` = −ḡᵀH⁻¹g_p (> 0 harmful),
``loss_change_if_removed`` = −influence/n, ``self_influence`` = g_pᵀH⁻¹g_p ≥ 0.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch

from ..core.curvature import Curvature, hessian_chunk
from ..core.heads import DTYPE, Head
from ..core.influence import SIGN_METADATA, mean_test_gradient, score_chunk
from ..errors import ClusterError, ValidationError, WinnowError
from ..io.parts import (
    Partition,
    PartsDirectory,
    digest_array,
    head_fingerprint,
    open_part,
    plan_partitions,
    read_partition,
    source_fingerprint,
    split_rows,
)
from ..io.sources import DataSource, NpzSource, open_source
from ..progress import track_rows

__all__ = ["ClusterError", "ColumnFunction", "JobContext", "ScoreColumnsFactory", "PartsResult", "LocalBackend",
           "DaskBackend", "make_backend", "hessian_partition", "score_partition", "tree_sum", "partitioned_hessian",
           "fit_curvature_partitioned", "curvature_from_sum", "influence_columns", "self_influence_columns",
           "memorization_columns", "write_influence_parts", "on_device"]


# ------------------------------------------------------------------------------------- column functions
@dataclass(frozen=True, eq=False)
class ColumnFunction:
    """A pure per-chunk function producing output columns: ``func(head, X, y, **kwargs)`` with X (c, D)
    numpy, y (c,) int64, returning a mapping of name -> (c,) or (c, k) arrays (numpy or torch), or one
    array (then named ``label``). ``keep`` selects columns; ``metadata`` is stored in every part's footer;
    ``label`` identifies the function in the job manifest (default: its qualified name)."""

    func: Callable[..., Any]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    keep: tuple[str, ...] | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    label: str | None = None

    @property
    def identity(self) -> str:
        name = self.label or f"{getattr(self.func, '__module__', '?')}.{getattr(self.func, '__qualname__', '?')}"
        return name + (f"[{','.join(self.keep)}]" if self.keep is not None else "")

    def __call__(self, head: Head, X: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        out = self.func(head, X, y, **dict(self.kwargs))
        if not isinstance(out, Mapping):
            out = {self.label or getattr(self.func, "__name__", "value"): out}
        keys = self.keep if self.keep is not None else tuple(out)
        missing = [k for k in keys if k not in out]
        if missing:
            raise ValidationError(f"column function {self.identity} did not return columns {missing}; "
                                  f"it returned {sorted(out)}")
        res = {}
        for k in keys:
            v = out[k]
            res[k] = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
            if res[k].shape[:1] != (len(y),):
                raise ValidationError(f"column function {self.identity}: column {k!r} has shape "
                                      f"{res[k].shape}, expected ({len(y)}, ...) (one value per row)")
        return res


@dataclass
class JobContext:
    """What column factories receive once H is known: the head, the factorised curvature, s = H⁻¹ḡ (None
    without test data), n (training rows), the training source, the test source (or None), the chunk size
    and whether to show progress."""

    head: Head
    curvature: Curvature
    direction: torch.Tensor | None
    n_train: int
    train: DataSource | None = None
    test: DataSource | None = None
    chunk_size: int = 65536
    progress: bool = False


def _prepared_chunk(head: Head, X: np.ndarray, y: np.ndarray, columns: Any) -> Mapping[str, Any]:
    return columns.chunk(X, y)


class ScoreColumnsFactory:
    """Plug the foundation's extra column sets (``winnow.core.influence.ScoreColumns``: ``prepare(analyzer,
    test)`` once, then ``chunk(X, y)``; e.g. ``MemorizationColumns``, ``NewtonColumns``) into a partitioned
    job: ``prepare`` runs once on the client when H is known, the prepared object is shipped to the tasks."""

    def __init__(self, columns: Any) -> None:
        self.columns = columns
        simple = sorted((k, v) for k, v in vars(columns).items()
                        if isinstance(v, (int, float, str, bool, type(None))))
        self.identity = f"{type(columns).__module__}.{type(columns).__qualname__}{simple}"

    def __call__(self, ctx: JobContext) -> ColumnFunction:
        from ..core.influence import InfluenceAnalyzer

        an = InfluenceAnalyzer(ctx.head, damping=float(ctx.curvature.damping), chunk_size=ctx.chunk_size,
                               progress=ctx.progress)
        an.train_, an.n_train_, an.curvature_ = ctx.train, ctx.n_train, ctx.curvature
        self.columns.prepare(an, ctx.test)
        return ColumnFunction(_prepared_chunk, {"columns": self.columns},
                              metadata=dict(getattr(self.columns, "metadata", {}) or {}), label=self.identity)


def influence_columns(direction: torch.Tensor, n_train: int,
                      curvature: Curvature | None = None) -> ColumnFunction:
    """``influence`` = −g_pᵀs, ``loss_change_if_removed`` = −influence/n and, with ``curvature``,
    ``self_influence`` = g_pᵀH⁻¹g_p, from :func:`winnow.core.influence.score_chunk` (s = H⁻¹ḡ_test, (P,))."""
    keep = ("influence", "loss_change_if_removed") + (("self_influence",) if curvature is not None else ())
    return ColumnFunction(score_chunk, {"direction": direction, "curvature": curvature, "n_train": int(n_train)},
                          keep=keep, metadata=SIGN_METADATA)


def self_influence_columns(curvature: Curvature) -> ColumnFunction:
    """``self_influence`` = g_pᵀH⁻¹g_p ≥ 0 alone (no test set), via :func:`winnow.core.influence.score_chunk`."""
    zero = torch.zeros(curvature.n_params, dtype=DTYPE, device=curvature.hessian.device)
    return ColumnFunction(score_chunk, {"direction": zero, "curvature": curvature, "n_train": 1},
                          keep=("self_influence",),
                          metadata={"winnow.self_influence": SIGN_METADATA["winnow.self_influence"]})


def memorization_columns(curvature: Curvature) -> ColumnFunction:
    """``memorization`` = ‖Λ⁻¹Qᵀg_p‖₁ with H = QΛQᵀ (paper Definition 6, eq. 67) from
    ``winnow.analyses.memorization.memorization_chunk(head, X, y, Q, inv_eigvals)``; Q and Λ⁻¹ are computed once."""
    try:
        from ..analyses.memorization import MEMORIZATION_METADATA, eigenbasis, memorization_chunk
    except ImportError as e:  # pragma: no cover - depends on the memorization module being present
        raise ValidationError(f"memorization scores need winnow.analyses.memorization ({e})") from None
    Q, inv = eigenbasis(curvature)
    return ColumnFunction(memorization_chunk, {"Q": Q, "inv_eigvals": inv}, label="memorization",
                          metadata={"winnow.memorization": MEMORIZATION_METADATA["winnow.memorization"]})


# ------------------------------------------------------------------------------ pure partition functions
def _drain(steps: Generator[int, None, Any]) -> Any:
    """Run a step generator to the end and return its return value."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def _hessian_steps(head: Head, source: DataSource, part: Partition, rows: np.ndarray | None,
                   weights: np.ndarray | None, chunk_size: int) -> Generator[int, None, tuple[np.ndarray, float]]:
    P = head.n_params
    S = torch.zeros(P, P, dtype=DTYPE, device=head.device)
    total, start = 0.0, 0
    for ch in read_partition(source, part, chunk_size, rows=rows):
        head.check_labels(ch.y, argument=part.file or source.name)
        w = None if weights is None else weights[start:start + len(ch)]
        start += len(ch)
        S += hessian_chunk(head, ch.X, w)
        total += float(len(ch)) if w is None else float(np.sum(w, dtype=np.float64))
        yield len(ch)
    return S.cpu().numpy(), total


def hessian_partition(head: Head, source: DataSource, part: Partition, *, rows: np.ndarray | None = None,
                      weights: np.ndarray | None = None, chunk_size: int = 65536) -> tuple[np.ndarray, float]:
    """(Σ_{i∈part} w_i ∇²ℓ_i as float64 numpy (P, P), Σ w_i) over ``part`` (or only its ``rows``, global
    positions, with aligned ``weights``), chunk by chunk with :func:`winnow.core.curvature.hessian_chunk`."""
    return _drain(_hessian_steps(head, source, part, rows, weights, chunk_size))


def _score_steps(head: Head, source: DataSource, part: Partition, columns: Sequence[ColumnFunction],
                 directory: str | Path, metadata: Mapping[str, str], chunk_size: int) -> Generator[int, None, int]:
    writer = None
    try:
        for ch in read_partition(source, part, chunk_size):
            head.check_labels(ch.y, argument=part.file or source.name)
            cols: dict[str, np.ndarray] = {"id": ch.ids, "label": ch.y}
            for cf in columns:
                cols.update(cf(head, ch.X, ch.y))
            if writer is None:
                writer = open_part(directory, part, cols, metadata)
            writer.write(**cols)
            yield len(ch)
        if writer is None or writer.rows_written != part.n_rows:
            got = 0 if writer is None else writer.rows_written
            raise ValidationError(f"{part.file or source.name}: read {got} rows for {part.where()}, expected "
                                  f"{part.n_rows} (the input changed while the job ran?)")
        writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return part.n_rows


def score_partition(head: Head, source: DataSource, part: Partition, columns: Sequence[ColumnFunction],
                    directory: str | Path, metadata: Mapping[str, str], *, chunk_size: int = 65536) -> int:
    """Write ``part``'s rows (``id``, ``label``, then each column function's columns) to its part file in
    ``directory``, atomically; on an error nothing appears. Returns the number of rows written."""
    return _drain(_score_steps(head, source, part, columns, directory, metadata, chunk_size))


def _add_partials(a: tuple[np.ndarray, float], b: tuple[np.ndarray, float]) -> tuple[np.ndarray, float]:
    return a[0] + b[0], a[1] + b[1]


def tree_sum(items: Sequence[Any], add: Callable[[Any, Any], Any] = _add_partials) -> Any:
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


def curvature_from_sum(head: Head, S: torch.Tensor | np.ndarray, total: float, *, damping: float = 0.0,
                       normalizer: float | None = None) -> Curvature:
    """H = S/N + λ·mask + damping·I with N = ``normalizer`` or ``total`` (as :func:`fit_curvature`), factorised."""
    S = torch.as_tensor(S, dtype=DTYPE, device=head.device)
    N = float(normalizer) if normalizer is not None else float(total)
    if not N > 0:
        raise ValidationError(f"the Hessian normaliser N must be > 0; got {N} (no rows, or zero weights)")
    P = head.n_params
    H = S / N + torch.diag(head.l2 * head.weight_mask()) + damping * torch.eye(P, dtype=DTYPE, device=head.device)
    return Curvature(hessian=H, n=N, l2=head.l2, damping=float(damping), null=head.null_directions())


# -------------------------------------------------------------------------------------------- backends
class LocalBackend:
    """Run partition tasks one after the other in this process (bounded memory, a row-level progress bar)."""

    name = "local"

    def __enter__(self) -> LocalBackend:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def hessian(self, head: Head, source: DataSource,
                tasks: Sequence[tuple[Partition, np.ndarray | None, np.ndarray | None]], *, chunk_size: int,
                progress: bool) -> tuple[np.ndarray, float]:
        partials: list[tuple[np.ndarray, float]] = []

        def steps() -> Iterator[range]:
            for part, rows, w in tasks:
                partials.append((yield from _as_ranges(_hessian_steps(head, source, part, rows, w, chunk_size))))

        total = sum(p.n_rows if r is None else len(r) for p, r, _ in tasks)
        for _ in track_rows(steps(), total, "Hessian pass", progress):
            pass
        return tree_sum(partials)

    def score(self, head: Head, source: DataSource, parts: Sequence[Partition],
              columns: Sequence[ColumnFunction], directory: Path, metadata: Callable[[Partition], dict[str, str]],
              *, chunk_size: int, progress: bool) -> list[tuple[Partition, BaseException]]:
        failures: list[tuple[Partition, BaseException]] = []

        def steps() -> Iterator[range]:
            for part in parts:
                done = 0
                try:
                    for c in _score_steps(head, source, part, columns, directory, metadata(part), chunk_size):
                        done += c
                        yield range(c)
                except WinnowError as e:  # a bad input part: record it, carry on with the others
                    failures.append((part, e))
                    yield range(part.n_rows - done)

        for _ in track_rows(steps(), sum(p.n_rows for p in parts), "scoring pass", progress):
            pass
        return failures


def _as_ranges(steps: Generator[int, None, Any]) -> Generator[range, None, Any]:
    """Re-yield a step generator's row counts as ``range`` objects (``len`` = rows, for the progress bar)
    and return its return value."""
    while True:
        try:
            c = next(steps)
        except StopIteration as stop:
            return stop.value
        yield range(c)


@dataclass
class _HessianState:
    head: Head
    source: Any


@dataclass
class _ScoreState:
    head: Head
    source: Any
    columns: list[ColumnFunction]
    directory: str


def _value(obj: Any) -> Any:
    return obj


def _portable(source: DataSource) -> Any:
    """What to ship to workers: the source itself, or for .npz (memory-mapped) its path, reopened there."""
    if isinstance(source, NpzSource):
        return ("npz", source.name)
    return source


def _resolve(spec: Any) -> DataSource:
    if isinstance(spec, tuple) and len(spec) == 2 and spec[0] == "npz":
        return NpzSource(spec[1])
    return spec


def _dask_hessian(state: _HessianState, part: Partition, rows: np.ndarray | None, weights: np.ndarray | None,
                  chunk_size: int) -> tuple[np.ndarray, float]:
    return hessian_partition(state.head, _resolve(state.source), part, rows=rows, weights=weights,
                             chunk_size=chunk_size)


def _dask_score(state: _ScoreState, part: Partition, metadata: dict[str, str], chunk_size: int) -> int:
    return score_partition(state.head, _resolve(state.source), part, state.columns, state.directory, metadata,
                           chunk_size=chunk_size)


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
        if workers is not None and (isinstance(workers, bool) or int(workers) != workers or workers < 1):
            raise ValidationError(f"workers must be an integer >= 1; got {workers!r}")
        if not timeout > 0:
            raise ValidationError(f"timeout must be > 0 seconds; got {timeout!r}")
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
                raise ClusterError(f"--scheduler {addr}: cannot connect to a Dask scheduler within "
                                   f"{self.timeout:g} s ({type(e).__name__}: {e}); check the address "
                                   f"(e.g. tcp://host:8786) and that the scheduler is running") from None
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
                            f"rerun with --resume")

    def _killed(self, exc: BaseException) -> bool:
        from distributed import KilledWorker

        return isinstance(exc, KilledWorker)

    def _cluster_error(self, part: Partition, exc: BaseException) -> ClusterError:
        return ClusterError(f"the Dask workers running partition {part.name} ({part.where()}) died while running "
                            f"it, on every retry ({type(exc).__name__}: {exc}); the job is stopped. Finished "
                            f"parts are kept: fix the cause (often a worker's memory limit) and rerun with "
                            f"--resume")

    def hessian(self, head: Head, source: DataSource,
                tasks: Sequence[tuple[Partition, np.ndarray | None, np.ndarray | None]], *, chunk_size: int,
                progress: bool) -> tuple[np.ndarray, float]:
        from distributed import as_completed

        c = self.client
        state = self._broadcast(_HessianState(head, _portable(source)))
        leaves = [c.submit(_dask_hessian, state, p, r, w, chunk_size, pure=False) for p, r, w in tasks]
        part_of = {f.key: (p, p.n_rows if r is None else len(r)) for f, (p, r, _) in zip(leaves, tasks)}

        def done() -> Iterator[range]:
            for f in as_completed(leaves, loop=c.loop):
                part, m = part_of[f.key]
                if f.status != "finished":
                    exc = self._failure(f, part)
                    c.cancel(leaves)
                    raise exc
                yield range(m)

        total = sum(m for _, m in part_of.values())
        for _ in track_rows(done(), total, "Hessian pass", progress):
            pass
        # reduce on the workers, in the same fixed tree as tree_sum (float64 numpy throughout)
        root = tree_sum(leaves, add=lambda a, b: c.submit(_add_partials, a, b, pure=False))
        try:
            return root.result()
        except BaseException as exc:
            if self._killed(exc):
                raise ClusterError(f"Dask workers died while summing the partial Hessians ({exc})") from None
            raise

    def score(self, head: Head, source: DataSource, parts: Sequence[Partition],
              columns: Sequence[ColumnFunction], directory: Path, metadata: Callable[[Partition], dict[str, str]],
              *, chunk_size: int, progress: bool) -> list[tuple[Partition, BaseException]]:
        from distributed import as_completed

        c = self.client
        state = self._broadcast(_ScoreState(head, _portable(source), list(columns), str(directory)))
        futs = [c.submit(_dask_score, state, p, metadata(p), chunk_size, pure=False) for p in parts]
        part_of = {f.key: p for f, p in zip(futs, parts)}
        failures: list[tuple[Partition, BaseException]] = []

        def done() -> Iterator[range]:
            for f in as_completed(futs, loop=c.loop):
                part = part_of[f.key]
                if f.status != "finished":
                    exc = self._failure(f, part)
                    if isinstance(exc, ClusterError) or not isinstance(exc, WinnowError):
                        c.cancel(futs)
                        raise exc
                    failures.append((part, exc))  # a bad input part: the others go on
                yield range(part.n_rows)

        for _ in track_rows(done(), sum(p.n_rows for p in parts), "scoring pass", progress):
            pass
        return failures


def make_backend(workers: int | None = None, scheduler: Any = None, *, timeout: float = 30.0,
                 processes: bool = True) -> LocalBackend | DaskBackend:
    """LocalBackend when neither ``workers`` nor ``scheduler`` is given, else a DaskBackend."""
    if workers is None and scheduler is None:
        return LocalBackend()
    if workers is not None and scheduler is not None:
        raise ValidationError("pass either --workers (start a local Dask cluster) or --scheduler (use an "
                              "existing one), not both")
    return DaskBackend(workers, scheduler, timeout=timeout, processes=processes)


# ---------------------------------------------------------------------------------------- passes / jobs
def on_device(head: Head, device: torch.device | str | None) -> Head:
    """``head`` itself, or a shallow copy whose θ and ``device`` are on ``device`` (chunks follow it)."""
    if device is None or torch.device(device) == head.device:
        return head
    h = copy.copy(head)
    h.device = torch.device(device)
    h.theta_ = head.theta_.to(h.device)
    return h


def _check_sample(rows: Any, weights: Any, n: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    if rows is None:
        if weights is not None:
            raise ValidationError("row_weights were given without rows; pass rows= (sorted row positions)")
        return None, None
    r = np.asarray(rows)
    if r.ndim != 1 or r.dtype.kind not in "iu":
        raise ValidationError(f"rows must be a 1-D array of integer row positions; got dtype {r.dtype}, "
                              f"shape {r.shape}")
    r = r.astype(np.int64)
    if r.size == 0:
        raise ValidationError("rows is empty; the Hessian needs at least one row")
    if np.any(np.diff(r) <= 0) or r[0] < 0 or r[-1] >= n:
        raise ValidationError(f"rows must be sorted, unique row positions in [0, {n})")
    w = None
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != r.shape:
            raise ValidationError(f"row_weights must align with rows: shape {r.shape}; got {w.shape}")
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValidationError("row_weights must be finite and >= 0")
    return r, w


def partitioned_hessian(head: Head, train: Any, *, rows: Any = None, row_weights: Any = None,
                        backend: LocalBackend | DaskBackend | None = None, chunk_size: int = 65536,
                        partition_rows: int | None = None, progress: bool = False) -> tuple[np.ndarray, float]:
    """(Σ w_i ∇²ℓ_i (P, P) float64, Σ w_i) over ``train`` (or only ``rows``, global positions, with
    ``row_weights``), one task per partition, tree-reduced."""
    source = open_source(train, argument="train")
    head.check_features(np.empty((0, source.n_features)), argument=source.name)
    rows, w = _check_sample(rows, row_weights, len(source))
    tasks = split_rows(plan_partitions(source, partition_rows), rows, w)
    with (backend or LocalBackend()) as be:
        return be.hessian(head, source, tasks, chunk_size=chunk_size, progress=progress)


def fit_curvature_partitioned(head: Head, train: Any, *, damping: float = 0.0, rows: Any = None,
                              row_weights: Any = None, normalizer: float | None = None,
                              workers: int | None = None, scheduler: Any = None, chunk_size: int = 65536,
                              partition_rows: int | None = None, device: torch.device | str | None = None,
                              progress: bool = False, timeout: float = 30.0) -> Curvature:
    """Like :func:`winnow.core.curvature.fit_curvature` (full or sampled Hessian, paper eqs. 4 and 52), run per
    partition locally or on Dask; ``device`` moves the head (and so every chunk) there."""
    if not np.isfinite(damping) or damping < 0:
        raise ValidationError(f"damping must be a finite number >= 0, got {damping!r}")
    head = on_device(head, device)
    S, total = partitioned_hessian(head, train, rows=rows, row_weights=row_weights,
                                   backend=make_backend(workers, scheduler, timeout=timeout),
                                   chunk_size=chunk_size, partition_rows=partition_rows, progress=progress)
    return curvature_from_sum(head, S, total, damping=damping, normalizer=normalizer)


@dataclass
class PartsResult:
    """What a partitioned job did: the output directory, partitions in all / written now / already
    finished (skipped on resume), rows, the column names and whether state came from a previous run."""

    path: Path
    n_parts: int
    written: int
    skipped: int
    n_rows: int
    columns: list[str]
    resumed: bool


ColumnSpec = ColumnFunction | Callable[[JobContext], ColumnFunction]


def _identity(spec: Any) -> str:
    if isinstance(spec, ColumnFunction) or hasattr(spec, "identity"):
        return str(spec.identity)
    return f"factory:{getattr(spec, '__module__', '?')}.{getattr(spec, '__qualname__', repr(spec))}"


def write_influence_parts(head: Head, train: Any, out: str | Path, *, test: Any = None,
                          self_influence: bool = True, memorization: bool = False,
                          columns: Iterable[ColumnSpec] = (), damping: float = 0.0,
                          curvature: Curvature | None = None, hessian_rows: Any = None,
                          hessian_weights: Any = None, normalizer: float | None = None,
                          workers: int | None = None, scheduler: Any = None, resume: bool = False,
                          overwrite: bool = False, chunk_size: int = 65536, partition_rows: int | None = None,
                          device: torch.device | str | None = None, progress: bool = False,
                          timeout: float = 30.0, argument: str = "--out") -> PartsResult:
    """Score every training point into a directory ``out`` of Parquet part files (one per partition).

    Columns: ``id``, ``label``; with ``test``: ``influence`` (−ḡ_testᵀH⁻¹g_p, > 0 harmful),
    ``loss_change_if_removed`` (−influence/n); with ``self_influence``: g_pᵀH⁻¹g_p; with ``memorization``:
    the columns of ``winnow.analyses.memorization.memorization_chunk``; then each of ``columns`` (a ColumnFunction,
    or a factory ``f(JobContext) -> ColumnFunction`` called once H is known).

    H is the full Hessian (all rows), the Hessian of ``hessian_rows`` with ``hessian_weights`` (paper
    eq. 52, N = ``normalizer`` or Σw), or a given ``curvature``. ``workers`` / ``scheduler`` run the
    partitions on Dask (see DaskBackend). ``resume=True`` finishes an interrupted run of the same job
    (refuses a different one); ``overwrite=True`` starts over. A part whose input cannot be read is not
    written, the others are, and a ValidationError naming the file is raised at the end.
    """
    if not isinstance(head, Head):
        raise ValidationError(f"head must be a winnow Head, got {type(head).__name__}")
    head._check_fitted()
    if not np.isfinite(damping) or damping < 0:
        raise ValidationError(f"damping must be a finite number >= 0, got {damping!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValidationError(f"chunk_size must be an integer >= 1; got {chunk_size!r}")
    if resume and overwrite:
        raise ValidationError("pass either --resume (keep finished parts) or --overwrite (start over), not both")
    head = on_device(head, device)
    source = open_source(train, argument="train")
    head.check_features(np.empty((0, source.n_features)), argument=f"train ({source.name})")
    test_src = None
    if test is not None:
        test_src = open_source(test, argument="test")
        head.check_features(np.empty((0, test_src.n_features)), argument=f"test ({test_src.name})")
    extra = list(columns)
    if test_src is None and not self_influence and not memorization and not extra:
        raise ValidationError("nothing to compute: give test data (influence), self_influence=True, "
                              "memorization=True or extra columns")
    if curvature is not None and (hessian_rows is not None or hessian_weights is not None):
        raise ValidationError("pass either curvature= or hessian_rows=/hessian_weights=, not both")
    rows, w = _check_sample(hessian_rows, hessian_weights, len(source))
    parts = plan_partitions(source, partition_rows)
    n_train = len(source)

    if curvature is not None:
        hess: Any = {"given_sha256": digest_array(curvature.hessian), "n": float(curvature.n)}
    elif rows is None:
        hess = {"rows": "all"}
    else:
        hess = {"rows_sha256": digest_array(rows), "m": int(rows.size),
                "weights_sha256": None if w is None else digest_array(w)}
    job = {"task": "influence", "head": head_fingerprint(head), "train": source_fingerprint(source),
           "test": None if test_src is None else source_fingerprint(test_src), "damping": float(damping),
           "normalizer": None if normalizer is None else float(normalizer), "hessian": hess,
           "columns": (["influence"] if test_src is not None else []) + (["self_influence"] if self_influence
                                                                         else [])
           + (["memorization"] if memorization else []) + [_identity(c) for c in extra],
           "partitions": [p.as_json() for p in parts]}
    pdir = PartsDirectory(out, argument=argument)
    state = pdir.prepare(job, resume=resume, overwrite=overwrite)
    resumed = state is not None

    with make_backend(workers, scheduler, timeout=timeout) as backend:
        if state is None:
            if curvature is None:
                S, total = backend.hessian(head, source, split_rows(parts, rows, w), chunk_size=chunk_size,
                                           progress=progress)
                curvature = curvature_from_sum(head, S, total, damping=damping, normalizer=normalizer)
            direction = np.zeros(0)
            n_test = 0
            if test_src is not None:
                gbar, n_test = mean_test_gradient(head, test_src, chunk_size=chunk_size, progress=progress)
                direction = curvature.solve(gbar).cpu().numpy()
            null = curvature.null if curvature.null is not None else head.null_directions()
            state = {"hessian": curvature.hessian.cpu().numpy(), "null": null.cpu().numpy(),
                     "n": np.array(float(curvature.n)), "damping": np.array(float(curvature.damping)),
                     "direction": direction, "n_train": np.array(n_train), "n_test": np.array(n_test)}
            pdir.start(state, {"n_train": n_train, "n_test": n_test, "n_parts": len(parts)}, overwrite=overwrite)
        # the scoring pass always uses the curvature rebuilt from the saved state, so that a resumed run
        # computes its parts from exactly the same H and s as the parts written before the crash
        curv = Curvature(hessian=torch.as_tensor(state["hessian"], dtype=DTYPE, device=head.device),
                         n=float(state["n"]), l2=head.l2, damping=float(state["damping"]),
                         null=torch.as_tensor(state["null"], dtype=DTYPE, device=head.device))
        s = None
        if test_src is not None:
            s = torch.as_tensor(state["direction"], dtype=DTYPE, device=head.device)
        ctx = JobContext(head, curv, s, n_train, source, test_src, int(chunk_size), progress)
        funcs: list[ColumnFunction] = []
        if s is not None:
            funcs.append(influence_columns(s, n_train, curv if self_influence else None))
        elif self_influence:
            funcs.append(self_influence_columns(curv))
        if memorization:
            funcs.append(memorization_columns(curv))
        funcs += [c if isinstance(c, ColumnFunction) else c(ctx) for c in extra]
        meta: dict[str, str] = {}
        for f in funcs:
            meta.update({str(k): str(v) for k, v in f.metadata.items()})
        todo = [p for p in parts if not pdir.is_complete(p)]
        failures = backend.score(head, source, todo, funcs, pdir.path, lambda p: pdir.part_metadata(p, meta),
                                 chunk_size=chunk_size, progress=progress) if todo else []
    if failures:
        part, exc = failures[0]
        more = f" (and {len(failures) - 1} more: {', '.join(p.name for p, _ in failures[1:4])})" \
            if len(failures) > 1 else ""
        raise ValidationError(f"{exc}{more}; {len(failures)} of {len(parts)} parts were not written (first: "
                              f"{part.name}), the others are complete in {pdir.path}: fix the input and rerun "
                              f"with --resume") from exc
    names = _column_names(pdir, parts)
    pdir.finish({"columns": names})
    return PartsResult(path=pdir.path, n_parts=len(parts), written=len(todo), skipped=len(parts) - len(todo),
                       n_rows=n_train, columns=names, resumed=resumed)


def _column_names(pdir: PartsDirectory, parts: Sequence[Partition]) -> list[str]:
    import pyarrow.parquet as pq

    return list(pq.read_schema(pdir.part_path(parts[0])).names) if parts else []
