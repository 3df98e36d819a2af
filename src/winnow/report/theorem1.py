"""Report: Theorem 1, head-only vs full-model influence."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..evaluation.theorem1 import Theorem1Result
from .words import theorem1_reading


def theorem1_section(report: Any, result: Theorem1Result) -> Any:
    """Add the Theorem 1 comparison to a :class:`winnow.report.Report` (text, table, two figures)."""
    import matplotlib.pyplot as plt

    r = result
    report.section("Theorem 1: head-only vs full-model influence",
                   f"{r.verdict} Influence over {r.influence_full.shape[0]} test × {r.influence_full.shape[1]} "
                   f"training points sampled at random; full model: {r.n_params} parameters ({r.method}), head "
                   f"'{r.head_name}': {r.n_head_params}. " + " ".join(r.notes))
    report.reading(theorem1_reading(r.spearman))
    rows = [["Pearson (I_head, I_full)", r.pearson], ["Spearman (I_head, I_full)", r.spearman],
            ["sign agreement", r.sign_agreement], ["pairs with I_head/I within 2×", r.ratio_within_2x]]
    rows += [[f"I_head/I quantile {k[1:]}%", v] for k, v in r.ratio_quantiles.items()]
    rows += [["inverse-Hessian mass on head coordinates", r.head_inverse_mass],
             ["… if spread evenly (μ_C/μ)", r.head_mass_baseline]]
    if r.t1_relative is not None:
        rows.append(["‖𝒯₁‖ / ‖Q_CᵀΛ_CQ_C‖ (eq. 42)", r.t1_relative])
    if r.t2_relative:
        rows.append(["median |𝒯₂| / |g_tᵀQ_CᵀΛ_C⁻¹Q_Cg_p| (eq. 43)", r.t2_relative.get("q50", math.nan)])
    if r.head_block_mass is not None:
        rows.append(["mass of the head eigenvectors on head coordinates", r.head_block_mass])
    rows += [["eigenvalues ≤ 0", r.n_negative], ["smallest / largest eigenvalue", f"{r.min_eigenvalue:.3g} / "
                                                                                   f"{r.max_eigenvalue:.3g}"],
             ["damping (given + added)", f"{r.damping:.3g} + {r.damping_added:.3g}"],
             ["how the damping was added", getattr(r, "damping_rule", "")],
             ["‖∇R(θ̂)‖∞", r.gradient_norm]]
    st = getattr(r, "stationarity", None)
    if st and st.get("relative") is not None:
        rows.append(["‖∇R(θ̂)‖∞ / mean ‖g_p‖∞ (stationary below " + f"{st.get('threshold', math.nan):.0e})",
                     f"{st['relative']:.2e}"])
    report.table(["quantity", "value"], rows)
    if r.damping_sweep:
        report.section("Theorem 1: sensitivity to the damping",
                       "The same pairs with more damping added to H (and to its head block). Damping lifts the "
                       "small eigenvalues that dominate H⁻¹; when agreement grows with it, the disagreement comes "
                       "from nearly flat directions of the full model.")
        report.table(["damping", "Spearman", "sign agreement", "note"],
                     [[d["damping"], d["spearman"], d["sign_agreement"],
                       "" if d.get("used", True) else "not used: " + d.get("reason", "")] for d in r.damping_sweep])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    a, b = r.influence_full.reshape(-1), r.influence_head.reshape(-1)
    axes[0].scatter(a, b, s=5, alpha=0.4)
    lim = [min(a.min(), b.min()), max(a.max(), b.max())]
    axes[0].plot(lim, lim, "k--", lw=0.8)
    axes[0].set_xlabel("full-model influence I")
    axes[0].set_ylabel("head-only influence I_head")
    axes[0].set_title(f"Spearman {r.spearman:.3f}, Pearson {r.pearson:.3f}")
    if r.eigenvalues is not None and r.head_mass is not None:
        ev = np.asarray(r.eigenvalues)
        m = np.asarray(r.head_mass)[: ev.size]
        sc = axes[1].scatter(np.abs(ev), m, c=np.sign(ev), s=6, cmap="coolwarm")
        axes[1].set_xscale("log")
        axes[1].set_xlabel("|eigenvalue| of H")
        axes[1].set_ylabel("mass on head coordinates ‖q[C]‖²")
        axes[1].set_title("eigenvectors: small eigenvalues dominate H⁻¹")
        del sc
    report.figure(fig, "Left: every sampled (test, train) pair; the dashed line is I_head = I. Right: each "
                       "eigenvector of the full Hessian by its eigenvalue and its weight on the head's parameters.")
    return report
