"""Report: the linear datamodeling score (LDS) against retraining."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..evaluation.lds import LdsResult
from .words import lds_reading


def lds_section(report: Any, result: LdsResult) -> Any:
    """LDS value, the per-test-point distribution, and one test point's predicted vs actual losses."""
    import matplotlib.pyplot as plt

    obj = "usual fit on the kept rows" if result.renormalize else "ε = −1/n objective"
    report.section("Linear datamodeling score (LDS)",
                   f"{result.subsets} random subsets keeping {result.fraction:g} of n = {result.n_train} rows, "
                   f"head retrained on each ({obj}). Per test point: Spearman over subsets between the actual "
                   f"test loss and (1/n) Σ_(p kept) I_loss(t, p); averaged over test points.")
    report.reading(lds_reading(result.score))
    report.table(["quantity", "value"], [["LDS (first-order influence)", result.score],
                                         ["LDS (Newton group step, reference)", result.score_newton],
                                         ["test points left out (constant)", int(np.isnan(result.per_test).sum())]])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    v = result.per_test[np.isfinite(result.per_test)]
    axes[0].hist(v, bins=30)
    axes[0].axvline(result.score, color="k", lw=1)
    axes[0].set_xlabel("Spearman per test point")
    axes[0].set_ylabel("test points")
    if v.size:
        t = int(np.nanargmin(np.abs(result.per_test - np.nanmedian(result.per_test))))
        axes[1].scatter(result.predicted[:, t], result.actual[:, t], s=12)
        axes[1].set_title(f"median test point: Spearman {result.per_test[t]:.3f}", fontsize=9)
    axes[1].set_xlabel("predicted τ(S) = (1/n) Σ_(p∈S) I_loss")
    axes[1].set_ylabel("actual test loss after retraining")
    report.figure(fig, "Left: distribution of the per-test-point correlation; right: one test point's subsets.")
    return report
