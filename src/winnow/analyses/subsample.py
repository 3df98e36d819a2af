"""Influence-guided subsampling with class-ratio tuning, proven by retraining (paper sections 6 and 8).

Given a training set of n points, a fitted head and a validation set, keep exactly m = round(keep · n)
points, split over the classes by a fixed (proportional) or tuned ratio, and draw them within each class
with inclusion probabilities π_i from one of four policies:

- ``paper`` (sections 6, 8): the points to memorize are kept (π = 1); the rest of the class budget is filled
  by uniform sampling of the other points. The paper keeps every D-memorizable point (memorization score
  ‖Λ⁻¹Qᵀg_p‖₁ > D, eq. 67); by default (``split_memorize``) winnow keeps only those that do not harm VALID
  (influence φ_p ≤ 0) and samples the harmful ones with the rest, because a flipped label makes a point
  isolated, hence memorizable, and the plain rule then keeps the mislabelled points with certainty (the
  paper, section 7, notes that memorizing a point can raise the loss elsewhere; see ``memorize_set``).
- ``influence`` (Wang et al., AAAI 2020, "Less is better"): π_i = σ((τ − φ_i) / T), decreasing in
  φ_i = −ḡ_validᵀH⁻¹g_i (winnow's ``influence`` on the validation loss, > 0 harmful); T = range(φ) / k with
  the sharpness k chosen on VALID from a grid (k = 0 is uniform), τ solved per class so that Σπ = the class
  budget.
- ``wang``: the same sigmoid with a fixed sharpness α on the spread of φ, T = sd(φ) / α (default α = 0.5),
  no choice made on VALID: a plain Wang-style sampler to compare with.
- ``random``: uniform within each class (π = m_c / n_c): the baseline at the same budget and class ratio.

Sampling is randomised systematic sampling (Madow 1949) within each class: the class's points in random
order, cumulative π laid on [0, m_c), one uniform start u and the points u, u + 1, …, u + m_c − 1. It draws
exactly m_c points without replacement and every point is included with probability exactly π_i.

Weights: unweighted subsets carry weight 1 and are fitted on their mean loss. ``weighted`` subsets carry
w_i = 1/π_i (Horvitz–Thompson) and are fitted with the *full* n as normaliser,
R̂(θ) = (1/n) Σ_{i∈S} w_i ℓ_i(θ) + (λ/2)‖W‖², so E[R̂(θ)] = R(θ) for every θ: the weighted subset
objective (and its gradient at the full-data optimum, whose expectation is 0) is an unbiased estimate of the
full-data one. Dividing by Σw instead (Hájek) is only consistent, not unbiased, when Σw is random
(``influence``); for ``random`` and ``paper`` Σw = n exactly and both agree.

Class ratio: by default the class budgets are proportional to the class sizes (largest remainder). With
``tune_ratio`` ("auc" or "logloss") candidate budgets are tried by retraining the head on subsets drawn with
them and scoring VALID; the best is kept. Policy parameters (k, the memorization quantile) are chosen the
same way, first, at the proportional ratio. All choices use VALID only. A subset chosen to lower the loss of
given validation points looks better on those points than it is, so for the policies that use the influence
on VALID the choices are cross-fitted (``crossfit``, the default): VALID is split into two stratified halves
A and B; every candidate is scored with the influence on A and judged on B, then with the influence on B and
judged on A, and the two figures are averaged; for ``influence`` (logloss) the smallest k within one
standard error of the best is kept (``_gentlest_within_one_se``). The ``influence`` subset is then drawn
with the mean of the two halves' inclusion probabilities at the chosen k (the policies that were judged;
the same k on the influence on all of VALID would be a different policy, because range(φ) is set by a few
extreme points whose influences on the two halves can cancel); ``wang`` and ``paper`` use the influence on all of VALID
(the row-weighted mean of the two, exactly), whose scale sd(φ) and sign do not have that fragility.
With ``crossfit=False`` VALID is split once (``score_fraction``): the influence on one part, the choices
judged on the other.

Layout: the sampling designs (systematic sampling, class allocation, the budget) are in
``winnow.analyses.sampling``; retraining and its metrics in ``winnow.evaluation.subset``; SUBSET files in
``winnow.io.subsets``; the report section in ``winnow.report.subsample``. This module keeps the policies,
the scores and the ``Subsampler``, and re-exports the rest so that ``winnow.analyses.subsample`` exposes
every name it did.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from scipy.optimize import brentq
from scipy.special import expit

from .. import validation as V
from ..core.heads import Head
from ..errors import ConvergenceError, ValidationError
from ..evaluation.subset import classification_metrics, fit_subset
from ..io.outputs import check_output_path, table_writer, write_json
from ..io.sources import DataSource
from ..io.subsets import SUBSET_METADATA, subset_source
from ..progress import track
from .sampling import allocate, budget_size, systematic_sample

POLICIES = ("paper", "influence", "wang", "random")
TUNE_METRICS = ("auc", "logloss")
CURVE_FRACTIONS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7)
#: sharpness k of the sigmoid (Wang et al.'s ``sigmoid_k``; T = range(φ)/k) tried on VALID; 0 = uniform. The
#: grid runs to 5000 because range(φ) grows with the tails of the features: on heavy-tailed tabular data it is
#: 80 standard deviations of φ or more, and k = 100 would then still be a gentle slope over the bulk
DEFAULT_SHARPNESS = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0)
#: the ``wang`` policy's fixed sharpness α: T = sd(φ)/α over the training set
DEFAULT_ALPHA = 0.5
#: sizes of the memorize set tried on VALID, as shares of the budget m: D is the quantile
#: Q = 1 − share · keep of the scores, so that the top share · m points memorize
DEFAULT_MEMORIZE_SHARES = (0.1, 0.25, 0.5, 0.75)


# ============================================================================================== policies
def ratio_candidates(m: int, sizes: np.ndarray, grid: Sequence[float] | None = None) -> list[np.ndarray]:
    """Candidate class budgets for ratio tuning (each (K,) int64 summing to m), the proportional one first.

    Binary: the positive share of the budget on ``grid`` (default: the natural odds times 2^(j/2),
    j = −4..6, plus the feasible extremes). K > 2: the proportional shares with one class's share scaled
    by 0.5, 1.5 or 2 (one class at a time). Duplicates (same integer budgets) are dropped.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    K = len(sizes)
    n = int(sizes.sum())
    natural = sizes / n
    out = [allocate(m, sizes, natural)]
    if K == 2:
        if grid is None:
            s0 = float(np.clip(natural[1], 1e-6, 1 - 1e-6))
            odds = s0 / (1 - s0) * 2.0 ** (np.arange(-4, 7) / 2.0)
            lo, hi = max(0, m - int(sizes[0])) / m, min(m, int(sizes[1])) / m
            shares = sorted(set(np.round(odds / (1 + odds), 6).tolist()) | {lo, hi})
        else:
            shares = [float(s) for s in grid]
            if any(not (0.0 <= s <= 1.0) for s in shares):
                raise V.fail(f"ratio_grid holds positive shares of the budget, each in [0, 1]; got {grid}",
                             "ratio_grid")
        for s in shares:
            out.append(allocate(m, sizes, np.array([1.0 - s, s])))
    else:
        if grid is not None:
            raise ValidationError("ratio_grid applies to binary labels only; with K > 2 classes the shares are "
                                  "searched one class at a time")
        for k in range(K):
            for f in (0.5, 1.5, 2.0):
                sh = natural.copy()
                sh[k] *= f
                out.append(allocate(m, sizes, sh / sh.sum()))
    uniq: list[np.ndarray] = []
    for b in out:
        if not any(np.array_equal(b, u) for u in uniq):
            uniq.append(b)
    return uniq


