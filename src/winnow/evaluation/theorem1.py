"""Theorem 1 evidence: does influence on the head's parameters approximate influence on all parameters?

Paper section 4 (eqs. 34–51). With θ = (θ_C, θ_F) (head, featurizer), the full Hessian has the head block
H_CC (eq. 34) and an orthonormal eigenbasis Q = [[Q_C, α], [β, γ]] (rows: eigenvectors; columns: head,
featurizer coordinates), eigenvalues Λ_C (the μ_C eigenpairs assigned to the head) and Λ_F. Then

    I⁽ᶜ⁾/I = g_tᵀ(Q_CᵀΛ_CQ_C + 𝒯₁)⁻¹g_p / (g_tᵀQ_CᵀΛ_C⁻¹Q_Cg_p + 𝒯₂)                  (39)
    𝒯₁ = βᵀΛ_Fβ (42),  𝒯₂ = g_tᵀF₁g_p + g_tᵀF₂f_p + f_tᵀF₂ᵀg_p + f_tᵀF₃f_p (43)

with g = ∇_{θ_C}ℓ, f = ∇_{θ_F}ℓ. The theorem holds for any choice of which μ_C eigenpairs form Λ_C; we take
the μ_C eigenvectors with the largest mass on the head's coordinates (‖q_i[C]‖²), the choice under which
the paper's sufficient condition ("the elements of Q_C have the highest values") is most favourable.

:func:`theorem1_check` computes, on sampled (test, train) pairs: I (full model) and I⁽ᶜ⁾ (head only,
with the head block of the same H), Pearson, Spearman, sign agreement, the distribution of I⁽ᶜ⁾/I, the
norms of 𝒯₁ and 𝒯₂ relative to the terms they perturb, the fraction of the inverse-Hessian spectrum's
mass on head coordinates, and a verdict. A trained network is rarely at an exact minimum, so the full
Hessian may be indefinite: negative eigenvalues are counted and reported, and a damping δ is added to both
H and H_CC that lifts the smallest eigenvalue to 1e-3·λ_max (δ = −λ_min + 1e-3·λ_max; never exactly
|λ_min|, which would leave H singular), said in the result (``damping_added``, ``damping_rule``). The
Gauss-Newton curvature (``curvature="ggn"``, positive semi-definite by construction) is the alternative
for a network that is not at a minimum. Models too large for a dense Hessian use a rank-k Lanczos
approximation of H (low rank + damping), said as such, without 𝒯₁/𝒯₂; there the head block H_CC of an
``nn.Linear`` head is computed in closed form (one pass) and the damping, when not given, is chosen from
the spectrum (:func:`winnow.core.solvers.choose_damping`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import stats

from .._moved import moved_names
from ..core.autodiff import ModelFunction, check_labels_for, resolve_loss
from ..core.curvature import Stationarity
from ..core.heads import DTYPE
from ..core.models import (
    MAX_DENSE_SECONDS,
    HeadSpec,
    ModelData,
    ModelHessian,
    check_curvature,
    check_model_damping,
    eval_mode,
    find_module,
    model_device,
    select_params,
)
from ..core.solvers import AUTO_DAMPING_RATIO, LanczosSolver, choose_damping
from ..errors import ValidationError


@dataclass
class Theorem1Result:
    """Head-only vs full-model influence on sampled pairs, and the Theorem 1 terms. See module docstring."""

    method: str
    n_params: int
    n_head_params: int
    head_name: str
    n_train: int
    train_rows: np.ndarray
    test_rows: np.ndarray
    influence_full: np.ndarray          # (T_s, n_s) I_loss(z_t, z_p), all parameters
    influence_head: np.ndarray          # (T_s, n_s) I⁽ᶜ⁾, head parameters only (same H's head block)
    pearson: float
    spearman: float
    sign_agreement: float
    ratio_quantiles: dict[str, float]   # quantiles of I⁽ᶜ⁾/I over pairs with I ≠ 0
    ratio_within_2x: float              # fraction of pairs with 0.5 ≤ I⁽ᶜ⁾/I ≤ 2
    head_inverse_mass: float            # Σ_i ‖q_i[C]‖²/|λ_i| / Σ_i 1/|λ_i|
    head_mass_baseline: float           # μ_C / μ (what a direction spread evenly would give)
    n_negative: int                     # eigenvalues of H (+ user damping) ≤ 0
    min_eigenvalue: float
    max_eigenvalue: float
    damping: float                      # user damping (0 when "auto")
    damping_added: float                # δ added so that H is positive definite (0 if none needed), or chosen
    gradient_norm: float                # ‖∇R(θ̂)‖_∞: how far θ̂ is from a stationary point
    t1_relative: float | None = None    # ‖𝒯₁‖₂ / ‖Q_CᵀΛ_CQ_C‖₂
    t2_relative: dict[str, float] | None = None  # quantiles of |𝒯₂| / |g_tᵀQ_CᵀΛ_C⁻¹Q_Cg_p|
    head_block_mass: float | None = None  # ‖Q_C‖_F²/μ_C: how much the chosen eigenvectors live on the head
    eigenvalues: np.ndarray | None = None
    head_mass: np.ndarray | None = None  # ‖q_i[C]‖² per eigenvector
    #: Spearman / sign agreement at every total damping asked for; ``used`` False (with ``reason``) where it
    #: could not be computed
    damping_sweep: list[dict[str, Any]] | None = None
    damping_rule: str = ""              # how damping_added was set, in words
    curvature: str = "hessian"          # "hessian" or "ggn"
    seconds: float | None = None        # wall time of the check
    t2: np.ndarray | None = None
    main_term: np.ndarray | None = None
    verdict: str = ""
    trusted: bool = False
    notes: list[str] = field(default_factory=list)
    #: ‖∇R(θ̂)‖∞ relative to the mean per-example gradient s = mean ‖g_p‖∞ over the sampled training points
    #: (``Stationarity.as_dict``; s estimated from the sample, the gradient pass is over all rows)
    stationarity: dict[str, Any] | None = None
    #: the note (also a UserWarning) said when the relative figure is above the threshold
    stationarity_note: str | None = None

    def summary(self) -> dict[str, Any]:
        """Scalars only (JSON-friendly)."""
        d = asdict(self)
        for k in ("train_rows", "test_rows", "influence_full", "influence_head", "eigenvalues", "head_mass", "t2",
                  "main_term"):
            d.pop(k, None)
        return d


def _quantiles(a: np.ndarray) -> dict[str, float]:
    if a.size == 0:
        return {}
    qs = np.quantile(a, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {f"q{int(p * 100):02d}": float(v) for p, v in zip([0.05, 0.25, 0.5, 0.75, 0.95], qs)}


def _verdict(spearman: float, sign: float, within: float, method: str, damping_added: float) -> tuple[str, bool]:
    approx = " (full-model influence from a low-rank Lanczos approximation, not exact)" if method != "dense" else ""
    if spearman >= 0.9 and sign >= 0.9:
        v, ok = ("head-only influence can be trusted on this model: it ranks training points almost as the full-"
                 f"model influence does (Spearman {spearman:.3f}, signs agree on {100 * sign:.1f}% of pairs)"), True
    elif spearman >= 0.6 and sign >= 0.75:
        v, ok = ("head-only influence is a rough guide on this model: the ranking is broadly the same (Spearman "
                 f"{spearman:.3f}, signs agree on {100 * sign:.1f}% of pairs) but individual values differ; use it "
                 "to shortlist points, and check decisions with the full model or retraining"), False
    else:
        v, ok = ("head-only influence cannot be trusted on this model: it disagrees with the full-model influence "
                 f"(Spearman {spearman:.3f}, signs agree on {100 * sign:.1f}% of pairs); the featurizer's "
                 "curvature matters here: use full-model influence (model-influence; the kfac curvature for a "
                 "network of Linear and Conv2d layers)"), False
    v += f"; {100 * within:.0f}% of pairs have I_head/I within a factor 2" + approx
    if damping_added > 0 and method == "dense":
        v += (f". The full Hessian was indefinite at θ̂, so both were computed with H + {damping_added:.3g}·I: the "
              "comparison holds for that damped H")
    elif damping_added > 0:
        v += (f". Both were computed with H + {damping_added:.3g}·I, a damping chosen from the spectrum: the "
              "comparison holds for that damped H")
    return v + ".", ok


def theorem1_check(model: torch.nn.Module, head: HeadSpec, train: Any, test: Any, *, l2: float = 0.0,
                   regularize: str = "weights", damping: float | str = "auto", loss: str = "auto",
                   n_train: int = 200, n_test: int = 20, seed: int = 0, max_dense: int = 6000, rank: int = 100,
                   batch_size: int = 256, device: torch.device | str | None = None,
                   params: str | Sequence[str] | None = None, hessian: torch.Tensor | None = None,
                   sweep: Sequence[float] = (), progress: bool = False, curvature: str = "hessian",
                   max_dense_seconds: float | None = MAX_DENSE_SECONDS) -> Theorem1Result:
    """Compare head-only with full-model influence on ``n_test`` × ``n_train`` sampled pairs (seeded).

    ``l2``/``regularize``: the training objective's L2 (as in :class:`winnow.core.models.ModelInfluence`);
    ``damping`` added to H: a number, or "auto" (default): none on the dense path, which adds what an
    indefinite H needs from its exact spectrum (``damping_added``), and on the Lanczos path the damping
    chosen from the spectrum; ``curvature`` "hessian" (default) or "ggn" (Gauss-Newton, for both sides);
    ``params`` the full parameter set (default: all trainable); ``max_dense``: larger parameter counts use
    a rank-``rank`` Lanczos approximation of H (the damping is the curvature outside the top-``rank``
    space); ``max_dense_seconds``: the dense build is timed on its first block of columns and refused when
    the estimate is above it (None: no limit). ``hessian``: the dense damped H already
    built for the same model, data, l2 and damping (e.g. ``ModelInfluence(...).solver_.hessian_``), to
    skip rebuilding it. ``sweep``: other total dampings at which to repeat the comparison (cheap, from the
    same eigendecomposition) — how much the verdict depends on the damping; every value is reported, those
    that could not be used (H + dI not positive definite, or the Lanczos path) marked ``used: False`` with
    the reason. ``progress``
    shows the passes over TRAIN. Returns a :class:`Theorem1Result`.
    """
    import time

    started = time.perf_counter()
    damping_arg = check_model_damping(damping)
    damping = 0.0 if damping_arg == "auto" else float(damping_arg)
    curvature = check_curvature(curvature)
    head_name, _ = find_module(model, head)
    head_names = select_params(model, head_name)
    names = select_params(model, params)
    missing = [n for n in head_names if n not in names]
    if missing:
        raise ValidationError(f"params must include the head's parameters; missing {missing}")
    if n_train < 2 or n_test < 1:
        raise ValidationError(f"n_train must be >= 2 and n_test >= 1, got {n_train}, {n_test}")
    with eval_mode(model, "theorem1_check"):
        fn = ModelFunction(model, names, regularize=regularize,
                           device=device if device is not None else model_device(model), dtype=DTYPE)
        tr = ModelData(train, batch_size=batch_size, argument="train")
        te = ModelData(test, batch_size=batch_size, argument="test")
        n = len(tr)
        x0, _, _ = next(tr.batches(2))
        with torch.no_grad():
            K = fn.logits(fn.theta, fn.prepare(x0)).shape[1]
        lname = resolve_loss(loss, K)
        check_labels_for(K, lname, tr.labels(), "train labels", what="the model")
        check_labels_for(K, lname, te.labels(), "test labels", what="the model")
        op = ModelHessian(fn, tr, lname, l2=l2, damping=damping, n=n, batch_size=batch_size, progress=progress,
                          curvature=curvature, max_dense_seconds=max_dense_seconds)
        C = np.concatenate([np.arange(fn.slice_of(nm).start, fn.slice_of(nm).stop) for nm in head_names])
        Fidx = np.setdiff1d(np.arange(fn.n_params), C)
        rng = np.random.default_rng(seed)
        rows_p = np.sort(rng.choice(n, size=min(n_train, n), replace=False))
        T = len(te)
        rows_t = np.sort(rng.choice(T, size=min(n_test, T), replace=False))
        Gp, gnorm = _gradients_and_stationarity(fn, tr, lname, rows_p, l2, n, progress)
        Gt, _ = _gradients_and_stationarity(fn, te, lname, rows_t, None, T)
        null = op.null_directions()
        if fn.n_params <= max_dense:
            if hessian is not None and tuple(hessian.shape) != (fn.n_params, fn.n_params):
                raise ValidationError(f"hessian must be ({fn.n_params}, {fn.n_params}), got {tuple(hessian.shape)}")
            H = hessian.to(fn.device, fn.dtype) if hessian is not None else op.dense()
            res = _dense(H, C, Fidx, Gt, Gp, null, damping, sweep)
        else:
            res = _lanczos(op, fn, C, Gt, Gp, null, damping, rank, head_name, damping_arg == "auto", sweep)
    I_full, I_head = res.pop("I_full"), res.pop("I_head")
    a, b = I_full.reshape(-1), I_head.reshape(-1)
    pearson = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")
    spearman = float(stats.spearmanr(a, b).statistic)
    nz = np.abs(a) > 1e-12 * np.abs(a).max()
    sign = float(np.mean(np.sign(a[nz]) == np.sign(b[nz]))) if nz.any() else float("nan")
    ratio = b[nz] / a[nz]
    within = float(np.mean((ratio >= 0.5) & (ratio <= 2.0))) if ratio.size else float("nan")
    verdict, ok = _verdict(spearman, sign, within, res["method"], res["damping_added"])
    notes = res.pop("notes")
    # s, the mean size of one example's gradient, from the uniformly sampled training points (an unbiased
    # estimate of (1/n) Σ ‖g_i‖∞ at no extra pass)
    st = Stationarity(gradient_norm=gnorm, gradient_scale=float(Gp.abs().amax(1).mean()))
    msg = None
    if not st.ok:
        msg = (f"θ̂ is not a stationary point of the training objective: ‖∇R(θ̂)‖∞ = {gnorm:.2e} (relative "
               f"{st.relative:.1e} > {st.threshold:.0e}, with λ = {l2:g}); influence functions assume a minimum, so "
               "both influences are approximate. Give the L2 strength the model was trained with (its weight "
               "decay), or polish the model first (winnow.refine_model)")
        notes.append(msg)
        warnings.warn(msg, UserWarning, stacklevel=2)
    return Theorem1Result(
        n_params=fn.n_params, n_head_params=len(C), head_name=head_name, n_train=n, train_rows=rows_p,
        test_rows=rows_t, influence_full=I_full, influence_head=I_head, pearson=pearson, spearman=spearman,
        sign_agreement=sign, ratio_quantiles=_quantiles(ratio), ratio_within_2x=within, damping=float(damping),
        gradient_norm=gnorm, verdict=verdict, trusted=ok, notes=notes, stationarity=st.as_dict(),
        stationarity_note=msg, curvature=curvature, seconds=time.perf_counter() - started, **res)


def _gradients_and_stationarity(fn: ModelFunction, data: ModelData, loss: str, rows: np.ndarray,
                                l2: float | None, n: int, progress: bool = False) -> tuple[torch.Tensor, float]:
    """Per-example gradients of ``rows`` (k, P), and ‖∇R‖∞ over all of ``data`` when ``l2`` is given."""
    from ..progress import track

    out = []
    total = torch.zeros(fn.n_params, dtype=fn.dtype, device=fn.device)
    start = 0
    for x, y, _ in track(data.batches(), n, "gradients", "rows", count=lambda b: len(b[1]), enabled=progress):
        c = len(y)
        sel = rows[(rows >= start) & (rows < start + c)] - start
        xt, yt = fn.prepare(x), y.to(fn.device)
        if sel.size:
            idx = torch.as_tensor(sel, device=fn.device)
            out.append(fn.per_example_grads(fn.theta, xt[idx], yt[idx], loss))
        if l2 is not None:
            total += fn.grad_sum(fn.theta, xt, yt, loss)[1].detach()
        start += c
    gnorm = float("nan")
    if l2 is not None:
        gnorm = float((total / n + l2 * fn.reg_mask * fn.theta).abs().max())
    return torch.cat(out), gnorm


def _dense(H: torch.Tensor, C: np.ndarray, Fidx: np.ndarray, Gt: torch.Tensor, Gp: torch.Tensor,
           null: torch.Tensor, damping: float, sweep: Sequence[float] = ()) -> dict[str, Any]:
    P = H.shape[0]
    r = null.shape[1]
    notes: list[str] = []
    c = float(H.diagonal().abs().sum()) + 1.0
    ev, V = torch.linalg.eigh(H + c * (null @ null.T) if r else H)
    if r:
        # the null directions (softmax's shared bias shift) carry the fill c: drop those eigenpairs (the ones
        # living on the null directions, whatever their place in the order); every gradient is orthogonal to
        # them, so H⁻¹ means the pseudo-inverse on their complement
        keep = torch.sort(torch.argsort((null.T @ V).pow(2).sum(0))[:P - r]).values
        ev, V = ev[keep], V[:, keep]
        notes.append(f"{r} null direction(s) of the loss (a softmax's shared bias shift) removed from H")
    lo, hi = float(ev[0]), float(ev[-1])
    n_neg = int((ev <= 0).sum())
    delta = 0.0
    rule = "none needed: H is positive definite"
    if lo <= 1e-10 * hi:
        delta = -lo + AUTO_DAMPING_RATIO * hi
        rule = (f"δ = −λ_min + {AUTO_DAMPING_RATIO:g}·λ_max = {delta:.3g}, so that the smallest eigenvalue of the "
                f"damped H is {AUTO_DAMPING_RATIO:g}·λ_max (not 0: H + |λ_min|·I would be singular)")
        notes.append(f"H (with damping {damping:g}) has {n_neg} eigenvalue(s) <= 0 (min {lo:.3g}, max {hi:.3g}): "
                     f"θ̂ is not a minimum of the objective; H + δI is used for both influences, {rule}")
    lam = ev + delta
    Ct = torch.as_tensor(C, device=H.device)
    Ft = torch.as_tensor(Fidx, device=H.device)
    # I = −g_tᵀ H⁻¹ g_p via the eigenbasis
    At, Ap = Gt @ V, Gp @ V
    I_full = -(At / lam) @ Ap.T
    # I⁽ᶜ⁾ with the head block of the same (damped) H, eq. 34/36
    Hcc = H[Ct][:, Ct] + delta * torch.eye(len(C), dtype=H.dtype, device=H.device)
    Nc = null[Ct] if r else None
    Fcc = Hcc + c * (Nc @ Nc.T) if Nc is not None else Hcc
    gt, gp = Gt[:, Ct], Gp[:, Ct]
    L, info = torch.linalg.cholesky_ex(Fcc)
    if int(info) != 0:
        raise ValidationError("the head block H_CC is not positive definite: add damping")
    I_head = -(gt @ torch.cholesky_solve(gp.T, L))
    # Theorem 1 split: the μ_C − r eigenvectors with the largest head mass form Λ_C
    mass = (V[Ct] ** 2).sum(0)
    k = len(C) - (int((Nc.norm(dim=0) > 0.5).sum()) if Nc is not None else 0)
    order = torch.argsort(mass, descending=True)
    S, Sc = order[:k], order[k:]
    VcS, VcSc, VfS, VfSc = V[Ct][:, S], V[Ct][:, Sc], V[Ft][:, S], V[Ft][:, Sc]
    A_C = (VcS * lam[S]) @ VcS.T                      # Q_Cᵀ Λ_C Q_C
    T1 = (VcSc * lam[Sc]) @ VcSc.T                    # eq. 42
    t1_rel = float(torch.linalg.matrix_norm(T1, 2) / torch.linalg.matrix_norm(A_C, 2))
    # eq. 43 term by term, with u = V[C]ᵀg, w = V[F]ᵀf per eigen-block
    ftp, ftt = Gp[:, Ft], Gt[:, Ft]
    uS_t, uS_p, uSc_t, uSc_p = gt @ VcS, gp @ VcS, gt @ VcSc, gp @ VcSc
    wS_t, wS_p, wSc_t, wSc_p = ftt @ VfS, ftp @ VfS, ftt @ VfSc, ftp @ VfSc
    iS, iSc = 1.0 / lam[S], 1.0 / lam[Sc]
    main = (uS_t * iS) @ uS_p.T                       # g_tᵀ Q_Cᵀ Λ_C⁻¹ Q_C g_p
    F1 = (uSc_t * iSc) @ uSc_p.T
    F2 = (uS_t * iS) @ wS_p.T + (uSc_t * iSc) @ wSc_p.T
    F2T = (wS_t * iS) @ uS_p.T + (wSc_t * iSc) @ uSc_p.T
    F3 = (wS_t * iS) @ wS_p.T + (wSc_t * iSc) @ wSc_p.T
    T2 = F1 + F2 + F2T + F3
    denom = main.abs()
    ok = denom > 1e-300
    t2_rel = (T2.abs()[ok] / denom[ok]).cpu().numpy()
    inv_w = 1.0 / lam.abs()
    swept = []
    for d in sweep:
        extra = float(d) - damping - delta  # relative to the H the main comparison used
        low = lo + delta + extra            # smallest eigenvalue of H + d·I
        if low <= 1e-10 * hi:
            swept.append({"damping": float(d), "used": False, "spearman": float("nan"),
                          "sign_agreement": float("nan"),
                          "reason": f"H + {float(d):g}·I is not positive definite (smallest eigenvalue {low:.3g})"})
            continue
        If = (-(At / (lam + extra)) @ Ap.T).cpu().numpy().reshape(-1)
        Fd = Fcc + extra * torch.eye(len(C), dtype=H.dtype, device=H.device)
        Ih = (-(gt @ torch.linalg.solve(Fd, gp.T))).cpu().numpy().reshape(-1)
        nzd = np.abs(If) > 1e-12 * np.abs(If).max()
        swept.append({"damping": float(d), "used": True, "spearman": float(stats.spearmanr(If, Ih).statistic),
                      "sign_agreement": float(np.mean(np.sign(If[nzd]) == np.sign(Ih[nzd]))),
                      "min_eigenvalue": low})
    return {
        "damping_sweep": swept or None, "damping_rule": rule,
        "method": "dense", "I_full": I_full.cpu().numpy(), "I_head": I_head.cpu().numpy(),
        "head_inverse_mass": float((mass * inv_w).sum() / inv_w.sum()), "head_mass_baseline": len(C) / P,
        "n_negative": n_neg, "min_eigenvalue": lo, "max_eigenvalue": hi, "damping_added": delta,
        "t1_relative": t1_rel, "t2_relative": _quantiles(t2_rel),
        "head_block_mass": float((VcS ** 2).sum() / k) if k else float("nan"),
        "eigenvalues": ev.cpu().numpy(), "head_mass": mass.cpu().numpy(), "t2": T2.cpu().numpy(),
        "main_term": main.cpu().numpy(), "notes": notes,
    }


def _lanczos(op: ModelHessian, fn: ModelFunction, C: np.ndarray, Gt: torch.Tensor, Gp: torch.Tensor,
             null: torch.Tensor, damping: float, rank: int, head_name: str, auto: bool,
             sweep: Sequence[float] = ()) -> dict[str, Any]:
    notes = [f"P = {fn.n_params} is above max_dense: the full-model influence uses a rank-{rank} Lanczos "
             "approximation H ≈ UΘUᵀ + σ(I − UUᵀ) (σ = damping + l2 floor), not the exact H; 𝒯₁/𝒯₂ are not "
             "computed"]
    solver = LanczosSolver(rank=rank, check_residual=False)
    added, rule = 0.0, "none added: the damping given"
    if auto:
        choice = choose_damping(op, psd=op.curvature == "ggn", floor=op.spectrum_floor)
        added, rule = choice.damping, choice.rule
        op.damping = damping + added
        notes.append(choice.describe())
    if op.damping + op.spectrum_floor <= 0:
        raise ValidationError("the Lanczos approximation needs damping > 0 (the curvature assumed outside the "
                              "top-rank eigenspace), or a parameter count at most max_dense (the exact dense "
                              "Hessian)", parameters=("damping", "max_dense"))
    solver.fit(op)
    I_full = -(Gt @ solver.solve(Gp.T))
    Ct = torch.as_tensor(C, device=op.device)
    Hcc = op.head_block(head_name, C)
    if Hcc is None:  # not a linear head feeding the logits: the head's columns through the network
        E = torch.zeros(op.n_params, len(C), dtype=op.dtype, device=op.device)
        E[Ct, torch.arange(len(C))] = 1.0
        Hcc = op.matvec(E)[Ct]
        Hcc = 0.5 * (Hcc + Hcc.T)
    else:
        notes.append("the head block H_CC computed in closed form (a linear head: one pass over the data)")
    r = null.shape[1]
    Fcc = Hcc + (float(Hcc.diagonal().abs().sum()) + 1.0) * (null[Ct] @ null[Ct].T) if r else Hcc
    L, info = torch.linalg.cholesky_ex(Fcc)
    if int(info) != 0:
        raise ValidationError("the head block H_CC is not positive definite: add damping")
    I_head = -(Gt[:, Ct] @ torch.cholesky_solve(Gp[:, Ct].T, L))
    th, U = solver.eigenvalues_, solver.eigenvectors_
    sigma = solver.sigma_
    mass = (U[Ct] ** 2).sum(0)
    P = op.n_params
    num = float((mass / th.abs()).sum()) + (len(C) - float(mass.sum())) / sigma
    den = float((1.0 / th.abs()).sum()) + (P - th.numel()) / sigma
    n_neg = int((th < 0).sum())
    if n_neg:
        notes.append(f"{n_neg} of the top-{th.numel()} Ritz values are negative: H is indefinite; add damping")
    swept = [{"damping": float(d), "used": False, "spearman": float("nan"), "sign_agreement": float("nan"),
              "reason": "the damping sweep needs the dense eigendecomposition (P above max_dense)"} for d in sweep]
    return {"method": f"lanczos (rank {solver.rank_})", "I_full": I_full.cpu().numpy(),
            "I_head": I_head.cpu().numpy(), "head_inverse_mass": num / den, "head_mass_baseline": len(C) / P,
            "n_negative": n_neg, "min_eigenvalue": float(th.min()), "max_eigenvalue": float(th.max()),
            "damping_added": added, "damping_rule": rule, "damping_sweep": swept or None,
            "eigenvalues": th.cpu().numpy(), "head_mass": mass.cpu().numpy(), "notes": notes}


# figures and report sections live in winnow.report.theorem1
__getattr__ = moved_names(__name__, __package__, {
    "report_section": "..report.theorem1:theorem1_section",
})
