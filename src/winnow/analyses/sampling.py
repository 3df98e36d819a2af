"""Sampling designs shared by relative Hessians and subsampling: which rows to read, with which weights.

Everything here is pure numpy, seeded by the ``numpy.random.Generator`` it is given:

* ``systematic_sample`` — randomised systematic πps sampling (Madow 1949): exactly Σπ distinct rows, row i
  included with probability π_i exactly; the one implementation, used by the leverage sampler of relative
  Hessians and by every subsampling policy.
* ``inclusion_probabilities`` — π_i = min(1, c·q_i) with Σπ = m for a probability vector q.
* ``allocate`` / ``stratified_allocation`` — integer class budgets (largest remainder).
* ``budget_size`` — m = round(keep · n).
* the relative-Hessian row samplers ``sample_uniform``, ``sample_stratified`` and ``sample_leverage``
  (paper eq. 52 and its unbiased stratified / importance-sampled variants; see ``winnow.analyses.relative``)
  returning a ``RowSample``: rows, weights w_j and the normaliser N of (1/N) Σ_j w_j ∇²ℓ_j.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import validation as V
from ..errors import ValidationError, WinnowError

__all__ = [
    "SAMPLERS", "LEVERAGE_MIX", "RowSample", "sample_uniform", "stratified_allocation", "sample_stratified",
    "leverage_probabilities", "inclusion_probabilities", "systematic_sample", "sample_leverage", "allocate",
    "budget_size",
]

SAMPLERS = ("uniform", "stratified", "leverage")
LEVERAGE_MIX = 0.1  # share of the uniform distribution mixed into the leverage probabilities


# ------------------------------------------------------------------------------------------ designs
def systematic_sample(pi: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Randomised systematic sampling: sorted positions of exactly Σπ points with P(i ∈ S) = π_i.

    ``pi`` (n,) in [0, 1] with an integer sum. Points with π = 1 are always kept; the others are put in a
    random order, their π laid end to end on [0, k) and the points u + j (u ~ U[0, 1), j = 0..k−1) select
    the intervals they fall in: an interval of length π_i ≤ 1 holds one of them with probability π_i.
    """
    pi = np.asarray(pi, dtype=np.float64)
    if pi.ndim != 1 or not np.all(np.isfinite(pi)) or np.any(pi < -1e-12) or np.any(pi > 1 + 1e-9):
        raise ValidationError("inclusion probabilities must be a 1-D array of numbers in [0, 1]")
    total = float(pi.sum())
    k = int(round(total))
    if abs(total - k) > 1e-6 * max(1.0, total):
        raise ValidationError(f"inclusion probabilities must sum to an integer sample size, got {total:.9g}")
    certain = np.flatnonzero(pi >= 1 - 1e-12)
    rest = np.flatnonzero((pi < 1 - 1e-12) & (pi > 0))
    k_rest = k - certain.shape[0]
    if k_rest < 0:
        raise ValidationError(f"{certain.shape[0]} points have π = 1 but the sample size is {k}")
    if k_rest == 0 or rest.shape[0] == 0:
        return np.sort(certain)
    p = pi[rest] * (k_rest / pi[rest].sum())
    perm = rng.permutation(rest.shape[0])
    c = np.cumsum(np.minimum(p[perm], 1.0))
    c[-1] = k_rest
    points = rng.random() + np.arange(k_rest)
    j = np.minimum(np.searchsorted(c, points, side="right"), rest.shape[0] - 1)
    chosen = rest[perm[j]]
    out = np.sort(np.concatenate([certain, chosen]))
    if np.unique(out).shape[0] != k:  # cannot happen with interval lengths ≤ 1
        raise WinnowError("systematic sampling drew a point twice (inclusion probabilities above 1?)")
    return out


def budget_size(keep: float, n: int) -> int:
    """m = round(keep · n) for keep in (0, 1]; raises when keep is outside (0, 1] or m would be 0."""
    f = V.check_fraction(keep, "keep")
    m = int(round(f * n))
    if m < 1:
        raise V.fail(f"keep = {f:g} of n = {n} rows keeps no point (round({f:g}·{n}) = 0); use a larger fraction",
                     "keep")
    return m


