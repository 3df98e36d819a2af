"""Inverse-Hessian-vector products H⁻¹B for parameter sets too big for the head's closed forms.

Every solver works on a *linear operator* (``HessianOperator``): anything with ``n_params``, ``device``,
``dtype`` and ``matvec(V)`` returning H·V for V of shape (P,) or (P, m); H must be symmetric. Optional
members a solver uses when present: ``dense()`` (the P×P matrix), ``sample_matvec(V, generator)`` (an
unbiased H·V from a minibatch, for stochastic LiSSA), ``null_directions()`` ((P, r) orthonormal directions
with H·v = 0 that every gradient is orthogonal to, e.g. a softmax's shared bias shift) and ``damping``.

Solvers (``fit(op)`` once, then ``solve(B)`` any number of times; ``info_`` describes the last solve):

- ``DenseSolver``: builds H, Cholesky; exact. P ≤ ``max_params`` (20 000 by default: a 3.2 GB matrix).
- ``CGSolver``: block conjugate gradient (one Krylov space for all right-hand sides, breakdown-free), or
  independent CGs (``block=False``); exact to ``tol`` (relative residual).
- ``LiSSASolver``: the Neumann series h ← b + (I − H/s)h (Agarwal et al. 2017, Koh & Liang 2017), full-batch
  or stochastic minibatch HVPs; converges only when H is positive definite and s > λ_max.
- ``LanczosSolver``: a rank-k approximation H ≈ U Θ Uᵀ + σ(I − UUᵀ) from k Ritz pairs of Lanczos with full
  re-orthogonalisation (σ = the damping: the low-rank-plus-damping model of H), so
  H⁻¹ ≈ U Θ⁻¹ Uᵀ + σ⁻¹(I − UUᵀ). An approximation: accurate when the spectrum outside the top k is ≈ σ.

Each records iterations, the relative residual ‖HX − B‖/‖B‖ (largest over columns), the rank where
relevant, and issues a ``ConvergenceWarning`` when it did not reach its tolerance.
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

    ``max_params``: refuse larger P (a P×P float64 matrix is 8P² bytes). ``on_indefinite``: "raise"
    (NotPositiveDefiniteError naming the smallest eigenvalue and the damping that would fix it) or
    "eigh" (solve with the eigendecomposition anyway, warning how many eigenvalues are ≤ 0: the result is
    then an influence with respect to an indefinite H, which you should read with care).
    """

    name = "dense"

    def __init__(self, max_params: int = 20000, *, on_indefinite: str = "raise", block: int = 256) -> None:
        if on_indefinite not in ("raise", "eigh"):
            raise ValidationError(f"on_indefinite must be 'raise' or 'eigh', got {on_indefinite!r}")
        if max_params < 1 or block < 1:
            raise ValidationError("max_params and block must be >= 1")
        self.max_params = int(max_params)
        self.on_indefinite = on_indefinite
        self.block = int(block)

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
        lo, hi = float(ev[0]), float(ev[-1])
        neg = int((ev <= 1e-13 * max(abs(hi), 1e-300)).sum())
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
        self.info_ = SolveInfo("dense", iterations=0, residual=res, converged=True)
        return X

    def whiten(self, G: torch.Tensor) -> torch.Tensor:
        """L⁻¹Gᵀ (P, c) for rows G (c, P): self-influence gᵀH⁻¹g = ‖column‖² (Cholesky route only)."""
        self._check()
        if self.cholesky_ is None:
            raise ValidationError("whiten() needs a positive definite H (Cholesky); use solve()")
        return torch.linalg.solve_triangular(self.cholesky_, G.T.to(self.cholesky_.dtype), upper=False)

    def __repr__(self) -> str:
        return f"DenseSolver(max_params={self.max_params})"


def build_dense(op: Any, block: int = 256) -> torch.Tensor:
    """The P×P matrix of ``op`` (``op.dense()`` when it has one, else matvecs on identity blocks)."""
    if hasattr(op, "dense"):
        return op.dense()
    return matvec_columns(op, block)


def matvec_columns(op: Any, block: int = 256) -> torch.Tensor:
    """H = [op.matvec(e_1) … op.matvec(e_P)], computed ``block`` identity columns at a time, (P, P).
    An operator with ``progress`` true shows the columns done."""
    from ..progress import track

    P = int(op.n_params)
    H = torch.empty(P, P, dtype=op.dtype, device=op.device)
    starts = range(0, P, block)
    for s in track(starts, P, "Hessian columns", "columns", count=lambda s: min(P, s + block) - s,
                   enabled=bool(getattr(op, "progress", False))):
        e = min(P, s + block)
        E = torch.zeros(P, e - s, dtype=op.dtype, device=op.device)
        E[torch.arange(s, e), torch.arange(e - s)] = 1.0
        H[:, s:e] = op.matvec(E)
    return H


