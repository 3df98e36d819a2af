"""Report section and figure for influence-guided subsampling (``winnow.evaluation.subset``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ValidationError
from ..evaluation.subset import SubsetEvaluation
from .words import subsample_reading

__all__ = ["curve_figure", "report_section"]


def curve_figure(evaluation: SubsetEvaluation, metrics: Sequence[str] = ("logloss", "auc", "accuracy")) -> Any:
    """Test metric (mean ± std) vs keep fraction, one line per policy × weighting; full data dashed."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    if not evaluation.curve:
        raise ValidationError("the evaluation has no curve (run evaluate_subset with curve=True)")
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 3.8))
    axes = np.atleast_1d(axes)
    groups: dict[tuple[str, bool], list[dict[str, Any]]] = {}
    for pt in evaluation.curve:
        groups.setdefault((pt["policy"], pt["weighted"]), []).append(pt)
    for ax, met in zip(axes, metrics):
        for (pol, wt), pts in groups.items():
            pts = sorted(pts, key=lambda q: q["keep"])
            x = [q["keep"] for q in pts]
            y = np.array([q[f"{met}_mean"] for q in pts])
            e = np.array([q[f"{met}_std"] for q in pts])
            if pol == "full":
                ax.plot(x, y, "k--", lw=1, label="full data")
                continue
            ax.errorbar(x, y, yerr=e, marker="o", ms=3, capsize=2,
                        label=f"{pol}{' (weighted)' if wt else ''}")
        ax.set_xlabel("keep fraction")
        ax.set_ylabel(f"test {met}")
        ax.set_xscale("log")
        ticks = sorted({pt["keep"] for pt in evaluation.curve})
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def subsample_section(report: Any, evaluation: SubsetEvaluation) -> Any:
    """Add the subsampling section to a ``winnow.report.Report``: results table, the curve, the chosen
    ratio and the memorize/generalize counts kept by class. Returns the report."""
    meta = evaluation.subset_summary
    text = (f"policy {meta.get('policy', '?')}, {'weighted (1/π)' if meta.get('weighted') else 'unweighted'}, "
            f"kept {meta.get('budget', '?')} of {meta.get('n_train', '?')} rows; class ratio "
            f"{meta.get('ratio', '?')}") if meta else "subset without winnow metadata"
    if meta.get("sharpness") is not None:
        text += f"; sharpness k = {meta['sharpness']:g} chosen on VALID"
    if meta.get("alpha") is not None:
        text += f"; fixed sharpness α = {meta['alpha']:g} (T = sd(influence)/α)"
    if meta.get("crossfitted"):
        text += "; choices cross-fitted on the two halves of VALID"
    report.section("Influence-guided subsampling", text)
    by = {r["method"].split(" ")[0]: r for r in evaluation.rows}
    if "subset" in by:
        report.reading(subsample_reading(by["subset"], by.get("random"), by.get("full")))

    def fmt(r: dict[str, Any], k: str) -> str:
        return f"{r[f'{k}_mean']:.4f} ± {r[f'{k}_std']:.4f}"

    report.table(["training set", "weighted", "rows", "runs", "test log-loss", "test AUC", "test accuracy"],
                 [[r["method"], r["weighted"], r["n_kept"], r["n_runs"], fmt(r, "logloss"), fmt(r, "auc"),
                   fmt(r, "accuracy")] for r in evaluation.rows])
    if meta:
        K = len(meta.get("class_sizes", []))
        header = ["class", "rows in TRAIN", "budget", "keep rate"]
        has_mem = "memorize_kept_by_class" in meta
        has_harm = "memorize_harmful_by_class" in meta
        if has_mem:
            header += ["to memorize in TRAIN"] + (["memorizable, harmful to VALID"] if has_harm else []) + [
                "memorize kept", "generalize kept"]
        body = []
        for c in range(K):
            row = [c, meta["class_sizes"][c], meta["class_budget"][c], meta["class_keep_rate"][c]]
            if has_mem:
                row += [meta["memorize_by_class"][c]] + ([meta["memorize_harmful_by_class"][c]] if has_harm
                                                          else []) + [meta["memorize_kept_by_class"][c],
                                                                      meta["generalize_kept_by_class"][c]]
            body.append(row)
        report.section("Class ratio and memorize/generalize counts",
                       f"ratio {meta.get('ratio')}" + (f"; positive share {meta['positive_share']:.4f} "
                                                       f"(full data {meta['positive_share_full']:.4f})"
                                                       if "positive_share" in meta else ""))
        report.table(header, body)
        for note in meta.get("warnings", []):
            report.section("Warning", note)
    if evaluation.curve:
        report.section("Test metrics vs keep fraction", "each point: choices made on VALID, then the mean ± std "
                       "over seeds of heads retrained on the drawn subsets")
        report.figure(curve_figure(evaluation))
    return report


report_section = subsample_section  # the name this section had before
