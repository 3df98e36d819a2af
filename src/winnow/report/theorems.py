"""Report: Theorems 3 and 4, the λ sweep and the section-8 removal experiment."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..analyses.theorems import SignRuleResult, TheoremCheck
from .memorization import memorization_section
from .words import num, sign_rule_reading, theorem3_reading


def influence_pairs_figure(result: SignRuleResult) -> Any:
    """Histograms of log10 |I_loss(z_t, z_p)| over the sampled pairs, one panel per (y_t, y_p), split into
    the pairs whose sign obeys eq. 91 and those that violate it."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(8, 5.2), sharex=True)
    v = result.pair_influence
    mag = np.log10(np.abs(v[v != 0])) if np.any(v != 0) else np.zeros(1)
    bins = np.linspace(float(mag.min()), float(mag.max()) + 1e-9, 50)
    for a in (0, 1):
        for b in (0, 1):
            ax = axes[a][b]
            sel = v[(result.pair_yt == a) & (result.pair_yp == b)]
            sel = sel[sel != 0]
            good = sel > 0 if a != b else sel < 0
            want = "> 0" if a != b else "< 0"
            ax.hist(np.log10(np.abs(sel[good])), bins=bins, alpha=0.65, color="tab:green",
                    label=f"I {want} (obeys)")
            ax.hist(np.log10(np.abs(sel[~good])), bins=bins, alpha=0.65, color="tab:gray", label="violates")
            ax.set_title(f"y_t = {a}, y_p = {b}: eq. 91 wants I {want} ({good.mean() if sel.size else 0:.0%} do)",
                         fontsize=9)
            ax.legend(fontsize=7)
    for ax in axes[1]:
        ax.set_xlabel("log10 |I_loss(z_t, z_p)|,  I_loss = −g_tᵀH⁻¹g_p")
    fig.tight_layout()
    return fig


def theorems_section(report: Any, results: TheoremCheck) -> Any:
    """Add Theorem 3, memorization, the 2×2 sign table with its condition rates, influence histograms by
    (y_t, y_p), the λ sweep and the removal experiment to a ``winnow.report.Report``."""
    text = ("D± = 𝒯±·λ_min / max|ψ| (λ_min: smallest eigenvalue of H⁻¹). The theorem says every "
            "training point with I_loss > 0 (< 0) has memorization score > D⁺ (> D⁻). A threshold of 0 "
            "makes its part vacuous: any point with I_loss ≠ 0 has a positive score.")
    if results.theorem3 and all(r.vacuous for r in results.theorem3):
        text += (" Here Theorem 3 holds only vacuously: its thresholds are 0 (or no point has that sign of "
                 "I_loss), so it says nothing about memorization on this head.")
    report.section("Theorem 3: memorization thresholds", text)
    report.reading(theorem3_reading(sum(bool(r.holds) for r in results.theorem3), len(results.theorem3)))
    report.table(["test id", "y_t", "D⁺", "I>0", "exceed D⁺", "D⁻", "I<0", "exceed D⁻", "holds"],
                 [[r.test_id, r.test_label, r.D_plus, r.n_positive, r.n_positive_exceeding, r.D_minus,
                   r.n_negative, r.n_negative_exceeding, r.verdict] for r in results.theorem3])
    if results.memorization is not None:
        memorization_section(report, results.memorization)
    sr = results.sign_rule
    if sr is not None:
        seed = "" if sr.all_pairs else f" (seed {sr.seed})"
        report.section("Theorem 4: sign of influence vs labels",
                       f"{sr.pairs_text} (test, train){seed}. Eq. 91: I_loss > 0 when "
                       f"y_t ≠ y_p and < 0 when y_t = y_p; it holds exactly when ũ_tᵀH⁻¹ũ_p > 0.")
        report.reading(sign_rule_reading(sr.hold_rate))
        rows = []
        for a in (0, 1):
            for b in (0, 1):
                rows.append([a, b, sr.table["pairs"][a][b], sr.table["hold"][a][b], sr.table["hold_rate"][a][b],
                             sr.table["kernel_positive"][a][b]])
        report.table(["y_t", "y_p", "pairs", "rule holds", "hold rate", "kernel > 0"], rows)
        report.table(["condition", "value"], [
            ["hold rate (eq. 91)", sr.hold_rate], ["kernel-positive rate", sr.kernel_positive_rate],
            ["hold ≠ kernel>0 pairs", sr.hold_kernel_mismatches],
            ["nonnegative feature entries (train)", sr.features_nonnegative_fraction["train"]],
            ["rows with all features ≥ 0 (train)", sr.rows_all_nonnegative_fraction["train"]],
            ["positive entries of H⁻¹", sr.hinv_positive_fraction],
            ["sufficient condition (features ≥ 0, H⁻¹ ≥ 0)", sr.sufficient_condition]])
        report.figure(influence_pairs_figure(sr), "sampled pairwise influence by (y_t, y_p)")
    if results.l2_sweep:
        report.section("Sign rule vs λ", "the head refitted for each λ; same pairs")
        report.table(["λ", "hold rate", "kernel > 0", "H⁻¹ > 0 entries", "test loss", "test accuracy"],
                     [[r["l2"], r["hold_rate"], r["kernel_positive_rate"], r["hinv_positive_fraction"],
                       r["test_loss"], r["test_accuracy"]] for r in results.l2_sweep])
    if results.removal:
        report.section("Section 8: removing a class fraction, retrained",
                       "change of mean test loss on positive / negative test points (retrained on the "
                       "ε = −1/n objective; 'plain' retrains on the kept rows with normalizer n − m)")
        ok = sum(bool(r.consistent) for r in results.removal)
        report.reading(f"{num(ok)} of {num(len(results.removal))} removals change the test loss as section 8 "
                       f"predicts" + (": removing points of one class raises the loss on that class and lowers it "
                                      "on the other." if ok == len(results.removal) else
                                      "; the others do not, so read the class-removal predictions with care."))
        report.table(["removed label", "removed", "Δ loss pos", "Δ loss neg", "predicted Δ pos", "predicted Δ neg",
                      "plain Δ pos", "plain Δ neg", "as section 8 says"],
                     [[r.removed_label, r.n_removed, r.delta_pos, r.delta_neg, r.predicted_delta_pos,
                       r.predicted_delta_neg, r.plain_delta_pos, r.plain_delta_neg, r.consistent]
                      for r in results.removal])
    return report