# -------------------------------------------------------------------------------------------------- CG
class CGSolver(InverseHVPSolver):
    """Conjugate gradient for all columns of B at once.

    ``block=True`` (default): breakdown-free block CG (Ji & Li, BIT 2017): one Krylov space shared by
    all right-hand sides, search directions re-orthonormalised (rank-revealing SVD) every step; many
    right-hand sides converge in far fewer HVP rounds. ``block=False``: m independent CGs, vectorised.
    Stops when every column has ‖r‖/‖b‖ ≤ ``tol``; ``max_iter`` HVP rounds at most (default
    min(10·P, 1000)). Negative curvature (pᵀHp ≤ 0: H not positive definite) stops and warns.
    """

    name = "cg"

    def __init__(self, tol: float = 1e-8, max_iter: int | None = None, *, block: bool = True) -> None:
        if not (tol > 0):
            raise ValidationError(f"tol must be > 0, got {tol!r}")
        if max_iter is not None and max_iter < 1:
            raise ValidationError(f"max_iter must be >= 1, got {max_iter}")
        self.tol = float(tol)
        self.max_iter = max_iter
        self.block = bool(block)

    def _solve(self, B: torch.Tensor) -> torch.Tensor:
        if self.block and B.shape[1] > 1:
            return self._solve_block(B)
        return self._solve_columns(B)

    def _finish(self, X: torch.Tensor, B: torch.Tensor, it: int, neg: int, m: int) -> torch.Tensor:
        residual = _rel_residual(self.op_, X, B)
        converged = residual <= max(10 * self.tol, 1e-14) and neg == 0
        self.info_ = SolveInfo("cg", iterations=it, residual=residual, converged=converged,
                               extra={"negative_curvature_columns": neg, "tol": self.tol, "block": self.block})
        if neg:
            _warn(f"CG met negative curvature (pᵀHp ≤ 0) in {neg} of {m} right-hand sides: H is "
                  f"not positive definite; add damping. Relative residual {residual:.3g}")
        elif not converged:
            _warn(f"CG did not converge: relative residual {residual:.3g} > tol {self.tol:g} after {it} "
                  f"iterations (raise max_iter, or add damping to improve the conditioning)")
        return X

    def _solve_block(self, B: torch.Tensor) -> torch.Tensor:
        op = self.op_
        P, m = B.shape
        max_iter = self.max_iter if self.max_iter is not None else min(max(10 * P, 100), 1000)
        bn = B.norm(dim=0)
        bn_safe = torch.where(bn > 0, bn, torch.ones_like(bn))
        X = torch.zeros_like(B)
        R = B.clone()

        def orth(Z: torch.Tensor) -> torch.Tensor:
            U, S, _ = torch.linalg.svd(Z, full_matrices=False)
            keep = S > S[0] * 1e-12 * max(Z.shape) if S.numel() and S[0] > 0 else S > 0
            return U[:, keep]

        D = orth(R)
        it, neg = 0, 0
        while it < max_iter and D.shape[1] > 0:
            done = (R.norm(dim=0) <= self.tol * bn_safe) | (bn == 0)
            if bool(done.all()):
                break
            it += 1
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
            if bool(((R.norm(dim=0) <= self.tol * bn_safe) | (bn == 0)).all()):
                break
            beta = -torch.cholesky_solve(Q.T @ R, L)
            D = orth(R + D @ beta)
        return self._finish(X, B, it, neg, m)

    def _solve_columns(self, B: torch.Tensor) -> torch.Tensor:
        op = self.op_
        P, m = B.shape
        # in floating point CG needs more than P steps on ill-conditioned H
        max_iter = self.max_iter if self.max_iter is not None else min(max(10 * P, 100), 1000)
        X = torch.zeros_like(B)
        R = B.clone()
        D = R.clone()
        bn = B.norm(dim=0)
        rs = (R * R).sum(0)
        active = bn > 0
        neg_curv = torch.zeros(m, dtype=torch.bool, device=B.device)
        it = 0
        while bool(active.any()) and it < max_iter:
            idx = active.nonzero()[:, 0]
            it += 1
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
            done = rs_new.sqrt() <= self.tol * bn[idx]
            active[idx[done]] = False
        return self._finish(X, B, it, int(neg_curv.sum()), m)

    def __repr__(self) -> str:
        return f"CGSolver(tol={self.tol:g}, max_iter={self.max_iter}, block={self.block})"


# ----------------------------------------------------------------------------------------------- LiSSA
def lanczos(op: Any, n_iter: int, *, seed: int = 0, v0: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    """Lanczos with full re-orthogonalisation: (V (P, m), T (m, m) tridiagonal, β_m, m).

    Stops early (m < n_iter) when the Krylov space is exhausted (β ≈ 0).
    """
    P = int(op.n_params)
    m = min(int(n_iter), P)
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
        converged = residual <= max(10 * self.tol, 1e-12) and not diverged
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
    model and say how much of H it leaves out.
    """

    name = "lanczos"

    def __init__(self, rank: int = 50, *, n_iter: int | None = None, shift: float | str | None = "damping",
                 tol: float = 1e-3, seed: int = 0, check_residual: bool = True) -> None:
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
        self.info_ = SolveInfo("lanczos", iterations=self.n_iter_, residual=residual, converged=self.converged_,
                               rank=self.rank_, extra={"shift": self.sigma_, "negative_ritz_values": self.negative_,
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
