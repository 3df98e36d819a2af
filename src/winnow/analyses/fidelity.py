"""Fidelity of influence beyond first order: leverage, Newton leave-one-out and group removals.

Removing z_p retrains on R₋ₚ(θ) = R(θ) − (1/n) ℓ_p(θ) (the ε = −1/n objective of DESIGN.md; the
normaliser stays n). At θ̂, ∇R₋ₚ = −(1/n) g_p and ∇²R₋ₚ = H₋ₚ = H − (1/n) ∇²ℓ_p, so one Newton step from
θ̂ moves the parameters by

    Δθ_p = (1/n) H₋ₚ⁻¹ g_p                         (first order, paper eq. 20, uses H in place of H₋ₚ).

For the closed-form heads ∇²ℓ_p = U_p A_p U_pᵀ with U_p = I_K ⊗ ũ_p (P × K), A_p = s_p(1 − s_p) (logistic,
K = 1) or diag p − ppᵀ (softmax, rank K − 1), and g_p = U_p r_p. With B = A_p / n (may be singular) and
M_p = U_pᵀ H⁻¹ U_p (K × K), (H − U B Uᵀ) H⁻¹U (I − BM)⁻¹ = (U − UBM)(I − BM)⁻¹ = U, hence

    H₋ₚ⁻¹ U_p = H⁻¹ U_p (I − Λ_p)⁻¹,   Λ_p = (1/n) A_p M_p,
    Δθ_p = (1/n) H⁻¹ (w_p ⊗ ũ_p),      w_p = (I − Λ_p)⁻¹ r_p.

For the logistic head Λ_p is the scalar leverage h_p = (1/n) s_p(1 − s_p) ũ_pᵀH⁻¹ũ_p and
Δθ_p = (1/n) H⁻¹g_p / (1 − h_p). Softmax heads are singular along the bias direction v (SoftmaxHead,
Curvature): H⁻¹ is the factor of H + c·vvᵀ; that is exact here because ∇²ℓ_p v = 0 (so H₋ₚ keeps the same
null direction), A_p 1 = 0 with U_pᵀv ∝ 1 (so Λ_p does not depend on c), and 1ᵀw_p = 1ᵀr_p = 0 (so
w_p ⊗ ũ_p ⊥ v and H⁻¹ acts as the pseudo-inverse on it).

The change of the mean test loss L(θ) = (1/T) Σ_t ℓ_t(θ) when z_p is removed is then predicted as

- ``loss_change_if_removed``                      ḡ_tᵀ (1/n)H⁻¹g_p                     (first order, eq. 28)
- ``loss_change_if_removed_leverage_corrected``   ḡ_tᵀ Δθ_p            (logistic: first order / (1 − h_p))
- ``loss_change_if_removed_newton``               ḡ_tᵀ Δθ_p + ½ Δθ_pᵀ H_t Δθ_p, H_t the mean test Hessian
- ``loss_change_if_removed_newton_exact``         L(θ̂ + Δθ_p) − L(θ̂)                 (O(T·P) per point)

all with the sign of ``loss_change_if_removed``: > 0 means removing the point raises the test loss.
``leverage`` is the largest eigenvalue of Λ_p (real, in [0, 1) while H₋ₚ is positive definite; h_p for
the logistic head). Removing a set S works the same way with one solve: H₋_S = H − (1/n) Σ_{p∈S} ∇²ℓ_p and
Δθ_S = (1/n) H₋_S⁻¹ Σ_{p∈S} g_p.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from .._moved import moved_names
from ..core.curvature import Curvature
from ..core.heads import DTYPE, Head, as_tensor, augment
from ..engine.columns import ScoreColumns
from ..engine.passes import checked_curvature, hessian_pass, load_rows, mean_test_gradient, open_for_head
from ..errors import NotPositiveDefiniteError, ValidationError
from ..io.columns import format_id
from ..progress import track
from ..validation import check_head_data

NEWTON_COLUMNS = ("leverage", "loss_change_if_removed_newton")
NEWTON_EXACT_COLUMN = "loss_change_if_removed_newton_exact"
LEVERAGE_CORRECTED_COLUMN = "loss_change_if_removed_leverage_corrected"

NEWTON_METADATA = {
    "winnow.leverage": "largest eigenvalue of (1/n) A_p U_p^T H^-1 U_p; logistic: (1/n) s(1-s) u~^T H^-1 u~, "
                       "in [0, 1)",
    "winnow.loss_change_if_removed_newton": "g_test^T d + 0.5 d^T H_test d with the Newton step "
                                            "d = (1/n) H_-p^-1 g_p; > 0: removing the point raises the "
                                            "mean test loss",
    "winnow.loss_change_if_removed_newton_exact": "mean test loss at theta + d minus at theta, "
                                                  "d = (1/n) H_-p^-1 g_p",
}

#: elements per temporary (rows × P or rows × T × K) block inside the chunk functions (~64 MiB float64)
_BLOCK_ELEMENTS = 1 << 23


# ------------------------------------------------------------------------------------ per-chunk maths
def _check_head(head: Head) -> None:
    head.require_closed_form("Newton corrections")


def curvature_factors(head: Head, X: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
    """A_p with ∇²ℓ_p = (I_K ⊗ ũ_p) A_p (I_K ⊗ ũ_p)ᵀ, shape (c, K, K): s(1 − s) or diag p − ppᵀ
    (``Head.curvature_factors``)."""
    _check_head(head)
    return head.curvature_factors(X, theta)


def loss_from_logits(head: Head, Z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example loss from logits Z (..., K_out) and labels y broadcastable to Z[..., 0]
    (``Head.loss_from_logits``)."""
    _check_head(head)
    return head.loss_from_logits(Z, y)


