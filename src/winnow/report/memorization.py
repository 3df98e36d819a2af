"""Report: memorization scores and verdicts (paper section 6)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..analyses.memorization import MemorizationResult
from .words import memorization_reading


def memorization_figure(result: MemorizationResult) -> Any:
    """Histogram of memorization scores (log x axis) by label with the threshold D."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    s = result.scores
    pos = s[s > 0]
    lo, hi = (float(pos.min()), float(pos.max())) if pos.size else (1e-12, 1.0)
    bins = np.geomspace(lo, hi, 60) if hi > lo else 30
    for lab in np.unique(result.labels):
        ax.hist(np.maximum(s[result.labels == lab], lo), bins=bins, alpha=0.55, label=f"label {lab}")
    if result.threshold > 0:
        ax.axvline(result.threshold, color="k", lw=1.0, ls="--", label=f"D = {result.threshold:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("memorization score ‖Λ⁻¹Qᵀg_p‖₁ (> D: memorize)")
    ax.set_ylabel("training points")
    ax.legend()
    return fig


def memorization_section(report: Any, result: MemorizationResult) -> Any:
    """Add the memorization section (histogram with D, verdict counts by label) to a ``winnow.report.Report``."""
    how = (f"the {result.quantile:g} quantile of the scores" if result.quantile is not None else "given")
    report.section("Memorization (paper section 6)",
                   f"score = ‖Λ⁻¹Qᵀg_p‖₁ with H = QΛQᵀ (Definition 6). Threshold D = {result.threshold:.4g} "
                   f"({how}); score > D: memorize, ≤ D: generalize.")
    counts = result.counts_by_label()
    report.reading(memorization_reading(len(result.scores), int(np.sum(result.memorize)), result.threshold, counts))
    report.figure(memorization_figure(result))
    rows = [[c["label"], c["n"], c["memorize"], c["generalize"], c["memorize"] / max(c["n"], 1)]
            for c in counts]
    report.table(["label", "points", "memorize", "generalize", "memorize fraction"], rows)
    if result.hurts_fraction is not None and result.helps_fraction is not None:
        rows = []
        for name, m in (("memorize", result.memorize), ("generalize", ~result.memorize)):
            if m.any():
                rows.append([name, int(m.sum()), float(result.helps_fraction[m].mean()),
                             float(result.hurts_fraction[m].mean())])
        report.section("Sign statistics by verdict",
                       "fraction of test points a training point helps (I_loss < 0) or hurts (I_loss > 0)")
        report.table(["verdict", "points", "mean helps fraction", "mean hurts fraction"], rows)
    return report
