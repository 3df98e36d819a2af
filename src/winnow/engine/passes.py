"""The passes every analysis shares, each one engine call with a pure kernel from ``winnow.core``:

- the Hessian pass Σ w_i ∇²ℓ_i (any head, closed form or autodiff) and the one function that turns it
  into H (:func:`winnow.core.curvature.curvature_from_sum`: λ mask + damping); over all rows the same pass
  also sums Σ g_i and Σ ‖g_i‖∞, the stationarity check ‖∇R(θ̂)‖∞ every influence computation makes;
- the gradient pass Σ g_i (mean test gradient; the stationarity check of a Hessian over a sample);
- per-point columns of any pure function ``func(head, X, y, **kwargs)`` (:func:`map_columns`);
- the objective pass (Σ w_i ℓ_i, Σ w_i g_i, Σ w_i ∇²ℓ_i) that fits a head by Newton's method.

Each takes an ``engine`` (default: in-process); with a Dask engine the same kernels run on the workers and
give the same numbers (partials summed in a fixed tree).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..core.curvature import Curvature, HessianKernel, Stationarity, curvature_from_sum, stationarity_from_sums
from ..core.heads import DTYPE, Head, as_tensor
from ..errors import NotStationaryError, ValidationError
from ..io.sources import DataSource, open_source
from ..validation import check_classes, check_damping, check_features, fail, open_data, read_labels
from .columns import ColumnFunction, ScoreKernel
from .engine import Engine, current_engine

__all__ = ["default_engine", "open_for_head", "hessian_pass", "fit_curvature", "gradient_sum",
           "mean_test_gradient", "test_gradients", "map_columns", "objective_pass", "stationarity", "load_rows",
           "FeatureSignKernel", "checked_curvature", "checked_head", "refit_head"]


def default_engine(engine: Engine | None = None, *, chunk_size: int = 65536, progress: bool = False) -> Engine:
    """``engine`` itself; else the engine of the active ``with Engine(...)`` block (with this chunk size);
    else an in-process engine with these settings."""
    if engine is not None:
        return engine
    active = current_engine()
    if active is not None:
        return active.with_chunk_size(chunk_size)
    return Engine(chunk_size=chunk_size, progress=progress)


def open_for_head(head: Head, data: Any, parameter: str = "data", *, nonempty: bool = False) -> DataSource:
    """Open ``data`` and check that its rows have the head's feature dimension D (the labels are checked
    chunk by chunk by the engine, in the pass itself) and, with ``nonempty``, that it has rows."""
    source = open_data(data, parameter, head=head)
    check_features(head, source, parameter)
    if nonempty and len(source) == 0:
        raise fail(f"{parameter} ({source.name}) is empty", parameter)
    return source


# ------------------------------------------------------------------------------------------ Hessian
def hessian_pass(head: Head, data: Any, *, rows: Any = None, row_weights: Any = None, chunk_size: int = 65536,
                 progress: bool = False, engine: Engine | None = None) -> tuple[torch.Tensor, float]:
    """(Σ w_i ∇²ℓ_i (P, P) float64 on the head's device, Σ w_i) over ``data`` (or only ``rows``, with
    ``row_weights`` aligned with them)."""
    return _hessian_sums(head, data, gradients=False, rows=rows, row_weights=row_weights, chunk_size=chunk_size,
                         progress=progress, engine=engine)


def _hessian_sums(head: Head, data: Any, *, gradients: bool, rows: Any = None, row_weights: Any = None,
                  chunk_size: int = 65536, progress: bool = False, engine: Engine | None = None) -> tuple[Any, ...]:
    """The Hessian pass: (S (P, P) float64 on the head's device, Σ w_i), with ``gradients`` followed by the
    stationarity sums (Σ w_i g_i, Σ w_i ‖g_i‖∞) of the same rows (:class:`HessianKernel`)."""
    source = open_for_head(head, data, "train")
    eng = default_engine(engine, chunk_size=chunk_size, progress=progress)
    S, total, *stats = eng.sum(source, HessianKernel(head, gradients=gradients), rows=rows, weights=row_weights,
                               description="Hessian pass")
    return torch.as_tensor(S, dtype=DTYPE, device=head.device), float(total), *stats


def fit_curvature(head: Head, train: Any, *, damping: float = 0.0, rows: Any = None, row_weights: Any = None,
                  normalizer: float | None = None, chunk_size: int = 65536, progress: bool = False,
                  engine: Engine | None = None, allow_nonstationary: bool = False,
                  check_stationarity: bool | None = None) -> Curvature:
    """Build and factorise H = (1/N) Σ w_i ∇²ℓ_i + λ·mask + damping·I from ``train`` (all rows, or ``rows``
    with optional ``row_weights``; paper eq. 4, or eq. 52 for a sample). ``normalizer`` N defaults to Σ w_i
    over the rows used. Works for every head (an autodiff head's Hessian uses the labels). Raises
    NotPositiveDefiniteError with a hint to add damping.

    Stationarity (``check_stationarity``; None means: for the full Hessian only): the full Hessian's pass
    also sums the gradients, so ``curvature.stationarity`` holds ‖∇R(θ̂)‖∞ at no extra pass; a Hessian over a
    sample, when asked, makes one gradient pass over all rows for it. A head whose relative figure exceeds the
    threshold raises a ValidationError unless ``allow_nonstationary``."""
    damping = check_damping(damping)
    full = rows is None and row_weights is None
    if check_stationarity is None:
        check_stationarity = full
    if check_stationarity and full:
        S, total, g, scale = _hessian_sums(head, train, gradients=True, chunk_size=chunk_size, progress=progress,
                                           engine=engine)
        st: Stationarity | None = stationarity_from_sums(head, g, scale, total)
    else:
        S, total = hessian_pass(head, train, rows=rows, row_weights=row_weights, chunk_size=chunk_size,
                                progress=progress, engine=engine)
        st = stationarity(head, train, engine=engine, chunk_size=chunk_size, progress=progress) \
            if check_stationarity else None
    curv = curvature_from_sum(head, S, total, damping=damping, normalizer=normalizer)
    if st is not None:
        check_stationary(head, train, st, allow_nonstationary)
    curv.stationarity = st
    return curv


def refit_head(head: Head, train: Any, *, chunk_size: int = 65536, engine: Engine | None = None) -> Head:
    """``head.refit(train)`` on the engine (a polished copy: Newton from its weights to the optimum, same λ)."""
    source = open_for_head(head, train, "train", nonempty=True)
    return head.refit(source, chunk_size=chunk_size, engine=default_engine(engine, chunk_size=chunk_size))


def checked_curvature(head: Head, train: Any, *, refit: bool = False, allow_nonstationary: bool = False,
                      damping: float = 0.0, rows: Any = None, row_weights: Any = None,
                      normalizer: float | None = None, chunk_size: int = 65536, progress: bool = False,
                      engine: Engine | None = None) -> tuple[Head, Curvature]:
    """(the head influence is computed from, its checked Curvature): with ``refit`` the head is first polished
    to the optimum (:func:`refit_head`), then H is built by :func:`fit_curvature`, which refuses a
    non-stationary head unless ``allow_nonstationary``. The one entry of every analysis that takes a head."""
    if refit:
        head = refit_head(head, train, chunk_size=chunk_size, engine=engine)
    curv = fit_curvature(head, train, damping=damping, rows=rows, row_weights=row_weights, normalizer=normalizer,
                         chunk_size=chunk_size, progress=progress, engine=engine,
                         allow_nonstationary=allow_nonstationary, check_stationarity=True)
    return head, curv


def checked_head(head: Head, train: Any, *, refit: bool = False, allow_nonstationary: bool = False,
                 chunk_size: int = 65536, progress: bool = False,
                 engine: Engine | None = None) -> tuple[Head, Stationarity]:
    """(the head influence is computed from, its Stationarity) for an analysis that builds no full Hessian
    (a sampled one, or none): with ``refit`` the head is first polished (:func:`refit_head`), then one
    gradient pass over all of ``train`` measures ‖∇R(θ̂)‖∞ (:func:`stationarity`), refused above the
    threshold unless ``allow_nonstationary``. :func:`checked_curvature` does the same inside the full
    Hessian's pass."""
    if refit:
        head = refit_head(head, train, chunk_size=chunk_size, engine=engine)
    st = stationarity(head, train, engine=engine, chunk_size=chunk_size, progress=progress)
    check_stationary(head, train, st, allow_nonstationary)
    return head, st


def check_stationary(head: Head, train: Any, st: Stationarity, allow_nonstationary: bool = False) -> None:
    """Refuse a head that is not at an optimum (``st.check``) with the cause a user can fix: when TRAIN
    lacks a class, no head of this kind has an optimum on it, and the class check says so (one extra pass
    over the labels, on this error path only)."""
    try:
        st.check(allow_nonstationary)
    except NotStationaryError:
        source = open_for_head(head, train, "train")
        check_classes(read_labels(source, "train"), source.classes, getattr(head, "kind", "auto"), "train")
        raise


# ----------------------------------------------------------------------------------------- gradients
@dataclass(frozen=True, eq=False)
class GradientKernel:
    """Engine kernel: (Σ_i g_i (P,), number of rows) over one chunk."""

    head: Head

    def __call__(self, chunk: Any, weights: np.ndarray | None = None) -> tuple[torch.Tensor, float]:
        X, y = as_tensor(chunk.X, self.head.device), torch.as_tensor(chunk.y, device=self.head.device)
        return self.head.gradients(X, y).sum(0), float(len(chunk))


def gradient_sum(head: Head, data: Any, *, rows: Any = None, engine: Engine | None = None,
                 chunk_size: int = 65536, progress: bool = False, description: str = "gradient pass",
                 parameter: str = "data") -> tuple[torch.Tensor, int]:
    """(Σ_i g_i (P,) on the head's device, n) over ``data`` (or only its sorted ``rows``); errors name
    ``parameter``."""
    source = open_for_head(head, data, parameter, nonempty=True)
    eng = default_engine(engine, chunk_size=chunk_size, progress=progress)
    g, n = eng.sum(source, GradientKernel(head), rows=rows, description=description)
    return torch.as_tensor(g, dtype=DTYPE, device=head.device), int(n)


def mean_test_gradient(head: Head, test: Any, *, chunk_size: int = 65536, progress: bool = False,
                       engine: Engine | None = None) -> tuple[torch.Tensor, int]:
    """(ḡ_t = (1/T) Σ_t g_t of shape (P,), T), streaming over ``test``."""
    g, T = gradient_sum(head, test, engine=engine, chunk_size=chunk_size, progress=progress,
                        description="test gradient", parameter="test")
    return g / T, T


def _gradient_rows(head: Head, X: np.ndarray, y: np.ndarray) -> torch.Tensor:
    return head.gradients(as_tensor(X, head.device), torch.as_tensor(y, device=head.device))


def test_gradients(head: Head, test: Any, *, chunk_size: int = 65536,
                   engine: Engine | None = None) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """All test gradients G_t (T, P) with their ids (T,) and labels (T,) (for pairwise scores; T moderate)."""
    source = open_for_head(head, test, "test", nonempty=True)
    cols = map_columns(head, source, _gradient_rows, label="g", ids=True, chunk_size=chunk_size, engine=engine)
    return torch.as_tensor(cols["g"], dtype=DTYPE, device=head.device), cols["id"], cols["label"]


@dataclass(frozen=True, eq=False)
class GradientStatsKernel:
    """Engine kernel: (Σ_i g_i (P,), Σ_i ‖g_i‖∞, number of rows) over one chunk."""

    head: Head

    def __call__(self, chunk: Any, weights: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
        X, y = as_tensor(chunk.X, self.head.device), torch.as_tensor(chunk.y, device=self.head.device)
        g, scale = self.head.gradient_stats(X, y)
        return g, scale, float(len(chunk))


def stationarity(head: Head, train: Any, *, engine: Engine | None = None, chunk_size: int = 65536,
                 progress: bool = False) -> Stationarity:
    """How far the head is from a stationary point of R(θ) = (1/n) Σ ℓ_i + (λ/2)‖W‖² over all of ``train``
    (every formula assumes ∇R(θ̂) = 0), by one gradient pass; the full Hessian's pass gets the same figure
    for free (:func:`fit_curvature`)."""
    source = open_for_head(head, train, "train", nonempty=True)
    eng = default_engine(engine, chunk_size=chunk_size, progress=progress)
    g, scale, n = eng.sum(source, GradientStatsKernel(head), description="stationarity check")
    return stationarity_from_sums(head, g, scale, float(n))


# ------------------------------------------------------------------------------------------- columns
def map_columns(head: Head, data: Any, func: Callable[..., Any], *, label: str | None = None,
                rows: Any = None, ids: bool = False, chunk_size: int = 65536, progress: bool = False,
                engine: Engine | None = None, description: str = "pass", **kwargs: Any) -> dict[str, np.ndarray]:
    """``func(head, X, y, **kwargs)`` over every chunk of ``data`` (or only ``rows``), its columns
    concatenated in row order (a returned array is named ``label``); with ``ids`` also ``id`` and
    ``label`` (the labels)."""
    source = open_source(data)
    eng = default_engine(engine, chunk_size=chunk_size, progress=progress)
    kernel = ScoreKernel(head, [ColumnFunction(func, kwargs, label=label, head=head)], ids=ids)
    return eng.map(source, kernel, rows=rows, description=description)


# ----------------------------------------------------------------------------------------- objective
@dataclass(frozen=True, eq=False)
class ObjectiveKernel:
    """Engine kernel: (Σ w_i ℓ_i, Σ w_i g_i, Σ w_i ∇²ℓ_i) at ``theta`` over one chunk; the gradient and
    Hessian are left out (zeros of shape ()) unless ``derivatives``."""

    head: Head
    theta: torch.Tensor
    derivatives: bool = True

    def __call__(self, chunk: Any, weights: np.ndarray | None = None) -> tuple[torch.Tensor, ...]:
        h = self.head
        X, y = as_tensor(chunk.X, h.device), torch.as_tensor(chunk.y, device=h.device)
        w = None if weights is None else as_tensor(weights, h.device)
        if self.derivatives:
            return h.objective_terms(X, y, w, self.theta)
        loss = h.losses(X, y, self.theta)
        return ((loss * w).sum() if w is not None else loss.sum()),


def objective_pass(head: Head, data: Any, *, sample_weight: np.ndarray | None = None,
                   engine: Engine | None = None, chunk_size: int = 65536) -> Callable[..., tuple[Any, ...]]:
    """A function ``evaluate(theta, derivatives)`` returning the sums (loss, grad, Hessian) over ``data``
    with row weights ``sample_weight`` (n,) (each call is one pass), for ``newton_minimize``."""
    source = open_source(data)
    eng = default_engine(engine, chunk_size=chunk_size)
    dev = head.device

    def evaluate(theta: torch.Tensor, derivatives: bool = True) -> tuple[torch.Tensor, ...]:
        out = eng.sum(source, ObjectiveKernel(head, theta, derivatives), weights=sample_weight,
                      description="objective")
        return tuple(torch.as_tensor(o, dtype=DTYPE, device=dev) for o in out)

    return evaluate


# --------------------------------------------------------------------------------------------- rows
def _rows_chunk(chunk: Any, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    return {"X": np.asarray(chunk.X, dtype=np.float64), "y": chunk.y, "ids": chunk.ids}


def load_rows(data: Any, rows: Any = None, *, engine: Engine | None = None,
              chunk_size: int = 1 << 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X float64 (m, D), y (m,), ids (m,)) of ``data`` — or only its sorted ``rows`` — in memory, for the
    validation-sized experiments (retraining, sampled pairs)."""
    source = open_source(data)
    eng = default_engine(engine, chunk_size=chunk_size)
    cols = eng.map(source, _rows_chunk, rows=rows, description="reading rows")
    if not cols:
        raise ValidationError(f"{source.name} is empty")
    return cols["X"], cols["y"], cols["ids"]


@dataclass(frozen=True)
class FeatureSignKernel:
    """Engine kernel: (nonnegative feature entries, rows with every feature ≥ 0, rows) over one chunk."""

    def __call__(self, chunk: Any, weights: np.ndarray | None = None) -> tuple[int, int, int]:
        nn = np.asarray(chunk.X) >= 0
        return int(nn.sum()), int(nn.all(1).sum()), len(chunk)
