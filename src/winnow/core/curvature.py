"""The head's Hessian: accumulated over chunks in float64, damped, factorised, solved, eigendecomposed.

H = (1/N) Σ_i w_i ∇²ℓ(z_i, θ̂) + λ·diag(weight mask) + damping·I                      (paper eq. 4, 52)

With all points and unit weights N = n (the full Hessian); with a sample of m points N = m and w_i = 1
(paper eq. 52), or importance weights w_i that keep the estimate unbiased.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .._moved import moved_names
from ..errors import NotPositiveDefiniteError, ValidationError
from .blocks import (  # noqa: F401
    BLOCK_BYTES,
    DEVICE_BLOCK_BYTES,
    MIXED_ROWS,
    block_dtype,
    float64_blocks,
    row_block,
)
from .heads import DTYPE, Head, as_tensor


def hessian_chunk(head: Head, X: np.ndarray, weights: np.ndarray | None = None,
                  y: np.ndarray | None = None, *, gradients: bool = False) -> Any:
    """Σ_i w_i ∇²ℓ_i over one chunk of features (pure; shared by the local loop and Dask), (P, P).
    ``y`` (c,) is passed on for heads whose Hessian depends on the labels (autodiff heads). With
    ``gradients`` also the stationarity sums of the same rows, from the same float64 blocks:
    returns (Σ w_i ∇²ℓ_i (P, P), Σ w_i g_i (P,), Σ w_i ‖g_i‖∞ ()).

    Closed-form heads in mixed precision (``head.precision`` "mixed", or "auto" with float32 ``X``) take the
    blocks in float32 (float32 rows on a CPU are not copied) and run the per-block GEMMs in float32; each
    block's sums are float64, and so is their sum over blocks (and the engine's over chunks)."""
    if X.shape[0] == 0:
        S = head.hessian_sum(as_tensor(X, head.device), weights=None)
        if not gradients:
            return S
        zero = torch.zeros((), dtype=DTYPE, device=head.device)
        return S, torch.zeros(S.shape[0], dtype=DTYPE, device=head.device), zero
    S = g = scale = None
    dt = block_dtype(head.precision, X.dtype) if head.closed_form else DTYPE
    B = row_block(X.shape[1] + 1, head.device)
    if dt != DTYPE:
        B = min(B, MIXED_ROWS)
    for s, e, Xb in float64_blocks(X, B, head.device, dtype=dt):
        w = as_tensor(weights[s:e], head.device) if weights is not None else None
        yb = torch.as_tensor(y[s:e], device=head.device) if y is not None else None
        if head.closed_form:  # one product for the logits serves the Hessian and the stationarity sums
            part, gb, sb = head.hessian_block(Xb, yb, w, gradients=gradients)
        else:
            part = head.hessian_sum(Xb, weights=w, y=yb)
            if gradients:
                assert yb is not None, "the stationarity sums need the labels"
                gb, sb = head.gradient_stats(Xb, yb, w)
        S = part if S is None else S.add_(part)
        if gradients:
            g = gb if g is None else g.add_(gb)
            scale = sb if scale is None else scale + sb
    return (S, g, scale) if gradients else S


@dataclass(frozen=True, eq=False)
class HessianKernel:
    """Engine kernel of the Hessian pass: (Σ_i w_i ∇²ℓ_i (P, P) float64, Σ_i w_i) over one chunk; with
    ``gradients`` also (Σ_i w_i g_i (P,), Σ_i w_i ‖g_i‖∞) for the stationarity check, in the same pass."""

    head: Head
    gradients: bool = False

    @property
    def checks_features(self) -> bool:
        """A closed-form head's Hessian sum X̃ᵀdiag(a)X̃ is non-finite whenever a feature is (a NaN or ±Inf
        feature makes its row's logit non-finite, then a_i or a_i·x_ij·x_ik is NaN or ±Inf)."""
        return bool(self.head.closed_form)

    def finite_witness(self, result: tuple[Any, ...]) -> tuple[Any, ...]:
        return (result[0],)

    def __call__(self, chunk: Any, weights: np.ndarray | None = None) -> tuple[Any, ...]:
        total = float(len(chunk)) if weights is None else float(np.sum(weights, dtype=np.float64))
        if self.gradients:
            S, g, scale = hessian_chunk(self.head, chunk.X, weights, chunk.y, gradients=True)
            return S, total, g, scale
        return hessian_chunk(self.head, chunk.X, weights, chunk.y), total


