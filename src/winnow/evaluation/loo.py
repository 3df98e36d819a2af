"""Ground truth for influence: actual leave-one-out retraining of the head.

Removing z_p retrains on the ε = −1/n objective (1/n) Σ_{i≠p} ℓ_i + (λ/2)‖W‖² (paper eq. 6 with
ε = −1/n, DESIGN.md), warm-started from θ̂ and solved by Newton to ‖∇R‖_∞ ≤ tol. The actual change of the
mean test loss is compared with the prediction +(1/n) ḡ_tᵀH⁻¹g_p (eq. 28).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import stats

from .. import validation as V
from ..analyses.influence import InfluenceAnalyzer
from ..core.heads import Head, as_tensor
from ..errors import ValidationError
from ..progress import track


@dataclass
class LeaveOneOutResult:
    """Predicted vs actual change of mean test loss for each removed training point."""

    ids: np.ndarray
    predicted: np.ndarray
    actual: np.ndarray
    pearson: float
    spearman: float
    n_train: int
    tol: float
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("ids", "predicted", "actual"):
            d[k] = d[k].tolist()
        return d


def load_arrays(data: Any, rows: np.ndarray | None = None, chunk_size: int = 1 << 20, *,
                parameter: str = "data") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X float64 (n, D), y (n,), ids (n,)) of ``data`` — or only its sorted ``rows`` — in memory, for the
    validation-sized retraining experiments; errors name ``parameter``."""
    from ..engine.passes import load_rows

    src = V.open_data(data, parameter)
    if len(src) == 0:
        raise V.fail(f"{parameter} ({src.name}) is empty", parameter)
    try:
        return load_rows(src, rows, chunk_size=chunk_size)
    except ValidationError as e:  # bad data found while reading (labels, NaN features)
        raise V.data_error(e, parameter) from None


def mean_loss(head: Head, X: torch.Tensor, y: torch.Tensor, theta: torch.Tensor) -> float:
    """Mean per-example loss (no regulariser) at θ."""
    return float(head.losses(X, y, theta).mean())


def choose_rows(points: int | np.ndarray, n: int, seed: int, minimum: int = 2) -> np.ndarray:
    """Row positions to remove: ``points`` sampled without replacement with ``seed`` when it is a count
    (at least ``minimum`` for a correlation, at most n), else the given positions (checked against n)."""
    seed = V.check_seed(seed)
    if isinstance(points, (int, np.integer)) and not isinstance(points, (bool, np.bool_)):
        V.check_integer(points, "points", minimum=minimum)  # a correlation needs at least ``minimum``
        points = V.check_size(points, n, "points")
        return np.sort(np.random.default_rng(seed).choice(n, size=int(points), replace=False))
    return V.check_rows(points, n, "points", sort=False)


def leave_one_out(head: Head, train: Any, test: Any, *, points: int | np.ndarray = 50, seed: int = 0,
                  tol: float = 1e-11, damping: float = 0.0, progress: bool = False, refit: bool = False,
                  allow_nonstationary: bool = False) -> LeaveOneOutResult:
    """Retrain without each of ``points`` training points (a count sampled with ``seed``, or row positions)
    and correlate the actual change of mean test loss with the predicted ``loss_change_if_removed``.

    The predictions are those of the head given — the numbers ``InfluenceAnalyzer(head)`` scores — so a head
    off the optimum is refused as there unless ``allow_nonstationary`` (its own predictions are then judged)
    or ``refit`` (the predictions are then the polished head's). The actual changes are retraining from the
    head's weights: the full-data optimum (Newton to ``tol``) against the optimum without the point, both
    solved to the same tolerance. Keeps the data in memory: meant for validation-sized sets.
    """
    V.check_head_data(head, train=train, test=test)
    damping = V.check_damping(damping)
    X, y, ids = load_arrays(train, parameter="train")
    Xte, yte, _ = load_arrays(test, parameter="test")
    n = X.shape[0]
    rows = choose_rows(points, n, seed, minimum=2)
    analyzer = InfluenceAnalyzer(head, damping=damping, refit=refit,
                                 allow_nonstationary=allow_nonstationary).fit((X, y, ids))
    scores = analyzer.score((Xte, yte), self_influence=False)
    predicted = scores.column("loss_change_if_removed").to_numpy()[rows]
    base = full_data_optimum(head, X, y, tol)

    dev = base.device
    Xte_t, yte_t = as_tensor(Xte, dev), torch.as_tensor(yte, device=dev)
    base_loss = mean_loss(base, Xte_t, yte_t, base.theta_)
    actual = np.empty(len(rows))
    w = np.ones(n)
    for j, p in enumerate(track((int(r) for r in rows), len(rows), "leave-one-out", "retrains",
                                 enabled=progress)):
        w[p] = 0.0
        m = copy.deepcopy(base)
        m.fit(X, y, sample_weight=w, normalizer=n, init=base.theta_)
        actual[j] = mean_loss(m, Xte_t, yte_t, m.theta_) - base_loss
        w[p] = 1.0
    pearson = float(np.corrcoef(predicted, actual)[0, 1])
    spearman = float(stats.spearmanr(predicted, actual).statistic)
    return LeaveOneOutResult(ids=ids[rows], predicted=predicted, actual=actual, pearson=pearson,
                             spearman=spearman, n_train=n, tol=tol,
                             extra={"refit_grad_norm": base.grad_norm_,
                                    "stationarity": analyzer.stationarity_.as_dict()})


def full_data_optimum(head: Head, X: np.ndarray, y: np.ndarray, tol: float) -> Head:
    """A copy of ``head`` re-fitted on (X, y) from its own weights to ‖∇R‖_∞ ≤ tol: the reference every
    retraining is compared with (both sides of each actual change are optima of the same solver)."""
    base = copy.deepcopy(head)
    base.tol = tol
    base.max_iter = max(base.max_iter, 200)
    base.fit(X, y, init=head.theta_)
    return base


def retrain_without(head: Head, X: np.ndarray, y: np.ndarray, rows: np.ndarray, *,
                    renormalize: bool = False) -> Head:
    """A copy of fitted ``head`` retrained without the training ``rows`` (positions), warm-started from its
    weights, to its own tolerance.

    Default: the ε = −1/n objective (1/n) Σ_{i∉rows} ℓ_i + (λ/2)‖W‖² (as ``leave_one_out``); with
    ``renormalize`` the usual fit on the kept rows, (1/(n − m)) Σ_{i∉rows} ℓ_i + (λ/2)‖W‖².
    """
    n = len(y)
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise ValidationError(f"rows must be positions in 0..{n - 1}")
    w = np.ones(n)
    w[rows] = 0.0
    if w.sum() == 0:
        raise ValidationError("cannot retrain without every training row")
    m = copy.deepcopy(head)
    m.fit(X, y, sample_weight=w, normalizer=None if renormalize else n, init=head.theta_)
    return m
