"""Classifier heads with closed-form per-example gradients and Hessians (paper Lemma 1, DESIGN.md).

Parameters are laid out as a (K_out, D + 1) matrix Θ = [W | b] flattened row-major into θ of length
P = K_out · (D + 1); with ũ = [u, 1] the per-example gradient is g = r ⊗ ũ where r is the residual:

- ``LogisticHead`` (sigmoid + BCE, labels in {0, 1}, K_out = 1): r = σ(wᵀu + b) − y,
  ∇²ℓ = s(1 − s) ũũᵀ.
- ``SoftmaxHead`` (softmax + CE, labels in 0..K−1, K_out = K): r = p − e_y,
  ∇²ℓ = (diag p − ppᵀ) ⊗ ũũᵀ.

The objective is the mean loss plus an L2 penalty on the weights only (not the bias, as in
scikit-learn): R(θ) = (1/n) Σ ℓ_i + (λ/2)‖W‖². All maths runs in torch float64 on ``device``, except that
with ``precision`` "mixed" (or "auto", the default, on float32 features) the closed-form heads' scoring and
Hessian passes run their per-block GEMMs in float32 (sums, H, its factorisation and solves stay float64).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConvergenceError, NotFittedError, ValidationError
from .blocks import DTYPE, block_dtype, block_is_view, check_precision, float64_blocks, row_block, weighted_gram


def as_tensor(a: Any, device: torch.device | str | None = None) -> torch.Tensor:
    """Convert an array to a float64 tensor on ``device`` (no copy when already there)."""
    return torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a, dtype=DTYPE, device=device)


def augment(X: torch.Tensor) -> torch.Tensor:
    """ũ = [u, 1] for every row: (c, D) -> (c, D + 1)."""
    return torch.cat([X, torch.ones(X.shape[0], 1, dtype=X.dtype, device=X.device)], dim=1)


class Head(ABC):
    """A linear classifier head on fixed features, with exact per-example derivatives.

    Settings go in ``__init__``; fitted state (``weight_``, ``bias_``, ``n_features_``) ends in ``_``.
    """

    kind: str = ""
    #: the user's original label values, ``classes_[i]`` encoded as label i (None: labels are 0..K-1 as given)
    classes_: tuple | None = None
    #: how the training table was read (a ``winnow.io.columns.DataColumns``; None: not read from a table);
    #: data read later for this head uses it for every setting not given
    data_columns_: Any = None

    #: "auto" (mixed for float32 features, float64 otherwise), "float64" or "mixed": the dtype of the per-block
    #: GEMMs of the closed-form heads' scoring and Hessian passes (``winnow.core.blocks.block_dtype``)
    precision: str = "auto"

    def __init__(self, l2: float = 1e-3, *, tol: float = 1e-9, max_iter: int = 100,
                 device: torch.device | str | None = None, precision: str = "auto") -> None:
        self.precision = check_precision(precision)
        if not np.isfinite(l2) or l2 < 0:
            raise ValidationError(f"l2 must be a finite number >= 0, got {l2!r}")
        if tol <= 0:
            raise ValidationError(f"tol must be > 0, got {tol!r}")
        self.l2 = float(l2)
        self.tol = float(tol)
        self.max_iter = int(max_iter)
        self.device = torch.device(device) if device is not None else torch.device("cpu")

    # ------------------------------------------------------------------ state
    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "theta_")

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(f"this {type(self).__name__} is not fitted: call fit() or from_weights()")

    @property
    @abstractmethod
    def n_outputs(self) -> int:
        """K_out: 1 for the logistic head, K for softmax."""

    @property
    def n_params(self) -> int:
        """P = K_out · (D + 1)."""
        self._check_fitted()
        return self.n_outputs * (self.n_features_ + 1)

    @property
    def weight_(self) -> np.ndarray:
        """W, shape (K_out, D)."""
        self._check_fitted()
        return self.theta_.reshape(self.n_outputs, -1)[:, :-1].cpu().numpy().copy()

    @property
    def bias_(self) -> np.ndarray:
        """b, shape (K_out,)."""
        self._check_fitted()
        return self.theta_.reshape(self.n_outputs, -1)[:, -1].cpu().numpy().copy()

    def _set_params(self, weight: Any, bias: Any) -> None:
        W = as_tensor(weight, self.device)
        b = as_tensor(bias, self.device).reshape(-1)
        if W.ndim == 1:
            W = W.reshape(1, -1)
        if W.ndim != 2 or W.shape[0] != b.shape[0]:
            raise ValidationError(f"weight must be (K_out, D) and bias (K_out,), got {tuple(W.shape)} "
                                  f"and {tuple(b.shape)}")
        if not (torch.isfinite(W).all() and torch.isfinite(b).all()):
            raise ValidationError("weight and bias must be finite (found NaN or Inf)")
        self._init_outputs(W.shape[0])
        self.n_features_ = int(W.shape[1])
        self.theta_ = torch.cat([W, b[:, None]], dim=1).reshape(-1).contiguous()

    def _init_outputs(self, k_out: int) -> None:
        """Set the number of outputs from a weight matrix with ``k_out`` rows (validated per kind)."""

    def weight_mask(self) -> torch.Tensor:
        """(P,) 1.0 on weight coordinates, 0.0 on bias coordinates: the L2 penalty's diagonal."""
        self._check_fitted()
        m = torch.ones(self.n_outputs, self.n_features_ + 1, dtype=DTYPE, device=self.device)
        m[:, -1] = 0.0
        return m.reshape(-1)

    def null_directions(self) -> torch.Tensor:
        """(P, r) orthonormal directions along which every loss is constant (r = 0 for most heads)."""
        return torch.zeros(self.n_params, 0, dtype=DTYPE, device=self.device)

    #: whether the logits are linear in ũ = [u, 1] (closed-form curvature factors, leverage, Newton columns)
    closed_form: bool = False

    def require_closed_form(self, what: str) -> None:
        """Raise unless this head has closed-form curvature factors (what ``what`` needs)."""
        if not self.closed_form:
            raise ValidationError(f"{what} needs a LogisticHead or SoftmaxHead (closed-form curvature), "
                                  f"got {type(self).__name__}")

    def loss_from_logits(self, Z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-example loss from logits Z (..., K_out) and labels y broadcastable to Z[..., 0]."""
        raise ValidationError(f"{type(self).__name__} has no loss-from-logits form")

    def curvature_factors(self, X: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        """A_p with ∇²ℓ_p = (I_K ⊗ ũ_p) A_p (I_K ⊗ ũ_p)ᵀ, shape (c, K, K) (closed-form heads)."""
        self.require_closed_form("curvature factors")
        raise AssertionError  # pragma: no cover - closed-form heads override

    def leverage(self, X: torch.Tensor, hessian_inverse: torch.Tensor) -> torch.Tensor:
        """Ridge leverage ℓev_i = tr(H⁻¹∇²ℓ_i) ≥ 0 of every row of X (c, D), shape (c,) (closed-form heads)."""
        self.require_closed_form("leverage scores")
        raise AssertionError  # pragma: no cover - closed-form heads override

    def blank(self, tol: float | None = None) -> Head:
        """An unfitted head of the same kind, λ, device (and number of classes), for retraining."""
        kw: dict[str, Any] = dict(tol=self.tol if tol is None else tol, max_iter=max(self.max_iter, 100),
                                  device=self.device, precision=self.precision)
        return type(self)(self.l2, **kw)

    # ----------------------------------------------------------- validation
    def check_features(self, X: np.ndarray | torch.Tensor, argument: str = "X") -> None:
        """Raise if X's second dimension does not match the head's D."""
        self._check_fitted()
        if X.ndim != 2 or X.shape[1] != self.n_features_:
            raise ValidationError(
                f"{argument} has {X.shape[1] if X.ndim == 2 else X.ndim} features per row but the head "
                f"expects D = {self.n_features_} (feature dimension mismatch between head and data)")

    @abstractmethod
    def check_labels(self, y: np.ndarray, argument: str = "y") -> None:
        """Raise ValidationError if labels are outside the head's label set."""

    # -------------------------------------------------------- per-chunk maths
    def logits(self, X: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        """Z = X W ᵀ + b, shape (c, K_out)."""
        th = (self.theta_ if theta is None else theta).reshape(self.n_outputs, -1)
        return X @ th[:, :-1].T + th[:, -1]

    @abstractmethod
    def losses(self, X: torch.Tensor, y: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        """Per-example loss ℓ_i, shape (c,)."""

    @abstractmethod
    def residuals(self, X: torch.Tensor, y: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        """r = ∂ℓ/∂z per example, shape (c, K_out); the gradient is g = r ⊗ ũ."""

    @abstractmethod
    def hessian_sum(self, X: torch.Tensor, theta: torch.Tensor | None = None,
                    weights: torch.Tensor | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        """Σ_i w_i ∇²ℓ_i over the rows of X (not averaged, no regulariser), shape (P, P), float64.

        ``y`` is ignored by the linear heads (their Hessian does not depend on the labels); nonlinear heads
        (``winnow.core.autodiff``) need it."""

    @abstractmethod
    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities: (c,) P(y=1) for logistic, (c, K) for softmax."""

    def gradients(self, X: torch.Tensor, y: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        """Per-example gradients g_i = ∇θ ℓ_i (no regulariser term), shape (c, P)."""
        r = self.residuals(X, y, theta)
        c, D = X.shape
        # g = r ⊗ [u, 1], written block by block (no concatenated copy of X)
        G = torch.empty(c, r.shape[1], D + 1, dtype=r.dtype, device=r.device)
        torch.mul(r[:, :, None], X[:, None, :], out=G[:, :, :D])
        G[:, :, D] = r
        return G.reshape(c, -1)

    def grad_dot(self, X: torch.Tensor, y: torch.Tensor, V: torch.Tensor,
                 theta: torch.Tensor | None = None) -> torch.Tensor:
        """g_iᵀ v_j without forming g: V (P,) -> (c,), V (P, m) -> (c, m)."""
        r = self.residuals(X, y, theta)  # (c, K)
        vec = V.ndim == 1
        Vm = V.reshape(self.n_outputs, -1, 1) if vec else V.reshape(self.n_outputs, -1, V.shape[1])
        # Σ_k r_ik (ũ_iᵀ V_k) = Σ_k r_ik (u_iᵀ V_k[:D] + V_k[D]): one GEMM for all outputs
        K, D, m = self.n_outputs, X.shape[1], Vm.shape[2]
        Z = X @ Vm[:, :D, :].permute(1, 0, 2).reshape(D, K * m)
        Z = Z.reshape(-1, K, m) + Vm[:, D, :]
        out = (r[:, :, None] * Z).sum(1)
        return out[:, 0] if vec else out

    def gradient_stats(self, X: torch.Tensor, y: torch.Tensor,
                       w: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(Σ w_i g_i (P,), Σ w_i ‖g_i‖∞ ()) over one block at the head's θ: the sums of the stationarity
        check (``winnow.core.curvature.Stationarity``)."""
        G = self.gradients(X, y)
        if w is not None:
            G = G * w[:, None]
        return G.sum(0), G.abs().amax(1).sum()

    def objective_terms(self, X: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None,
                        theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Σ w_i ℓ_i, Σ w_i g_i, Σ w_i ∇²ℓ_i) for one chunk."""
        r = self.residuals(X, y, theta)
        if w is not None:
            r = r * w[:, None]
        loss = self.losses(X, y, theta)
        loss = (loss * w).sum() if w is not None else loss.sum()
        grad = torch.cat([r.T @ X, r.sum(0)[:, None]], dim=1).reshape(-1)
        return loss, grad, self.hessian_sum(X, theta, w)

    def regulariser(self, theta: torch.Tensor) -> torch.Tensor:
        """(λ/2)‖W‖²."""
        return 0.5 * self.l2 * (theta * theta * self.weight_mask()).sum()

    # ----------------------------------------------------------- scoring
    def score_chunk(self, X: np.ndarray, y: np.ndarray, *, direction: torch.Tensor, curvature: Any,
                    n_train: int, pair_factors: torch.Tensor | None = None,
                    pairs_out: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Influence scores of one chunk of training points (pure; see ``winnow.core.influence``).

        ``direction`` s = H⁻¹ḡ_t (P,); ``curvature`` (a Curvature) for self-influence, None skips it;
        ``pair_factors`` H⁻¹G_tᵀ (P, T) for the pairwise matrix, written into ``pairs_out`` (c, T) when given.
        Returns numpy columns ``influence`` = −g_pᵀs (c,), ``loss_change_if_removed`` = −influence/n (c,),
        ``self_influence`` = g_pᵀH⁻¹g_p (c,) and ``pairs`` = −g_pᵀH⁻¹g_t (c, T) when asked. This generic
        version forms the per-example gradients; closed-form heads override it with GEMMs on the features.
        """
        Xt = as_tensor(X, self.device)
        yt = torch.as_tensor(y, device=self.device)
        G = self.gradients(Xt, yt)  # (c, P)
        infl = -(G @ direction)
        out = {"influence": infl.cpu().numpy(), "loss_change_if_removed": (-infl / n_train).cpu().numpy()}
        if curvature is not None:
            W = curvature.whiten(G)
            out["self_influence"] = (W * W).sum(0).cpu().numpy()
        if pair_factors is not None:
            P = (-(G @ pair_factors)).cpu().numpy()
            if pairs_out is not None:
                pairs_out[...] = P
                P = pairs_out
            out["pairs"] = P
        return out

    # ------------------------------------------------------------------ fit
    def fit(self, X: Any, y: Any = None, *, sample_weight: Any = None, normalizer: float | None = None,
            init: torch.Tensor | None = None, n_classes: int | None = None,
            chunk_size: int = 262144, engine: Any = None) -> Head:
        """Minimise (1/N) Σ w_i ℓ_i + (λ/2)‖W‖² by damped Newton in float64 to ‖∇R‖_∞ ≤ tol.

        ``X`` is an array (n, D) with labels ``y``, or any data source winnow reads (then ``y`` is None).
        ``normalizer`` N defaults to Σ w_i (= n unweighted); ``init`` warm-starts from a θ (P,).
        Raises ConvergenceError if the tolerance is not reached. Stores ``theta_``, ``n_iter_``,
        ``grad_norm_`` (final ‖∇R‖_∞), ``grad_norm_start_`` (‖∇R‖_∞ at the start).
        """
        from ..io.sources import open_source

        source = open_source((X, y) if y is not None else X)
        labels = source.labels()
        if len(labels) == 0:
            raise ValidationError("training data is empty")
        self._prepare_fit(labels, n_classes, argument=source.name)
        self.n_features_ = source.n_features
        if init is None:
            theta = torch.zeros(self.n_outputs * (source.n_features + 1), dtype=DTYPE, device=self.device)
        else:
            theta = as_tensor(init, self.device).clone()
        self.theta_ = theta  # so that helpers see the shape
        w_all = None
        if sample_weight is not None:
            w_all = np.asarray(sample_weight, dtype=np.float64).reshape(-1)
            if w_all.shape[0] != len(source):
                raise ValidationError(f"sample_weight has {w_all.shape[0]} entries for {len(source)} rows")
            if not np.all(np.isfinite(w_all)) or np.any(w_all < 0):
                raise ValidationError("sample_weight must be finite and >= 0")
        total_w = float(w_all.sum()) if w_all is not None else float(len(source))
        N = float(normalizer) if normalizer is not None else total_w
        if N <= 0:
            raise ValidationError("the total sample weight must be > 0")

        from ..engine.passes import objective_pass

        evaluate = objective_pass(self, source, sample_weight=w_all, chunk_size=chunk_size, engine=engine)
        self.theta_ = newton_minimize(self, evaluate, N, theta, tol=self.tol, max_iter=self.max_iter)
        return self

    def _prepare_fit(self, labels: np.ndarray, n_classes: int | None, argument: str = "y") -> None:
        self.check_labels(labels, argument=argument)

    def refit(self, train: Any, *, tol: float | None = None, chunk_size: int = 65536, engine: Any = None) -> Head:
        """A copy of this fitted head polished to the optimum of its own objective on ``train`` (any data
        source winnow reads): the Newton fit started from its weights, same λ, to ‖∇R‖∞ ≤ ``tol`` (default
        the head's ``tol``). The copy records ``refit_from_`` (‖∇R‖∞ before) and ``refit_steps_`` (Newton
        steps); the analyses mark their figures ``refit`` from it. Raises ConvergenceError as ``fit``."""
        self._check_fitted()
        head = copy.deepcopy(self)
        if tol is not None:
            head.tol = float(tol)
        head.max_iter = max(head.max_iter, 100)
        head.fit(train, init=self.theta_, chunk_size=chunk_size, engine=engine)
        head.refit_from_ = float(head.grad_norm_start_)
        head.refit_steps_ = int(head.n_iter_)
        return head

    # ------------------------------------------------------------ construct
    @classmethod
    def from_weights(cls, weight: Any, bias: Any, l2: float = 1e-3, **kwargs: Any) -> Head:
        """A fitted head from given weights: ``weight`` (K_out, D) or (D,), ``bias`` (K_out,) or scalar."""
        head = cls(l2=l2, **kwargs)
        head._set_params(weight, np.atleast_1d(np.asarray(bias, dtype=np.float64)))
        return head

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write ``weight``, ``bias``, ``kind`` and ``l2`` to an .npz file (atomically), with ``classes``
        (a JSON array of ``classes_``) and ``columns`` (the JSON of ``data_columns_``) when set."""
        import json

        from ..io.outputs import save_npz

        self._check_fitted()
        extra: dict[str, np.ndarray] = {}
        if self.classes_ is not None:
            extra["classes"] = np.array(json.dumps([_plain(c) for c in self.classes_]))
        if self.data_columns_ is not None:
            extra["columns"] = np.array(self.data_columns_.to_json())
        return save_npz(path, overwrite=overwrite, argument="path", weight=self.weight_, bias=self.bias_,
                        kind=np.array(self.kind), l2=np.array(self.l2), **extra)

    def __repr__(self) -> str:
        shape = f", D={self.n_features_}, K_out={self.n_outputs}" if self.is_fitted else ""
        return f"{type(self).__name__}(l2={self.l2:g}{shape})"


def _split_shift(VT: torch.Tensor, dt: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(VT[:, :D] as ``dt``, contiguous; VT[:, D] float64) of an (m, D + 1) float64 matrix: ũᵀv = uᵀv[:D] + v[D]."""
    return VT[:, :-1].to(dt).contiguous(), VT[:, -1].contiguous()


class LinearHead(Head):
    """A head whose logits are linear in ũ = [u, 1] (z_k = θ_kᵀũ), so g = r ⊗ ũ: every score is a GEMM on
    the features (``LogisticHead``, ``SoftmaxHead``)."""

    @abstractmethod
    def _residuals_from_logits(self, Z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """r = ∂ℓ/∂z from logits Z (c, K_out) and labels y (c,), shape (c, K_out)."""

    closed_form = True

    def block_logits(self, X: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        """Z = X Wᵀ + b (c, K_out) float64 for a float64 or float32 block X (c, D). For float32 X (mixed
        precision) the GEMM runs in float32 with W rounded to float32 and the result is upcast before the
        bias is added: |ΔZ| ≲ 1e-7 · Σ_j |W_kj u_j| per entry."""
        if X.dtype == DTYPE:
            return self.logits(X, theta)
        th = (self.theta_ if theta is None else theta).reshape(self.n_outputs, -1)
        return (X @ th[:, :-1].T.to(X.dtype)).to(DTYPE) + th[:, -1]

    def gradient_stats(self, X: torch.Tensor, y: torch.Tensor,
                       w: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``Head.gradient_stats`` without forming g = r ⊗ ũ: Σ w_i g_i = [Rᵀ X | Σ r] and
        ‖g_i‖∞ = max_k |r_ik| · max(1, max_j |u_ij|). A float32 block X (mixed precision) gives the float64
        residuals r from its logits and the GEMM RᵀX in float32; the results are float64."""
        return self._gradient_stats(X, self._residuals_from_logits(self.block_logits(X), y), w)

    def _gradient_stats(self, X: torch.Tensor, r: torch.Tensor,
                        w: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``gradient_stats`` from the block's float64 residuals r (c, K_out)."""
        if w is not None:
            r = r * w[:, None]
        grad = torch.cat([(r.to(X.dtype).T @ X).to(DTYPE), r.sum(0)[:, None]], dim=1).reshape(-1)
        if X.shape[0] == 0:
            return grad, grad.new_zeros(())
        xmax = X.abs().amax(1).to(DTYPE).clamp_min(1.0) if X.shape[1] else torch.ones_like(r[:, 0])
        return grad, (r.abs().amax(1) * xmax).sum()

    @abstractmethod
    def hessian_from_logits(self, X: torch.Tensor, Z: torch.Tensor,
                            weights: torch.Tensor | None = None) -> torch.Tensor:
        """``hessian_sum`` of a row block X (c, D) from its float64 logits Z (c, K_out)."""

    def hessian_block(self, X: torch.Tensor, y: torch.Tensor | None, weights: torch.Tensor | None = None, *,
                      gradients: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(Σ w_i ∇²ℓ_i (P, P), and with ``gradients`` the stationarity sums Σ w_i g_i (P,) and Σ w_i ‖g_i‖∞)
        of one row block, float64, from one product for its logits (the Hessian pass's per-block work)."""
        Z = self.block_logits(X)
        S = self.hessian_from_logits(X, Z, weights)
        if not gradients:
            return S, None, None
        assert y is not None, "the stationarity sums need the labels"
        g, scale = self._gradient_stats(X, self._residuals_from_logits(Z, y), weights)
        return S, g, scale

    def leverage_blocks(self, Xa: torch.Tensor, h_inv: torch.Tensor) -> torch.Tensor:
        """M_p = U_pᵀ H⁻¹ U_p for augmented rows Xa (c, D + 1): (M_p)_kl = ũ_pᵀ (H⁻¹)_kl ũ_p, (c, K, K)."""
        K, D1 = self.n_outputs, Xa.shape[1]
        M = torch.empty(Xa.shape[0], K, K, dtype=DTYPE, device=Xa.device)
        for k in range(K):
            for m in range(k, K):
                v = ((Xa @ h_inv[k * D1:(k + 1) * D1, m * D1:(m + 1) * D1]) * Xa).sum(1)
                M[:, k, m] = v
                M[:, m, k] = v
        return M

    def score_chunk(self, X: np.ndarray, y: np.ndarray, *, direction: torch.Tensor, curvature: Any,
                    n_train: int, pair_factors: torch.Tensor | None = None,
                    pairs_out: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """``Head.score_chunk`` for the closed-form heads, without forming the (c, P) gradients.

        With g_p = r_p ⊗ ũ_p (ũ = [u, 1]) every score is a GEMM on the features: for V (P, m) seen as
        (K, D + 1, m), g_pᵀV = Σ_k r_pk (u_pᵀ V_k[:D] + V_k[D]). The logits, the aggregate direction s and the
        pair factors share one GEMM; self-influence is ‖L⁻¹g_p‖² = ‖Σ_k r_pk (L⁻¹)_k ũ_p‖² with (L⁻¹)_k the
        columns of L⁻¹ for output k. Features are upcast to float64 one cache-sized block at a time.
        ``pairs_out`` (c, T) float64, if given, receives the pairs (no extra copy on a CPU).

        Mixed precision (``precision`` "mixed", or "auto" with float32 ``X``): the blocks stay float32 and the
        two GEMMs (X̃ @ [θ, s, H⁻¹G_tᵀ] and X̃ @ L⁻ᵀ) run in float32 with those float64 right-hand sides
        rounded to float32; their products are upcast, and the residuals r = σ(z) − y (p − e_y), the
        contractions with r and the squares are float64. Each GEMM entry then carries a relative error of
        ~1e-7 · Σ_j |v_j ũ_j| / |vᵀũ| (float32 rounding of the factor and of the accumulation), which is
        what every score inherits; the float64 path is unchanged.
        """
        K, D = self.n_outputs, self.n_features_
        dev = self.device
        dt = block_dtype(self.precision, X.dtype)

        def split(V: torch.Tensor) -> torch.Tensor:
            """V (P, m) -> Vᵀ per output, (K·m, D + 1) contiguous: row k·m + j = V_k[:, j], so ũ_pᵀV_k[:, j] is
            entry (p, k·m + j) of X̃ @ split(V).T."""
            return V.reshape(K, D + 1, -1).permute(0, 2, 1).reshape(-1, D + 1).contiguous()

        blocks = [self.theta_.reshape(-1, 1), direction.reshape(-1, 1)]  # logits z_k = θ_kᵀũ, s_kᵀũ
        T = 0
        if pair_factors is not None:
            T = int(pair_factors.shape[1])
            blocks.append(pair_factors)
        # ũᵀv = uᵀv[:D] + v[D]: the GEMMs take the feature rows as they are (no copy of X̃ = [X, 1]) and the
        # last entries are added in float64. The GEMMs take the transposed view of a contiguous (m, D)
        # matrix: much faster in MKL than a row-major (D, m) right-hand side when m is small.
        VT, v0 = _split_shift(torch.cat([split(V) for V in blocks]), dt)
        if curvature is not None:
            MT, m0 = _split_shift(split(curvature.inverse_factor().T), dt)  # rows of (L⁻¹)_k
            if K == 1 and dt != DTYPE:
                m0 = m0.to(dt)

        c = int(X.shape[0])
        infl = torch.empty(c, dtype=DTYPE, device=dev)
        self_infl = torch.empty(c, dtype=DTYPE, device=dev) if curvature is not None else None
        pairs = None
        if T:
            direct = pairs_out is not None and torch.device(dev).type == "cpu"
            pairs = torch.from_numpy(pairs_out) if direct else torch.empty(c, T, dtype=DTYPE, device=dev)
        yt_all = torch.as_tensor(y, device=dev)
        # blocks bound the (b, m) products (and the converted rows, when X is not already of dtype ``dt``)
        width = max(VT.shape[0], MT.shape[0] if curvature is not None else 0)
        if not block_is_view(X, dt, dev):
            width += D
        for s, e, Xb in float64_blocks(X, row_block(width, dev), dev, dtype=dt):  # Xb: rows of X, as ``dt``
            Z = torch.addmm(v0, Xb, VT.T) if dt == DTYPE else (Xb @ VT.T).to(DTYPE).add_(v0)  # (b, 2K + K·T)
            r = self._residuals_from_logits(Z[:, :K], yt_all[s:e])  # (b, K)
            rn = r.neg_()  # −r: the influences carry a minus sign
            torch.sum(rn * Z[:, K:2 * K], 1, out=infl[s:e])
            if pairs is not None:
                if K == 1:
                    torch.mul(Z[:, 2:], rn, out=pairs[s:e])
                else:
                    torch.sum(rn[:, :, None] * Z[:, 2 * K:].reshape(-1, K, T), 1, out=pairs[s:e])
            if self_infl is not None:
                # (b, K·P): row p, block k = (L⁻¹)_k ũ_p
                if K == 1:  # ‖L⁻¹g_p‖² = r_p²‖L⁻¹ũ_p‖²: the product in ``dt``, its squares summed in float64
                    W = torch.addmm(m0, Xb, MT.T)
                    torch.mul(W.mul_(W).sum(1, dtype=DTYPE), rn[:, 0].square(), out=self_infl[s:e])
                else:
                    W = torch.addmm(m0, Xb, MT.T) if dt == DTYPE else (Xb @ MT.T).to(DTYPE).add_(m0)
                    W = (W.reshape(-1, K, W.shape[1] // K) * rn[:, :, None]).sum(1)
                    torch.sum(W * W, 1, out=self_infl[s:e])
        infl_np = infl.cpu().numpy()
        out = {"influence": infl_np, "loss_change_if_removed": infl_np / -n_train}
        if self_infl is not None:
            out["self_influence"] = self_infl.cpu().numpy()
        if pairs is not None:
            if pairs_out is None:
                out["pairs"] = pairs.cpu().numpy()
            else:
                if not direct:
                    pairs_out[...] = pairs.cpu().numpy()
                out["pairs"] = pairs_out
        return out


class LogisticHead(LinearHead):
    """Sigmoid + binary cross-entropy head, labels in {0, 1}; P = D + 1."""

    kind = "logistic"

    @property
    def n_outputs(self) -> int:
        return 1

    def _init_outputs(self, k_out: int) -> None:
        if k_out != 1:
            raise ValidationError(f"a logistic head has one output row, got weight with {k_out} rows "
                                  "(use SoftmaxHead for K classes)")

    def check_labels(self, y: np.ndarray, argument: str = "y") -> None:
        y = np.asarray(y)
        bad = (y != 0) & (y != 1)
        if bad.any():
            raise ValidationError(f"{argument}: a logistic head needs labels in {{0, 1}}, found "
                                  f"{np.unique(y[bad])[:5].tolist()}")

    def losses(self, X: torch.Tensor, y: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        z = self.logits(X, theta)[:, 0]
        return torch.nn.functional.softplus(z) - y.to(DTYPE) * z

    def residuals(self, X: torch.Tensor, y: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        return self._residuals_from_logits(self.logits(X, theta), y)

    @staticmethod
    def _residuals_from_logits(Z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """r = σ(z) − y from logits Z (c, 1), shape (c, 1)."""
        return (torch.sigmoid(Z[:, 0]) - y.to(Z.dtype))[:, None]

    def curvature_weights(self, X: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        """s(1 − s) per example, shape (c,) float64 (also for a float32 block X: from its float64 logits)."""
        s = torch.sigmoid(self.block_logits(X, theta)[:, 0])
        return s * (1 - s)

    def curvature_factors(self, X: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        return self.curvature_weights(X, theta)[:, None, None]

    def loss_from_logits(self, Z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = Z[..., 0]
        return torch.nn.functional.softplus(z) - y.to(DTYPE) * z

    def leverage(self, X: torch.Tensor, hessian_inverse: torch.Tensor) -> torch.Tensor:
        """s(1−s)·ũᵀH⁻¹ũ per row."""
        Xa = augment(X)
        return (self.curvature_weights(X) * ((Xa @ hessian_inverse) * Xa).sum(1)).clamp_min(0.0)

    def hessian_sum(self, X: torch.Tensor, theta: torch.Tensor | None = None,
                    weights: torch.Tensor | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.hessian_from_logits(X, self.block_logits(X, theta), weights)

    def hessian_from_logits(self, X: torch.Tensor, Z: torch.Tensor,
                            weights: torch.Tensor | None = None) -> torch.Tensor:
        """Σ_i w_i s_i(1 − s_i) x̃_i x̃_iᵀ (P, P) float64 from the block's float64 logits Z (c, 1): a float32 X
        (mixed precision) runs the product in float32 (``weighted_gram``), the weights and sums are float64."""
        s = torch.sigmoid(Z[:, 0])
        a = s * (1 - s)
        return weighted_gram(X, a if weights is None else a * weights)

    def predict_proba(self, X: Any) -> np.ndarray:
        self._check_fitted()
        Xt = as_tensor(X, self.device)
        self.check_features(Xt)
        return torch.sigmoid(self.logits(Xt)[:, 0]).cpu().numpy()

    @classmethod
    def from_sklearn(cls, model: Any, n_samples: int, **kwargs: Any) -> LogisticHead:
        """Map a fitted binary ``sklearn.linear_model.LogisticRegression`` exactly.

        scikit-learn minimises C Σ ℓ_i + ½‖w‖²; dividing by C·n gives our (1/n) Σ ℓ_i + (λ/2)‖w‖² with
        λ = 1 / (C · n), so ``n_samples`` (the n it was fitted on) is needed (λ = 0 for ``penalty=None`` or
        ``C=inf``). ``head.classes_`` is ``model.classes_`` (classes_[1] is the positive class, label 1).

        Refused with the reason (a ValidationError), because the model minimised a different objective:
        ``solver='liblinear'`` (penalises the intercept), ``class_weight`` other than None or one weight for
        every class (a per-row weight), an L1/elastic-net penalty, ``fit_intercept=False``. What cannot be
        seen on the model — fit-time ``sample_weight``, a run stopped by ``max_iter`` or a loose ``tol`` — is
        caught by the stationarity check of every influence computation (which then offers ``refit=True``).
        """
        coef, intercept, l2 = _sklearn_params(model, n_samples, binary=True)
        head = cls.from_weights(coef, intercept, l2=l2, **kwargs)
        return _sklearn_classes(head, model)  # type: ignore[return-value]


class SoftmaxHead(LinearHead):
    """Softmax + cross-entropy head over K classes, labels in 0..K−1; P = K (D + 1).

    The loss is unchanged when the same constant is added to every bias, so with an unregularised bias the
    Hessian is singular along that one direction (``null_directions``). Every per-example gradient is
    orthogonal to it (Σ_k (p_k − e_yk) = 0), so winnow solves with H + c·vvᵀ, which equals the
    pseudo-inverse on gradients exactly.
    """

    kind = "softmax"

    def __init__(self, l2: float = 1e-3, *, n_classes: int | None = None, **kwargs: Any) -> None:
        super().__init__(l2, **kwargs)
        if n_classes is not None and n_classes < 2:
            raise ValidationError(f"n_classes must be >= 2, got {n_classes}")
        self.n_classes = n_classes

    @property
    def n_outputs(self) -> int:
        if self.n_classes is None:
            raise ValidationError("SoftmaxHead: the number of classes is unknown before fit()")
        return self.n_classes

    def _init_outputs(self, k_out: int) -> None:
        if k_out < 2:
            raise ValidationError(f"a softmax head needs K >= 2 output rows, got {k_out} "
                                  "(use LogisticHead for one sigmoid output)")
        self.n_classes = k_out

    def _prepare_fit(self, labels: np.ndarray, n_classes: int | None, argument: str = "y") -> None:
        if n_classes is not None:
            self.n_classes = n_classes
        if self.n_classes is None:
            self.n_classes = max(int(labels.max()) + 1, 2)
        self.check_labels(labels, argument=argument)

    def check_labels(self, y: np.ndarray, argument: str = "y") -> None:
        y = np.asarray(y)
        K = self.n_outputs
        bad = (y < 0) | (y >= K)
        if bad.any():
            raise ValidationError(f"{argument}: a softmax head with K = {K} classes needs labels in 0..{K - 1}, "
                                  f"found {np.unique(y[bad])[:5].tolist()}")

    def null_directions(self) -> torch.Tensor:
        v = torch.zeros(self.n_outputs, self.n_features_ + 1, dtype=DTYPE, device=self.device)
        v[:, -1] = 1.0 / np.sqrt(self.n_outputs)
        return v.reshape(-1, 1)

    def blank(self, tol: float | None = None) -> SoftmaxHead:
        return SoftmaxHead(self.l2, n_classes=self.n_outputs, tol=self.tol if tol is None else tol,
                           max_iter=max(self.max_iter, 100), device=self.device, precision=self.precision)

    def curvature_factors(self, X: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        p = torch.softmax(self.logits(X, theta), dim=1)
        return torch.diag_embed(p) - p[:, :, None] * p[:, None, :]

    def loss_from_logits(self, Z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(Z, dim=-1)
        idx = y.long().expand(Z.shape[:-1])[..., None]
        return -logp.gather(-1, idx)[..., 0]

    def leverage(self, X: torch.Tensor, hessian_inverse: torch.Tensor) -> torch.Tensor:
        """Σ_k p_k ũᵀ(H⁻¹)_kk ũ − (p⊗ũ)ᵀH⁻¹(p⊗ũ) (the trace analogue; the null-direction fill of
        ``Curvature.inverse`` cancels between the two terms)."""
        Xa = augment(X)
        p = torch.softmax(self.logits(X), dim=1)
        K, D1 = p.shape[1], Xa.shape[1]
        lev = torch.zeros(Xa.shape[0], dtype=Xa.dtype, device=Xa.device)
        for k in range(K):
            B = hessian_inverse[k * D1:(k + 1) * D1, k * D1:(k + 1) * D1]
            lev += p[:, k] * ((Xa @ B) * Xa).sum(1)
        A = (p[:, :, None] * Xa[:, None, :]).reshape(Xa.shape[0], -1)
        lev -= ((A @ hessian_inverse) * A).sum(1)
        return lev.clamp_min(0.0)

    def losses(self, X: torch.Tensor, y: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        logp = torch.log_softmax(self.logits(X, theta), dim=1)
        return -logp.gather(1, y.long()[:, None])[:, 0]

    def residuals(self, X: torch.Tensor, y: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        return self._residuals_from_logits(self.logits(X, theta), y)

    @staticmethod
    def _residuals_from_logits(Z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """r = softmax(z) − e_y from logits Z (c, K), shape (c, K)."""
        return torch.softmax(Z, dim=1) - torch.nn.functional.one_hot(y.long(), Z.shape[1]).to(Z.dtype)

    def hessian_sum(self, X: torch.Tensor, theta: torch.Tensor | None = None,
                    weights: torch.Tensor | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.hessian_from_logits(X, self.block_logits(X, theta), weights)

    def hessian_from_logits(self, X: torch.Tensor, Z: torch.Tensor,
                            weights: torch.Tensor | None = None) -> torch.Tensor:
        # Σ_i (diag p_i − p_i p_iᵀ) ⊗ ũ_i ũ_iᵀ = blockdiag_k(X̃ᵀ diag(p_k) X̃) − AᵀA with A_i = p_i ⊗ ũ_i
        p = torch.softmax(Z, dim=1)
        pw = p * weights[:, None] if weights is not None else p
        K, D1 = self.n_outputs, X.shape[1] + 1
        H = torch.zeros(K * D1, K * D1, dtype=DTYPE, device=X.device)
        if X.dtype != DTYPE:
            # mixed precision (float32 X): with p_k(1 − p_k) = Σ_{l≠k} p_k p_l, the off-diagonal blocks are
            # −B_kl, B_kl = X̃ᵀ diag(w p_k p_l) X̃ (one float32 ``weighted_gram`` per k < l, weights from float64 p), and
            # each diagonal block is Σ_{l≠k} B_kl summed in float64. Every block row then sums to 0 up to
            # float64 rounding, as in exact arithmetic: the directions θ_k = θ_l (where the loss is flat and
            # only λ or the null-direction fill holds H up) keep their curvature, which float32 rounding of
            # separately computed blocks would swamp; a confident row's p_k − p_k² loses no digits either.
            for k in range(K):
                for m in range(k + 1, K):
                    B = weighted_gram(X, pw[:, k] * p[:, m])
                    H[k * D1:(k + 1) * D1, m * D1:(m + 1) * D1] = -B
                    H[m * D1:(m + 1) * D1, k * D1:(k + 1) * D1] = -B.T
                    H[k * D1:(k + 1) * D1, k * D1:(k + 1) * D1] += B
                    H[m * D1:(m + 1) * D1, m * D1:(m + 1) * D1] += B
            return H
        Xa = augment(X)
        for k in range(K):
            H[k * D1:(k + 1) * D1, k * D1:(k + 1) * D1] = Xa.T @ (pw[:, k:k + 1] * Xa)
        A = (p[:, :, None] * Xa[:, None, :]).reshape(X.shape[0], -1)
        Aw = A if weights is None else A * weights[:, None]
        return H - A.T @ Aw

    def predict_proba(self, X: Any) -> np.ndarray:
        self._check_fitted()
        Xt = as_tensor(X, self.device)
        self.check_features(Xt)
        return torch.softmax(self.logits(Xt), dim=1).cpu().numpy()

    @classmethod
    def from_sklearn(cls, model: Any, n_samples: int, **kwargs: Any) -> SoftmaxHead:
        """Map a fitted multinomial ``LogisticRegression`` (K ≥ 3 classes) exactly; λ = 1 / (C · n), classes
        and refusals as ``LogisticHead.from_sklearn``."""
        coef, intercept, l2 = _sklearn_params(model, n_samples, binary=False)
        head = cls.from_weights(coef, intercept, l2=l2, **kwargs)
        return _sklearn_classes(head, model)  # type: ignore[return-value]


def _sklearn_params(model: Any, n_samples: int, binary: bool) -> tuple[np.ndarray, np.ndarray, float]:
    """(coef_, intercept_, λ) of a fitted LogisticRegression whose objective is winnow's, else a ValidationError
    naming the setting that makes it a different objective."""
    coef = getattr(model, "coef_", None)
    if coef is None:
        raise ValidationError("model must be a fitted sklearn LogisticRegression (no coef_ found)")
    how = ("fit the model again with solver='lbfgs' (or 'newton-cg'), class_weight=None and an L2 penalty, or "
           "fit the head with winnow (LogisticHead/SoftmaxHead(...).fit(X, y), `winnow fit-head`)")
    solver = getattr(model, "solver", "lbfgs")
    if solver == "liblinear":
        raise ValidationError("model was fitted with solver='liblinear', which penalises the intercept like a "
                              "weight; winnow's objective leaves the bias unpenalised, so the weights are not its "
                              f"optimum: {how}")
    penalty = getattr(model, "penalty", "l2")
    l1_ratio = getattr(model, "l1_ratio", None)
    if penalty not in ("l2", "deprecated", None, "none") or (l1_ratio not in (None, 0, 0.0)
                                                              and penalty not in (None, "none", "l2")):
        raise ValidationError(f"only an L2 penalty (or none) maps to winnow's heads, model has penalty={penalty!r}, "
                              f"l1_ratio={l1_ratio!r}: {how}")
    if not getattr(model, "fit_intercept", True):
        raise ValidationError("model was fitted with fit_intercept=False; winnow's heads always have a free bias, "
                              f"so a bias fixed at 0 is not their optimum: {how}")
    class_weight = getattr(model, "class_weight", None)
    scale = 1.0
    if class_weight is not None:
        ws = set()
        if isinstance(class_weight, dict):
            ws = {float(class_weight.get(c, 1.0)) for c in getattr(model, "classes_", list(class_weight))}
        if len(ws) != 1 or min(ws) <= 0:
            raise ValidationError(f"model was fitted with class_weight={class_weight!r}: class weights are a "
                                  "weight on every row, so it minimised a weighted loss, not winnow's unweighted "
                                  f"mean (the influence formulas would not hold at its weights): {how}")
        scale = ws.pop()  # one weight w for every class: C Σ w ℓ_i is C' = C·w
    if n_samples < 1:
        raise ValidationError(f"n_samples must be the number of rows the model was fitted on, got {n_samples}")
    if binary and coef.shape[0] != 1:
        raise ValidationError(f"binary model expected (coef_ with one row), got {coef.shape[0]} rows: "
                              "use SoftmaxHead.from_sklearn")
    if not binary and coef.shape[0] < 3:
        raise ValidationError("a binary LogisticRegression maps to LogisticHead.from_sklearn")
    C = float(model.C) * scale
    l2 = 0.0 if penalty in (None, "none") or not np.isfinite(C) else 1.0 / (C * n_samples)
    return np.asarray(coef, dtype=np.float64), np.asarray(model.intercept_, dtype=np.float64), l2


def _sklearn_classes(head: Head, model: Any) -> Head:
    """Carry ``model.classes_`` into ``head.classes_`` (classes_[i] is the label encoded as i; binary:
    classes_[1] is the positive class, as in scikit-learn)."""
    classes = getattr(model, "classes_", None)
    if classes is not None:
        head.classes_ = tuple(_plain(c) for c in np.asarray(classes).tolist())
    return head


def head_from_torch(linear: torch.nn.Module, l2: float = 1e-3, **kwargs: Any) -> Head:
    """A head from an ``nn.Linear``: one output -> LogisticHead, K ≥ 2 outputs -> SoftmaxHead."""
    if not isinstance(linear, torch.nn.Linear):
        raise ValidationError(f"expected a torch.nn.Linear, got {type(linear).__name__}")
    W = linear.weight.detach().to("cpu", DTYPE).numpy()
    b = (linear.bias.detach().to("cpu", DTYPE).numpy() if linear.bias is not None
         else np.zeros(W.shape[0]))
    cls: type[Head] = LogisticHead if W.shape[0] == 1 else SoftmaxHead
    return cls.from_weights(W, b, l2=l2, **kwargs)


LogisticHead.from_torch = staticmethod(head_from_torch)  # type: ignore[attr-defined]
SoftmaxHead.from_torch = staticmethod(head_from_torch)  # type: ignore[attr-defined]

HEAD_KINDS: dict[str, type[Head]] = {"logistic": LogisticHead, "softmax": SoftmaxHead}


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def load_head(path: str | Path, device: torch.device | str | None = None) -> Head:
    """Read a head written by ``Head.save`` (files without ``classes`` / ``columns`` leave them None)."""
    import json

    p = Path(path)
    if not p.exists():
        raise ValidationError(f"head file {str(p)!r} does not exist")
    try:
        with np.load(p, allow_pickle=False) as z:
            kind = str(z["kind"])
            weight, bias, l2 = z["weight"], z["bias"], float(z["l2"])
            classes = json.loads(str(z["classes"])) if "classes" in z.files else None
            columns = str(z["columns"]) if "columns" in z.files else None
    except (KeyError, ValueError, OSError) as exc:
        if isinstance(exc, ValueError) and "pickle" in str(exc):  # e.g. a pickled scikit-learn model
            why = ("it holds pickled Python objects; map a fitted scikit-learn LogisticRegression with "
                   "LogisticHead.from_sklearn (or SoftmaxHead.from_sklearn) and save that head")
        else:
            why = str(exc).strip("'\"")
        raise ValidationError(f"head file {str(p)!r} is not a winnow head file (written by `winnow fit-head` or "
                              f"Head.save: an .npz with arrays weight, bias, kind, l2): {why}",
                              parameters=("head",)) from None
    if kind not in HEAD_KINDS:
        raise ValidationError(f"{str(p)!r}: unknown head kind {kind!r}, expected one of {sorted(HEAD_KINDS)}")
    head = HEAD_KINDS[kind].from_weights(weight, bias, l2=l2, device=device)
    if classes is not None:
        head.classes_ = tuple(classes)
    if columns is not None:
        from ..io.columns import DataColumns  # the head file's own settings format

        head.data_columns_ = DataColumns.from_json(columns)
    return head


ObjectiveSums = Callable[..., tuple[torch.Tensor, ...]]


def newton_minimize(head: Head, sums: ObjectiveSums, normalizer: float, theta: torch.Tensor, *,
                    tol: float = 1e-9, max_iter: int = 100) -> torch.Tensor:
    """Damped Newton on R(θ) = (1/N) Σ w_i ℓ_i(θ) + (λ/2)‖W‖², where ``sums(θ, derivatives)`` returns
    (Σ w_i ℓ_i, Σ w_i g_i, Σ w_i ∇²ℓ_i) (or only the loss sum) in one pass over the data, with
    H + μI (μ ≥ 0 the smallest shift making it positive definite) and Armijo backtracking.

    Stops when ‖∇R‖_∞ ≤ tol; raises ConvergenceError otherwise. Sets ``head.n_iter_``, ``head.grad_norm_``.
    """
    mask = head.weight_mask()
    null = head.null_directions()

    def evaluate(th: torch.Tensor, need_hess: bool = True):
        if need_hess:
            loss, grad, hess = sums(th, True)
        else:
            (loss,), grad, hess = sums(th, False), None, None
        loss = loss / normalizer + head.regulariser(th)
        if grad is not None:
            grad = grad / normalizer + head.l2 * mask * th
        if hess is not None:
            hess = hess / normalizer + torch.diag(head.l2 * mask)
            if null.shape[1]:
                hess = hess + null @ null.T
        return loss, grad, hess

    loss, grad, hess = evaluate(theta)
    gnorm = float(grad.abs().max())
    head.grad_norm_start_ = gnorm
    it = 0
    while gnorm > tol and it < max_iter:
        it += 1
        L, info = torch.linalg.cholesky_ex(hess)
        if int(info) != 0:
            # not positive definite (λ = 0 with separable/collinear data, or a non-convex head): shift by the
            # smallest μ ≥ 0 that makes H + μI positive definite
            ev = torch.linalg.eigvalsh(hess)
            mu = float(-ev[0]) + 1e-8 * max(1.0, float(ev[-1]))
            L = torch.linalg.cholesky(hess + mu * torch.eye(hess.shape[0], dtype=DTYPE, device=hess.device))
        step = -torch.cholesky_solve(grad[:, None], L)[:, 0]
        t = 1.0
        slope = float(grad @ step)
        while True:
            new = theta + t * step
            new_loss, _, _ = evaluate(new, need_hess=False)
            # the tolerance term accepts steps whose loss change is below float64 rounding near the optimum
            if float(new_loss) <= float(loss) + 1e-4 * t * slope + 1e-14 * abs(float(loss)) or t < 1e-10:
                break
            t *= 0.5
        theta = new
        loss, grad, hess = evaluate(theta)
        new_gnorm = float(grad.abs().max())
        if t < 1e-10 and new_gnorm >= gnorm:
            gnorm = new_gnorm  # report the norm at the θ we return
            break
        gnorm = new_gnorm
    head.n_iter_ = it
    head.grad_norm_ = gnorm
    if gnorm > tol:
        raise ConvergenceError(
            f"{type(head).__name__}.fit did not converge: ‖∇R‖_∞ = {gnorm:.3g} > tol = {tol:g} after {it} "
            "Newton iterations (raise max_iter; with l2 = 0 separable data has no optimum: use l2 > 0)")
    return theta