#: The largest relative gradient ‖∇R(θ̂)‖∞ / s (s = (1/n) Σ_i ‖g_i‖∞, the mean size of one example's
#: gradient) at which influence is computed without refit/allow_nonstationary. Measured by
#: ``benchmarks/stationarity.py`` (breast cancer, digits binary and 10-class, synthetic; λ = 1e-3): heads moved
#: off the optimum up to relative ≈ 5e-5 give influence within 1e-3 relative (max |ΔI| / max |I|, ≤ 8e-4) of
#: the converged head's, Spearman > 0.99999; at 5e-4–1e-3 the error is 3e-3–6e-3, and along the directions a
#: solver stops in it is worse: scikit-learn's lbfgs at its default tol lands at 1.5e-4–7e-4 with errors of
#: 4e-3–1.5e-2 (Spearman down to 0.994), so it does not pass (refit=True polishes it in 2 Newton steps);
#: sag / newton-cg pass where they reach < 1e-4 (errors ≤ 1.6e-3); winnow's own fit is at < 1e-8. Far above:
#: max_iter=5 (3e-2–1e-1), class_weight='balanced' (4e-3–1.6e-1), fit-time sample_weight (5e-3–6e-2),
#: liblinear (1e-3–1e-2), SGD (1e-2–5e-2).
STATIONARITY_THRESHOLD = 1e-4


@dataclass(frozen=True)
class Stationarity:
    """How far the head's θ̂ is from a stationary point of R(θ) = (1/n) Σ ℓ_i + (λ/2)‖W‖² (every influence
    formula assumes ∇R(θ̂) = 0).

    ``gradient_norm`` ‖∇R(θ̂)‖∞; ``gradient_scale`` s = (1/n) Σ_i ‖g_i‖∞ (the mean size of one example's
    gradient, the yardstick that makes the figure independent of the features' units); ``relative`` =
    ‖∇R‖∞ / s; ``threshold`` the largest relative figure accepted; ``refit`` whether the head was polished
    to the optimum first (then ``refit_from`` is ‖∇R‖∞ before, ``refit_steps`` the Newton steps taken).
    """

    gradient_norm: float
    gradient_scale: float
    threshold: float = STATIONARITY_THRESHOLD
    refit: bool = False
    refit_from: float | None = None
    refit_steps: int | None = None

    @property
    def relative(self) -> float:
        """‖∇R(θ̂)‖∞ / s (0 when both are 0, inf when only s is)."""
        if self.gradient_scale > 0:
            return self.gradient_norm / self.gradient_scale
        return 0.0 if self.gradient_norm == 0 else float("inf")

    @property
    def ok(self) -> bool:
        """Whether the head counts as stationary (relative ≤ threshold)."""
        return self.relative <= self.threshold

    def as_dict(self) -> dict[str, Any]:
        """The figure as the scores' ``winnow.stationarity`` metadata writes it."""
        return {"gradient_norm": self.gradient_norm, "gradient_scale": self.gradient_scale,
                "relative": self.relative, "threshold": self.threshold, "refit": self.refit}

    def metadata(self) -> dict[str, str]:
        """{"winnow.stationarity": JSON of ``as_dict``} for a Parquet schema."""
        return {"winnow.stationarity": json.dumps(self.as_dict())}

    def check(self, allow_nonstationary: bool = False) -> None:
        """Raise a ValidationError naming the figure unless ``ok`` or ``allow_nonstationary``."""
        if self.ok or allow_nonstationary:
            return
        from ..errors import NotStationaryError

        figure = (f"‖∇R(θ̂)‖∞ = {self.gradient_norm:.2e} (relative {self.relative:.1e} > {self.threshold:.0e}); "
                  "influence assumes ∇R(θ̂) = 0")
        if self.refit:
            raise NotStationaryError(
                f"head is not at an optimum of the training objective even after refitting: {figure}. The "
                "objective has no optimum the Newton fit reaches (e.g. separable data with l2 = 0); pass "
                "allow_nonstationary=True to score it anyway", parameters=("allow_nonstationary=True",))
        raise NotStationaryError(
            f"head is not at an optimum of the training objective: {figure} (a head stopped early, trained by "
            "SGD or with sample or class weights is not at the optimum of winnow's unweighted objective). Pass "
            "refit=True to polish the head first, or allow_nonstationary=True to score it anyway",
            parameters=("refit=True", "allow_nonstationary=True"))

    def describe(self) -> str:
        """One line for people: ``‖∇R‖∞ 2.1e-01 -> 3.0e-12 in 6 Newton steps`` after a refit."""
        if self.refit and self.refit_from is not None:
            return (f"refit the head: ‖∇R‖∞ {self.refit_from:.1e} -> {self.gradient_norm:.1e} in "
                    f"{self.refit_steps} Newton steps")
        return f"‖∇R(θ̂)‖∞ = {self.gradient_norm:.2e} (relative {self.relative:.1e})"


