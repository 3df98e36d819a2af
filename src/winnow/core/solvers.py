"""Inverse-Hessian-vector products H⁻¹B for parameter sets too big for the head's closed forms.

Every solver works on a *linear operator* (``HessianOperator``): anything with ``n_params``, ``device``,
``dtype`` and ``matvec(V)`` returning H·V for V of shape (P,) or (P, m); H must be symmetric. Optional
members a solver uses when present: ``dense()`` (the P×P matrix), ``sample_matvec(V, generator)`` (an
unbiased H·V from a minibatch, for stochastic LiSSA), ``null_directions()`` ((P, r) orthonormal directions
with H·v = 0 that every gradient is orthogonal to, e.g. a softmax's shared bias shift) and ``damping``.

Solvers (``fit(op)`` once, then ``solve(B)`` any number of times; ``info_`` describes the last solve):

- ``DenseSolver``: builds H, Cholesky; exact. P ≤ ``max_params`` (20 000 by default: a 3.2 GB matrix).
- ``CGSolver``: block conjugate gradient (one Krylov space for all right-hand sides, breakdown-free), or
  independent CGs (``block=False``), optionally Jacobi-preconditioned by the operator's ``diagonal()``;
  exact to ``tol`` (relative residual, checked on the true residual ‖B − HX‖ after the solve).
- ``LiSSASolver``: the Neumann series h ← b + (I − H/s)h (Agarwal et al. 2017, Koh & Liang 2017), full-batch
  or stochastic minibatch HVPs; converges only when H is positive definite and s > λ_max.
- ``LanczosSolver``: a rank-k approximation H ≈ U Θ Uᵀ + σ(I − UUᵀ) from k Ritz pairs of Lanczos with full
  re-orthogonalisation (σ = the damping: the low-rank-plus-damping model of H), so
  H⁻¹ ≈ U Θ⁻¹ Uᵀ + σ⁻¹(I − UUᵀ). An approximation: accurate when the spectrum outside the top k is ≈ σ.

Each records iterations, the relative residual ‖HX − B‖/‖B‖ (largest over columns, computed from the
solution after the solve), the rank where relevant, and ``converged`` — True only when that residual met
the solver's tolerance — and issues a ``ConvergenceWarning`` when it did not.

:func:`choose_damping` picks a damping from the spectrum (a few Lanczos steps) when none is given.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from ..errors import NotPositiveDefiniteError, ValidationError

DTYPE = torch.float64


class ConvergenceWarning(UserWarning):
    """An iterative solver stopped before reaching its tolerance (the result may be inaccurate)."""


@runtime_checkable
class HessianOperator(Protocol):
    """A symmetric linear operator V ↦ H·V on P parameters."""

    n_params: int
    device: torch.device
    dtype: torch.dtype

    def matvec(self, V: torch.Tensor) -> torch.Tensor:
        """H·V for V of shape (P,) or (P, m)."""
        ...


class MatrixOperator:
    """A ``HessianOperator`` around an explicit symmetric matrix (tests, heads, small models)."""

    def __init__(self, H: torch.Tensor, *, damping: float = 0.0, null: torch.Tensor | None = None) -> None:
        if H.ndim != 2 or H.shape[0] != H.shape[1]:
            raise ValidationError(f"H must be a square matrix, got shape {tuple(H.shape)}")
        self.H = H
        self.n_params = int(H.shape[0])
        self.device = H.device
        self.dtype = H.dtype
        self.damping = float(damping)
        self._null = null

    def matvec(self, V: torch.Tensor) -> torch.Tensor:
        return self.H @ V

    def dense(self) -> torch.Tensor:
        return self.H

    def null_directions(self) -> torch.Tensor:
        if self._null is None:
            return torch.zeros(self.n_params, 0, dtype=self.dtype, device=self.device)
        return self._null


@dataclass
class SolveInfo:
    """What a solve needed: ``iterations`` (HVP rounds), ``residual`` (max over columns of ‖Hx − b‖/‖b‖,
    NaN when not computed), ``converged``, ``rank`` (Lanczos), and solver-specific ``extra``."""

    solver: str
    iterations: int = 0
    residual: float = float("nan")
    converged: bool = True
    rank: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _as_matrix(B: torch.Tensor) -> tuple[torch.Tensor, bool]:
    return (B[:, None], True) if B.ndim == 1 else (B, False)


def _rel_residual(op: Any, X: torch.Tensor, B: torch.Tensor) -> float:
    """max_j ‖H x_j − b_j‖ / ‖b_j‖ over the nonzero columns of B (one batched matvec)."""
    nb = B.norm(dim=0)
    keep = nb > 0
    if not bool(keep.any()):
        return 0.0
    R = op.matvec(X[:, keep]) - B[:, keep]
    return float((R.norm(dim=0) / nb[keep]).max())


def _warn(msg: str) -> None:
    warnings.warn(msg, ConvergenceWarning, stacklevel=3)


class InverseHVPSolver(ABC):
    """Base class: ``fit(op)`` then ``solve(B)`` -> H⁻¹B with ``info_`` describing the last solve."""

    name = ""

    def fit(self, op: Any) -> InverseHVPSolver:
        if not hasattr(op, "matvec") or not hasattr(op, "n_params"):
            raise ValidationError(f"op must be a HessianOperator (with n_params and matvec), got {type(op).__name__}")
        self.op_ = op
        self._fit(op)
        return self

    def _fit(self, op: Any) -> None:
        """Precompute (factorise, build a basis); nothing by default."""

    def _check(self) -> None:
        if not hasattr(self, "op_"):
            raise ValidationError(f"{type(self).__name__}: call fit(op) before solve()")

    def solve(self, B: torch.Tensor) -> torch.Tensor:
        """H⁻¹B for B (P,) or (P, m); sets ``info_``."""
        self._check()
        if B.shape[0] != self.op_.n_params:
            raise ValidationError(f"B has {B.shape[0]} rows but H has P = {self.op_.n_params} parameters")
        M, vec = _as_matrix(B.to(self.op_.dtype))
        X = self._solve(M)
        return X[:, 0] if vec else X

    @abstractmethod
    def _solve(self, B: torch.Tensor) -> torch.Tensor:
        """H⁻¹B for a (P, m) matrix B."""

    @property
    def factorised(self) -> bool:
        """True when many right-hand sides are cheap (dense, low rank): self-influence for every point."""
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# ----------------------------------------------------------------------------------------------- dense
class DenseSolver(InverseHVPSolver):
    """Exact: H built explicitly (``op.dense()`` or P matvecs on identity blocks), then Cholesky.

    ``max_params``: refuse larger P (a P×P float64 matrix is 8P² bytes); an operator with a
    ``max_dense_seconds`` attribute is timed on its first block of columns and the build refused when the
    estimate for all P columns is above it. ``tol``: the relative residual a solve must meet to count as
    converged (floating-point error on an ill-conditioned H can exceed it). ``on_indefinite``: "raise"
    (NotPositiveDefiniteError naming the smallest eigenvalue and the damping that would fix it) or
    "eigh" (solve with the eigendecomposition anyway, warning how many eigenvalues are ≤ 0: the result is
    then an influence with respect to an indefinite H, which you should read with care).
    """

    name = "dense"

    def __init__(self, max_params: int = 20000, *, on_indefinite: str = "raise", block: int = 256,
                 tol: float = 1e-6) -> None:
        if on_indefinite not in ("raise", "eigh"):
            raise ValidationError(f"on_indefinite must be 'raise' or 'eigh', got {on_indefinite!r}")
        if max_params < 1 or block < 1:
            raise ValidationError("max_params and block must be >= 1")
        if not (tol > 0):
            raise ValidationError(f"tol must be > 0, got {tol!r}")
        self.max_params = int(max_params)
        self.on_indefinite = on_indefinite
        self.block = int(block)
        self.tol = float(tol)

    @property
    def factorised(self) -> bool:
        return True

    def _fit(self, op: Any) -> None:
        P = int(op.n_params)
        if P > self.max_params:
            gb = 8 * P * P / 1e9
            raise ValidationError(
                f"solver 'dense' cannot take P = {P} parameters (max_dense = {self.max_params}, raise it if the "
                f"memory is there: the Hessian alone would take {gb:.1f} GB): use 'cg' (exact to a tolerance, one "
                f"HVP pass per iteration), 'lanczos' (low-rank + damping approximation, cheap for many right-hand "
                f"sides) or 'lissa', or restrict params to a subset",
                parameters=("solver", "max_dense", "params"))
        H = build_dense(op, block=self.block)
        H = 0.5 * (H + H.T)
        null = op.null_directions() if hasattr(op, "null_directions") else None
        self.null_ = null if null is not None and null.shape[1] else None
        self.hessian_ = H
        F = H
        if self.null_ is not None:
            # gradients are orthogonal to the null directions: adding c·vvᵀ leaves H⁻¹g unchanged
            F = H + (float(H.diagonal().abs().sum()) + 1.0) * (self.null_ @ self.null_.T)
        L, info = torch.linalg.cholesky_ex(F)
        self.eig_ = None
        if int(info) == 0:
            self.cholesky_ = L
            return
        ev, Q = torch.linalg.eigh(F)
        spec = _without_null(ev, Q, self.null_)  # the fill along the null directions is no eigenvalue of H
        lo, hi = float(spec[0]), float(spec[-1])
        neg = int((spec <= 1e-13 * max(abs(hi), 1e-300)).sum())
        damp = getattr(op, "damping", 0.0)
        msg = (f"the Hessian (P = {P}) is not positive definite: {neg} eigenvalue(s) <= 0, smallest {lo:.3g}, "
               f"largest {hi:.3g}, with {damp:g} added to its diagonal; a trained network that is not at an "
               f"exact minimum has negative curvature. Set damping above {damp + abs(lo):.3g}, e.g. "
               f"{damp + 1.1 * abs(lo) + 1e-12:.3g}")
        if self.on_indefinite == "raise":
            raise NotPositiveDefiniteError(msg, parameters=("damping",))
        warnings.warn(msg + "; solving with the eigendecomposition of the indefinite H as asked "
                      "(on_indefinite='eigh')", UserWarning, stacklevel=3)
        self.cholesky_ = None
        self.eig_ = (ev, Q)

    def _solve(self, B: torch.Tensor) -> torch.Tensor:
        if self.cholesky_ is not None:
            X = torch.cholesky_solve(B, self.cholesky_)
        else:
            ev, Q = self.eig_  # type: ignore[misc]
            safe = torch.where(ev.abs() > 0, ev, torch.ones_like(ev))
            X = Q @ ((Q.T @ B) / safe[:, None])
        R = self.hessian_ @ X - B
        if self.null_ is not None:  # compare on the span the gradients live in
            R = R - self.null_ @ (self.null_.T @ R)
        nb = B.norm(dim=0)
        keep = nb > 0
        res = float((R.norm(dim=0)[keep] / nb[keep]).max()) if bool(keep.any()) else 0.0
        converged = res <= self.tol
        self.info_ = SolveInfo("dense", iterations=0, residual=res, converged=converged, extra={"tol": self.tol})
        if not converged:
            _warn(f"the dense solve's relative residual is {res:.3g} > tol {self.tol:g}: H is too ill-conditioned "
                  f"for an accurate solve in this precision; add damping")
        return X

    def whiten(self, G: torch.Tensor) -> torch.Tensor:
        """L⁻¹Gᵀ (P, c) for rows G (c, P): self-influence gᵀH⁻¹g = ‖column‖² (Cholesky route only)."""
        self._check()
        if self.cholesky_ is None:
            raise ValidationError("whiten() needs a positive definite H (Cholesky); use solve()")
        return torch.linalg.solve_triangular(self.cholesky_, G.T.to(self.cholesky_.dtype), upper=False)

    def __repr__(self) -> str:
        return f"DenseSolver(max_params={self.max_params})"


def _without_null(ev: torch.Tensor, Q: torch.Tensor, null: torch.Tensor | None) -> torch.Tensor:
    """The eigenvalues of H + c·NNᵀ with the r eigenpairs that live on the null directions N removed."""
    if null is None or not null.shape[1]:
        return ev
    overlap = (null.T @ Q).pow(2).sum(0)  # ≈ 1 on the null directions, ≈ 0 elsewhere
    keep = torch.argsort(overlap)[:ev.numel() - null.shape[1]]
    return torch.sort(ev[keep]).values


def build_dense(op: Any, block: int = 256) -> torch.Tensor:
    """The P×P matrix of ``op`` (``op.dense()`` when it has one, else matvecs on identity blocks)."""
    if hasattr(op, "dense"):
        return op.dense()
    return matvec_columns(op, block)


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600} h {s % 3600 // 60:02d} min" if s >= 3600 else (f"{s // 60} min {s % 60:02d} s" if s >= 60
                                                                         else f"{max(seconds, 0.0):.1f} s")


def matvec_columns(op: Any, block: int = 256) -> torch.Tensor:
    """H = [op.matvec(e_1) … op.matvec(e_P)], computed ``block`` identity columns at a time, (P, P).

    The first block (at most 16 columns) is timed and the time for all P columns estimated from it; an operator with a
    ``max_dense_seconds`` attribute (not None) refuses the build (ValidationError naming max_dense,
    max_dense_seconds and params) when the estimate is above it. An operator with ``progress`` true shows
    the columns done, the estimate in the bar's title."""
    import time

    from ..progress import Tracker

    P = int(op.n_params)
    H = torch.empty(P, P, dtype=op.dtype, device=op.device)
    budget = getattr(op, "max_dense_seconds", None)
    tracker: Tracker | None = None
    first = min(block, 16)  # a small first block: the estimate comes before most of the work
    starts = [0] + list(range(first, P, block)) if P > first else [0]
    try:
        for s in starts:
            e = min(P, s + (first if s == 0 else block))
            E = torch.zeros(P, e - s, dtype=op.dtype, device=op.device)
            E[torch.arange(s, e), torch.arange(e - s)] = 1.0
            t0 = time.perf_counter()
            H[:, s:e] = op.matvec(E)
            if s == 0:
                took = time.perf_counter() - t0
                estimate = took * P / (e - s)
                op.dense_estimate_seconds = estimate
                if budget is not None and estimate > budget and e < P:
                    raise ValidationError(
                        f"the dense Hessian needs P = {P} Hessian-vector products; the first {e - s} took "
                        f"{_duration(took)}, so about {_duration(estimate)} in all, above the limit of {budget:g} s: "
                        f"lower max_dense below {P} (an iterative solver then runs instead), restrict params, or "
                        f"raise max_dense_seconds",
                        parameters=("max_dense_seconds", "max_dense", "params"))
                tracker = Tracker(P, f"Hessian columns (about {_duration(estimate)})", "columns",
                                  enabled=bool(getattr(op, "progress", False)))
            if tracker is not None:
                tracker.advance(e - s)
    finally:
        if tracker is not None:
            tracker.close()
    return H