def allocate(m: int, sizes: np.ndarray, shares: np.ndarray, *, minimum_one: bool = True) -> np.ndarray:
    """Integer class budgets m_c with Σ m_c = m, 0 ≤ m_c ≤ n_c, close to m · share_c.

    Water-filling (shares rescaled so that the capped budgets sum to m) and largest-remainder rounding (ties
    to the first class). With ``minimum_one`` every nonempty class gets at least one point when m ≥ the number
    of nonempty classes, so that a retrained head sees every class. When no cap or minimum binds the
    budgets are the largest-remainder rounding of exactly m · share_c / Σ share. ``sizes`` (K,) class sizes,
    ``shares`` (K,) ≥ 0. Returns (K,) int64.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    shares = np.asarray(shares, dtype=np.float64)
    if sizes.shape != shares.shape or sizes.ndim != 1:
        raise ValidationError(f"sizes and shares must be 1-D of equal length, got {sizes.shape} and {shares.shape}")
    if not np.all(np.isfinite(shares)) or np.any(shares < 0) or shares[sizes > 0].sum() <= 0:
        raise ValidationError(f"class shares must be finite, >= 0 and not all 0 on nonempty classes; got {shares}")
    total = int(sizes.sum())
    if not 0 <= m <= total:
        raise ValidationError(f"budget m = {m} must be in [0, {total}] (the number of rows)")
    present = sizes > 0
    lo = np.where(present & (m >= present.sum()) & minimum_one, 1.0, 0.0)
    sh = np.where(present, shares, 0.0)
    exact = m * sh / sh.sum()
    if np.all(exact >= lo) and np.all(exact <= sizes):  # nothing binds: the proportional budgets exactly
        return _largest_remainder(exact, m, sizes)

    def filled(s: float) -> np.ndarray:
        return np.minimum(sizes, np.maximum(lo, s * sh))

    a, b = 0.0, 1.0
    while filled(b).sum() < m and b < 1e300:
        b *= 2.0
    for _ in range(200):  # bisection on the monotone, piecewise-linear Σ filled(s)
        mid = 0.5 * (a + b)
        if filled(mid).sum() < m:
            a = mid
        else:
            b = mid
    return _largest_remainder(filled(b), m, sizes)


def _largest_remainder(x: np.ndarray, m: int, sizes: np.ndarray) -> np.ndarray:
    """Integers close to ``x`` (Σx ≈ m, 0 ≤ x ≤ sizes) summing to m: floors, then one more for the largest
    fractional parts (stable: ties go to the first class), never above ``sizes``."""
    base = np.minimum(np.floor(x + 1e-9), sizes).astype(np.int64)
    if base.sum() > m:  # float slack in the bisection: take back from the largest overshoots
        for c in np.argsort(-(base - x), kind="stable")[: base.sum() - m]:
            base[c] -= 1
    rem = m - int(base.sum())
    order = np.argsort(-(x - base), kind="stable")
    for c in order:
        if rem == 0:
            break
        if base[c] < sizes[c]:
            base[c] += 1
            rem -= 1
    for c in range(len(sizes)):  # any remainder left (ties at full classes): first classes with room
        while rem > 0 and base[c] < sizes[c]:
            base[c] += 1
            rem -= 1
    return base



# ------------------------------------------------------------------------------------------ row samples
@dataclass
class RowSample:
    """A weighted sample of training rows.

    ``rows`` (k,) sorted unique int64 row positions; ``weights`` (k,) float64 aligned with ``rows``;
    ``normalizer`` N in (1/N) Σ w_j ∇²ℓ_j; ``size`` m (draws; ``len(rows)`` ≤ m with replacement).
    """

    rows: np.ndarray
    weights: np.ndarray
    normalizer: float
    size: int
    sampler: str

    @property
    def n_rows(self) -> int:
        """Distinct rows the curvature pass reads."""
        return int(self.rows.shape[0])


def _check_size(m: Any, n: int, parameter: str = "sample_size") -> int:
    return V.check_size(m, n, parameter, hint="use m <= n (m = n with the uniform sampler is the full Hessian)")


def sample_uniform(n: int, m: int, rng: np.random.Generator) -> RowSample:
    """Eq. 52: m distinct rows uniformly without replacement, w = 1, N = m."""
    m = _check_size(m, n)
    rows = np.sort(rng.choice(n, size=m, replace=False)).astype(np.int64)
    return RowSample(rows, np.ones(m), float(m), m, "uniform")


def stratified_allocation(counts: np.ndarray, m: int) -> np.ndarray:
    """Proportional allocation m_c of m rows over classes with ``counts`` n_c (largest remainder): the class
    budgets of ``allocate`` without its one-row minimum (a class may get no row; ``sample_stratified`` refuses
    that). alloc_c <= n_c: m·n_c/n < n_c when m < n, and = n_c exactly when m = n."""
    counts = np.asarray(counts, dtype=np.int64)
    return allocate(int(m), counts, counts.astype(np.float64), minimum_one=False)


def sample_stratified(labels: np.ndarray, m: int, rng: np.random.Generator) -> RowSample:
    """Stratified by label with proportional allocation; w_j = (m/n)(n_c/m_c), N = m (unbiased).

    Raises ValidationError naming ``sampler`` and ``sample_size`` when a class of the data gets no row.
    """
    labels = np.asarray(labels)
    n = int(labels.shape[0])
    m = _check_size(m, n)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    alloc = stratified_allocation(counts, m)
    if (alloc < 1).any():
        c = int(np.flatnonzero(alloc < 1)[0])
        need = int(np.ceil(n / counts.min()))
        raise V.fail(
            f"sampler 'stratified': class {classes[c]} has only {counts[c]} of {n} training rows, so a sample "
            f"of m = {m} rows allocates it no row (every class needs at least one; proportional allocation "
            f"needs m >= {need} here); raise sample_size or use the uniform or leverage sampler",
            "sampler", "sample_size")
    order = np.argsort(inverse, kind="stable")  # rows grouped by class, each group in row order
    bounds = np.concatenate([[0], np.cumsum(counts)])
    rows, weights = [], []
    for c in range(len(classes)):
        members = order[bounds[c]:bounds[c + 1]]
        pick = rng.choice(members.shape[0], size=int(alloc[c]), replace=False)
        rows.append(members[pick])
        weights.append(np.full(int(alloc[c]), (m / n) * (counts[c] / alloc[c])))
    r, w = np.concatenate(rows).astype(np.int64), np.concatenate(weights)
    o = np.argsort(r)
    return RowSample(r[o], w[o], float(m), m, "stratified")


def leverage_probabilities(scores: np.ndarray, mix: float = LEVERAGE_MIX) -> np.ndarray:
    """q_i = (1 − mix)·ℓev_i/Σℓev + mix/n, shape (n,); sums to 1 and q_i ≥ mix/n > 0."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0 or not np.all(np.isfinite(s)) or (s < 0).any():
        raise ValidationError("leverage scores must be a non-empty 1-D array of finite numbers >= 0")
    if not 0.0 < mix <= 1.0:
        raise ValidationError(f"mix must be in (0, 1], got {mix!r}")
    total = float(s.sum())
    n = s.shape[0]
    q = (1 - mix) * s / total + mix / n if total > 0 else np.full(n, 1.0 / n)
    return q / q.sum()


