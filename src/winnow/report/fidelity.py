"""Report: first order vs Newton against leave-one-out, and group removal."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..analyses.fidelity import METHOD_LABELS, SUMMARY_HEADER, GroupDivergenceResult, RemovalMethodsResult
from .words import fidelity_reading, group_reading


def removal_methods_section(report: Any, result: RemovalMethodsResult, title: str = "Leave-one-out: first order "
                            "vs Newton") -> Any:
    """Table of Pearson/Spearman per method and predicted-vs-actual scatters (first order, Newton)."""
    import matplotlib.pyplot as plt

    report.section(title, f"{len(result.actual)} training points removed one at a time (n = {result.n_train}); "
                   "actual: retrained on the ε = −1/n objective. Newton: one Newton step on that objective "
                   "(1/n)H₋ₚ⁻¹g_p, evaluated in the test loss.")
    report.reading(fidelity_reading(result.pearson["first_order"], result.pearson.get("newton_exact")))
    report.table(["method", "Pearson", "Spearman", "max error / max |actual|"], result.table())
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 4.4), sharex=True, sharey=True)
    a = result.actual
    for ax, m in zip(axes, ("first_order", "newton_exact")):
        p = result.predicted[m]
        ax.scatter(a, p, s=12, alpha=0.7)
        lim = [float(np.nanmin([a.min(), np.nanmin(p)])), float(np.nanmax([a.max(), np.nanmax(p)]))]
        ax.plot(lim, lim, "k--", lw=0.8)
        ax.set_title(f"{METHOD_LABELS[m]}: Pearson {result.pearson[m]:.5f}", fontsize=9)
        ax.set_xlabel("actual change of mean test loss")
        ax.ticklabel_format(style="sci", scilimits=(-3, 3))
    axes[0].set_ylabel("predicted change")
    report.figure(fig, "Predicted vs actual change of the mean test loss on removal (dashed: y = x).")
    return report


def group_section(report: Any, result: GroupDivergenceResult) -> Any:
    """Table of group predictions vs retraining and a scatter of predicted vs actual."""
    import matplotlib.pyplot as plt

    obj = "retrained on the kept rows (normaliser n − |S|)" if result.renormalize else "ε = −1/n objective"
    report.section("Group removal: first order vs Newton", f"n = {result.n_train}; actual: {obj}.")
    summary = result.summary_rows()
    if summary:
        largest = max(r[1] for r in summary)
        row = next((r for r in summary if r[1] == largest and r[0] == "random"),
                   next(r for r in summary if r[1] == largest))
        report.reading(group_reading(largest, row[4], row[6]))
    report.table(SUMMARY_HEADER, summary)
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    a = np.array([g.actual for g in result.groups])
    for name, attr, mk in (("first order", "first_order", "o"), ("Newton (exact loss)", "newton_exact", "x")):
        ax.scatter(a, [getattr(g, attr) for g in result.groups], s=18, marker=mk, label=name)
    lim = [float(a.min()), float(a.max())]
    ax.plot(lim, lim, "k--", lw=0.8)
    ax.set_xlabel("actual change of mean test loss (retrained)")
    ax.set_ylabel("predicted")
    ax.legend()
    report.figure(fig, "Each marker is one removed group (random or highest-influence, 1 % to 50 % of n).")
    return report