# -------------------------------------------------------------------------------------------------- CG
class DiagonalPreconditioner:
    """M = diag(d), d > 0: ``half_inv`` applies M^{-1/2}, ``half`` M^{1/2} to (P, m) columns."""

    def __init__(self, d: torch.Tensor) -> None:
        self.s = d.rsqrt()

    def half_inv(self, V: torch.Tensor) -> torch.Tensor:
        return self.s[:, None] * V

    def half(self, V: torch.Tensor) -> torch.Tensor:
        return V / self.s[:, None]


class _Scaled:
    """The symmetrically preconditioned operator M^{-1/2} H M^{-1/2} that preconditioned CG runs on."""

    def __init__(self, op: Any, pre: Any) -> None:
        self.op, self.pre = op, pre
        self.n_params, self.device, self.dtype = op.n_params, op.device, op.dtype

    def matvec(self, V: torch.Tensor) -> torch.Tensor:
        M, vec = _as_matrix(V)
        out = self.pre.half_inv(self.op.matvec(self.pre.half_inv(M)))
        return out[:, 0] if vec else out


class CGSolver(InverseHVPSolver):
    """Conjugate gradient for all columns of B at once.

    ``block=True`` (default): breakdown-free block CG (Ji & Li, BIT 2017): one Krylov space shared by
    all right-hand sides, search directions re-orthonormalised (rank-revealing SVD) every step; many
    right-hand sides converge in far fewer HVP rounds. ``block=False``: m independent CGs, vectorised.

    ``preconditioner``: None (default), "diagonal" (the operator's ``diagonal()``, e.g. a model's
    Gauss-Newton diagonal), "auto" (that diagonal when the operator has one, else none), a (P,) tensor of
    positive values d ≈ diag(H), or "kfac" (a model's curvature over Linear and Conv2d layers: the damped K-FAC
    approximation M ≈ H of :mod:`winnow.core.kfac`, built in one pass over the operator's data with its l2
    and damping). Measured on a small trained CNN the Jacobi preconditioner did not pay (docs/models.md),
    hence the default. Preconditioning runs CG on M^{-1/2} H M^{-1/2} (the same iterates as PCG with M);
    M is computed once, in ``fit``.
    Stops when every column's *true* residual ‖b − Hx‖/‖b‖ ≤ ``tol`` (in the original coordinates, whatever
    the preconditioner); the residual is recomputed from X after the loop and, when it is above ``tol``
    (rounding drift), CG restarts from X on it (at most 3 times). ``max_iter`` HVP rounds at most (default
    min(10·P, 1000)). Negative curvature (pᵀHp ≤ 0: H not positive definite) stops and warns.
    ``info_.converged`` is True only when the final relative residual is ≤ ``tol``.
    """

    name = "cg"

    def __init__(self, tol: float = 1e-8, max_iter: int | None = None, *, block: bool = True,
                 preconditioner: str | torch.Tensor | None = None) -> None:
        if not (tol > 0):
            raise ValidationError(f"tol must be > 0, got {tol!r}")
        if max_iter is not None and max_iter < 1:
            raise ValidationError(f"max_iter must be >= 1, got {max_iter}")
        if isinstance(preconditioner, str) and preconditioner not in ("auto", "diagonal", "kfac"):
            raise ValidationError(f"preconditioner must be 'auto', 'diagonal', 'kfac', None or a (P,) tensor, got "
                                  f"{preconditioner!r}", parameters=("preconditioner",))
        self.tol = float(tol)
        self.max_iter = max_iter
        self.block = bool(block)
        self.preconditioner = preconditioner

    def _fit(self, op: Any) -> None:
        pre = self.preconditioner
        d: torch.Tensor | None = None
        if isinstance(pre, torch.Tensor):
            d = pre.detach().to(op.device, op.dtype).reshape(-1)
            if d.numel() != op.n_params or not bool(torch.isfinite(d).all()) or not bool((d > 0).all()):
                raise ValidationError(f"preconditioner must hold P = {op.n_params} finite values > 0")
        elif pre == "diagonal" or (pre == "auto" and hasattr(op, "diagonal")):
            if not hasattr(op, "diagonal"):
                raise ValidationError("preconditioner='diagonal' needs an operator with diagonal() (e.g. a model's "
                                      "curvature); pass a (P,) tensor or None")
            d = op.diagonal().to(op.device, op.dtype)
            top = float(d.abs().max()) if d.numel() else 0.0
            # a preconditioner must be positive definite: tiny or negative entries are raised to a floor
            d = torch.clamp(d, min=max(top * 1e-8, 1e-300)) if top > 0 else None
        elif pre == "kfac":
            from .kfac import kfac_preconditioner

            self.pre_ = kfac_preconditioner(op)
            return
        self.pre_ = None if d is None else DiagonalPreconditioner(d)

    def _solve(self, B: torch.Tensor) -> torch.Tensor:
        op = self.op_
        P, m = B.shape
        max_iter = self.max_iter if self.max_iter is not None else min(max(10 * P, 100), 1000)
        s = getattr(self, "pre_", None)
        work = op if s is None else _Scaled(op, s)
        unscale = None if s is None else s.half
        bn = B.norm(dim=0)
        X = torch.zeros_like(B)
        R = B.clone()
        it = neg = restarts = 0
        residual = 0.0 if not bool((bn > 0).any()) else 1.0
        from ..progress import Tracker

        with Tracker(max_iter, "CG iterations", "iterations", enabled=bool(getattr(op, "progress", False))) as bar:
            while True:
                Rw = R if s is None else s.half_inv(R)
                run = self._solve_block if self.block and m > 1 else self._solve_columns
                dY, k, neg = run(work, Rw, bn, unscale, max_iter - it, bar)
                X += dY if s is None else s.half_inv(dY)
                it += k
                R = B - op.matvec(X)  # the true residual, in the original coordinates
                keep = bn > 0
                residual = float((R.norm(dim=0)[keep] / bn[keep]).max()) if bool(keep.any()) else 0.0
                if residual <= self.tol or neg or it >= max_iter or k == 0 or restarts >= 3:
                    break
                restarts += 1
        converged = residual <= self.tol and neg == 0
        self.info_ = SolveInfo("cg", iterations=it, residual=residual, converged=converged,
                               extra={"negative_curvature_columns": neg, "tol": self.tol, "block": self.block,
                                      "preconditioned": s is not None, "restarts": restarts})
        if neg:
            _warn(f"CG met negative curvature (pᵀHp ≤ 0) in {neg} of {m} right-hand sides: H is "
                  f"not positive definite; add damping (or use the Gauss-Newton curvature, positive semi-definite "
                  f"by construction). Relative residual {residual:.3g}")
        elif not converged:
            _warn(f"CG did not converge: relative residual {residual:.3g} > tol {self.tol:g} after {it} "
                  f"iterations (raise max_iter, or add damping to improve the conditioning)")
        return X

    @staticmethod
    def _done(R: torch.Tensor, bn: torch.Tensor, unscale: Any, tol: float) -> torch.Tensor:
        """Columns whose true relative residual is ≤ tol (R in the working coordinates; ``unscale`` maps them
        back: M^{1/2})."""
        rn = (R if unscale is None else unscale(R)).norm(dim=0)
        return (rn <= tol * bn) | (bn == 0)

    def _solve_block(self, op: Any, B: torch.Tensor, bn: torch.Tensor, unscale: Any,
                     max_iter: int, bar: Any) -> tuple[torch.Tensor, int, int]:
        X = torch.zeros_like(B)
        R = B.clone()

        def orth(Z: torch.Tensor) -> torch.Tensor:
            U, S, _ = torch.linalg.svd(Z, full_matrices=False)
            keep = S > S[0] * 1e-12 * max(Z.shape) if S.numel() and S[0] > 0 else S > 0
            return U[:, keep]

        D = orth(R)
        it, neg = 0, 0
        while it < max_iter and D.shape[1] > 0:
            done = self._done(R, bn, unscale, self.tol)
            if bool(done.all()):
                break
            it += 1
            bar.advance(1)
            Q = op.matvec(D)
            DtQ = 0.5 * (D.T @ Q + Q.T @ D)
            ev = torch.linalg.eigvalsh(DtQ)
            if float(ev[0]) <= 0:
                neg = int((~done).sum())
                break
            L = torch.linalg.cholesky(DtQ)
            alpha = torch.cholesky_solve(D.T @ R, L)
            X += D @ alpha
            R -= Q @ alpha
            if bool(self._done(R, bn, unscale, self.tol).all()):
                break
            beta = -torch.cholesky_solve(Q.T @ R, L)
            D = orth(R + D @ beta)
        return X, it, neg

    def _solve_columns(self, op: Any, B: torch.Tensor, bn: torch.Tensor, unscale: Any,
                       max_iter: int, bar: Any) -> tuple[torch.Tensor, int, int]:
        P, m = B.shape
        X = torch.zeros_like(B)
        R = B.clone()
        D = R.clone()
        rs = (R * R).sum(0)
        active = ~self._done(R, bn, unscale, self.tol)
        neg_curv = torch.zeros(m, dtype=torch.bool, device=B.device)
        it = 0
        while bool(active.any()) and it < max_iter:
            idx = active.nonzero()[:, 0]
            it += 1
            bar.advance(1)
            Dk = D[:, idx]
            HD = op.matvec(Dk)
            pHp = (Dk * HD).sum(0)
            bad = pHp <= 0
            if bool(bad.any()):
                neg_curv[idx[bad]] = True
                active[idx[bad]] = False
            ok = ~bad
            idx, Dk, HD, pHp = idx[ok], Dk[:, ok], HD[:, ok], pHp[ok]
            if idx.numel() == 0:
                break
            alpha = rs[idx] / pHp
            X[:, idx] += alpha * Dk
            R[:, idx] -= alpha * HD
            rs_new = (R[:, idx] * R[:, idx]).sum(0)
            beta = rs_new / rs[idx]
            rs[idx] = rs_new
            D[:, idx] = R[:, idx] + beta * Dk
            Ri = R[:, idx]
            rn = (Ri if unscale is None else unscale(Ri)).norm(dim=0)
            active[idx[rn <= self.tol * bn[idx]]] = False
        return X, it, int(neg_curv.sum())

    def __repr__(self) -> str:
        pre = self.preconditioner if not isinstance(self.preconditioner, torch.Tensor) else "tensor"
        return (f"CGSolver(tol={self.tol:g}, max_iter={self.max_iter}, block={self.block}, "
                f"preconditioner={pre!r})")