def inclusion_probabilities(q: np.ndarray, m: int) -> np.ndarray:
    """π_i = min(1, c·q_i) with c chosen so that Σ π_i = m (rows with c·q_i ≥ 1 are taken for certain)."""
    q = np.asarray(q, dtype=np.float64)
    n = q.shape[0]
    if m >= n:
        return np.ones(n)
    pi = np.empty(n)
    certain = np.zeros(n, dtype=bool)
    while True:
        c = (m - certain.sum()) / q[~certain].sum()
        new = ~certain & (c * q >= 1.0)
        if not new.any():
            break
        certain |= new
    pi[certain] = 1.0
    pi[~certain] = c * q[~certain]
    return pi


def sample_leverage(scores: np.ndarray, m: int, rng: np.random.Generator, *,
                    mix: float = LEVERAGE_MIX) -> RowSample:
    """Importance sampling without replacement, m distinct rows, inclusion probabilities π_i ∝ q_i
    (``leverage_probabilities``; π_i = min(1, c·q_i), Σπ = m) by randomised systematic sampling.

    Horvitz–Thompson weights w_i = m/(n π_i) with N = m, i.e. (1/N) Σ_S w_i ∇²ℓ_i = (1/n) Σ_S ∇²ℓ_i/π_i,
    which is unbiased for (1/n) Σ_i ∇²ℓ_i because P(i ∈ S) = π_i. Without capping π_i = m q_i and
    w_i = 1/(n q_i). At m = n every π_i = 1: the full Hessian.
    """
    q = leverage_probabilities(scores, mix)
    n = q.shape[0]
    m = _check_size(m, n)
    pi = inclusion_probabilities(q, m)
    rows = systematic_sample(pi, rng)
    return RowSample(rows, m / (n * pi[rows]), float(m), m, "leverage")