def sigmoid_inclusion(phi: np.ndarray, m: int, sharpness: float, spread: float | None = None) -> np.ndarray:
    """π_i = σ((τ − φ_i) / T) with T = spread / k and τ such that Σπ = m (Wang et al.'s sigmoid sampling,
    shifted to a fixed size). ``spread`` defaults to max φ − min φ (Wang et al.'s scaling; the ``wang``
    policy passes sd(φ)). Decreasing in φ; k = 0 (or a zero spread) gives π = m/n. (n,) -> (n,).
    """
    phi = np.asarray(phi, dtype=np.float64)
    n = phi.shape[0]
    if not 0 <= m <= n:
        raise ValidationError(f"budget {m} must be in [0, {n}]")
    V.check_number(sharpness, "sharpness", minimum=0.0)
    if m == 0:
        return np.zeros(n)
    if m == n:
        return np.ones(n)
    if spread is None:
        spread = float(phi.max() - phi.min()) if n else 0.0
    if sharpness == 0 or spread <= 0:
        return np.full(n, m / n)
    T = spread / sharpness

    def excess(tau: float) -> float:
        return float(expit((tau - phi) / T).sum()) - m

    lo, hi = float(phi.min()) - 60 * T, float(phi.max()) + 60 * T
    tau = brentq(excess, lo, hi, xtol=1e-13 * max(T, 1e-300), rtol=4 * np.finfo(float).eps, maxiter=500)
    pi = expit((tau - phi) / T)
    pi *= m / pi.sum()  # remove the root finder's last rounding so that Σπ = m to machine precision
    return np.minimum(pi, 1.0)


def paper_inclusion(scores: np.ndarray, memorize: np.ndarray, m: int) -> tuple[np.ndarray, bool]:
    """Keep every memorizable point (π = 1), fill the rest of the budget uniformly (paper section 8).

    Returns (π (n,), short): ``short`` when the budget m is smaller than the memorize set; then the m
    highest ``scores`` of the memorize set are kept deterministically (π = 1) and the others have π = 0.
    """
    scores = np.asarray(scores, dtype=np.float64)
    memorize = np.asarray(memorize, dtype=bool)
    n = scores.shape[0]
    M = int(memorize.sum())
    pi = np.zeros(n)
    if M > m:
        top = np.argsort(-np.where(memorize, scores, -np.inf), kind="stable")[:m]
        pi[top] = 1.0
        return pi, True
    pi[memorize] = 1.0
    if n > M:
        pi[~memorize] = (m - M) / (n - M)
    return pi, False


def memorize_set(memorization: np.ndarray, threshold: float, influence: np.ndarray | None = None) -> np.ndarray:
    """The points the ``paper`` policy keeps by its memorize rule (bool (n,)).

    Without ``influence``: the D-memorizable points, memorization score > D (paper, eq. 67). With
    ``influence`` (on VALID, > 0 harmful): only those whose influence is not harmful, φ_i ≤ 0. The paper
    keeps every D-memorizable point (section 8), yet notes (section 7) that memorizing a point may raise the
    loss at test points; a mislabelled point is far from its class and therefore memorizable, so with noisy
    labels the plain rule keeps the flipped points with certainty. Split by the sign of the influence, the
    rule keeps the memorizable points that help VALID; the harmful ones join the D-generalizable points and
    are sampled uniformly with them (π > 0 for every point, so 1/π weights stay unbiased).
    """
    mem = np.asarray(memorization, dtype=np.float64) > threshold
    if influence is not None:
        mem &= ~(np.asarray(influence, dtype=np.float64) > 0)
    return mem


