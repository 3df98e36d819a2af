"""Linear datamodeling score (LDS; Park et al. 2023, TRAK; dattri's benchmark) for the head's influence.

For M random subsets S_m (each keeps ``fraction`` of the training rows) the head is retrained on S_m and
every test loss ℓ_t(θ̂_{S_m}) is compared with the additive prediction from the full-data influence.

Sign. ``loss_change_if_removed`` for the pair (t, p) is Δ_tp = −I_loss(z_t, z_p)/n = +(1/n) g_tᵀH⁻¹g_p
(eq. 28), so removing every p ∉ S predicts

    ℓ_t(θ̂_S) ≈ ℓ_t(θ̂) + Σ_{p∉S} Δ_tp = ℓ_t(θ̂) + Σ_{all p} Δ_tp − Σ_{p∈S} Δ_tp
             = const_t + (1/n) Σ_{p∈S} I_loss(z_t, z_p).

The score is therefore τ_t(S) = +(1/n) Σ_{p∈S} I_loss(z_t, z_p) = −Σ_{p∈S} Δ_tp: keeping harmful points
(I_loss > 0) raises the predicted loss. (Writing it as −(1/n) Σ_{p∈S} I_loss would flip every correlation.)
Per test point t, LDS_t is the Spearman correlation over the M subsets between τ_t(S_m) and the actual
ℓ_t(θ̂_{S_m}); the reported LDS is the mean over test points (points whose actual or predicted losses do not
vary across subsets are left out and counted). The constant does not matter to a rank correlation.

Retraining: by default (``renormalize=True``) the usual fit on the kept rows, (1/|S|) Σ_{p∈S} ℓ_p +
(λ/2)‖W‖², as TRAK/dattri retrain; ``renormalize=False`` keeps the normaliser n (the ε = −1/n objective of
leave-one-out). All subsets have the same size, so the two differ by a regularisation shift shared by all
subsets. As a reference the result also carries the LDS of the Newton group prediction (one solve with
H₋_S per subset, test losses evaluated at θ̂ + Δ_S), which is not additive over points.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import stats

from .. import validation as V
from .._moved import moved_names
from ..analyses.fidelity import _check_head, loss_from_logits, predict_group_removal, prepare_newton, refit_tight
from ..core.heads import Head, as_tensor
from ..progress import track

MIN_SUBSETS = 10


def rowwise_spearman(pred: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Spearman correlation of each column of ``pred`` (M, T) with the same column of ``actual``: (T,),
    NaN where a column is constant."""
    rp = stats.rankdata(pred, axis=0)
    ra = stats.rankdata(actual, axis=0)
    rp = rp - rp.mean(0)
    ra = ra - ra.mean(0)
    den = np.sqrt((rp * rp).sum(0) * (ra * ra).sum(0))
    out = np.full(pred.shape[1], np.nan)
    ok = den > 0
    out[ok] = (rp * ra).sum(0)[ok] / den[ok]
    return out


@dataclass
class LdsResult:
    """LDS (mean over test points of the per-point Spearman correlation across subsets)."""

    score: float
    per_test: np.ndarray          # (T,) Spearman per test point (NaN: constant, left out)
    predicted: np.ndarray         # (M, T) τ_t(S_m) = (1/n) Σ_{p∈S_m} I_loss(t, p)
    actual: np.ndarray            # (M, T) ℓ_t(θ̂_{S_m})
    kept: np.ndarray              # (M, n) bool, the rows each subset keeps
    subsets: int
    fraction: float
    n_train: int
    renormalize: bool
    score_newton: float = float("nan")
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"lds": self.score, "lds_newton_group": self.score_newton, "subsets": self.subsets,
                "fraction": self.fraction, "n_train": self.n_train, "n_test": self.per_test.shape[0],
                "renormalize": self.renormalize, "per_test_spearman": self.per_test,
                "left_out_test_points": int(np.isnan(self.per_test).sum()), **self.extra}


