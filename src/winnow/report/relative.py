"""Report sections and figures for relative Hessians and the LEP search (``winnow.analyses.lep``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..analyses.lep import LEPResult, SearchResult
from ..errors import ValidationError
from .words import agreement, lep_reading, num

__all__ = ["search_figure", "report_section"]


def search_figure(result: SearchResult) -> Any:
    """Agreement vs m (log axis) with the curvature-pass seconds of each m on a twin axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.array([s.size for s in result.steps], dtype=float)
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for key, label, style in (("spearman", "Spearman", "o-"), ("pearson", "Pearson", "s--"),
                              ("sign_agreement", "sign agreement", "^:"),
                              ("top_harmful_overlap", "top-1% harmful overlap", "v-."),
                              ("top_helpful_overlap", "top-1% helpful overlap", "d-.")):
        ax.plot(m, [s.statistics[key] for s in result.steps], style, ms=4, label=label)
    ax.axhline(result.threshold, color="k", lw=0.8, ls="--")
    if result.recommended_sample_size is not None:
        ax.axvline(result.recommended_sample_size, color="tab:green", lw=1.0, alpha=0.7)
    ax.set_xscale("log", base=2)
    ax.set_xticks(m)
    ax.set_xticklabels([f"{int(v):,}" for v in m], rotation=45 if len(m) > 6 else 0, fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("sample size m")
    vs = "two independent samples" if result.mode == "two-sample" else "sample vs full Hessian"
    ax.set_ylabel(f"agreement ({vs})")
    ax.set_title(f"LEP search, sampler {result.sampler}: recommended m = {result.recommended_sample_size} "
                 f"(n = {result.n_train}, P = {result.n_params})", fontsize=10)
    ax2 = ax.twinx()
    ax2.plot(m, [s.seconds_curvature for s in result.steps], "x-", color="tab:gray", alpha=0.8,
             label="sampled curvature pass (s)")
    if result.full_seconds is not None:
        ax2.axhline(result.full_seconds, color="tab:gray", ls=":", label="full Hessian pass (s)")
    ax2.set_ylabel("seconds (curvature pass)")
    ax2.set_ylim(bottom=0)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def lep_section(report: Any, result: SearchResult | LEPResult, *, title: str = "Relative influence (LEP)") -> Any:
    """Add the LEP curve (a SearchResult) or a single LEP check (an LEPResult) to a ``winnow.report.Report``."""
    if isinstance(result, SearchResult):
        vs = ("two independent samples of size m" if result.mode == "two-sample"
              else "each sample against the full Hessian")
        sp = result.speedup()
        text = (f"Relative Hessian H⁽ᵐ⁾ (paper eq. 52) from m sampled training rows ({result.sampler} sampler, "
                f"seed {result.seed}); agreement of the influence on the mean test loss over all "
                f"{result.n_train} training points, {vs}. Recommended m (first with {result.metric} ≥ "
                f"{result.threshold:g}): {result.recommended_sample_size}."
                + (f" Curvature-pass speed-up at that m: {sp:.1f}×." if sp is not None else "")
                + (f" Choosing the sample cost {result.selection['rows_read']:.0f} rows read "
                   f"({result.selection['seconds']:.3g} s)." if result.selection.get("rows_read") else ""))
        report.section(title, text)
        report.reading(lep_reading(result.recommended_sample_size, result.n_train, result.metric, result.threshold,
                                   sp))
        report.table(list(SearchResult.TABLE_HEADER), result.table_rows())
        report.figure(result.figure(), "Agreement vs sample size m; grey: seconds of the curvature pass.")
        return report
    if isinstance(result, LEPResult):
        s = result.statistics
        report.section(title, f"Full vs relative influence on the mean test loss over {result.n_train} "
                              f"training points: ratio r = I / I⁽ᵐ⁾ (eq. 55).")
        verdict = agreement(s.get("spearman", float("nan")))
        report.reading(f"Spearman {num(s.get('spearman', float('nan')))} between the influence from the full and "
                       f"from the sampled Hessian: they {verdict}"
                       + ("; the sample is large enough." if verdict == "agree well" else
                          "; use a larger sample (`--sample-size`) or the full Hessian."))
        report.table(["statistic", "value"], [[k, v] for k, v in s.items()])
        return report
    raise ValidationError(f"report_section expects a SearchResult or LEPResult, got {type(result).__name__}")


report_section = lep_section  # the name this section had before