def policy_inclusion(policy: str, labels: np.ndarray, class_budget: np.ndarray, *,
                     influence: np.ndarray | None = None, sharpness: float = 0.0,
                     memorization: np.ndarray | None = None, threshold: float | None = None,
                     alpha: float = DEFAULT_ALPHA, split_memorize: bool = False) -> tuple[np.ndarray, list[str]]:
    """π (n,) for ``policy`` with class budgets ``class_budget`` (K,), computed class by class.

    ``influence`` (n,) (on VALID, > 0 harmful) for ``influence`` (sigmoid with T = range(φ_c)/``sharpness``
    within class c) and ``wang`` (T = sd(φ)/``alpha``, sd over all n points); ``memorization`` (n,) and
    ``threshold`` D for ``paper``, whose memorize rule also needs ``influence`` with ``split_memorize``
    (see ``memorize_set``). Returns (π, notes) where notes report classes whose budget is below their
    memorize set.
    """
    labels = np.asarray(labels)
    n = labels.shape[0]
    pi = np.zeros(n)
    notes: list[str] = []
    spread = None
    if policy in ("influence", "wang") or (policy == "paper" and split_memorize):
        if influence is None:
            raise V.fail(f"policy {policy!r} needs the influence scores on a validation set (give valid)", "policy",
                         "valid")
        influence = np.asarray(influence, dtype=np.float64)
    if policy == "wang":
        V.check_number(alpha, "alpha", minimum=0.0, min_open=True)
        spread = float(influence.std())
    mem_all = None
    if policy == "paper":
        if memorization is None or threshold is None:
            raise V.fail("policy 'paper' needs memorization scores and a threshold D", "policy")
        mem_all = memorize_set(memorization, threshold, influence if split_memorize else None)
    for c, m_c in enumerate(np.asarray(class_budget, dtype=np.int64)):
        idx = np.flatnonzero(labels == c)
        if idx.shape[0] == 0:
            continue
        if policy == "random":
            pi[idx] = m_c / idx.shape[0]
        elif policy == "influence":
            pi[idx] = sigmoid_inclusion(influence[idx], int(m_c), sharpness)
        elif policy == "wang":
            pi[idx] = sigmoid_inclusion(influence[idx], int(m_c), alpha, spread=spread)
        elif policy == "paper":
            mem = mem_all[idx]
            p, short = paper_inclusion(memorization[idx], mem, int(m_c))
            pi[idx] = p
            if short:
                notes.append(f"class {c}: budget {int(m_c)} is smaller than its {int(mem.sum())} points to "
                             f"memorize (D = {threshold:.4g}); kept the {int(m_c)} highest memorization scores "
                             "among them (π = 1, the other points are never kept, so weights cannot make this "
                             "class's subset unbiased)")
        else:
            V.check_choice(policy, "policy", POLICIES)
    return pi, notes


def _row_losses(head: Head, data: Any, chunk_size: int) -> np.ndarray:
    """The loss of ``head`` at every row of ``data`` (n,)."""
    from ..engine.passes import map_columns

    return map_columns(head, data, _loss_column, chunk_size=chunk_size, description="losses")["loss"]


