"""Checks of the paper's Theorem 3 (memorization thresholds) and Theorem 4 (the sign/label rule) on a head.

**Theorem 3** (section 6, eqs. 69–74). For a test point z_t let χ = Qᵀg_p and ψ = Qᵀg_t be the gradients
in H's orthonormal eigenbasis and λ_i = 1/Λ_i the eigenvalues of **H⁻¹** (so λ_min = 1/λ_max(H)). With

    T⁺(z_p, z_t) = Σ_i χ_iψ_i·1(χ_iψ_i ≥ 0),   T⁻(z_p, z_t) = −Σ_i χ_iψ_i·1(χ_iψ_i < 0)       (69)
    𝒯⁺ = inf_{z_p ∈ Z} T⁺(z_p, z_t),          𝒯⁻ = inf_{z_p ∈ Z} T⁻(z_p, z_t)                (70)
    D⁺ = 𝒯⁺ λ_min / max_i |ψ_i|,              D⁻ = 𝒯⁻ λ_min / max_i |ψ_i|

the theorem states: I_loss(z_t, z_p) > 0 ⇒ ‖H⁻¹g_p‖₁ > D⁺ and I_loss < 0 ⇒ ‖H⁻¹g_p‖₁ > D⁻ (the norm taken
in the eigenbasis: the memorization score). The proof (71–72) passes through the sharper per-point bounds
Σ_i λ_i|χ_i| > Σ_i λ_iχ_iψ_i 1(χ_iψ_i ≥ 0) / max|ψ| ≥ T⁺(z_p, z_t) λ_min / max|ψ| ≥ D⁺; we count all three.

**Theorem 4** (section 7, eq. 91), sigmoid head: sign(I_loss(z_t, z_p)) = +1 if y_t ≠ y_p, −1 if y_t = y_p,
with sign(x) = 1(x ≥ 0) − 1(x < 0). For this head g = (σ − y)ũ, so

    I_loss(z_t, z_p) = −(σ_t − y_t)(σ_p − y_p) · ũ_tᵀH⁻¹ũ_p,

the label factor (σ_t − y_t)(σ_p − y_p) is > 0 when the labels agree and < 0 when they differ, so eq. 91
holds exactly when the kernel ũ_tᵀH⁻¹ũ_p is > 0 (up to the tie I_loss = 0). The paper's sufficient
condition — nonnegative features (Lemma 2) and H⁻¹ with (almost) positive entries (Definition 9) — makes
the kernel positive. Eqs. 92–95 restate eq. 91 for the predicted removal change L(z_t, θ̂₋ₚ) − L(z_t, θ̂) ≈
−I_loss/n (eq. 28). Section 8's consequence (removing negatives helps the positives and hurts the
negatives) is measured by actually retraining (``removal_experiment``).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .._moved import moved_names
from ..core.curvature import Curvature
from ..core.heads import Head, LogisticHead, as_tensor, augment
from ..engine.columns import ColumnFunction, ScoreKernel
from ..engine.engine import Engine
from ..engine.passes import (
    FeatureSignKernel,
    checked_curvature,
    default_engine,
    fit_curvature,
    gradient_sum,
    load_rows,
    open_for_head,
)
from ..errors import ValidationError
from ..io.columns import format_id, plain_id
from ..io.sources import open_source
from ..progress import track
from ..validation import check_head_data
from .memorization import MemorizationResult, choose_threshold, eigenbasis, memorization_scores
from .memorization import sign_statistics as memorization_sign_statistics

DEFAULT_L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


# ===================================================================================== Theorem 3
def theorem3_chunk(head: Head, X: Any, y: Any, Q: Any, inv_eigvals: Any, psi: Any) -> dict[str, np.ndarray]:
    """Per training point of one chunk (pure), for k test points with eigenbasis gradients ``psi`` (k, P'):

    ``memorization`` (c,) = Σ|χ_i|λ_i; ``influence`` (c, k) = I_loss = −Σ λ_iχ_iψ_i (eq. 27 in the
    eigenbasis); ``t_plus``/``t_minus`` (c, k) = T⁺/T⁻ of eq. 69; ``weighted_plus``/``weighted_minus`` (c, k)
    = Σλ_iχ_iψ_i 1(χ_iψ_i ≥ 0) and −Σλ_iχ_iψ_i 1(χ_iψ_i < 0) (the sums of eq. 71).
    """
    Xt = as_tensor(X, head.device)
    yt = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y, device=head.device)
    Qt, lam, ps = as_tensor(Q, head.device), as_tensor(inv_eigvals, head.device), as_tensor(psi, head.device)
    chi = head.gradients(Xt, yt) @ Qt  # (c, P')
    prod = chi[:, None, :] * ps[None, :, :]  # (c, k, P') χ_iψ_i
    pos, neg = prod.clamp(min=0), prod.clamp(max=0)
    return {
        "memorization": (chi.abs() @ lam).cpu().numpy(),
        "influence": (-(prod @ lam)).cpu().numpy(),
        "t_plus": pos.sum(-1).cpu().numpy(),
        "t_minus": (-neg.sum(-1)).cpu().numpy(),
        "weighted_plus": (pos @ lam).cpu().numpy(),
        "weighted_minus": (-(neg @ lam)).cpu().numpy(),
    }


@dataclass
class Theorem3Result:
    """Theorem 3 for one test point: the thresholds and how many training points exceed them.

    ``lambda_min`` is the smallest eigenvalue of H⁻¹ (= 1/λ_max(H)), as in the theorem. ``*_exceeding``
    counts training points with the given sign of I_loss whose memorization score is > D (the theorem
    says: all of them). ``*_pointwise`` uses each point's own T±(z_p, z_t) instead of the infimum and
    ``*_weighted`` the eigenvalue-weighted sum of eq. 71 (both sharper, both implied by the proof).
    ``min_ratio_*`` = min score / D over the points of that sign (> 1 iff the statement holds; inf if D = 0).
    A part of the statement is *vacuous* when its threshold is 0 (every point with I_loss ≠ 0 has a nonzero
    gradient, hence a positive score: the bound says nothing) or no training point has that sign of I_loss;
    ``vacuous`` is true when both parts are, and then ``holds`` carries no information.
    """

    test_row: int
    test_id: int | str
    test_label: int
    lambda_min: float
    hessian_eig_max: float
    max_abs_psi: float
    T_plus: float
    T_minus: float
    D_plus: float
    D_minus: float
    n_positive: int
    n_positive_exceeding: int
    n_negative: int
    n_negative_exceeding: int
    n_zero: int
    n_positive_exceeding_pointwise: int
    n_negative_exceeding_pointwise: int
    n_positive_exceeding_weighted: int
    n_negative_exceeding_weighted: int
    min_ratio_positive: float | None
    min_ratio_negative: float | None

    @property
    def holds(self) -> bool:
        return (self.n_positive_exceeding == self.n_positive and self.n_negative_exceeding == self.n_negative)

    @property
    def vacuous_plus(self) -> bool:
        """The I_loss > 0 part says nothing: D⁺ = 0 or no training point has I_loss > 0."""
        return not self.D_plus > 0 or self.n_positive == 0

    @property
    def vacuous_minus(self) -> bool:
        """The I_loss < 0 part says nothing: D⁻ = 0 or no training point has I_loss < 0."""
        return not self.D_minus > 0 or self.n_negative == 0

    @property
    def vacuous(self) -> bool:
        return self.vacuous_plus and self.vacuous_minus

    @property
    def verdict(self) -> str:
        """``holds`` in words: "yes", "NO", "vacuously (D⁺ = D⁻ = 0)" (the reasons in brackets) or, when one
        part says nothing, "yes (D⁻ = 0: vacuous)"."""
        if not self.holds:
            return "NO"
        why = []
        for sign, D, vac in (("⁺", self.D_plus, self.vacuous_plus), ("⁻", self.D_minus, self.vacuous_minus)):
            if vac:
                why.append(f"D{sign} = 0" if not D > 0 else f"no point has I {'>' if sign == '⁺' else '<'} 0")
        if self.vacuous:
            if not self.D_plus > 0 and not self.D_minus > 0:
                return "vacuously (D⁺ = D⁻ = 0)"
            return f"vacuously ({', '.join(why)})"
        if why:
            return f"yes ({why[0]}: vacuous)"
        return "yes"

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d["holds"] = self.holds
        d["vacuous_plus"], d["vacuous_minus"], d["vacuous"] = self.vacuous_plus, self.vacuous_minus, self.vacuous
        d["verdict"] = self.verdict
        return d


def _select_rows(n: int, points: int | np.ndarray, seed: int, argument: str) -> np.ndarray:
    if isinstance(points, (int, np.integer)):
        if points < 1:
            raise ValidationError(f"{argument} must be >= 1, got {points}")
        k = min(int(points), n)
        return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))
    rows = np.unique(np.asarray(points, dtype=np.int64))
    if rows.size == 0 or rows.min() < 0 or rows.max() >= n:
        raise ValidationError(f"{argument} must be row positions in 0..{n - 1}")
    return rows


def theorem3(head: Head, curvature: Curvature, train: Any, test: Any, *, test_points: int | np.ndarray = 5,
             seed: int = 0, chunk_size: int = 65536, progress: bool = False,
             engine: Engine | None = None) -> list[Theorem3Result]:
    """Theorem 3 for ``test_points`` test points (a count drawn with ``seed``, or row positions of ``test``),
    one streaming pass over ``train``. Works for any head (softmax: null direction dropped)."""
    tr, te = open_for_head(head, train, "train"), open_for_head(head, test, "test")
    rows = _select_rows(len(te), test_points, seed, "test_points")
    Xt, yt, idt = load_rows(te, rows, engine=engine)
    head.check_labels(yt, argument=te.name)
    Q, lam = eigenbasis(curvature)
    psi = head.gradients(as_tensor(Xt, head.device), torch.as_tensor(yt, device=head.device)) @ Q  # (k, P')
    max_psi = psi.abs().max(1).values.cpu().numpy()
    if np.any(max_psi == 0):
        bad = format_id(idt[np.flatnonzero(max_psi == 0)[0]])
        raise ValidationError(f"test point id {bad} has a zero loss gradient: Theorem 3 needs ∇L(z_t) ≠ 0")
    lam_min = float(lam.min())
    k, n = len(rows), len(tr)
    scores = np.empty(n)
    sign = np.empty((n, k), dtype=np.int8)
    t_plus_inf, t_minus_inf = np.full(k, np.inf), np.full(k, np.inf)
    pw_pos, pw_neg = np.zeros(k, dtype=np.int64), np.zeros(k, dtype=np.int64)
    wt_pos, wt_neg = np.zeros(k, dtype=np.int64), np.zeros(k, dtype=np.int64)
    start = 0
    # the chunk's (c, k, P') product is bounded by shrinking chunks when k is large
    cs = max(1, min(chunk_size, (1 << 22) // max(1, k * psi.shape[1])))
    eng = default_engine(engine, progress=progress).with_chunk_size(cs)
    col = ColumnFunction(theorem3_chunk, {"Q": Q, "inv_eigvals": lam, "psi": psi}, head=head)
    for out in eng.iter(tr, ScoreKernel(head, [col], ids=False), description="Theorem 3"):
        s = out["memorization"]
        c = len(s)
        scores[start:start + c] = s
        infl = out["influence"]
        sign[start:start + c] = np.sign(infl).astype(np.int8)
        t_plus_inf = np.minimum(t_plus_inf, out["t_plus"].min(0))
        t_minus_inf = np.minimum(t_minus_inf, out["t_minus"].min(0))
        pos, neg = infl > 0, infl < 0
        pw_pos += (pos & (s[:, None] > out["t_plus"] * lam_min / max_psi)).sum(0)
        pw_neg += (neg & (s[:, None] > out["t_minus"] * lam_min / max_psi)).sum(0)
        wt_pos += (pos & (s[:, None] > out["weighted_plus"] / max_psi)).sum(0)
        wt_neg += (neg & (s[:, None] > out["weighted_minus"] / max_psi)).sum(0)
        start += c
    results = []
    for j in range(k):
        D_plus = float(t_plus_inf[j] * lam_min / max_psi[j])
        D_minus = float(t_minus_inf[j] * lam_min / max_psi[j]) + 0.0  # + 0.0: an empty T⁻ sum is -0.0
        pos, neg = sign[:, j] > 0, sign[:, j] < 0
        results.append(Theorem3Result(
            test_row=int(rows[j]), test_id=plain_id(idt[j]), test_label=int(yt[j]), lambda_min=lam_min,
            hessian_eig_max=float(1.0 / lam_min), max_abs_psi=float(max_psi[j]),
            T_plus=float(t_plus_inf[j]), T_minus=float(t_minus_inf[j]) + 0.0, D_plus=D_plus, D_minus=D_minus,
            n_positive=int(pos.sum()), n_positive_exceeding=int((pos & (scores > D_plus)).sum()),
            n_negative=int(neg.sum()), n_negative_exceeding=int((neg & (scores > D_minus)).sum()),
            n_zero=int((sign[:, j] == 0).sum()),
            n_positive_exceeding_pointwise=int(pw_pos[j]), n_negative_exceeding_pointwise=int(pw_neg[j]),
            n_positive_exceeding_weighted=int(wt_pos[j]), n_negative_exceeding_weighted=int(wt_neg[j]),
            min_ratio_positive=_min_ratio(scores, pos, D_plus), min_ratio_negative=_min_ratio(scores, neg, D_minus)))
    return results


def _min_ratio(scores: np.ndarray, mask: np.ndarray, D: float) -> float | None:
    """min score / D over ``mask`` (None if empty, inf if D = 0)."""
    if not mask.any():
        return None
    return float(scores[mask].min() / D) if D > 0 else float("inf")


# ===================================================================================== Theorem 4
def _require_sigmoid(head: Head, what: str) -> None:
    if head.kind != "logistic":
        raise ValidationError(
            f"{what} is stated for a sigmoid + binary cross-entropy head (paper Theorem 4, Definition 8); got "
            f"{type(head).__name__} ({head.kind or 'custom'}). For a softmax head use Theorem 3 and the "
            f"memorization scores only (CLI: check-theorems --no-sign-rule)")


def _require_both_classes(y: np.ndarray, name: str) -> None:
    present = set(np.unique(y).tolist())
    if present != {0, 1}:
        raise ValidationError(f"{name} has only label(s) {sorted(present)}: the 2×2 sign table by (y_t, y_p) "
                              f"needs both classes 0 and 1 in the test set and in the training set")


def sign_rule_pairs(head: Head, curvature: Curvature, Xt: np.ndarray, yt: np.ndarray, Xp: np.ndarray,
                    yp: np.ndarray) -> dict[str, np.ndarray]:
    """For aligned pairs (row j of the test arrays with row j of the train arrays) (pure), shape (N,) each:
    ``influence`` = −g_tᵀH⁻¹g_p (through the gradients), ``kernel`` = ũ_tᵀH⁻¹ũ_p (through the features),
    ``label_factor`` = (σ_t − y_t)(σ_p − y_p)."""
    dev = head.device
    Xt_, Xp_ = as_tensor(Xt, dev), as_tensor(Xp, dev)
    yt_, yp_ = torch.as_tensor(yt, device=dev), torch.as_tensor(yp, device=dev)
    Gt, Gp = head.gradients(Xt_, yt_), head.gradients(Xp_, yp_)
    infl = -(Gt * curvature.solve(Gp.T).T).sum(1)
    Ut, Up = augment(Xt_), augment(Xp_)
    kern = (Ut * curvature.solve(Up.T).T).sum(1)
    lf = head.residuals(Xt_, yt_)[:, 0] * head.residuals(Xp_, yp_)[:, 0]
    return {"influence": infl.cpu().numpy(), "kernel": kern.cpu().numpy(), "label_factor": lf.cpu().numpy()}


def paper_sign(x: np.ndarray) -> np.ndarray:
    """sign(x) = 1(x ≥ 0) − 1(x < 0) (Lemma 2), as int8."""
    return np.where(np.asarray(x) >= 0, 1, -1).astype(np.int8)


@dataclass
class SignRuleResult:
    """Theorem 4 over sampled (test, train) pairs. Tables are indexed [y_t][y_p].

    ``hold_rate``: fraction of pairs with sign(I_loss) = 1(y_t ≠ y_p) − 1(y_t = y_p) (eq. 91).
    ``kernel_positive_rate``: fraction with ũ_tᵀH⁻¹ũ_p > 0. ``hold_kernel_mismatches``: pairs where
    "holds" and "kernel > 0" disagree (0 up to ties I_loss = 0 or a saturated residual).
    ``removal_hold_rate``: eqs. 92–95 on the predicted removal change −I_loss/n (≥ 0 for equal labels,
    < 0 for different ones). ``n_pairs`` distinct pairs were used: ``pairs_requested`` drawn without
    replacement, or every one of the n·T pairs (``all_pairs``) when there are no more than that. ``pair_*``
    arrays (N,) keep the pairs (row positions in test/train) and their values for plots; they are not part
    of ``summary()``.
    """

    l2: float
    n_pairs: int
    seed: int
    pairs_requested: int
    all_pairs: bool
    hold_rate: float
    kernel_positive_rate: float
    removal_hold_rate: float
    hold_kernel_mismatches: int
    table: dict[str, list[list[float]]]
    features_nonnegative_fraction: dict[str, float]
    rows_all_nonnegative_fraction: dict[str, float]
    hinv_positive_fraction: float
    hinv_min_entry: float
    sufficient_condition: bool
    pair_influence: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    pair_kernel: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    pair_yt: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, dtype=np.int64))
    pair_yp: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, dtype=np.int64))
    pair_test_rows: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, dtype=np.int64))
    pair_train_rows: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def pairs_text(self) -> str:
        """The pairs used, in words: "68 058 pairs (all of them)" or "100 000 sampled pairs"."""
        n = f"{self.n_pairs:,}".replace(",", " ")
        return f"{n} pairs (all of them)" if self.all_pairs else f"{n} sampled pairs"

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        for k in [k for k in d if k.startswith("pair_")]:
            d.pop(k)
        return d


def _nonneg_stats(source: Any, chunk_size: int, progress: bool = False,
                  engine: Engine | None = None) -> tuple[float, float]:
    """(fraction of nonnegative feature entries, fraction of rows with all features ≥ 0), one pass."""
    src = open_source(source)
    if len(src) == 0:
        return 0.0, 0.0
    ent, rows, total = default_engine(engine, chunk_size=chunk_size, progress=progress).sum(
        src, FeatureSignKernel(), description="feature signs")
    return ent / max(total * src.n_features, 1), rows / max(total, 1)


def sign_rule(head: Head, curvature: Curvature, train: Any, test: Any, *, pairs: int = 100_000, seed: int = 0,
              chunk_size: int = 65536, progress: bool = False, engine: Engine | None = None) -> SignRuleResult:
    """Theorem 4 (eq. 91) on ``pairs`` distinct (test, train) pairs drawn uniformly without replacement
    (``seed``); on all n·T pairs when there are no more than ``pairs``."""
    _require_sigmoid(head, "the sign rule")
    if pairs < 1:
        raise ValidationError(f"pairs must be >= 1, got {pairs}")
    tr, te = open_source(train, argument="train"), open_source(test, argument="test")
    head.check_features(np.empty((0, tr.n_features)), argument=tr.name)
    head.check_features(np.empty((0, te.n_features)), argument=te.name)
    Xte, yte, _ = load_rows(te, engine=engine)
    head.check_labels(yte, argument=te.name)
    _require_both_classes(yte, f"test set {te.name}")
    _require_both_classes(tr.labels(), f"training set {tr.name}")
    n, T = len(tr), len(yte)
    requested = int(pairs)
    all_pairs = requested >= n * T
    if all_pairs:
        flat = np.arange(n * T, dtype=np.int64)
        pairs = n * T
    else:
        flat = np.sort(np.random.default_rng(seed).choice(n * T, size=requested, replace=False))
    t_idx, p_idx = flat // n, flat % n
    uniq, inv = np.unique(p_idx, return_inverse=True)
    Xp, yp, _ = load_rows(tr, uniq, engine=engine)
    infl, kern, lf = np.empty(pairs), np.empty(pairs), np.empty(pairs)
    block = 65536
    for a in range(0, pairs, block):
        s = slice(a, min(a + block, pairs))
        out = sign_rule_pairs(head, curvature, Xte[t_idx[s]], yte[t_idx[s]], Xp[inv[s]], yp[inv[s]])
        infl[s], kern[s], lf[s] = out["influence"], out["kernel"], out["label_factor"]
    y_t, y_p = yte[t_idx], yp[inv]
    expected = np.where(y_t != y_p, 1, -1)
    hold = paper_sign(infl) == expected
    change = -infl / n  # eq. 28: predicted L(z_t, θ̂₋ₚ) − L(z_t, θ̂)
    removal_hold = np.where(y_t == y_p, change >= 0, change < 0)
    kpos = kern > 0
    cnt = np.zeros((2, 2), dtype=np.int64)
    hcnt = np.zeros((2, 2), dtype=np.int64)
    kcnt = np.zeros((2, 2), dtype=np.int64)
    np.add.at(cnt, (y_t, y_p), 1)
    np.add.at(hcnt, (y_t, y_p), hold.astype(np.int64))
    np.add.at(kcnt, (y_t, y_p), kpos.astype(np.int64))
    rate = np.where(cnt > 0, hcnt / np.maximum(cnt, 1), np.nan)
    Hinv = curvature.inverse().cpu().numpy()
    f_tr, r_tr = _nonneg_stats(tr, chunk_size, progress, engine)
    f_te, r_te = float((Xte >= 0).mean()), float((Xte >= 0).all(1).mean())
    return SignRuleResult(
        l2=head.l2, n_pairs=int(pairs), seed=int(seed), pairs_requested=requested, all_pairs=bool(all_pairs),
        hold_rate=float(hold.mean()),
        kernel_positive_rate=float(kpos.mean()), removal_hold_rate=float(removal_hold.mean()),
        hold_kernel_mismatches=int((hold != kpos).sum()),
        table={"pairs": cnt.tolist(), "hold": hcnt.tolist(), "kernel_positive": kcnt.tolist(),
               "hold_rate": [[None if np.isnan(v) else float(v) for v in row] for row in rate]},
        features_nonnegative_fraction={"train": f_tr, "test": f_te},
        rows_all_nonnegative_fraction={"train": r_tr, "test": r_te},
        hinv_positive_fraction=float((Hinv > 0).mean()), hinv_min_entry=float(Hinv.min()),
        sufficient_condition=bool(r_tr == 1.0 and r_te == 1.0 and (Hinv >= 0).all()),
        pair_influence=infl, pair_kernel=kern, pair_yt=y_t, pair_yp=y_p, pair_test_rows=t_idx,
        pair_train_rows=p_idx)


def refit_logistic(head: Head, train: Any, l2: float, *, tol: float = 1e-10, max_iter: int = 200,
                   engine: Engine | None = None) -> LogisticHead:
    """A LogisticHead with L2 strength ``l2`` fitted on ``train``, warm-started from ``head``'s θ."""
    h = LogisticHead(l2=l2, tol=tol, max_iter=max_iter, device=head.device)
    return h.fit(train, init=head.theta_, engine=engine)  # type: ignore[return-value]


def sign_rule_vs_l2(head: Head, train: Any, test: Any, *, l2_grid: tuple[float, ...] = DEFAULT_L2_GRID,
                    pairs: int = 100_000, seed: int = 0, damping: float = 0.0, chunk_size: int = 65536,
                    progress: bool = False, engine: Engine | None = None) -> list[dict[str, Any]]:
    """Refit the head for each λ in ``l2_grid`` (warm start, tight) and rerun the sign rule on the same pairs.

    Returns per λ: ``l2``, ``hold_rate``, ``kernel_positive_rate``, ``hinv_positive_fraction``,
    ``hold_kernel_mismatches``, ``test_loss`` (mean BCE on the test set), ``test_accuracy``.
    """
    _require_sigmoid(head, "the sign rule")
    tr, te = open_source(train, argument="train"), open_source(test, argument="test")
    Xte, yte, _ = load_rows(te, engine=engine)
    rows = []
    prev = head
    for lam in track(sorted(float(v) for v in l2_grid), len(l2_grid), "λ sweep", "refits", enabled=progress):
        if not np.isfinite(lam) or lam < 0:
            raise ValidationError(f"l2_grid values must be finite and >= 0, got {lam}")
        h = refit_logistic(prev, tr, lam, engine=engine)
        curv = fit_curvature(h, tr, damping=damping, chunk_size=chunk_size, progress=progress, engine=engine)
        res = sign_rule(h, curv, tr, (Xte, yte), pairs=pairs, seed=seed, chunk_size=chunk_size, engine=engine)
        X_, y_ = as_tensor(Xte, h.device), torch.as_tensor(yte, device=h.device)
        rows.append({"l2": lam, "hold_rate": res.hold_rate, "kernel_positive_rate": res.kernel_positive_rate,
                     "hinv_positive_fraction": res.hinv_positive_fraction,
                     "hold_kernel_mismatches": res.hold_kernel_mismatches,
                     "test_loss": float(h.losses(X_, y_).mean()),
                     "test_accuracy": float(((h.predict_proba(Xte) > 0.5) == yte).mean())})
        prev = h
    return rows


# ============================================================================ section 8: removal
@dataclass
class RemovalResult:
    """Retrain without a random ``fraction`` of the training points with label ``removed_label``.

    ``delta_pos``/``delta_neg``: actual change of the mean test loss on positive/negative test points
    (after − before) when retraining on the ε = −1/n objective (1/n) Σ_{kept} ℓ_i + (λ/2)‖W‖²
    (removed rows get weight 0, normalizer stays n) from θ̂ to ‖∇R‖_∞ ≤ tol; ``predicted_*`` the
    first-order prediction (1/n) Σ_{removed p} ḡ_cᵀH⁻¹g_p (eq. 28 summed); ``plain_delta_*`` the change
    when plainly retraining on the kept rows (normalizer n − m, i.e. a relatively stronger λ).
    Theorem 4 + section 8 predict: removing negatives → delta_pos < 0, delta_neg > 0 (and vice versa).
    """

    removed_label: int
    fraction: float
    n_removed: int
    n_train: int
    seed: int
    loss_pos_before: float
    loss_neg_before: float
    delta_pos: float
    delta_neg: float
    predicted_delta_pos: float
    predicted_delta_neg: float
    plain_delta_pos: float
    plain_delta_neg: float

    @property
    def consistent(self) -> bool:
        """The direction section 8 predicts: the removed class's test loss rises, the other one's falls."""
        same, other = ((self.delta_neg, self.delta_pos) if self.removed_label == 0
                       else (self.delta_pos, self.delta_neg))
        return bool(same > 0 and other < 0)

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d["consistent_with_section8"] = self.consistent
        return d


def removal_experiment(head: Head, train: Any, test: Any, *, fraction: float = 0.1, seed: int = 0,
                       labels: tuple[int, ...] = (0, 1), tol: float = 1e-10, damping: float = 0.0,
                       chunk_size: int = 65536, progress: bool = False,
                       engine: Engine | None = None) -> list[RemovalResult]:
    """Section 8, measured: for each label c in ``labels``, drop a random ``fraction`` of the class-c
    training rows, retrain and report the change of mean test loss on positive and negative test points.

    The head is first refitted on all rows from its θ to ``tol`` (as in ``loo.py``), so both sides of
    every difference are optima of the same solver."""
    _require_sigmoid(head, "the section-8 removal experiment")
    if not (0.0 < fraction < 1.0):
        raise ValidationError(f"fraction must be in (0, 1), got {fraction}")
    tr, te = open_source(train, argument="train"), open_source(test, argument="test")
    Xte, yte, _ = load_rows(te, engine=engine)
    _require_both_classes(yte, f"test set {te.name}")
    ytr = tr.labels()
    n = len(ytr)
    base = copy.deepcopy(head)
    base.tol, base.max_iter = tol, max(base.max_iter, 200)
    base.fit(tr, init=head.theta_, chunk_size=chunk_size, engine=engine)
    curv = fit_curvature(base, tr, damping=damping, chunk_size=chunk_size, engine=engine)
    dev = base.device
    Xte_t, yte_t = as_tensor(Xte, dev), torch.as_tensor(yte, device=dev)
    masks = {1: yte == 1, 0: yte == 0}

    def class_losses(theta: torch.Tensor) -> dict[int, float]:
        ls = base.losses(Xte_t, yte_t, theta).cpu().numpy()
        return {c: float(ls[m].mean()) for c, m in masks.items()}

    before = class_losses(base.theta_)
    # s_c = H⁻¹ ḡ_c for the positive and the negative test points (eq. 28 directions)
    G = base.gradients(Xte_t, yte_t)
    s = {c: curv.solve(G[torch.as_tensor(m, device=dev)].mean(0)) for c, m in masks.items()}
    rng = np.random.default_rng(seed)
    out = []
    for lab in track(labels, 2 * len(labels), "section-8 retrains", "retrains", count=lambda _: 2,
                     enabled=progress):
        cls_rows = np.flatnonzero(ytr == lab)
        m = int(round(fraction * cls_rows.size))
        if m < 1:
            raise ValidationError(f"fraction {fraction} of the {cls_rows.size} training rows with label {lab} "
                                  f"removes no row")
        removed = np.sort(rng.choice(cls_rows, size=m, replace=False))
        gsum, _ = gradient_sum(base, tr, rows=removed, engine=engine, chunk_size=chunk_size)
        pred = {c: float(s[c] @ gsum) / n for c in (0, 1)}
        w = np.ones(n)
        w[removed] = 0.0
        deltas = {}
        for name, normalizer in (("eps", float(n)), ("plain", float(n - m))):
            h = copy.deepcopy(base)
            h.fit(tr, sample_weight=w, normalizer=normalizer, init=base.theta_, chunk_size=chunk_size, engine=engine)
            after = class_losses(h.theta_)
            deltas[name] = {c: after[c] - before[c] for c in (0, 1)}
        out.append(RemovalResult(
            removed_label=int(lab), fraction=float(fraction), n_removed=m, n_train=n, seed=int(seed),
            loss_pos_before=before[1], loss_neg_before=before[0],
            delta_pos=deltas["eps"][1], delta_neg=deltas["eps"][0],
            predicted_delta_pos=pred[1], predicted_delta_neg=pred[0],
            plain_delta_pos=deltas["plain"][1], plain_delta_neg=deltas["plain"][0]))
    return out


# ============================================================================== all checks, report
@dataclass
class TheoremCheck:
    """Everything ``check-theorems`` reports (``summary()`` is the JSON)."""

    head: str
    n_train: int
    n_test: int
    theorem3: list[Theorem3Result]
    memorization: MemorizationResult | None = None
    sign_rule: SignRuleResult | None = None
    l2_sweep: list[dict[str, Any]] = field(default_factory=list)
    removal: list[RemovalResult] = field(default_factory=list)
    #: the head's ‖∇R(θ̂)‖∞ figure (``Stationarity.as_dict``; ``refit`` when it was polished first)
    stationarity: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        t3 = [r.summary() for r in self.theorem3]
        return {
            "head": self.head, "n_train": self.n_train, "n_test": self.n_test, "stationarity": self.stationarity,
            "theorem3": {"holds": all(r.holds for r in self.theorem3),
                         "vacuous": bool(self.theorem3) and all(r.vacuous for r in self.theorem3),
                         "vacuous_test_points": sum(r.vacuous for r in self.theorem3), "test_points": t3},
            "memorization": self.memorization.summary() if self.memorization is not None else None,
            "sign_rule": self.sign_rule.summary() if self.sign_rule is not None else None,
            "l2_sweep": self.l2_sweep,
            "removal": [r.summary() for r in self.removal],
        }


def check_theorems(head: Head, train: Any, test: Any, *, pairs: int = 100_000, seed: int = 0,
                   test_points: int | np.ndarray = 5, sign_rule_check: bool = True,
                   l2_grid: tuple[float, ...] | None = DEFAULT_L2_GRID, removal_fraction: float | None = 0.1,
                   memorize_quantile: float = 0.9, sign_statistics: bool = False, damping: float = 0.0,
                   chunk_size: int = 65536, progress: bool = False, engine: Engine | None = None,
                   refit: bool = False, allow_nonstationary: bool = False) -> TheoremCheck:
    """Theorem 3 on ``test_points`` test points, memorization verdicts at ``memorize_quantile`` (with
    ``sign_statistics``: each training point's helps/hurts fractions over the whole test set, cost n·T·P), and for a
    sigmoid head (``sign_rule_check``) the sign rule on ``pairs`` pairs, its λ sweep over ``l2_grid`` (None:
    skip) and the section-8 removal experiment with ``removal_fraction`` (None: skip).

    The theorems hold at an optimum of the training objective: a head whose ‖∇R(θ̂)‖∞ is above the
    threshold is refused unless ``allow_nonstationary``; ``refit`` first polishes a copy (Newton, same λ)
    and checks that one. The figure is ``TheoremCheck.stationarity``."""
    if sign_rule_check:
        _require_sigmoid(head, "the sign rule")
    tr, te = check_head_data(head, train=train, test=test)
    if sign_rule_check:  # fail early, before the expensive passes
        _require_both_classes(te.labels(), f"test set {te.name}")
    engine = default_engine(engine, chunk_size=chunk_size, progress=progress)
    with engine:
        return _check_theorems(head, tr, te, engine, pairs=pairs, seed=seed, test_points=test_points,
                               sign_rule_check=sign_rule_check, l2_grid=l2_grid, removal_fraction=removal_fraction,
                               memorize_quantile=memorize_quantile, sign_statistics=sign_statistics,
                               damping=damping, chunk_size=chunk_size, progress=progress, refit=refit,
                               allow_nonstationary=allow_nonstationary)


def _check_theorems(head: Head, tr: Any, te: Any, engine: Engine, *, pairs: int, seed: int, test_points: Any,
                    sign_rule_check: bool, l2_grid: Any, removal_fraction: float | None, memorize_quantile: float,
                    sign_statistics: bool, damping: float, chunk_size: int, progress: bool, refit: bool,
                    allow_nonstationary: bool) -> TheoremCheck:
    head, curv = checked_curvature(head, tr, refit=refit, allow_nonstationary=allow_nonstationary,
                                   damping=damping, chunk_size=chunk_size, progress=progress, engine=engine)
    t3 = theorem3(head, curv, tr, te, test_points=test_points, seed=seed, chunk_size=chunk_size,
                  progress=progress, engine=engine)
    scores = memorization_scores(head, curv, tr, chunk_size, progress, engine=engine)
    D = choose_threshold(scores, memorize_quantile)
    mem = MemorizationResult(ids=tr.ids(), labels=tr.labels(), scores=scores, threshold=D,
                             quantile=memorize_quantile, memorize=scores > D)
    if sign_statistics:
        st = memorization_sign_statistics(head, curv, tr, te, chunk_size=chunk_size, progress=progress,
                                          engine=engine)
        mem.helps_fraction, mem.hurts_fraction = st["helps_fraction"], st["hurts_fraction"]
    check = TheoremCheck(head=repr(head), n_train=len(tr), n_test=len(te), theorem3=t3, memorization=mem,
                         stationarity=curv.stationarity.as_dict() if curv.stationarity is not None else None)
    if sign_rule_check:
        check.sign_rule = sign_rule(head, curv, tr, te, pairs=pairs, seed=seed, chunk_size=chunk_size,
                                    progress=progress, engine=engine)
        if l2_grid:
            check.l2_sweep = sign_rule_vs_l2(head, tr, te, l2_grid=tuple(l2_grid), pairs=pairs, seed=seed,
                                             damping=damping, chunk_size=chunk_size, progress=progress,
                                             engine=engine)
        if removal_fraction:
            check.removal = removal_experiment(head, tr, te, fraction=removal_fraction, seed=seed,
                                               damping=damping, chunk_size=chunk_size, progress=progress,
                                               engine=engine)
    return check


# figures and report sections live in winnow.report.theorems
__getattr__ = moved_names(__name__, __package__, {
    "influence_pairs_figure": "..report.theorems:influence_pairs_figure",
    "report_section": "..report.theorems:theorems_section",
})