def stationarity_from_sums(head: Head, gradient_sum: Any, scale_sum: Any, n: float, *,
                           threshold: float = STATIONARITY_THRESHOLD) -> Stationarity:
    """The figure from one pass's sums over all n rows: ∇R = (1/n) Σ g_i + λ·mask·θ (P,), s = (1/n) Σ ‖g_i‖∞.
    A head polished by ``Head.refit`` (``refit_from_`` set) is marked ``refit``."""
    g = torch.as_tensor(gradient_sum, dtype=DTYPE, device=head.device)
    grad = g / n + head.l2 * head.weight_mask() * head.theta_
    refit_from = getattr(head, "refit_from_", None)
    return Stationarity(gradient_norm=float(grad.abs().max()), gradient_scale=float(scale_sum) / n,
                        threshold=float(threshold), refit=refit_from is not None,
                        refit_from=None if refit_from is None else float(refit_from),
                        refit_steps=getattr(head, "refit_steps_", None))


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
    #: how far θ̂ is from a stationary point, when the pass that built H measured it
    stationarity: Stationarity | None = None
    _eig: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        P = self.hessian.shape[0]
        null = self.null if self.null is not None else torch.zeros(P, 0, dtype=DTYPE,
                                                                    device=self.hessian.device)
        self.null = null
        self.null_scale = float(self.hessian.diagonal().sum()) + 1.0
        self._factor_matrix = self.hessian + self.null_scale * (null @ null.T)
        hint = "set damping to 1e-6 or more, or use l2 > 0 if features are collinear or constant"
        if not torch.isfinite(self.hessian).all():
            raise NotPositiveDefiniteError(f"the Hessian has NaN/Inf entries; {hint}",
                                           parameters=("damping", "l2"))
        if P <= 4096:
            ev = torch.linalg.eigvalsh(self._factor_matrix)
            lo, hi = float(ev[0]), float(ev[-1])
            if lo <= 1e-13 * max(hi, 1e-300):
                raise NotPositiveDefiniteError(
                    f"the Hessian (P = {P}) is not positive definite: smallest eigenvalue {lo:.3g}, largest "
                    f"{hi:.3g}; {hint}", parameters=("damping", "l2"))
        L, info = torch.linalg.cholesky_ex(self._factor_matrix)
        if int(info) != 0:
            raise NotPositiveDefiniteError(f"the Hessian (P = {P}) is not positive definite "
                                           f"(Cholesky failed at column {int(info)}); {hint}",
                                           parameters=("damping", "l2"))
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