def _loss_column(head: Head, X: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    import torch

    from ..core.heads import as_tensor

    return {"loss": head.losses(as_tensor(X, head.device), torch.as_tensor(y, device=head.device)).cpu().numpy()}


def _mean(values: Any) -> float:
    """The mean, NaN when any value is NaN (a failed retrain)."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()) if np.all(np.isfinite(arr)) else float("nan")


def _better(metric: str, a: float, b: float) -> bool:
    """Is score a better than b for ``metric`` (NaN is never better)?"""
    if not math.isfinite(a):
        return False
    if not math.isfinite(b):
        return True
    return a > b if metric == "auc" else a < b


# ================================================================================================ scores
@dataclass
class SubsampleScores:
    """Per-training-point scores used by the policies, aligned with the training rows (n,); ``head`` the head
    they were computed from (the given one, or its polished copy with ``refit``) and ``stationarity`` its
    ‖∇R(θ̂)‖∞ figure (``Stationarity``), when any score was computed. With cross-fitting folds,
    ``influence_folds`` holds the influence on each fold ((n,), (n,)), ``fold_sizes`` their row counts, and
    ``influence`` the influence on the two folds together (their row-weighted mean)."""

    influence: np.ndarray | None = None
    influence_folds: tuple[np.ndarray, np.ndarray] | None = None
    fold_sizes: tuple[int, int] | None = None
    memorization: np.ndarray | None = None
    head: Head | None = None
    stationarity: Any = None


def compute_scores(head: Head, train: Any, valid: Any = None, *, influence: bool = True,
                   memorization: bool = True, damping: float = 0.0, chunk_size: int = 65536,
                   progress: bool = False, refit: bool = False, allow_nonstationary: bool = False,
                   folds: tuple[Any, Any] | None = None) -> SubsampleScores:
    """One Hessian pass over ``train``, then the influence on ``valid`` (−ḡ_validᵀH⁻¹g_p, > 0 harmful)
    and/or the memorization score ‖Λ⁻¹Qᵀg_p‖₁ of every training point. The Hessian pass refuses a head off
    the optimum of its training objective unless ``allow_nonstationary``; ``refit`` first polishes a copy
    (Newton, same λ) and scores with it (``SubsampleScores.head``). ``folds`` (two validation sets, e.g.
    from ``split_validation``; instead of ``valid``): the influence on each, for cross-fitting."""
    from ..engine.passes import checked_curvature
    from .influence import InfluenceAnalyzer

    src = V.open_data(train, "train")
    out = SubsampleScores()
    if not (influence or memorization):
        return out
    head, curv = checked_curvature(head, src, refit=refit, allow_nonstationary=allow_nonstationary,
                                   damping=damping, chunk_size=chunk_size, progress=progress)
    out.head, out.stationarity = head, curv.stationarity
    if influence:
        if valid is None and folds is None:
            raise V.fail("influence scores need a validation set (valid)", "valid")
        an = InfluenceAnalyzer(head, damping=damping, chunk_size=chunk_size, progress=progress,
                               allow_nonstationary=allow_nonstationary).fit(src, curvature=curv)
        if folds is None:
            out.influence = an.score(valid, self_influence=False).column("influence").to_numpy()
        else:
            a, b = (an.score(f, self_influence=False).column("influence").to_numpy() for f in folds)
            na, nb = (len(V.open_data(f, "valid")) for f in folds)
            out.influence_folds, out.fold_sizes = (a, b), (na, nb)
            out.influence = (na * a + nb * b) / (na + nb)  # the influence on the union: ḡ is a mean
    if memorization:
        from .memorization import memorization_scores

        out.memorization = np.asarray(memorization_scores(head, curv, src, chunk_size=chunk_size,
                                                          progress=progress), dtype=np.float64)
    return out


def split_validation(valid: Any, score_fraction: float, seed: int = 0) -> tuple[DataSource, DataSource]:
    """Split VALID, stratified by class, into (the part that scores influence, the part that judges choices).

    round(score_fraction · n_c) rows of every class c go to the first part (a permutation drawn with
    ``seed``); both parts must be nonempty.
    """
    src = V.open_data(valid, "valid")
    labels = src.labels()
    rng = np.random.default_rng([seed, 31337])
    first = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        first.append(idx[: int(round(score_fraction * idx.shape[0]))])
    a = np.sort(np.concatenate(first))
    b = np.setdiff1d(np.arange(len(src)), a)
    if a.shape[0] == 0 or b.shape[0] == 0:
        raise V.fail(f"valid has {len(src)} rows: too few to split into a part that scores influence "
                     f"({score_fraction:g}) and a part that judges the choices; use score_fraction 0 or a larger "
                     "validation set", "valid", "score_fraction")
    return subset_source(src, a, labels), subset_source(src, b, labels)


# ============================================================================================== sampler
class Subsampler:
    """Choose a subset of exactly round(keep · n) training points (see the module docstring).

    Settings: ``keep`` in (0, 1]; ``policy`` paper | influence | wang | random; ``weighted`` (1/π weights,
    fitted with normaliser n); ``memorize_threshold`` D or ``memorize_quantile`` Q (paper; neither: Q chosen
    on VALID among the quantiles that make the memorize set DEFAULT_MEMORIZE_SHARES of the budget);
    ``split_memorize`` (paper, default True): the memorize rule keeps only the memorizable points that do not
    harm VALID (``memorize_set``; False: every D-memorizable point, the paper's rule); ``sharpness`` k
    (influence; None: chosen on VALID from ``sharpness_grid``, default DEFAULT_SHARPNESS); ``alpha`` (wang:
    the fixed sharpness α, T = sd(φ)/α, default DEFAULT_ALPHA); ``crossfit`` (default True, for the
    policies that use the influence on VALID): VALID is split in two stratified halves A and B; every
    candidate is judged twice, with the influence on A judged on B and the influence on B judged on A, and
    the two figures averaged; the final subset uses the influence on all of VALID;
    ``tune_ratio`` "auc" | "logloss" | None; ``ratio_grid`` positive shares tried
    (binary); ``tune_draws`` subsets drawn per candidate (common random numbers across candidates);
    ``seed`` for every draw; ``score_fraction`` (with ``crossfit=False``): the share of VALID (stratified,
    drawn with ``seed``, see ``split_validation``) on which the influence is computed, the rest being where
    the choices are made, so that they are not judged on the points that scored the training set (0 or
    None: all of VALID for both, as in Wang et al.); ``damping``, ``chunk_size``, ``progress`` as elsewhere;
    ``refit`` / ``allow_nonstationary``: the influence and memorization policies score with a head at an
    optimum of its training objective: one off it is refused unless ``allow_nonstationary``, and ``refit``
    first polishes a copy (Newton, same λ) that scores the points and is the template of every retrain.

    Fitted state: ``n_``, ``budget_``, ``class_sizes_`` (K,), ``class_budget_`` (K,), ``sharpness_``,
    ``threshold_``, ``memorize_quantile_``, ``inclusion_`` π (n,), ``rows_`` kept positions (m,) sorted,
    ``weights_`` (m,), ``normalizer_``, ``ids_`` (n,), ``labels_`` (n,), ``scores_``, ``candidates_``,
    ``warnings_``, ``valid_`` (where choices are made), ``score_valid_`` (where influence is computed),
    ``folds_`` (the two halves of VALID when cross-fitting, else None).
    """

    def __init__(self, keep: float, *, head: Head | None = None, policy: str = "influence", weighted: bool = False,
                 memorize_threshold: float | None = None, memorize_quantile: float | None = None,
                 sharpness: float | None = None, tune_ratio: str | None = None,
                 ratio_grid: Sequence[float] | None = None, tune_draws: int = 3, seed: int = 0,
                 score_fraction: float | None = 0.5, damping: float = 0.0, chunk_size: int = 65536,
                 progress: bool = False, refit: bool = False, allow_nonstationary: bool = False,
                 sharpness_grid: Sequence[float] | None = None, alpha: float | None = None,
                 crossfit: bool = True, split_memorize: bool = True) -> None:
        budget_size(keep, 1 << 30)  # validates the fraction
        V.check_choice(policy, "policy", POLICIES)
        if tune_ratio is not None:
            V.check_choice(tune_ratio, "tune_ratio", TUNE_METRICS)
        V.check_exclusive(memorize_threshold=memorize_threshold, memorize_quantile=memorize_quantile)
        if policy != "paper" and (memorize_threshold is not None or memorize_quantile is not None):
            name = "memorize_threshold" if memorize_threshold is not None else "memorize_quantile"
            raise V.fail(f"{name} applies to policy 'paper' only; got policy {policy!r}", name, "policy")
        if memorize_threshold is not None:
            V.check_number(memorize_threshold, "memorize_threshold", minimum=0.0)  # scores are L1 norms
        if memorize_quantile is not None:
            V.check_probability(memorize_quantile, "memorize_quantile")
        if sharpness is not None and policy != "influence":
            raise V.fail(f"sharpness applies to policy 'influence' only; got policy {policy!r}", "sharpness",
                         "policy")
        if sharpness is not None:
            V.check_number(sharpness, "sharpness", minimum=0.0)
        if sharpness_grid is not None:
            if policy != "influence":
                raise V.fail(f"sharpness_grid applies to policy 'influence' only; got policy {policy!r}",
                             "sharpness_grid", "policy")
            if sharpness is not None:
                raise V.fail("give sharpness (a fixed k) or sharpness_grid (the k tried on VALID), not both",
                             "sharpness", "sharpness_grid")
            try:
                sharpness_grid = tuple(float(k) for k in sharpness_grid)
            except (TypeError, ValueError):
                raise V.fail(f"sharpness_grid must be a list of numbers k >= 0, got {sharpness_grid!r}",
                             "sharpness_grid") from None
            if not sharpness_grid or not all(math.isfinite(k) and k >= 0 for k in sharpness_grid):
                raise V.fail(f"sharpness_grid must be one or more finite values k >= 0 (0 is uniform), got "
                             f"{list(sharpness_grid)}", "sharpness_grid")
        if alpha is not None:
            if policy != "wang":
                raise V.fail(f"alpha applies to policy 'wang' only; got policy {policy!r}", "alpha", "policy")
            V.check_number(alpha, "alpha", minimum=0.0, min_open=True)
        if score_fraction is not None:
            V.check_fraction(score_fraction, "score_fraction", low_open=False, high_open=True)
        V.check_integer(tune_draws, "tune_draws", minimum=1)
        V.check_integer(seed, "seed")
        damping, chunk_size = V.check_damping(damping), V.check_chunk_size(chunk_size)
        self.head = head
        self.keep = float(keep)
        self.policy = policy
        self.weighted = bool(weighted)
        self.memorize_threshold = memorize_threshold
        self.memorize_quantile = memorize_quantile
        self.sharpness = sharpness
        self.sharpness_grid = sharpness_grid
        self.alpha = alpha
        self.crossfit = bool(crossfit)
        self.split_memorize = bool(split_memorize)
        self.tune_ratio = tune_ratio
        self.ratio_grid = ratio_grid
        self.tune_draws = int(tune_draws)
        self.seed = int(seed)
        self.score_fraction = score_fraction
        self.damping = float(damping)
        self.chunk_size = int(chunk_size)
        self.progress = progress
        self.refit = bool(refit)
        self.allow_nonstationary = bool(allow_nonstationary)

    # ------------------------------------------------------------------------------------------- fit
    def fit(self, train: Any, *args: Any, scores: SubsampleScores | None = None) -> Subsampler:
        """``fit(train, valid)`` with the constructor's ``head`` (or ``fit(train, head, valid)``): score
        ``train`` with the head (fitted on it), make the choices on ``valid`` and draw the subset.

        ``scores`` reuses scores computed earlier (e.g. for several keep fractions).
        """
        if args and isinstance(args[0], Head):
            head, valid = V.head_from(self, args[0]), (args[1] if len(args) > 1 else None)
        else:
            head, valid = V.head_from(self), (args[0] if args else None)
        (src,) = V.check_head_data(head, train=train)
        self.train_ = src
        n = len(src)
        self.n_ = n
        self.labels_ = src.labels()
        self.ids_ = src.ids()
        self.budget_ = budget_size(self.keep, n)
        K = 2 if head.n_outputs == 1 else head.n_outputs
        self.class_sizes_ = np.bincount(self.labels_, minlength=K).astype(np.int64)
        self.head_ = head
        self.warnings_: list[str] = []
        metric = self.tune_ratio or "logloss"
        self.metric_ = metric

        need_infl = self.policy in ("influence", "wang") or (self.policy == "paper" and self.split_memorize)
        need_mem = self.policy == "paper"
        tune_policy = ((self.policy == "influence" and self.sharpness is None)
                       or (self.policy == "paper" and self.memorize_threshold is None
                           and self.memorize_quantile is None))
        if valid is None and (need_infl or tune_policy or self.tune_ratio):
            what = (f"the {self.policy} policy scores points by their influence on it" if need_infl and
                    self.policy != "paper" else "the memorize rule keeps the memorizable points that do not harm "
                    "it (split_memorize=False: the paper's rule, every memorizable point)" if need_infl else
                    "the ratio is tuned on it" if self.tune_ratio else
                    "D (memorize_threshold or memorize_quantile) is not given and is chosen on it")
            raise V.fail(f"a validation set (valid) is required: {what}", "valid", "memorize_threshold",
                         "memorize_quantile", "split_memorize=False")
        score_valid = None
        self.folds_: tuple[DataSource, DataSource] | None = None
        if valid is not None:
            (valid,) = V.check_head_data(head, valid=valid)
            score_valid = valid
            if need_infl and self.crossfit:
                self.folds_ = split_validation(valid, 0.5, self.seed)
                score_valid = None
            elif need_infl and self.score_fraction:
                score_valid, valid = split_validation(valid, self.score_fraction, self.seed)
            if self.tune_ratio == "auc" or (tune_policy and metric == "auc"):
                classification_metrics(head, valid, chunk_size=self.chunk_size, require_auc=True)
        self.valid_ = valid
        self.score_valid_ = score_valid

        if scores is None:
            scores = compute_scores(head, src, score_valid, influence=need_infl, memorization=need_mem,
                                    damping=self.damping, chunk_size=self.chunk_size, progress=self.progress,
                                    refit=self.refit, allow_nonstationary=self.allow_nonstationary,
                                    folds=self.folds_)
        elif self.folds_ is not None:
            sizes = tuple(len(f) for f in self.folds_)
            if scores.influence_folds is None or scores.fold_sizes != sizes:
                raise V.fail(f"scores must hold the influence on the two cross-fitting halves of valid (rows {sizes}):"
                             " compute them with compute_scores(..., folds=split_validation(valid, 0.5, seed)), or "
                             "use crossfit=False", "scores", "crossfit")
        if scores.head is not None:
            self.head_ = scores.head  # the polished copy with refit: the one the scores (and retrains) use
        for name, needed in (("influence", need_infl), ("memorization", need_mem)):
            arr = getattr(scores, name)
            if needed and (arr is None or np.asarray(arr).shape != (n,)):
                raise ValidationError(f"scores.{name} must be an array of shape ({n},) for policy {self.policy!r}")
        self.scores_ = scores

        proportional = allocate(self.budget_, self.class_sizes_, self.class_sizes_ / n)
        self.candidates_: dict[str, list[dict[str, Any]]] = {"policy": [], "ratio": []}
        # 1) the policy's own parameter, at the proportional ratio
        params = self._policy_params()
        self.threshold_ = None
        self.memorize_quantile_ = self.memorize_quantile
        self.sharpness_ = self.sharpness
        self.alpha_ = self.alpha
        self.sharpness_rule_: str | None = None
        best = params[0]
        if len(params) > 1:
            best_score = float("nan")
            row_losses = []
            for p in track(params, len(params), "tuning " + self.policy, "candidates", enabled=self.progress):
                res = self._evaluate(proportional, p)
                row_losses.append(res.pop("_row_losses"))
                self.candidates_["policy"].append(res)
                if _better(metric, res[f"valid_{metric}"], best_score):
                    best, best_score = p, res[f"valid_{metric}"]
            if self.policy == "influence" and metric == "logloss" and math.isfinite(best_score):
                best = self._gentlest_within_one_se(params, row_losses, params.index(best))
        self._set_param(best)
        # 2) the class ratio
        self.class_budget_ = proportional
        if self.tune_ratio:
            cands = ratio_candidates(self.budget_, self.class_sizes_, self.ratio_grid)
            if self.policy == "paper":
                # a ratio that leaves a class less room than its memorize set turns "keep every memorizable
                # point" into "keep the top scores" (and breaks the weights): never make that worse than the
                # proportional ratio does
                mem = np.bincount(self.labels_[self._memorize()], minlength=len(self.class_sizes_))

                def shortfall(b: np.ndarray) -> int:
                    return int(np.maximum(mem - b, 0).sum())

                allowed = shortfall(proportional)
                for b in cands:
                    if shortfall(b) > allowed:
                        self.candidates_["ratio"].append({
                            "class_budget": b.tolist(), "skipped": f"leaves {shortfall(b)} D-memorizable points "
                            f"out of their class budgets (proportional ratio: {allowed})"})
                cands = [b for b in cands if shortfall(b) <= allowed]
            best_b, best_score = proportional, float("nan")
            for b in track(cands, len(cands), "tuning the class ratio", "candidates", enabled=self.progress):
                res = self._evaluate(b, best)
                res.pop("_row_losses")
                self.candidates_["ratio"].append(res)
                if _better(metric, res[f"valid_{metric}"], best_score):
                    best_b, best_score = b, res[f"valid_{metric}"]
            self.class_budget_ = best_b
        if self.folds_ is not None and self.policy == "influence":
            # the mean of the two policies that were judged (each sums to the class budgets, so does their
            # mean): the same k on the influence on all of VALID would be another policy, since range(φ) is
            # set by a few extreme points whose influence on the two halves can cancel out (then the range
            # shrinks and the same k is far sharper than the one judged)
            pis = [self._inclusion(self.class_budget_, best, f)[0] for f in self.scores_.influence_folds]
            self.inclusion_, notes = 0.5 * (pis[0] + pis[1]), []
        else:
            self.inclusion_, notes = self._inclusion(self.class_budget_, best)
        for note in notes:
            warnings.warn(note, UserWarning, stacklevel=2)
            self.warnings_.append(note)
        self.rows_, self.weights_ = self.resample(self.seed)
        self.normalizer_ = float(n) if self.weighted else float(self.rows_.shape[0])
        return self

    def _gentlest_within_one_se(self, params: list[Any], row_losses: list[np.ndarray], best: int) -> Any:
        """The smallest sharpness k whose VALID log-loss exceeds the best one's by at most one standard error
        of the difference, paired over the VALID rows (per-row losses (n_valid,), each the mean over the
        tuning draws). k = 0 is a random subset: a sharper policy must beat it by more than VALID's noise."""
        ref = row_losses[best]
        chosen = params[best]
        for i in sorted(range(len(params)), key=lambda j: float(params[j])):
            d = row_losses[i] - ref
            if not np.all(np.isfinite(d)):
                continue
            se = float(d.std(ddof=1) / math.sqrt(d.shape[0])) if d.shape[0] > 1 else 0.0
            cand = self.candidates_["policy"][i]
            cand["valid_logloss_excess"], cand["valid_logloss_excess_se"] = float(d.mean()), se
            if float(params[i]) <= float(chosen) and float(d.mean()) <= se:
                chosen = params[i]
        self.sharpness_rule_ = ("the smallest k whose cross-fitted VALID log-loss is within one standard error "
                                "(paired over VALID rows) of the best candidate's")
        return chosen

    def _policy_params(self) -> list[Any]:
        """Candidate values of the policy's parameter: k (influence), D or Q (paper), None (random)."""
        if self.policy == "influence":
            if self.sharpness is not None:
                return [self.sharpness]
            return list(self.sharpness_grid if self.sharpness_grid is not None else DEFAULT_SHARPNESS)
        if self.policy == "wang":
            return [self.alpha if self.alpha is not None else DEFAULT_ALPHA]
        if self.policy == "paper":
            if self.memorize_threshold is not None:
                return [("threshold", float(self.memorize_threshold))]
            if self.memorize_quantile is not None:
                return [("quantile", float(self.memorize_quantile))]
            return [("quantile", round(1.0 - r * self.keep, 12)) for r in DEFAULT_MEMORIZE_SHARES]
        return [None]

    def _threshold(self, param: Any) -> float | None:
        if self.policy != "paper":
            return None
        kind, value = param
        if kind == "threshold":
            return value
        return float(np.quantile(self.scores_.memorization, value))

    def _set_param(self, param: Any) -> None:
        if self.policy == "influence":
            self.sharpness_ = float(param)
        elif self.policy == "wang":
            self.alpha_ = float(param)
        elif self.policy == "paper":
            self.threshold_ = self._threshold(param)
            self.memorize_quantile_ = param[1] if param[0] == "quantile" else None

    def _inclusion(self, class_budget: np.ndarray, param: Any,
                   influence: np.ndarray | None = None) -> tuple[np.ndarray, list[str]]:
        """π for these choices, from ``influence`` (default: the influence on all of VALID)."""
        return policy_inclusion(self.policy, self.labels_, class_budget,
                                influence=self.scores_.influence if influence is None else influence,
                                sharpness=float(param) if self.policy == "influence" else 0.0,
                                alpha=float(param) if self.policy == "wang" else DEFAULT_ALPHA,
                                memorization=self.scores_.memorization, threshold=self._threshold(param),
                                split_memorize=self.split_memorize)

    def _memorize(self) -> np.ndarray:
        """The memorize set (bool (n,)) of the chosen D, with the influence on all of VALID."""
        return memorize_set(self.scores_.memorization, self.threshold_,
                            self.scores_.influence if self.split_memorize else None)

    def _draw(self, pi: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Systematic sampling within each class; returns (sorted rows (m,), weights (m,))."""
        rows = []
        for c in range(len(self.class_sizes_)):
            idx = np.flatnonzero(self.labels_ == c)
            if idx.shape[0]:
                rows.append(idx[systematic_sample(pi[idx], rng)])
        r = np.sort(np.concatenate(rows))
        w = 1.0 / pi[r] if self.weighted else np.ones(r.shape[0])
        return r, w

    def _evaluate(self, class_budget: np.ndarray, param: Any) -> dict[str, Any]:
        """Mean VALID metrics of heads retrained on ``tune_draws`` subsets drawn with these choices; when
        cross-fitting, the mean of the two folds' figures (influence on one half judged on the other), each
        fold's figures under ``folds``."""
        res: dict[str, Any] = {"class_budget": class_budget.tolist()}
        if len(class_budget) == 2:
            res["positive_share"] = float(class_budget[1] / class_budget.sum())
        if self.policy == "influence":
            res["sharpness"] = float(param)
        elif self.policy == "wang":
            res["alpha"] = float(param)
        elif self.policy == "paper":
            res["memorize_threshold"] = self._threshold(param)
            if param[0] == "quantile":
                res["memorize_quantile"] = param[1]
            res["memorize_by_class"] = [int(((self.labels_ == c) & (self.scores_.memorization
                                                                     > res["memorize_threshold"])).sum())
                                        for c in range(len(class_budget))]
        if self.folds_ is None:
            pi, notes = self._inclusion(class_budget, param)
            vals = self._judge(pi, self.valid_, [self.seed, 7919])
            res["_row_losses"] = vals.pop("_row_losses")
        else:
            assert self.scores_.influence_folds is not None
            folds, notes, per, rows = [], [], [], []
            for j in (0, 1):
                pi, nt = self._inclusion(class_budget, param, self.scores_.influence_folds[j])
                notes += [f"fold {j + 1}: {t}" for t in nt]
                v = self._judge(pi, self.folds_[1 - j], [self.seed, 7919, j])
                rows.append(v.pop("_row_losses"))
                per.append(v)
                folds.append({"scored_on": f"half {j + 1} of valid", "judged_on": f"half {2 - j} of valid",
                              **{f"valid_{k}": _mean(a) for k, a in v.items()}})
            vals = {k: [_mean(p[k]) for p in per] for k in per[0] if k != "error"}
            errs = [e for p in per for e in p.get("error", [])]
            if errs:
                vals["error"] = errs
            res["folds"] = folds
            res["_row_losses"] = np.concatenate(rows)
        if notes:
            res["notes"] = notes
        errors = vals.pop("error", None)
        if errors:
            res["error"] = errors[0]
        for k, v in vals.items():
            arr = np.asarray(v)
            res[f"valid_{k}"] = _mean(arr)
            res[f"valid_{k}_std"] = float(arr.std()) if np.all(np.isfinite(arr)) else float("nan")
        return res

    def _judge(self, pi: np.ndarray, valid: Any, key: list[int]) -> dict[str, Any]:
        """VALID metrics of heads retrained on ``tune_draws`` subsets drawn from π (common random numbers:
        draw d uses the seed ``key + [d]`` whatever the candidate)."""
        vals: dict[str, Any] = {"logloss": [], "auc": [], "accuracy": []}
        errors: list[str] = []
        rows_sum = None
        for d in range(self.tune_draws):
            rows, w = self._draw(pi, np.random.default_rng([*key, d]))
            try:
                h = fit_subset(self.head_, self.train_, rows, w if self.weighted else None,
                               float(self.n_) if self.weighted else None, labels=self.labels_)
            except ConvergenceError as e:
                errors.append(str(e))
                for k in ("logloss", "auc", "accuracy"):
                    vals[k].append(float("nan"))
                continue
            met = classification_metrics(h, valid, chunk_size=self.chunk_size)
            for k in ("logloss", "auc", "accuracy"):
                vals[k].append(met[k])
            rl = _row_losses(h, valid, self.chunk_size)
            rows_sum = rl if rows_sum is None else rows_sum + rl
        if errors:
            vals["error"] = errors
        n_valid = len(V.open_data(valid, "valid"))
        vals["_row_losses"] = (rows_sum / self.tune_draws if rows_sum is not None and not errors
                               else np.full(n_valid, np.nan))
        return vals

    # ----------------------------------------------------------------------------------- after fit
    def _check(self) -> None:
        V.check_fitted(self, "inclusion_", call="fit(train, head, valid)")

    def resample(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Another subset with the fitted choices (π unchanged): (sorted rows (m,), weights (m,))."""
        self._check()
        return self._draw(self.inclusion_, np.random.default_rng(seed))

    def fit_head(self, rows: np.ndarray | None = None, weights: np.ndarray | None = None) -> Head:
        """Retrain the head on the subset (or on given ``rows``/``weights``), weighted if ``weighted``."""
        self._check()
        rows = self.rows_ if rows is None else rows
        weights = self.weights_ if weights is None else weights
        return fit_subset(self.head_, self.train_, rows, weights if self.weighted else None,
                          float(self.n_) if self.weighted else None, labels=self.labels_)

    def table(self) -> pa.Table:
        """One row per kept point: id, label, weight, inclusion_probability and the scores used."""
        self._check()
        r = self.rows_
        cols: dict[str, Any] = {
            "id": pa.array(self.ids_[r], pa.string() if self.ids_.dtype.kind in "OU" else pa.int64()),
            "label": pa.array(self.labels_[r], pa.int64()),
            "weight": pa.array(self.weights_, pa.float64()),
            "inclusion_probability": pa.array(self.inclusion_[r], pa.float64())}
        if self.scores_.influence is not None:
            cols["influence"] = pa.array(self.scores_.influence[r], pa.float64())
        if self.scores_.memorization is not None:
            cols["memorization"] = pa.array(self.scores_.memorization[r], pa.float64())
            if self.threshold_ is not None:
                cols["memorize"] = pa.array(self._memorize()[r], pa.bool_())
        return pa.table(cols)

    def summary(self) -> dict[str, Any]:
        """Policy, budget, ratio chosen, parameters chosen and each candidate's validation metrics."""
        self._check()
        K = len(self.class_sizes_)
        kept = np.bincount(self.labels_[self.rows_], minlength=K)
        out: dict[str, Any] = {
            "policy": self.policy, "weighted": self.weighted, "keep": self.keep, "n_train": self.n_,
            "budget": self.budget_, "seed": self.seed, "score_fraction": self.score_fraction,
            "sampling": "randomised systematic sampling within each class (fixed size, exact inclusion "
                        "probabilities)",
            "weights": "1/pi, fitted with normaliser n_train" if self.weighted else "1, fitted on the subset mean",
            "normalizer": self.normalizer_,
            "head": {"kind": self.head_.kind, "l2": self.head_.l2, "n_outputs": self.head_.n_outputs},
            "class_sizes": self.class_sizes_.tolist(), "class_budget": self.class_budget_.tolist(),
            "kept_by_class": kept.tolist(),
            "class_keep_rate": (self.class_budget_ / np.maximum(self.class_sizes_, 1)).tolist(),
            "ratio": f"tuned for {self.tune_ratio} on VALID" if self.tune_ratio else "fixed (proportional)",
            "tune_ratio": self.tune_ratio, "selection_metric": self.metric_, "tune_draws": self.tune_draws,
            "crossfit": self.crossfit, "crossfitted": self.folds_ is not None, "split_memorize": self.split_memorize,
            "valid_rows_scoring": (len(self.valid_) if self.folds_ is not None else
                                   len(self.score_valid_) if self.score_valid_ is not None else 0),
            "valid_rows_choosing": len(self.valid_) if self.valid_ is not None else 0,
            "candidates": self.candidates_, "warnings": list(self.warnings_),
            "stationarity": (self.scores_.stationarity.as_dict() if self.scores_.stationarity is not None
                             else None),
        }
        if K == 2:
            out["positive_share"] = float(self.class_budget_[1] / self.budget_)
            out["positive_share_full"] = float(self.class_sizes_[1] / self.n_)
        if self.folds_ is not None:
            out["valid_folds"] = [len(f) for f in self.folds_]
            out["tuning"] = ("cross-fitted: each candidate scored with the influence on one half of VALID and "
                             "judged on the other, both ways, the two figures averaged; the subset drawn with " + (
                                 "the mean of the two halves' inclusion probabilities at the choices made"
                                 if self.policy == "influence" else "the influence on all of VALID"))
        if self.policy == "influence":
            out["sharpness"] = self.sharpness_
            out["sharpness_grid"] = [float(k) for k in self._policy_params()]
            if getattr(self, "sharpness_rule_", None):
                out["sharpness_rule"] = self.sharpness_rule_
        if self.policy == "wang":
            out["alpha"] = self.alpha_
            out["sigmoid_scale"] = "T = sd(influence) / alpha"
        if self.policy == "paper":
            mem = self._memorize()
            if self.split_memorize:
                harmful = (self.scores_.memorization > self.threshold_) & ~mem
                out["memorize_harmful_by_class"] = [int((harmful & (self.labels_ == c)).sum()) for c in range(K)]
            out["memorize_threshold"] = self.threshold_
            out["memorize_quantile"] = self.memorize_quantile_
            out["memorize_by_class"] = [int((mem & (self.labels_ == c)).sum()) for c in range(K)]
            kept_mem = mem[self.rows_]
            lab = self.labels_[self.rows_]
            out["memorize_kept_by_class"] = [int((kept_mem & (lab == c)).sum()) for c in range(K)]
            out["generalize_kept_by_class"] = [int((~kept_mem & (lab == c)).sum()) for c in range(K)]
        if self.weighted:
            out["sum_of_weights"] = float(self.weights_.sum())
        return out

    def write(self, out: str | Path, *, json_out: str | Path | None = None, overwrite: bool = False) -> Path:
        """Write the SUBSET table (``.parquet``; or ``.csv``, its metadata then in ``<out>.json``) with the summary
        in its metadata, and optionally the JSON summary, atomically."""
        self._check()
        check_output_path(out, overwrite, argument="out", formats="table")
        if json_out is not None:
            check_output_path(json_out, overwrite, argument="json_out")
        table = self.table()
        summary = self.summary()
        meta = {**SUBSET_METADATA, "winnow.subsample": json.dumps(_jsonable_summary(summary))}
        with table_writer(out, table.schema, overwrite=overwrite, argument="out", metadata=meta) as w:
            w.write_table(table)
        if json_out is not None:
            write_json(json_out, summary, overwrite=overwrite, argument="json_out")
        return Path(out)


def _jsonable_summary(summary: dict[str, Any]) -> Any:
    """``summary`` with numpy scalars/arrays as plain Python values."""
    return json.loads(json.dumps(summary, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


# re-exported: ``winnow.analyses.subsample`` exposes every name it did before the split
from ..evaluation.subset import (  # noqa: E402
    SubsetEvaluation,
    _agg,
    _blank_head,
    _stratified_random,
    evaluate_subset,
)
from ..io.subsets import MATERIALIZE_LIMIT, LoadedSubset, SubsetSource, load_subset, load_subset_weights  # noqa: E402
from ..report.subsample import curve_figure, report_section  # noqa: E402

__all__ = [
    "POLICIES", "TUNE_METRICS", "CURVE_FRACTIONS", "budget_size", "allocate", "ratio_candidates",
    "sigmoid_inclusion", "paper_inclusion", "systematic_sample", "policy_inclusion", "classification_metrics",
    "SubsetSource", "subset_source", "fit_subset", "SubsampleScores", "compute_scores", "split_validation",
    "Subsampler",
    "LoadedSubset", "load_subset", "load_subset_weights", "SubsetEvaluation", "evaluate_subset",
    "curve_figure", "report_section",
]
_REEXPORTED = (MATERIALIZE_LIMIT, SubsetSource, LoadedSubset, load_subset, load_subset_weights, SubsetEvaluation,
               _agg, _blank_head, _stratified_random, evaluate_subset, curve_figure, report_section)