# ----------------------------------------------------------------------------------------------- LiSSA
def lanczos(op: Any, n_iter: int, *, seed: int = 0, v0: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    """Lanczos with full re-orthogonalisation: (V (P, m), T (m, m) tridiagonal, β_m, m).

    Stops early (m < n_iter) when the Krylov space is exhausted (β ≈ 0).
    """
    from ..progress import Tracker

    P = int(op.n_params)
    m = min(int(n_iter), P)
    with Tracker(m, "Lanczos steps", "steps", enabled=bool(getattr(op, "progress", False))) as bar:
        return _lanczos_steps(op, m, seed, v0, bar)


def _lanczos_steps(op: Any, m: int, seed: int, v0: torch.Tensor | None, bar: Any
                   ) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    P = int(op.n_params)
    g = torch.Generator(device="cpu").manual_seed(seed)
    v = (torch.randn(P, generator=g, dtype=op.dtype) if v0 is None else v0.detach().cpu().to(op.dtype))
    v = v.to(op.device)
    v = v / v.norm()
    V = torch.zeros(P, m, dtype=op.dtype, device=op.device)
    alphas, betas = [], []
    beta = 0.0
    k = 0
    for k in range(m):
        V[:, k] = v
        w = op.matvec(v)
        bar.advance(1)
        a = float(w @ v)
        w = w - a * v - (beta * V[:, k - 1] if k > 0 else 0.0)
        # full re-orthogonalisation (twice is enough, Parlett–Kahan)
        for _ in range(2):
            w = w - V[:, :k + 1] @ (V[:, :k + 1].T @ w)
        alphas.append(a)
        beta = float(w.norm())
        if k < m - 1:
            if beta <= 1e-12 * max(1.0, abs(a)):
                k_used = k + 1
                T = _tridiag(alphas, betas, op)
                return V[:, :k_used], T, 0.0, k_used
            betas.append(beta)
            v = w / beta
    T = _tridiag(alphas, betas, op)
    return V, T, beta, m


def _tridiag(alphas: list[float], betas: list[float], op: Any) -> torch.Tensor:
    a = torch.tensor(alphas, dtype=op.dtype, device=op.device)
    T = torch.diag(a)
    if betas:
        b = torch.tensor(betas, dtype=op.dtype, device=op.device)
        T = T + torch.diag(b, 1) + torch.diag(b, -1)
    return T


def top_eigen(op: Any, rank: int, *, n_iter: int | None = None, seed: int = 0
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """The ``rank`` Ritz pairs of largest |θ| from Lanczos: (θ (k,), U (P, k), Ritz residual bounds (k,), m)."""
    P = int(op.n_params)
    m = min(P, n_iter if n_iter is not None else min(P, 2 * rank + 20))
    V, T, beta, m_used = lanczos(op, m, seed=seed)
    theta, S = torch.linalg.eigh(T)
    resid = (beta * S[-1, :]).abs()  # ‖H u_i − θ_i u_i‖ = |β_m s_{m,i}|
    order = torch.argsort(theta.abs(), descending=True)[:min(rank, m_used)]
    return theta[order], V @ S[:, order], resid[order], m_used


class LiSSASolver(InverseHVPSolver):
    """LiSSA: h_{j+1} = b + (I − H/s) h_j, x = h/s → H⁻¹b when 0 < H < s·I.

    ``scale`` s (default 1.1 × λ_max estimated by 30 Lanczos steps); ``max_iter`` recursion depth;
    ``tol`` on the relative residual (full-batch: ‖h_{j+1} − h_j‖/‖b‖ is exactly ‖b − Hx_j‖/‖b‖, checked
    every ``check_every`` steps; stochastic: on the change of the running estimate, the true residual
    reported at the end). ``batch_size``: None = full-batch HVPs (deterministic Richardson iteration),
    else minibatch HVPs via ``op.sample_matvec`` (classic stochastic LiSSA), averaged over ``repeats``.
    The convergence rate is 1 − λ_min/s per step: damping helps a lot.
    """

    name = "lissa"

    def __init__(self, *, scale: float | None = None, max_iter: int = 5000, tol: float = 1e-6,
                 batch_size: int | None = None, repeats: int = 1, check_every: int = 10, seed: int = 0) -> None:
        if scale is not None and not (scale > 0):
            raise ValidationError(f"scale must be > 0, got {scale!r}")
        if max_iter < 1 or repeats < 1 or check_every < 1:
            raise ValidationError("max_iter, repeats and check_every must be >= 1")
        if not (tol > 0):
            raise ValidationError(f"tol must be > 0, got {tol!r}")
        self.scale = scale
        self.max_iter = int(max_iter)
        self.tol = float(tol)
        self.batch_size = batch_size
        self.repeats = int(repeats)
        self.check_every = int(check_every)
        self.seed = int(seed)

    def _fit(self, op: Any) -> None:
        if self.batch_size is not None and not hasattr(op, "sample_matvec"):
            raise ValidationError("batch_size= needs an operator with sample_matvec (e.g. a model's Hessian); "
                                  "use batch_size=None for full-batch LiSSA")
        if self.scale is not None:
            self.scale_ = float(self.scale)
            self.lambda_max_ = float("nan")
        else:
            theta, _, _, _ = top_eigen(op, 1, n_iter=min(op.n_params, 30), seed=self.seed)
            self.lambda_max_ = float(theta[0].abs())
            self.scale_ = 1.1 * self.lambda_max_ if self.lambda_max_ > 0 else 1.0

    def _solve(self, B: torch.Tensor) -> torch.Tensor:
        op, s = self.op_, self.scale_
        bn = B.norm(dim=0)
        bn_safe = torch.where(bn > 0, bn, torch.ones_like(bn))
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        total = torch.zeros_like(B)
        iters = 0
        diverged = False
        for _ in range(self.repeats):
            h = B.clone()
            for j in range(1, self.max_iter + 1):
                Hh = op.matvec(h) if self.batch_size is None else op.sample_matvec(h, gen, self.batch_size)
                new = B + h - Hh / s
                iters += 1
                if j % self.check_every == 0 or j == self.max_iter:
                    step = float(((new - h).norm(dim=0) / bn_safe).max())
                    if not math.isfinite(step) or step > 1e12:
                        diverged = True
                        h = new
                        break
                    if step <= self.tol and self.batch_size is None:
                        h = new
                        break
                h = new
            total += h / s
        X = total / self.repeats
        residual = _rel_residual(op, X, B)
        converged = residual <= self.tol and not diverged
        self.info_ = SolveInfo("lissa", iterations=iters, residual=residual, converged=converged,
                               extra={"scale": s, "lambda_max_estimate": self.lambda_max_,
                                      "stochastic": self.batch_size is not None, "diverged": diverged})
        if not converged:
            hint = ("it diverged: H is probably not positive definite (add damping) or scale < λ_max"
                    if diverged or not math.isfinite(residual) else
                    "raise max_iter, add damping (the rate is 1 − λ_min/scale per step), or use CG")
            _warn(f"LiSSA did not converge: relative residual {residual:.3g} (tol {self.tol:g}) after {iters} "
                  f"HVPs; {hint}")
        return X

    def __repr__(self) -> str:
        return f"LiSSASolver(scale={self.scale}, max_iter={self.max_iter}, tol={self.tol:g})"


# --------------------------------------------------------------------------------------------- Lanczos
class LanczosSolver(InverseHVPSolver):
    """Low-rank + damping: H ≈ U Θ Uᵀ + σ(I − UUᵀ) from the ``rank`` Ritz pairs of largest |θ|.

    ``n_iter`` Lanczos steps (default min(P, 2·rank + 20)), full re-orthogonalisation (P × n_iter floats).
    ``shift`` σ, the curvature assumed outside the top-k space: "damping" (``op.damping`` plus
    ``op.spectrum_floor`` when the operator has one), a number, or None/0 (drop the complement: the
    projection onto the top-k space, as pyDVL's ArnoldiInfluence does). ``tol``: a Ritz pair counts as
    converged when ‖Hu − θu‖ ≤ tol·|θ|; a warning lists the unconverged ones. ``check_residual``: also
    report ‖HX − B‖/‖B‖ of each solve (one extra HVP round) — large values are expected from a low-rank
    model and say how much of H it leaves out. ``solve_tol``: the relative residual a solve must meet to
    count as converged (``info_.converged`` is True only when the Ritz pairs converged *and* the checked
    residual is ≤ ``solve_tol``; a larger one gives a ConvergenceWarning; without ``check_residual`` the
    residual is unknown and ``converged`` is False).
    """

    name = "lanczos"

    def __init__(self, rank: int = 50, *, n_iter: int | None = None, shift: float | str | None = "damping",
                 tol: float = 1e-3, seed: int = 0, check_residual: bool = True, solve_tol: float = 0.1) -> None:
        if rank < 1:
            raise ValidationError(f"rank must be >= 1, got {rank}")
        if n_iter is not None and n_iter < rank:
            raise ValidationError(f"n_iter ({n_iter}) must be >= rank ({rank})")
        if isinstance(shift, str) and shift != "damping":
            raise ValidationError(f"shift must be 'damping', a number or None, got {shift!r}")
        self.rank = int(rank)
        self.n_iter = n_iter
        self.shift = shift
        self.tol = float(tol)
        self.seed = int(seed)
        self.check_residual = check_residual
        if not (solve_tol > 0):
            raise ValidationError(f"solve_tol must be > 0, got {solve_tol!r}")
        self.solve_tol = float(solve_tol)

    @property
    def factorised(self) -> bool:
        return True

    def _fit(self, op: Any) -> None:
        theta, U, resid, m = top_eigen(op, self.rank, n_iter=self.n_iter, seed=self.seed)
        if self.shift == "damping":
            sigma = float(getattr(op, "damping", 0.0)) + float(getattr(op, "spectrum_floor", 0.0))
        else:
            sigma = float(self.shift) if self.shift is not None else 0.0
        if sigma < 0:
            raise ValidationError(f"shift must be >= 0, got {sigma}")
        small = theta.abs() <= 1e-12 * max(float(theta.abs().max()), 1e-300)
        if bool(small.any()):
            keep = ~small
            theta, U, resid = theta[keep], U[:, keep], resid[keep]
        self.eigenvalues_, self.eigenvectors_, self.ritz_residuals_ = theta, U, resid
        self.n_iter_ = m
        self.sigma_ = sigma
        self.rank_ = int(theta.numel())
        bad = resid > self.tol * theta.abs()
        self.converged_ = not bool(bad.any())
        self.negative_ = int((theta < 0).sum())
        if not self.converged_:
            _warn(f"Lanczos: {int(bad.sum())} of {self.rank_} Ritz pairs did not converge after {m} iterations "
                  f"(worst ‖Hu − θu‖/|θ| = {float((resid / theta.abs()).max()):.3g} > tol {self.tol:g}); raise "
                  f"n_iter or lower rank")
        if self.negative_:
            _warn(f"Lanczos: {self.negative_} of the top-{self.rank_} Ritz values are negative (min "
                  f"{float(theta.min()):.3g}): H is indefinite; add damping")
        if sigma == 0:
            warnings.warn("Lanczos low-rank solve without a shift: the result is projected onto the top-"
                          f"{self.rank_} eigenspace (the rest of H⁻¹ is dropped); pass damping > 0 or shift=",
                          UserWarning, stacklevel=3)

    def _solve(self, B: torch.Tensor) -> torch.Tensor:
        U, th = self.eigenvectors_, self.eigenvalues_
        C = U.T @ B
        X = U @ (C / th[:, None])
        if self.sigma_ > 0:
            X = X + (B - U @ C) / self.sigma_
        residual = _rel_residual(self.op_, X, B) if self.check_residual else float("nan")
        converged = self.converged_ and residual <= self.solve_tol  # NaN (not checked) is not converged
        if self.check_residual and not residual <= self.solve_tol:
            _warn(f"the rank-{self.rank_} Lanczos solve has relative residual {residual:.3g} > solve_tol "
                  f"{self.solve_tol:g}: the low-rank + damping model leaves out much of H; raise rank or the "
                  f"damping, or use CG (exact to a tolerance)")
        self.info_ = SolveInfo("lanczos", iterations=self.n_iter_, residual=residual, converged=converged,
                               rank=self.rank_, extra={"shift": self.sigma_, "negative_ritz_values": self.negative_,
                                                       "ritz_converged": self.converged_,
                                                       "solve_tol": self.solve_tol,
                                                       "max_ritz_residual": float((self.ritz_residuals_
                                                                                   / th.abs()).max())})
        return X

    def whiten(self, G: torch.Tensor) -> torch.Tensor:
        """W (k + ·, c) with ‖W_:,i‖² = g_iᵀ Ĥ⁻¹ g_i (needs all Ritz values > 0)."""
        self._check()
        if bool((self.eigenvalues_ <= 0).any()):
            raise ValidationError("whiten() needs positive Ritz values; use solve()")
        C = self.eigenvectors_.T @ G.T
        W = C / self.eigenvalues_.sqrt()[:, None]
        if self.sigma_ > 0:
            rest = (G.T - self.eigenvectors_ @ C).norm(dim=0, keepdim=True) / math.sqrt(self.sigma_)
            W = torch.cat([W, rest])
        return W

    def __repr__(self) -> str:
        return f"LanczosSolver(rank={self.rank}, n_iter={self.n_iter}, shift={self.shift!r})"


# ------------------------------------------------------------------------------- damping from the spectrum
#: the automatic damping makes the smallest eigenvalue of the damped H at least this fraction of λ_max
AUTO_DAMPING_RATIO = 1e-3
#: a few Lanczos steps underestimate |λ_min|: the negative part is over-corrected by this factor
NEGATIVE_MARGIN = 1.5


@dataclass
class DampingChoice:
    """A damping chosen from the spectrum: ``damping``; the Lanczos estimates ``lambda_max`` and
    ``lambda_min`` of the undamped operator (``lambda_min`` of a positive semi-definite curvature is its
    known floor, not estimated); ``steps`` Lanczos steps; ``rule`` in words."""

    damping: float
    lambda_max: float
    lambda_min: float
    steps: int
    rule: str

    def describe(self) -> str:
        return (f"damping {self.damping:.3g} chosen from the spectrum ({self.steps} Lanczos steps: λ_max ≈ "
                f"{self.lambda_max:.3g}, λ_min ≈ {self.lambda_min:.3g}; {self.rule})")

    def as_dict(self) -> dict[str, Any]:
        return {"damping": self.damping, "lambda_max": self.lambda_max, "lambda_min": self.lambda_min,
                "steps": self.steps, "rule": self.rule, "chosen": "from the spectrum"}


def choose_damping(op: Any, *, psd: bool, floor: float = 0.0, steps: int = 30, ratio: float = AUTO_DAMPING_RATIO,
                   seed: int = 0) -> DampingChoice:
    """A damping δ for ``op`` (its own ``damping`` must be 0 while this runs) from ``steps`` Lanczos steps.

    Rule: the damped operator's smallest eigenvalue should be at least ``ratio``·λ_max (a condition number of
    at most about 1/ratio, which CG handles in O(√(1/ratio)) iterations). ``psd`` (a Gauss-Newton curvature):
    its smallest eigenvalue is at least ``floor`` (the L2 term on every parameter, else 0), so
    δ = max(0, ratio·λ_max − floor). Otherwise (the exact Hessian) with θ_min the smallest Ritz value:
    δ = max(0, ratio·λ_max − min(θ_min, floor)) when θ_min ≥ 0 and δ = ratio·λ_max + 1.5·|θ_min| when
    θ_min < 0 (a few Lanczos steps underestimate |λ_min|, hence the margin; CG still reports any negative
    curvature left). Never exactly |λ_min|, which would leave H singular.
    """
    P = int(op.n_params)
    m = max(1, min(P, int(steps)))
    _, T, _, m_used = lanczos(op, m, seed=seed)
    theta = torch.linalg.eigvalsh(T)
    top, low = float(theta[-1]), float(theta[0])
    lam_max = max(top, abs(low))
    target = ratio * lam_max
    if psd:
        delta = max(0.0, target - floor)
        lam_min = floor
        rule = (f"δ = max(0, {ratio:g}·λ_max − {floor:.3g}) so that the damped curvature's smallest eigenvalue is "
                f"at least {ratio:g}·λ_max")
    elif low >= 0:
        lam_min = min(low, floor) if floor > 0 else low
        delta = max(0.0, target - lam_min)
        rule = f"no negative curvature found; δ lifts the smallest eigenvalue to {ratio:g}·λ_max"
    else:
        lam_min = low
        delta = target + NEGATIVE_MARGIN * abs(low)
        rule = (f"the Hessian is indefinite: δ = {ratio:g}·λ_max + {NEGATIVE_MARGIN:g}·|λ_min| (a few Lanczos steps "
                f"underestimate |λ_min|)")
    if not math.isfinite(delta) or lam_max <= 0:
        delta = max(floor, 1e-8)
        rule = "the operator is zero along every direction tried; a nominal damping"
    return DampingChoice(damping=float(delta), lambda_max=lam_max, lambda_min=float(lam_min), steps=m_used,
                         rule=rule)


SOLVERS: dict[str, type[InverseHVPSolver]] = {"dense": DenseSolver, "cg": CGSolver, "lissa": LiSSASolver,
                                              "lanczos": LanczosSolver, "arnoldi": LanczosSolver}


def make_solver(solver: str | InverseHVPSolver, n_params: int, *, max_dense: int = 20000) -> InverseHVPSolver:
    """A solver instance from a name ("auto", "dense", "cg", "lissa", "lanczos"/"arnoldi") or an instance.

    "auto": dense when P ≤ ``max_dense``, else CG.
    """
    if isinstance(solver, InverseHVPSolver):
        return solver
    if not isinstance(solver, str):
        raise ValidationError(f"solver must be a name or an InverseHVPSolver, got {type(solver).__name__}")
    name = solver.lower()
    if name == "auto":
        return DenseSolver(max_params=max_dense) if n_params <= max_dense else CGSolver()
    if name not in SOLVERS:
        raise ValidationError(f"unknown solver {solver!r}; expected one of auto, {', '.join(SOLVERS)}")
    if name == "dense":
        return DenseSolver(max_params=max_dense)
    return SOLVERS[name]()
