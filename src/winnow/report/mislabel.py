"""Report: mislabel detection, found-vs-checked curves."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..evaluation.mislabel import RANKING_LABELS, MislabelResult
from .words import mislabel_reading


def mislabel_section(report: Any, result: MislabelResult) -> Any:
    """The found-vs-checked curve (mean over seeds) and the table at the check fractions."""
    import matplotlib.pyplot as plt

    seeds = next(iter(result.curves.values())).shape[0]
    report.section("Mislabel detection",
                   f"{result.n_flipped} of {result.n_train} training labels flipped ({result.flip:g}), "
                   f"{result.head_kind} head, λ = {result.l2:g}, {seeds} seed(s); clean validation: "
                   f"{result.valid}. Check the top of each ranking; curve: fraction of the flips found.")
    i = int(np.argmin(np.abs(np.asarray(result.check_fractions) - 0.1)))  # the check fraction nearest 10 %
    report.reading(mislabel_reading(float(result.check_fractions[i]),
                                    {r: float(a.mean(0)[i]) for r, a in result.at.items()}, RANKING_LABELS))
    report.table(result.header(), result.table())
    fig, ax = plt.subplots(figsize=(6, 4.4))
    for r, c in result.curves.items():
        m = c.mean(0)
        ax.plot(100 * result.grid, m, label=RANKING_LABELS[r])
        if c.shape[0] > 1:
            ax.fill_between(100 * result.grid, c.min(0), c.max(0), alpha=0.15)
    ax.set_xlabel("training points checked (%)")
    ax.set_ylabel("fraction of flipped labels found")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower right")
    report.figure(fig, "Mean over seeds (band: min to max).")
    return report
