"""The head's Hessian: accumulated over chunks in float64, damped, factorised, solved, eigendecomposed.

H = (1/N) Σ_i w_i ∇²ℓ(z_i, θ̂) + λ·diag(weight mask) + damping·I                      (paper eq. 4, 52)

With all points and unit weights N = n (the full Hessian); with a sample of m points N = m and w_i = 1
(paper eq. 52), or importance weights w_i that keep the estimate unbiased.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import NotPositiveDefiniteError, ValidationError
from ..io.sources import DataSource, open_source
from ..progress import track_rows
from .heads import DTYPE, Head, as_tensor

# Bytes of a float64 working block: features are upcast to float64 one block at a time, so that on a CPU the
# block stays in cache and no float64 copy of a whole chunk is ever made (memory and bandwidth); on an
# accelerator, larger blocks amortise the host-to-device copies and kernel launches.
BLOCK_BYTES = 4 << 20
DEVICE_BLOCK_BYTES = 256 << 20


def row_block(n_cols: int, device: torch.device | str | None = None) -> int:
    """Rows of an (rows, n_cols) float64 working block on ``device`` (``BLOCK_BYTES`` on a CPU)."""
    size = BLOCK_BYTES if device is None or torch.device(device).type == "cpu" else DEVICE_BLOCK_BYTES
    return max(256, size // (8 * max(int(n_cols), 1)))


def float64_blocks(X: np.ndarray, block: int, device: torch.device | str | None, *,
                   ones_column: bool = False) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield (start, stop, X[start:stop] as float64 on ``device``) for row blocks of ``block`` rows of a
    (c, D) array; with ``ones_column`` the block is X̃ = [X, 1] (b, D + 1).

    Rows that need converting (float32 features, another device, the ones column) are copied into one reused
    buffer, so a block is only valid until the next one is yielded; float64 rows already on ``device`` are
    not copied when no ones column is asked for.
    """
    n, d = int(X.shape[0]), int(X.shape[1])
    buf = None
    for s in range(0, n, block):
        e = min(s + block, n)
        src = torch.as_tensor(X[s:e])
        if not ones_column and src.dtype == DTYPE and src.device == torch.device(device or "cpu"):
            yield s, e, src
            continue
        if buf is None:
            buf = torch.empty(min(block, n), d + int(ones_column), dtype=DTYPE, device=device)
            if ones_column:
                buf[:, d] = 1.0
        out = buf[:e - s]
        out[:, :d].copy_(src)
        yield s, e, out


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


def hessian_pass(head: Head, source: DataSource, *, rows: np.ndarray | None = None,
                 row_weights: np.ndarray | None = None, chunk_size: int = 65536,
                 progress: bool = False) -> tuple[torch.Tensor, float]:
    """Stream ``source`` (or only its ``rows``) and return (Σ w_i ∇²ℓ_i, Σ w_i).

    ``row_weights`` aligns with ``rows`` when given, else with all rows.
    """
    head.check_features(np.empty((0, source.n_features)), argument=source.name)
    P = head.n_params
    S = torch.zeros(P, P, dtype=DTYPE, device=head.device)
    total = 0.0
    start = 0
    n_rows = len(rows) if rows is not None else len(source)
    for ch in track_rows(source.chunks(chunk_size, rows=rows), n_rows, "Hessian pass", progress):
        head.check_labels(ch.y, argument=source.name)
        w = None if row_weights is None else row_weights[start:start + len(ch)]
        start += len(ch)
        S += hessian_chunk(head, ch.X, w, ch.y)
        total += float(len(ch)) if w is None else float(np.sum(w))
    if start == 0:
        raise ValidationError(f"{source.name}: no rows to build the Hessian from")
    return S, total


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


def fit_curvature(head: Head, train, *, damping: float = 0.0, rows: np.ndarray | None = None,
                  row_weights: np.ndarray | None = None, normalizer: float | None = None,
                  chunk_size: int = 65536, progress: bool = False) -> Curvature:
    """Build and factorise H from ``train`` (all rows, or ``rows`` with optional ``row_weights``).

    ``normalizer`` N defaults to Σ w_i over the rows used (n for the full Hessian, m for eq. 52).
    Raises NotPositiveDefiniteError with a hint to add damping.
    """
    if not np.isfinite(damping) or damping < 0:
        raise ValidationError(f"damping must be a finite number >= 0, got {damping!r}")
    source = open_source(train)
    S, total = hessian_pass(head, source, rows=rows, row_weights=row_weights, chunk_size=chunk_size,
                            progress=progress)
    N = float(normalizer) if normalizer is not None else total
    P = head.n_params
    H = S / N + torch.diag(head.l2 * head.weight_mask()) + damping * torch.eye(P, dtype=DTYPE,
                                                                               device=head.device)
    return Curvature(hessian=H, n=N, l2=head.l2, damping=float(damping), null=head.null_directions())
