"""The head's Hessian: accumulated over chunks in float64, damped, factorised, solved, eigendecomposed.

H = (1/N) Σ_i w_i ∇²ℓ(z_i, θ̂) + λ·diag(weight mask) + damping·I                      (paper eq. 4, 52)

With all points and unit weights N = n (the full Hessian); with a sample of m points N = m and w_i = 1
(paper eq. 52), or importance weights w_i that keep the estimate unbiased.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .._moved import moved_names
from ..errors import NotPositiveDefiniteError, ValidationError
from .blocks import BLOCK_BYTES, DEVICE_BLOCK_BYTES, float64_blocks, row_block  # noqa: F401
from .heads import DTYPE, Head, as_tensor


def hessian_chunk(head: Head, X: np.ndarray, weights: np.ndarray | None = None,
                  y: np.ndarray | None = None) -> torch.Tensor:
    """Σ_i w_i ∇²ℓ_i over one chunk of features (pure; shared by the local loop and Dask), (P, P).
    ``y`` (c,) is passed on for heads whose Hessian depends on the labels (autodiff heads)."""
    if X.shape[0] == 0:
        return head.hessian_sum(as_tensor(X, head.device), weights=None)
    S = None
    for s, e, Xb in float64_blocks(X, row_block(X.shape[1] + 1, head.device), head.device):
        w = as_tensor(weights[s:e], head.device) if weights is not None else None
        yb = torch.as_tensor(y[s:e], device=head.device) if y is not None else None
        part = head.hessian_sum(Xb, weights=w, y=yb)
        S = part if S is None else S.add_(part)
    return S


@dataclass(frozen=True, eq=False)
class HessianKernel:
    """Engine kernel of the Hessian pass: (Σ_i w_i ∇²ℓ_i (P, P) float64, Σ_i w_i) over one chunk."""

    head: Head

    def __call__(self, chunk: Any, weights: np.ndarray | None = None) -> tuple[torch.Tensor, float]:
        total = float(len(chunk)) if weights is None else float(np.sum(weights, dtype=np.float64))
        return hessian_chunk(self.head, chunk.X, weights, chunk.y), total


def curvature_from_sum(head: Head, S: torch.Tensor | np.ndarray, total: float, *, damping: float = 0.0,
                       normalizer: float | None = None) -> Curvature:
    """The one place a sum becomes H: H = S/N + λ·mask + damping·I (paper eq. 4; eq. 52 for a sample),
    with N = ``normalizer`` or ``total`` (Σ w_i over the rows summed), factorised."""
    from ..validation import check_damping

    damping = check_damping(damping)
    S = torch.as_tensor(S, dtype=DTYPE, device=head.device)
    N = float(normalizer) if normalizer is not None else float(total)
    if not N > 0:
        raise ValidationError(f"the Hessian normaliser N must be > 0; got {N} (no rows, or zero weights)")
    P = head.n_params
    H = S / N + torch.diag(head.l2 * head.weight_mask()) + damping * torch.eye(P, dtype=DTYPE, device=head.device)
    return Curvature(hessian=H, n=N, l2=head.l2, damping=float(damping), null=head.null_directions())


@dataclass
class Curvature:
    """The damped head Hessian and its Cholesky factor.

    ``hessian`` (P, P) includes λ and ``damping``. For heads with null directions (softmax biases) the
    factorised matrix adds c·vvᵀ along them (c > λ_max), which leaves H⁻¹g unchanged for every gradient.
    """

    hessian: torch.Tensor
    n: float
    l2: float
    damping: float = 0.0
    null: torch.Tensor | None = None
    _eig: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        P = self.hessian.shape[0]
        null = self.null if self.null is not None else torch.zeros(P, 0, dtype=DTYPE,
                                                                    device=self.hessian.device)
        self.null = null
        self.null_scale = float(self.hessian.diagonal().sum()) + 1.0
        self._factor_matrix = self.hessian + self.null_scale * (null @ null.T)
        hint = ("add damping (Python: damping=1e-6 or larger; CLI: --damping 1e-6), or use l2 > 0 "
                "if features are collinear or constant")
        if not torch.isfinite(self.hessian).all():
            raise NotPositiveDefiniteError(f"the Hessian has NaN/Inf entries; {hint}")
        if P <= 4096:
            ev = torch.linalg.eigvalsh(self._factor_matrix)
            lo, hi = float(ev[0]), float(ev[-1])
            if lo <= 1e-13 * max(hi, 1e-300):
                raise NotPositiveDefiniteError(
                    f"the Hessian (P = {P}) is not positive definite: smallest eigenvalue {lo:.3g}, largest "
                    f"{hi:.3g}; {hint}")
        L, info = torch.linalg.cholesky_ex(self._factor_matrix)
        if int(info) != 0:
            raise NotPositiveDefiniteError(f"the Hessian (P = {P}) is not positive definite "
                                           f"(Cholesky failed at column {int(info)}); {hint}")
        self.cholesky = L

    @property
    def n_params(self) -> int:
        return int(self.hessian.shape[0])

    def solve(self, B: torch.Tensor) -> torch.Tensor:
        """H⁻¹B for B of shape (P,) or (P, m)."""
        vec = B.ndim == 1
        out = torch.cholesky_solve(B[:, None] if vec else B, self.cholesky)
        return out[:, 0] if vec else out

    def whiten(self, G: torch.Tensor) -> torch.Tensor:
        """L⁻¹Gᵀ for rows G (c, P) -> (P, c); then gᵀH⁻¹g = ‖column‖² and g_tᵀH⁻¹g_p = dot of columns."""
        return torch.linalg.solve_triangular(self.cholesky, G.T, upper=False)

    def inverse_factor(self) -> torch.Tensor:
        """L⁻¹ (P, P), lower triangular, computed once: L⁻¹g by a GEMM instead of a triangular solve."""
        if getattr(self, "_linv", None) is None:
            eye = torch.eye(self.n_params, dtype=self.cholesky.dtype, device=self.cholesky.device)
            self._linv = torch.linalg.solve_triangular(self.cholesky, eye, upper=False)
        return self._linv

    def inverse(self) -> torch.Tensor:
        """H⁻¹ (on the span of the gradients), (P, P)."""
        return torch.cholesky_inverse(self.cholesky)

    def eigh(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(eigenvalues Λ ascending (P − r,), eigenvectors Q (P, P − r)) of H, null directions dropped."""
        if self._eig is None:
            ev, Q = torch.linalg.eigh(self._factor_matrix)
            # the null directions carry eigenvalue null_scale > λ_max(H): drop the top r pairs
            k = ev.shape[0] - self.null.shape[1]
            self._eig = (ev[:k], Q[:, :k])
        return self._eig


# the passes that build H over a data source live in the engine (winnow.engine.passes)
__getattr__ = moved_names(__name__, __package__, {
    "fit_curvature": "..engine.passes",
    "hessian_pass": "..engine.passes",
})
