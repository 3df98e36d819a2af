"""Relative Hessians: H⁽ᵐ⁾ from a seeded sample of the training set, and the ridge leverage that guides one sampler.

Paper section 5. The relative Hessian of a sample (eq. 52, with our regulariser and optional damping):

    H⁽ᵐ⁾ = (1/N) Σ_{j ∈ sample} w_j ∇²ℓ(z_j, θ̂) + λ·diag(weight mask) + damping·I

is an unbiased estimate of H = (1/n) Σ_i ∇²ℓ_i + λ·mask + damping·I: E[(1/N) Σ_j w_j ∇²ℓ_j] = (1/n) Σ_i ∇²ℓ_i.
The relative influence (eq. 54) is I⁽ᵐ⁾(z_t, z_p) = −g_tᵀ H⁽ᵐ⁾⁻¹ g_p (same sign convention as ``influence``:
> 0 harmful); the LEP property (Theorem 2, eq. 56) is that the ratio r_p = I / I⁽ᵐ⁾ (eq. 55) is the same
constant ρ for every training point z_p, so the ranking of training points is preserved.

Samplers (all seeded with a numpy Generator, all unbiased in the sense above):

* ``uniform`` — eq. 52: m distinct rows drawn without replacement, w_j = 1, N = m.
* ``stratified`` — by label, proportional allocation m_c ≈ m·n_c/n (largest remainder), rows drawn
  without replacement within each class, w_j = (m/n)·(n_c/m_c), N = m (so w_j ≈ 1). Every class present
  in the training data must get at least one row, otherwise a ValidationError.
* ``leverage`` — importance sampling of m distinct rows *without replacement*, with inclusion probabilities
  π_i = min(1, c·q_i) (Σπ = m) for q_i = 0.9·ℓev_i/Σℓev + 0.1/n, where
  ℓev_i = tr(H_pilot⁻¹ ∇²ℓ_i) is the ridge leverage of row i under a pilot Hessian H_pilot (a uniform
  sample of ``pilot_size`` rows, same λ and damping). For the logistic head ℓev_i = s_i(1−s_i)·ũ_iᵀH_pilot⁻¹ũ_i;
  for softmax the trace is the natural analogue (Σ_k p_k ũᵀ(H⁻¹)_kk ũ − (p⊗ũ)ᵀH⁻¹(p⊗ũ), the sum over the
  K "directions" of the row's curvature). Rows are drawn by randomised systematic πps sampling (exactly m
  distinct rows, P(i ∈ S) = π_i) and weighted w_i = m/(n π_i) with N = m (= 1/(n q_i) where π_i = m q_i),
  so E[(1/n) Σ_S ∇²ℓ_i/π_i] = (1/n) Σ_i ∇²ℓ_i exactly (Horvitz–Thompson). Without replacement keeps the
  finite-population gain that uniform sampling has (m = n gives the full Hessian); with-replacement draws
  lose it, which matters when m/n is not small. Computing ℓev for every row is **one full pass over the
  training data** (plus the pilot's rows); that cost is reported with the sample and is not hidden in the speed-up.

This module holds the relative Hessian (``RelativeHessian``, ``relative_curvature``, ``make_curvature``) and
the leverage pass. The samplers and systematic πps sampling live in ``winnow.analyses.sampling``, the LEP
statistics, check and sample-size search in ``winnow.analyses.lep``, the report section in
``winnow.report.relative``; their names are re-exported here, so ``from winnow.analyses.relative import ...``
keeps working.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import validation as V
from .._moved import moved_names
from ..core.curvature import Curvature
from ..core.heads import Head, as_tensor
from ..engine.passes import fit_curvature, map_columns, stationarity
from ..errors import ValidationError
from ..io.sources import DataSource, open_source
from .sampling import (
    LEVERAGE_MIX,
    SAMPLERS,
    RowSample,
    _check_size,
    inclusion_probabilities,
    leverage_probabilities,
    sample_leverage,
    sample_stratified,
    sample_uniform,
    stratified_allocation,
    systematic_sample,
)

# ------------------------------------------------------------------------------------------ leverage
_BLOCK_BYTES = 4 << 20  # float64 working block per chunk: upcast a cache-sized block of rows at a time


def _row_blocks(c: int, width: int) -> range:
    step = max(256, _BLOCK_BYTES // (8 * max(int(width), 1)))
    return range(0, max(int(c), 0), step)


def leverage_chunk(head: Head, X: np.ndarray, hessian_inverse: torch.Tensor) -> np.ndarray:
    """Ridge leverage ℓev_i = tr(H⁻¹∇²ℓ_i) for one chunk (pure), shape (c,), ≥ 0 (``Head.leverage``).

    Logistic: s(1−s)·ũᵀH⁻¹ũ. Softmax: Σ_k p_k ũᵀ(H⁻¹)_kk ũ − (p⊗ũ)ᵀH⁻¹(p⊗ũ) (the trace analogue; the
    softmax null-direction fix in ``Curvature.inverse`` cancels between the two terms).
    """
    if not head.closed_form:
        raise V.fail(f"sampler 'leverage' supports LogisticHead and SoftmaxHead, got {type(head).__name__}; "
                     "use the uniform or stratified sampler", "sampler")
    Hi = hessian_inverse
    c = int(X.shape[0])
    out = np.empty(c)
    step = _row_blocks(c, Hi.shape[0]).step
    for s in range(0, c, step):
        out[s:s + step] = head.leverage(as_tensor(X[s:s + step], head.device), Hi).cpu().numpy()
    return out


def _leverage_column(head: Head, X: np.ndarray, y: np.ndarray, hessian_inverse: torch.Tensor) -> np.ndarray:
    return leverage_chunk(head, X, hessian_inverse)


@dataclass
class LeverageScores:
    """ℓev_i for every training row under a pilot Hessian, with what it cost.

    ``scores`` (n,); ``pilot_rows`` the pilot's row positions; ``rows_read`` = pilot rows + n (the
    leverage pass reads every row); ``seconds`` = pilot Hessian + leverage pass.
    """

    scores: np.ndarray
    pilot_rows: np.ndarray
    rows_read: int
    seconds_pilot: float
    seconds_pass: float

    @property
    def seconds(self) -> float:
        return self.seconds_pilot + self.seconds_pass

    def expected_gain(self, mix: float = LEVERAGE_MIX) -> float:
        """Predicted variance reduction over uniform sampling, E_u[ℓev²] / Σ_i q_i (ℓev_i/(n q_i))².

        ℓev_i is the trace of row i's whitened curvature H^{-1/2}∇²ℓ_iH^{-1/2} (its Frobenius norm for the
        rank-one logistic curvature), so this ratio of second moments is roughly how many times fewer rows
        importance sampling needs for the same error of H^{-1/2}H⁽ᵐ⁾H^{-1/2} (≈ E[ℓev²]/E[ℓev]² without the
        mix).
        Near 1: leverage is homogeneous and leverage sampling cannot beat uniform by much.
        """
        s = self.scores
        n = s.shape[0]
        q = leverage_probabilities(s, mix)
        second_is = float(np.mean(s * s / (n * q)))
        return float(np.mean(s * s) / second_is) if second_is > 0 else float("nan")


def default_pilot_size(n_params: int, n: int) -> int:
    """min(n, max(5·P, 500)) rows for the pilot Hessian (leverage only sets sampling probabilities, so a
    rough H_pilot is enough; the estimate stays unbiased whatever the pilot)."""
    return int(min(n, max(5 * n_params, 500)))


def _rng(seed: int, stream: int = 0) -> np.random.Generator:
    """Stream 0 draws the sample (so ``relative_curvature(seed=S)`` reproduces subset a of the search),
    stream 1 subset b of the two-sample search, stream 2 the leverage pilot."""
    seed = V.check_seed(seed)
    return np.random.default_rng(int(seed) if stream == 0 else [int(seed), int(stream)])


def leverage_scores(head: Head, train: Any, *, pilot_size: int | None = None, seed: int = 0,
                    damping: float = 0.0, chunk_size: int = 65536, progress: bool = False,
                    engine: Any = None) -> LeverageScores:
    """Ridge leverage of every training row under a uniform pilot Hessian (same λ and damping).

    Reads ``pilot_size`` rows for H_pilot (default ``default_pilot_size``), then makes **one pass over all
    n rows** to compute ℓev_i (``leverage_chunk``).
    """
    src = open_source(train)
    n = len(src)
    p = (default_pilot_size(head.n_params, n) if pilot_size is None
         else _check_size(pilot_size, n, "pilot_size"))
    t0 = time.perf_counter()
    pilot = sample_uniform(n, p, _rng(seed, 2))
    H_pilot = fit_curvature(head, src, damping=damping, rows=pilot.rows, normalizer=pilot.normalizer,
                            chunk_size=chunk_size, engine=engine)
    Hi = H_pilot.inverse()
    t1 = time.perf_counter()
    out = map_columns(head, src, _leverage_column, label="leverage", chunk_size=chunk_size, progress=progress,
                      engine=engine, description="leverage pass", hessian_inverse=Hi)["leverage"]
    t2 = time.perf_counter()
    return LeverageScores(out, pilot.rows, p + n, t1 - t0, t2 - t1)


# ------------------------------------------------------------------------------------------ relative H
class RelativeHessian:
    """The relative Hessian H⁽ᵐ⁾ of a seeded sample of m training rows (paper eq. 52), same λ as the head.

    Parameters: ``sample_size`` m; ``sampler`` 'uniform' | 'stratified' | 'leverage'; ``seed``; ``damping``
    added to the diagonal; ``pilot_size`` for the leverage pilot (default min(n, max(5P, 500)));
    ``chunk_size``; ``progress``.

    ``head`` the fitted head (or give it to ``fit``). ``fit(train)`` sets ``curvature_`` (a Curvature),
    ``sample_`` (RowSample), ``leverage_``
    (LeverageScores or None) and ``cost_``: rows read by the curvature pass (only the sampled rows),
    its seconds, and the rows/seconds spent choosing the sample (leverage: pilot + one full pass;
    stratified: the label column).
    """

    def __init__(self, sample_size: int, *, head: Head | None = None, sampler: str = "uniform", seed: int = 0,
                 damping: float = 0.0, pilot_size: int | None = None, chunk_size: int = 65536,
                 progress: bool = False) -> None:
        self.head = head
        self.sampler = V.check_choice(sampler, "sampler", SAMPLERS)
        self.damping = V.check_damping(damping)
        self.chunk_size = V.check_chunk_size(chunk_size)
        self.seed = V.check_seed(seed)
        self.sample_size = sample_size
        self.pilot_size = pilot_size
        self.progress = progress

    def draw(self, head: Head, source: DataSource, *, stream: int = 0,
             leverage: LeverageScores | None = None) -> tuple[RowSample, dict[str, float]]:
        """Draw the sample (no curvature pass): (RowSample, selection cost)."""
        n = len(source)
        m = _check_size(self.sample_size, n)
        if m < head.n_params:
            warnings.warn(
                f"sample_size m = {m} is below the number of head parameters P = "
                f"{head.n_params}: the sampled curvature has rank < P, so H⁽ᵐ⁾ is invertible only through "
                f"l2 = {head.l2:g} and damping = {self.damping:g} (singular if both are 0) and far from H",
                UserWarning, stacklevel=3)
        rng = _rng(self.seed, stream)
        cost = {"selection_rows_read": 0.0, "selection_seconds": 0.0}
        t0 = time.perf_counter()
        if self.sampler == "uniform":
            sample = sample_uniform(n, m, rng)
        elif self.sampler == "stratified":
            labels = source.labels()
            cost["selection_rows_read"] = float(n)  # the label column only
            sample = sample_stratified(labels, m, rng)
        else:
            if leverage is None:
                leverage = leverage_scores(head, source, pilot_size=self.pilot_size, seed=self.seed,
                                           damping=self.damping, chunk_size=self.chunk_size,
                                           progress=self.progress)
                cost["selection_rows_read"] = float(leverage.rows_read)
            else:
                cost["leverage_reused"] = 1.0  # its pilot + full pass were paid when it was computed
            if leverage.scores.shape[0] != n:
                raise ValidationError(f"leverage has {leverage.scores.shape[0]} scores for {n} training rows")
            self.leverage_ = leverage
            sample = sample_leverage(leverage.scores, m, rng)
        cost["selection_seconds"] = time.perf_counter() - t0
        return sample, cost

    def fit(self, *data: Any, leverage: LeverageScores | None = None, stream: int = 0) -> RelativeHessian:
        """``fit(train)`` with the constructor's ``head`` (or ``fit(head, train)``): draw the sample and build
        H⁽ᵐ⁾ reading only the sampled rows. ``leverage`` reuses precomputed scores (the leverage pass is then
        not repeated; its cost stays in ``leverage.seconds``)."""
        head, train = _head_and_train(self, data)
        (source,) = V.check_head_data(head, train=train, labels=False)  # the curvature pass checks its rows
        self.leverage_ = leverage
        sample, cost = self.draw(head, source, stream=stream, leverage=leverage)
        t0 = time.perf_counter()
        self.curvature_ = fit_curvature(head, source, damping=self.damping, rows=sample.rows,
                                        row_weights=sample.weights, normalizer=sample.normalizer,
                                        chunk_size=self.chunk_size, progress=self.progress)
        cost["curvature_rows_read"] = float(sample.n_rows)
        cost["curvature_seconds"] = time.perf_counter() - t0
        self.sample_ = sample
        self.cost_ = cost
        self.n_train_ = len(source)
        return self


def _head_and_train(estimator: Any, data: tuple[Any, ...]) -> tuple[Head, Any]:
    """(head, train) from ``fit(train)`` (head from the constructor) or the older ``fit(head, train)``."""
    if len(data) == 2:
        return V.head_from(estimator, data[0]), data[1]
    if len(data) == 1:
        return V.head_from(estimator), data[0]
    raise V.fail(f"{type(estimator).__name__}.fit takes the training data (train), got {len(data)} "
                 "positional arguments", "train")


def relative_curvature(head: Head, train: Any, sample_size: int, *, sampler: str = "uniform", seed: int = 0,
                       damping: float = 0.0, pilot_size: int | None = None, chunk_size: int = 65536,
                       progress: bool = False) -> Curvature:
    """H⁽ᵐ⁾ from a seeded sample of ``sample_size`` rows (eq. 52 for 'uniform'), same λ, plus ``damping``.

    Reads only the sampled rows, except ``sampler='leverage'``, which first reads a pilot sample and then
    makes one full pass over ``train`` to compute every row's leverage (see ``RelativeHessian.cost_`` for
    the numbers). Raises ValidationError for m > n; warns (UserWarning) for m < P.
    """
    (train,) = V.check_head_data(head, train=train)
    return RelativeHessian(sample_size, sampler=sampler, seed=seed, damping=damping, pilot_size=pilot_size,
                           chunk_size=chunk_size, progress=progress).fit(head, train).curvature_


def check_hessian_options(hessian: str, sample_size: int | None) -> str:
    """``hessian`` is 'full' (then no ``sample_size``) or 'relative' (then a ``sample_size``)."""
    hessian = V.check_choice(hessian, "hessian", ("full", "relative"))
    if hessian == "full" and sample_size is not None:
        raise V.fail("sample_size applies only to the relative Hessian; got hessian 'full'", "sample_size",
                     "hessian")
    if hessian == "relative" and sample_size is None:
        raise V.fail("hessian 'relative' needs a sample_size M (e.g. the recommended_sample_size that the LEP "
                     "search reports)", "hessian", "sample_size")
    return hessian


def make_curvature(head: Head, train: Any, *, hessian: str = "full", sample_size: int | None = None,
                   sampler: str = "uniform", seed: int = 0, damping: float = 0.0, pilot_size: int | None = None,
                   chunk_size: int = 65536, progress: bool = False, allow_nonstationary: bool = False) -> Curvature:
    """The full Hessian H (``hessian='full'``) or the relative H⁽ᵐ⁾ of ``sample_size`` sampled rows
    (``hessian='relative'``, with ``sampler``, ``seed``, ``pilot_size``), checked against ``train`` first.
    Either way the head's stationarity over all of ``train`` is measured (``curvature.stationarity``: in the
    full Hessian's pass, or one gradient pass for H⁽ᵐ⁾) and a head off the optimum is refused unless
    ``allow_nonstationary``."""
    hessian = check_hessian_options(hessian, sample_size)
    damping, chunk_size = V.check_damping(damping), V.check_chunk_size(chunk_size)
    (train,) = V.check_head_data(head, train=train)
    if hessian == "full":
        return fit_curvature(head, train, damping=damping, chunk_size=chunk_size, progress=progress,
                             allow_nonstationary=allow_nonstationary)
    assert sample_size is not None
    st = stationarity(head, train, chunk_size=chunk_size, progress=progress)
    st.check(allow_nonstationary)
    curv = RelativeHessian(sample_size, sampler=sampler, seed=seed, damping=damping, pilot_size=pilot_size,
                           chunk_size=chunk_size, progress=progress).fit(head, train).curvature_
    curv.stationarity = st
    return curv


# names that moved to winnow.analyses.lep and winnow.report.relative, importable from here (lazily: lep imports
# this module)
__getattr__ = moved_names(__name__, __package__, {
    **{name: ".lep" for name in ("METRICS", "LEPResult", "SearchResult", "SearchStep", "_compare",
                                 "_open_train_test", "_progress_printer", "influence_chunk", "influence_columns",
                                 "lep_check", "lep_statistics", "sample_sizes", "top_k", "two_sample_search")},
    "report_section": "..report.relative:lep_section",
})


__all__ = [
    "SAMPLERS", "LEVERAGE_MIX", "RowSample", "sample_uniform", "stratified_allocation", "sample_stratified",
    "leverage_probabilities", "inclusion_probabilities", "systematic_sample", "sample_leverage", "leverage_chunk",
    "LeverageScores", "default_pilot_size", "leverage_scores", "RelativeHessian", "relative_curvature",
    "check_hessian_options", "make_curvature",
]
_REEXPORTED = (Curvature, DataSource, RowSample, inclusion_probabilities, leverage_probabilities, sample_leverage,
               sample_stratified, stratified_allocation, systematic_sample)