def linear_datamodeling_score(head: Head, train: Any, test: Any, *, subsets: int = 100, fraction: float = 0.5,
                              seed: int = 0, renormalize: bool = True, newton: bool = True, tol: float = 1e-10,
                              damping: float = 0.0, progress: bool = False, refit: bool = False,
                              allow_nonstationary: bool = False) -> LdsResult:
    """LDS of the head's first-order influence over ``subsets`` random subsets keeping ``fraction`` of the rows.

    The predictions are the given head's (refused off the optimum unless ``allow_nonstationary``; ``refit``
    predicts from its polished copy). The actual losses retrain from the head's weights: each subset retrain
    warm-starts from the full-data optimum, re-fitted tightly on all of ``train``. Data and
    the (T, n) influence matrix are held in memory. Raises ValidationError for ``subsets`` < 10 or
    ``fraction`` outside (0, 1).
    """
    from ..analyses.influence import InfluenceAnalyzer
    from .loo import load_arrays, retrain_without

    V.check_head_data(head, train=train, test=test)
    _check_head(head)
    if not (isinstance(subsets, (int, np.integer)) and subsets >= MIN_SUBSETS):
        raise V.fail(f"subsets must be an integer >= {MIN_SUBSETS}, got {subsets!r}: the LDS is a Spearman "
                     "correlation across subsets for each test point, and with so few subsets it is too coarse and "
                     "noisy to mean anything (with 2 subsets every correlation is ±1)", "subsets")
    fraction = V.check_fraction(fraction, "fraction", high_open=True)  # the share of rows each subset keeps
    seed, damping = V.check_seed(seed), V.check_damping(damping)
    X, y, ids = load_arrays(train, parameter="train")
    Xte, yte, _ = load_arrays(test, parameter="test")
    n = len(y)
    k = int(round(fraction * n))
    if k < 1 or k >= n:
        raise V.fail(f"fraction {fraction:g} of n = {n} rows keeps {k}: need between 1 and n − 1", "fraction")
    an = InfluenceAnalyzer(head, damping=damping, refit=refit,
                           allow_nonstationary=allow_nonstationary).fit((X, y, ids))
    given = an.head
    I = an.pairwise((Xte, yte))                       # (T, n), I_loss(t, p)
    ctx = prepare_newton(given, an.curvature_, (Xte, yte), n_train=n, exact=newton) if newton else None
    base = refit_tight(head, X, y, tol)
    Xte_t, yte_t = as_tensor(Xte, base.device), torch.as_tensor(yte, device=base.device)
    rng = np.random.default_rng(seed)
    masks = np.zeros((subsets, n), dtype=bool)
    for m in range(subsets):
        masks[m, rng.choice(n, size=k, replace=False)] = True
    predicted = (masks.astype(np.float64) @ I.T) / n   # (M, T): +(1/n) Σ_{p∈S} I_loss(t, p)
    actual = np.empty((subsets, len(yte)))
    newton_pred = np.full((subsets, len(yte)), np.nan)
    for i in track(range(subsets), subsets, "LDS retrains", "retrains", enabled=progress):
        removed = np.flatnonzero(~masks[i])
        fitted = retrain_without(base, X, y, removed, renormalize=renormalize)
        actual[i] = base.losses(Xte_t, yte_t, fitted.theta_).cpu().numpy()
        if ctx is not None:
            _, _, d = predict_group_removal(given, an.curvature_, ctx, X[removed], y[removed],
                                            renormalize=renormalize)
            assert ctx.test_logits is not None
            Z = ctx.test_logits + ctx.test_Xa @ d.reshape(given.n_outputs, -1).T
            newton_pred[i] = loss_from_logits(given, Z, ctx.test_y).cpu().numpy()
    per_test = rowwise_spearman(predicted, actual)
    score = float(np.nanmean(per_test)) if np.isfinite(per_test).any() else float("nan")
    score_newton = float("nan")
    if ctx is not None:
        pn = rowwise_spearman(newton_pred, actual)
        score_newton = float(np.nanmean(pn)) if np.isfinite(pn).any() else float("nan")
    return LdsResult(score=score, per_test=per_test, predicted=predicted, actual=actual, kept=masks, subsets=subsets,
                     fraction=float(fraction), n_train=n, renormalize=renormalize, score_newton=score_newton,
                     extra={"seed": seed, "kept_per_subset": k, "stationarity": an.stationarity_.as_dict()})


# the report section lives in winnow.report.lds
__getattr__ = moved_names(__name__, __package__, {"lds_section": "..report.lds:lds_section"})