def leverage_blocks(head: Head, Xa: torch.Tensor, h_inv: torch.Tensor) -> torch.Tensor:
    """M_p = U_pᵀ H⁻¹ U_p for augmented rows Xa (c, D + 1), shape (c, K, K) (``LinearHead.leverage_blocks``)."""
    _check_head(head)
    return head.leverage_blocks(Xa, h_inv)


def newton_parameter_change_chunk(head: Head, X: Any, y: Any, *, h_inv: torch.Tensor,
                                  n_train: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Newton-step parameter change on removal Δθ_p = (1/n) H₋ₚ⁻¹ g_p (c, P) and the leverage (c,).

    ``h_inv`` is H⁻¹ (P, P) as factorised (``Curvature.inverse()``); ``n_train`` the n of the objective.
    Rows whose removal leaves H₋ₚ singular (leverage ≥ 1, only possible without regularisation) get NaN.
    Pure: shared by the local loop and a Dask map.
    """
    Xt = as_tensor(X, head.device)
    yt = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y, device=head.device)
    Xa = augment(Xt)
    r = head.residuals(Xt, yt)                                   # (c, K)
    A = head.curvature_factors(Xt)                               # (c, K, K)
    M = head.leverage_blocks(Xa, h_inv)                          # (c, K, K)
    K = r.shape[1]
    if K == 1:  # logistic: h_p = (1/n) s(1 − s) ũᵀH⁻¹ũ and w_p = r_p / (1 − h_p)
        lev = A[:, 0, 0] * M[:, 0, 0] / n_train
        bad = ~(lev < 1.0 - 1e-12)
        w = r / torch.where(bad, torch.ones_like(lev), 1.0 - lev)[:, None]
    else:
        # eigenvalues of Λ = (1/n) A M equal those of the symmetric (1/n) A^½ M A^½
        ea, Va = torch.linalg.eigh(A)
        A_half = (Va * ea.clamp_min(0).sqrt()[:, None, :]) @ Va.transpose(1, 2)
        lev = torch.linalg.eigvalsh(A_half @ M @ A_half / n_train)[:, -1]
        bad = ~(lev < 1.0 - 1e-12)
        eye = torch.eye(K, dtype=DTYPE, device=Xt.device)
        Lam = A @ M / n_train
        Lam[bad] = 0.0  # those rows are set to NaN below; keep the batched solve well-posed
        w = torch.linalg.solve(eye - Lam, r[:, :, None])[:, :, 0]
    gt = (w[:, :, None] * Xa[:, None, :]).reshape(Xt.shape[0], -1)   # w_p ⊗ ũ_p
    delta = (gt @ h_inv) / n_train
    if bad.any():
        delta[bad] = float("nan")
    return delta, lev


@dataclass
class NewtonContext:
    """What ``newton_columns_chunk`` needs, computed once per (head, curvature, test set).

    ``h_inv`` H⁻¹ (P, P); ``test_gradient`` ḡ_t (P,); ``test_hessian`` H_t = (1/T) Σ_t ∇²ℓ_t (P, P, no
    regulariser); ``n_train`` n; for the exact variant the augmented test features ``test_Xa`` (T, D + 1),
    labels ``test_y`` (T,), logits ``test_logits`` (T, K) and per-point losses ``test_losses`` at θ̂.
    """

    h_inv: torch.Tensor
    test_gradient: torch.Tensor
    test_hessian: torch.Tensor
    n_train: int
    n_test: int
    test_Xa: torch.Tensor | None = None
    test_y: torch.Tensor | None = None
    test_logits: torch.Tensor | None = None
    test_losses: torch.Tensor | None = None

    @property
    def exact(self) -> bool:
        return self.test_Xa is not None


def prepare_newton(head: Head, curvature: Curvature, test: Any, *, n_train: int, exact: bool = False,
                   chunk_size: int = 65536) -> NewtonContext:
    """One pass over ``test`` for ḡ_t and H_t (and, with ``exact``, the test features kept in memory)."""
    _check_head(head)
    if n_train < 1:
        raise ValidationError(f"n_train must be >= 1, got {n_train}")
    src = open_for_head(head, test, "test")
    gbar, T = mean_test_gradient(head, src, chunk_size=chunk_size)
    S, _ = hessian_pass(head, src, chunk_size=chunk_size)
    h_inv = curvature.inverse()
    ctx = NewtonContext(h_inv=0.5 * (h_inv + h_inv.T), test_gradient=gbar, test_hessian=S / T,
                        n_train=int(n_train), n_test=int(T))
    if exact:
        X_, y_, _ = load_rows(src, chunk_size=chunk_size)
        Xte, yte = as_tensor(X_, head.device), torch.as_tensor(y_, device=head.device)
        ctx.test_Xa, ctx.test_y = augment(Xte), yte
        ctx.test_logits = head.logits(Xte)
        ctx.test_losses = loss_from_logits(head, ctx.test_logits, yte)
    return ctx


def _exact_loss_change(head: Head, delta: torch.Tensor, ctx: NewtonContext) -> torch.Tensor:
    """L(θ̂ + Δθ_p) − L(θ̂) for each row of ``delta`` (c, P), in blocks bounding the (b, T, K) logits."""
    assert ctx.test_Xa is not None and ctx.test_logits is not None and ctx.test_losses is not None
    K, D1 = head.n_outputs, ctx.test_Xa.shape[1]
    T = ctx.test_Xa.shape[0]
    out = torch.empty(delta.shape[0], dtype=DTYPE, device=delta.device)
    b = max(1, _BLOCK_ELEMENTS // max(1, T * K))
    for s in range(0, delta.shape[0], b):
        d = delta[s:s + b].reshape(-1, K, D1)
        Z = ctx.test_logits[None] + torch.einsum("td,ckd->ctk", ctx.test_Xa, d)
        # mean of the per-point differences: avoids cancelling two O(1) means
        out[s:s + b] = (loss_from_logits(head, Z, ctx.test_y[None]) - ctx.test_losses[None]).mean(1)
    return out


def newton_columns_chunk(head: Head, X: Any, y: Any, ctx: NewtonContext, *,
                         leverage_corrected: bool = False) -> dict[str, np.ndarray]:
    """Newton columns for one chunk of training points (pure; shared by the local loop and Dask).

    Returns numpy (c,) columns ``leverage`` and ``loss_change_if_removed_newton``, plus
    ``loss_change_if_removed_newton_exact`` when ``ctx`` was prepared with ``exact=True`` and
    ``loss_change_if_removed_leverage_corrected`` (ḡ_tᵀΔθ_p) when asked. Signs as
    ``loss_change_if_removed``: > 0, removing the point raises the mean test loss.
    """
    X = np.asarray(X) if not isinstance(X, torch.Tensor) else X
    c = X.shape[0]
    P = ctx.h_inv.shape[0]
    step = max(1, _BLOCK_ELEMENTS // max(1, P))
    cols: dict[str, list[np.ndarray]] = {"leverage": [], "loss_change_if_removed_newton": []}
    if leverage_corrected:
        cols[LEVERAGE_CORRECTED_COLUMN] = []
    if ctx.exact:
        cols[NEWTON_EXACT_COLUMN] = []
    for s in range(0, c, step):
        delta, lev = newton_parameter_change_chunk(head, X[s:s + step], y[s:s + step], h_inv=ctx.h_inv,
                                                   n_train=ctx.n_train)
        lin = delta @ ctx.test_gradient
        quad = 0.5 * ((delta @ ctx.test_hessian) * delta).sum(1)
        cols["leverage"].append(lev.cpu().numpy())
        cols["loss_change_if_removed_newton"].append((lin + quad).cpu().numpy())
        if leverage_corrected:
            cols[LEVERAGE_CORRECTED_COLUMN].append(lin.cpu().numpy())
        if ctx.exact:
            cols[NEWTON_EXACT_COLUMN].append(_exact_loss_change(head, delta, ctx).cpu().numpy())
    return {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in cols.items()}


class NewtonColumns(ScoreColumns):
    """``leverage`` and ``loss_change_if_removed_newton`` (and ``..._newton_exact`` with ``exact``) as extra
    columns of the scoring pass: ``InfluenceAnalyzer.score(test, extra=[NewtonColumns()])``."""

    def __init__(self, exact: bool = False) -> None:
        self.exact = bool(exact)
        self.fields = [(c, pa.float64()) for c in NEWTON_COLUMNS]
        if self.exact:
            self.fields.append((NEWTON_EXACT_COLUMN, pa.float64()))
        self.metadata = NEWTON_METADATA

    def prepare(self, analyzer: Any, test: Any) -> None:
        self.head = analyzer.head
        self.context = prepare_newton(analyzer.head, analyzer.curvature_, test, n_train=analyzer.n_train_,
                                      exact=self.exact, chunk_size=analyzer.chunk_size)

    def chunk(self, X: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        return newton_columns_chunk(self.head, X, y, self.context)


# --------------------------------------------------------------------------- LOO: all methods at once
METHODS = ("first_order", "leverage_corrected", "newton", "newton_exact")
METHOD_LABELS = {"first_order": "first order", "leverage_corrected": "leverage-corrected",
                 "newton": "Newton step + second-order test loss", "newton_exact": "Newton step + exact test loss"}


def _corr(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    from scipy import stats

    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan"), float("nan")
    return float(np.corrcoef(a, b)[0, 1]), float(stats.spearmanr(a, b).statistic)


@dataclass
class RemovalMethodsResult:
    """Predicted (per method) vs actual change of mean test loss for each of the removed points."""

    ids: np.ndarray
    actual: np.ndarray
    predicted: dict[str, np.ndarray]
    leverage: np.ndarray
    pearson: dict[str, float]
    spearman: dict[str, float]
    n_train: int
    tol: float
    extra: dict = field(default_factory=dict)

    def table(self) -> list[list[Any]]:
        """Rows [method, Pearson, Spearman, max |predicted − actual| / max |actual|]."""
        scale = float(np.max(np.abs(self.actual))) or 1.0
        return [[METHOD_LABELS[m], self.pearson[m], self.spearman[m],
                 float(np.nanmax(np.abs(self.predicted[m] - self.actual))) / scale] for m in METHODS]

    def summary(self) -> dict[str, Any]:
        return {"ids": self.ids, "actual": self.actual, "predicted": self.predicted, "leverage": self.leverage,
                "pearson": self.pearson, "spearman": self.spearman, "n_train": self.n_train, "tol": self.tol,
                **self.extra}


def refit_tight(head: Head, X: np.ndarray, y: np.ndarray, tol: float) -> Head:
    """A copy of ``head`` re-fitted on (X, y) from its own weights to ‖∇R‖_∞ ≤ tol (as ``leave_one_out``):
    the full-data optimum the retrainings are compared with."""
    base = copy.deepcopy(head)
    base.tol = tol
    base.max_iter = max(base.max_iter, 200)
    base.fit(X, y, init=head.theta_)
    return base


def given_head_curvature(head: Head, X: np.ndarray, y: np.ndarray, *, damping: float, refit: bool,
                         allow_nonstationary: bool) -> tuple[Head, Curvature]:
    """(the head the predictions come from, its Hessian): the given head, checked for stationarity (refused
    off the optimum unless ``allow_nonstationary``), or with ``refit`` its polished copy."""
    return checked_curvature(head, (X, y), refit=refit, allow_nonstationary=allow_nonstationary, damping=damping)


def compare_removal_methods(head: Head, train: Any, test: Any, *, points: int | np.ndarray = 80, seed: int = 0,
                            tol: float = 1e-11, damping: float = 0.0, progress: bool = False,
                            refit: bool = False, allow_nonstationary: bool = False) -> RemovalMethodsResult:
    """Actual leave-one-out retraining against the first-order, leverage-corrected, Newton second-order and
    Newton exact predictions, in one run (the table in docs/fidelity.md).

    ``points``: a count sampled with ``seed`` or row positions. The actual changes and the first-order
    predictions come from :func:`winnow.evaluation.loo.leave_one_out` (same retrains); every prediction is
    that of the given head (``refit`` / ``allow_nonstationary`` as there).
    """
    from ..evaluation.loo import choose_rows, leave_one_out, load_arrays

    _check_head(head)
    X, y, ids = load_arrays(train, parameter="train")
    Xte, yte, _ = load_arrays(test, parameter="test")
    n = X.shape[0]
    rows = choose_rows(points, n, seed, minimum=3)
    loo = leave_one_out(head, (X, y, ids), (Xte, yte), points=rows, tol=tol, damping=damping, progress=progress,
                        refit=refit, allow_nonstationary=allow_nonstationary)
    given, curv = given_head_curvature(head, X, y, damping=damping, refit=refit,
                                       allow_nonstationary=allow_nonstationary)
    ctx = prepare_newton(given, curv, (Xte, yte), n_train=n, exact=True)
    cols = newton_columns_chunk(given, X[rows], y[rows], ctx, leverage_corrected=True)
    predicted = {"first_order": loo.predicted, "leverage_corrected": cols[LEVERAGE_CORRECTED_COLUMN],
                 "newton": cols["loss_change_if_removed_newton"], "newton_exact": cols[NEWTON_EXACT_COLUMN]}
    pear, spear = {}, {}
    for m in METHODS:
        pear[m], spear[m] = _corr(predicted[m], loo.actual)
    return RemovalMethodsResult(ids=ids[rows], actual=loo.actual, predicted=predicted, leverage=cols["leverage"],
                                pearson=pear, spearman=spear, n_train=n, tol=tol, extra=loo.extra)


# ------------------------------------------------------------------------------------- group effects
@dataclass
class GroupPrediction:
    """Predicted change of the mean test loss when the rows of a group are removed (and the actual one).

    ``first_order`` = ḡ_tᵀ(−H⁻¹∇R_S(θ̂)) (without ``renormalize``: Σ_{p∈S} loss_change_if_removed);
    ``newton`` = ḡ_tᵀΔ + ½ΔᵀH_tΔ and ``newton_exact`` = L(θ̂ + Δ) − L(θ̂) with the Newton step Δ on the
    reduced objective; ``actual`` from retraining (NaN when not retrained); ``stationarity`` the predicting
    head's ‖∇R(θ̂)‖∞ figure (``Stationarity.as_dict``) where :func:`group_effect` measured it.
    """

    size: int
    fraction: float
    first_order: float
    newton: float
    newton_exact: float
    actual: float = float("nan")
    kind: str = "given"
    stationarity: dict[str, Any] | None = None

    def as_row(self) -> list[Any]:
        return [self.kind, self.size, self.fraction, self.actual, self.first_order, self.newton, self.newton_exact]


GROUP_HEADER = ["group", "|S|", "|S|/n", "actual", "first order", "Newton (2nd-order loss)", "Newton (exact loss)"]


def _reduced_objective_terms(head: Head, X: torch.Tensor, y: torch.Tensor, n: int, renormalize: bool
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(∇R_S(θ̂), −(∇²R_S − H)) for the objective without the rows X: the gradient at θ̂ and the Hessian drop.

    Without ``renormalize``: R_S = R − (1/n) Σ_S ℓ_p (ε = −1/n). With it, retraining on the kept rows with
    normaliser n − m; multiplied by (n − m)/n that is R − (1/n) Σ_S ℓ_p − (λ m / 2n)‖W‖², same minimiser.
    """
    m = X.shape[0]
    mask = head.weight_mask()
    grad = -head.gradients(X, y).sum(0) / n
    drop = head.hessian_sum(X) / n
    if renormalize:
        grad = grad - head.l2 * (m / n) * mask * head.theta_
        drop = drop + torch.diag(head.l2 * (m / n) * mask)
    return grad, drop


def predict_group_removal(head: Head, curvature: Curvature, ctx: NewtonContext, X: Any, y: Any, *,
                          renormalize: bool = False) -> tuple[GroupPrediction, torch.Tensor, torch.Tensor]:
    """Predictions for removing the rows (X, y) of the training set: (GroupPrediction, Δ_first, Δ_newton).

    One solve with H and one with H₋_S = H − (1/n) Σ_{p∈S} ∇²ℓ_p (+ the renormalisation term); ``ctx``
    must come from ``prepare_newton(..., exact=True)`` for ``newton_exact``.
    """
    n = ctx.n_train
    Xt = as_tensor(X, head.device)
    yt = torch.as_tensor(np.asarray(y), device=head.device)
    m = Xt.shape[0]
    if m == 0:
        raise ValidationError("the group to remove is empty")
    if m >= n:
        raise ValidationError(f"the group has {m} rows: removing all n = {n} training rows leaves nothing to train on")
    grad, drop = _reduced_objective_terms(head, Xt, yt, n, renormalize)
    d_first = -curvature.solve(grad)
    try:
        reduced = Curvature(hessian=curvature.hessian - drop, n=n - m, l2=head.l2, damping=curvature.damping,
                            null=head.null_directions())
    except NotPositiveDefiniteError as exc:
        raise NotPositiveDefiniteError(f"the Hessian without the {m} removed rows is not positive definite ({exc})"
                                       ) from None
    d_newton = -reduced.solve(grad)
    lin_f = float(d_first @ ctx.test_gradient)
    lin_n = float(d_newton @ ctx.test_gradient)
    quad = 0.5 * float(d_newton @ ctx.test_hessian @ d_newton)
    exact = float(_exact_loss_change(head, d_newton[None], ctx)[0]) if ctx.exact else float("nan")
    pred = GroupPrediction(size=m, fraction=m / n, first_order=lin_f, newton=lin_n + quad, newton_exact=exact)
    return pred, d_first, d_newton


def retrain_loss_change(base: Head, X: np.ndarray, y: np.ndarray, rows: np.ndarray, ctx: NewtonContext, *,
                        renormalize: bool = False) -> float:
    """Actual change of mean test loss after retraining ``base`` without ``rows`` (warm start, base.tol)."""
    from ..evaluation.loo import retrain_without

    m = retrain_without(base, X, y, rows, renormalize=renormalize)
    assert ctx.test_Xa is not None and ctx.test_losses is not None
    Z = ctx.test_Xa @ m.theta_.reshape(base.n_outputs, -1).T
    return float((loss_from_logits(base, Z, ctx.test_y) - ctx.test_losses).mean())


def rows_for_ids(all_ids: np.ndarray, subset: Any, argument: str = "subset") -> np.ndarray:
    """Sorted row positions of the ids in ``subset``; raises on unknown or repeated ids."""
    sub = np.asarray(subset).reshape(-1)
    if sub.size == 0:
        raise ValidationError(f"{argument} is empty: give at least one training id")
    if not np.issubdtype(sub.dtype, np.integer):
        if np.issubdtype(sub.dtype, np.floating) and np.all(np.isfinite(sub)) and np.all(sub == np.round(sub)):
            sub = sub.astype(np.int64)
        else:
            raise ValidationError(f"{argument} must hold integer training ids, got dtype {sub.dtype}")
    uniq, counts = np.unique(sub, return_counts=True)
    if (counts > 1).any():
        raise ValidationError(f"{argument}: ids appear more than once: {uniq[counts > 1][:5].tolist()}")
    order = np.argsort(all_ids, kind="stable")
    sorted_ids = all_ids[order]
    if len(sorted_ids) > 1 and (np.diff(sorted_ids) == 0).any():
        raise ValidationError("training ids are not unique, so a subset of ids is ambiguous")
    pos = np.searchsorted(sorted_ids, uniq)
    pos_c = np.minimum(pos, len(sorted_ids) - 1)
    unknown = sorted_ids[pos_c] != uniq
    if unknown.any():
        bad = uniq[unknown]
        raise ValidationError(f"{argument}: {len(bad)} id(s) are not training ids, e.g. {bad[:5].tolist()} "
                              f"(training ids range {format_id(sorted_ids[0])}..{format_id(sorted_ids[-1])})")
    return np.sort(order[pos_c])


def read_subset_ids(path: str | Path, column: str = "id") -> np.ndarray:
    """Ids from a .npy array, a .csv (column ``column``, or a single headerless column) or a Parquet file."""
    p = Path(path)
    if not p.exists():
        raise ValidationError(f"--subset: {p} does not exist")
    suf = p.suffix.lower()
    if suf == ".npy":
        return np.load(p, allow_pickle=False).reshape(-1)
    if suf in (".parquet", ".pq") or p.is_dir():
        import pyarrow.parquet as pq

        t = pq.read_table(p)
        if column not in t.column_names:
            raise ValidationError(f"--subset: {p} has no column {column!r} (columns: {t.column_names}); name the id "
                              "column with --subset-column")
        return t.column(column).to_numpy()
    if suf in (".csv", ".txt"):
        from pyarrow import csv

        t = csv.read_csv(p)
        if column in t.column_names:
            return t.column(column).to_numpy()
        if t.num_columns == 1:  # headerless single column: the header row is an id too
            t = csv.read_csv(p, read_options=csv.ReadOptions(autogenerate_column_names=True))
            return t.column(0).to_numpy()
        raise ValidationError(f"--subset: {p} has no column {column!r} (columns: {t.column_names}); name the id "
                              "column with --subset-column")
    raise ValidationError(f"--subset: {p} must be .npy, .csv or .parquet")


def group_effect(head: Head, train: Any, test: Any, subset: Any, *, retrain: bool = True, renormalize: bool = False,
                 tol: float = 1e-11, damping: float = 0.0, refit: bool = False,
                 allow_nonstationary: bool = False) -> GroupPrediction:
    """Predicted (first order, Newton) and, with ``retrain``, actual change of the mean test loss when the
    training rows with ids ``subset`` are removed. The predictions are the given head's (refused off the
    optimum unless ``allow_nonstationary``; ``refit`` predicts from its polished copy); the actual change
    retrains from the full-data optimum reached from the head's weights (as ``leave_one_out``); data are
    held in memory."""
    from ..evaluation.loo import load_arrays

    check_head_data(head, train=train, test=test)
    _check_head(head)
    X, y, ids = load_arrays(train, parameter="train")
    Xte, yte, _ = load_arrays(test, parameter="test")
    rows = rows_for_ids(ids, subset)
    given, curv = given_head_curvature(head, X, y, damping=damping, refit=refit,
                                       allow_nonstationary=allow_nonstationary)
    ctx = prepare_newton(given, curv, (Xte, yte), n_train=len(y), exact=True)
    pred, _, _ = predict_group_removal(given, curv, ctx, X[rows], y[rows], renormalize=renormalize)
    pred.stationarity = curv.stationarity.as_dict() if curv.stationarity is not None else None
    if retrain:
        base = refit_tight(head, X, y, tol)
        pred.actual = actual_loss_change(base, X, y, rows, (Xte, yte), renormalize=renormalize)
    return pred


def actual_loss_change(base: Head, X: np.ndarray, y: np.ndarray, rows: np.ndarray, test: tuple, *,
                       renormalize: bool = False) -> float:
    """Mean test loss of ``base`` retrained without ``rows`` minus that of ``base`` (the full-data optimum)."""
    from ..evaluation.loo import retrain_without

    Xte_t = as_tensor(test[0], base.device)
    yte_t = torch.as_tensor(np.asarray(test[1]), device=base.device)
    m = retrain_without(base, X, y, rows, renormalize=renormalize)
    return float(base.losses(Xte_t, yte_t, m.theta_).mean() - base.losses(Xte_t, yte_t).mean())


@dataclass
class GroupDivergenceResult:
    """Group predictions against retraining for random and highest-influence groups of several sizes."""

    groups: list[GroupPrediction]
    n_train: int
    renormalize: bool
    #: the predicting head's ‖∇R(θ̂)‖∞ figure (``Stationarity.as_dict``)
    stationarity: dict[str, Any] | None = None

    def rows(self) -> list[list[Any]]:
        return [g.as_row() for g in self.groups]

    def summary_rows(self) -> list[list[Any]]:
        """Per (kind, fraction): median relative error |pred − actual| / |actual| of each method."""
        out = []
        keys = sorted({(g.kind, g.fraction) for g in self.groups}, key=lambda k: (k[0], k[1]))
        for kind, frac in keys:
            gs = [g for g in self.groups if g.kind == kind and g.fraction == frac]
            a = np.array([g.actual for g in gs])

            def rel(v: list[float], a: np.ndarray = a) -> float:
                return float(np.median(np.abs(np.array(v) - a) / np.maximum(np.abs(a), 1e-300)))

            out.append([kind, frac, len(gs), float(np.median(a)), rel([g.first_order for g in gs]),
                        rel([g.newton for g in gs]), rel([g.newton_exact for g in gs])])
        return out


SUMMARY_HEADER = ["group", "|S|/n", "groups", "median actual", "rel. error first order", "rel. error Newton (2nd)",
                  "rel. error Newton (exact)"]


def group_divergence(head: Head, train: Any, test: Any, *, fractions: Sequence[float] = (0.01, 0.1, 0.5),
                     random_groups: int = 5, adversarial: bool = True, renormalize: bool = False, seed: int = 0,
                     tol: float = 1e-11, damping: float = 0.0, progress: bool = False, refit: bool = False,
                     allow_nonstationary: bool = False) -> GroupDivergenceResult:
    """Where first order and Newton diverge from retraining as |S| grows: for each fraction, ``random_groups``
    random groups and (``adversarial``) the most harmful and the most helpful groups by ``influence``.
    Predictions are the given head's, actual changes retrain from its full-data optimum (as ``group_effect``)."""
    from ..evaluation.loo import load_arrays

    check_head_data(head, train=train, test=test)
    _check_head(head)
    X, y, _ = load_arrays(train, parameter="train")
    Xte, yte, _ = load_arrays(test, parameter="test")
    n = len(y)
    fr = [float(f) for f in fractions]
    if any(not (0 < f < 1) for f in fr):
        raise ValidationError(f"fractions must be in (0, 1), got {fr}")
    given, curv = given_head_curvature(head, X, y, damping=damping, refit=refit,
                                       allow_nonstationary=allow_nonstationary)
    base = refit_tight(head, X, y, tol)
    ctx = prepare_newton(given, curv, (Xte, yte), n_train=n, exact=True)
    infl = -(given.gradients(as_tensor(X, given.device), torch.as_tensor(y, device=given.device))
             @ curv.solve(ctx.test_gradient)).cpu().numpy()
    rng = np.random.default_rng(seed)
    plan: list[tuple[str, np.ndarray]] = []
    for f in fr:
        m = max(1, int(round(f * n)))
        for _ in range(random_groups):
            plan.append(("random", np.sort(rng.choice(n, size=m, replace=False))))
        if adversarial:
            order = np.argsort(-infl, kind="stable")
            plan.append(("most harmful", np.sort(order[:m])))
            plan.append(("most helpful", np.sort(order[::-1][:m])))
    groups = []
    for kind, rows in track(plan, len(plan), "group retrains", "retrains", enabled=progress):
        pred, _, _ = predict_group_removal(given, curv, ctx, X[rows], y[rows], renormalize=renormalize)
        pred.kind = kind
        pred.actual = actual_loss_change(base, X, y, rows, (Xte, yte), renormalize=renormalize)
        groups.append(pred)
    return GroupDivergenceResult(groups=groups, n_train=n, renormalize=renormalize,
                                 stationarity=curv.stationarity.as_dict() if curv.stationarity is not None
                                 else None)


# figures and report sections live in winnow.report.fidelity
__getattr__ = moved_names(__name__, __package__, {
    "removal_methods_section": "..report.fidelity:removal_methods_section",
    "group_section": "..report.fidelity:group_section",
})
