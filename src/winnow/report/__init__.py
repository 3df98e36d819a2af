"""Report: the HTML report and every figure and section a user reads, one module per topic. Sections are
named ``<topic>_section(report, result)`` and figures ``<what>_figure(result)``."""

from .html import Report, figure_png, loo_scatter_figure

__all__ = ["Report", "figure_png", "loo_scatter_figure",
           "memorization_section", "theorems_section", "removal_methods_section", "group_section",
           "theorem1_section", "lds_section", "mislabel_section", "lep_section", "subsample_section",
           "run_report", "summarize_scores", "scores_report", "top_points_text"]

_SECTIONS = {"memorization_section": "memorization", "memorization_figure": "memorization",
             "theorems_section": "theorems", "influence_pairs_figure": "theorems",
             "removal_methods_section": "fidelity", "group_section": "fidelity", "theorem1_section": "theorem1",
             "lds_section": "lds", "mislabel_section": "mislabel", "lep_section": "relative",
             "search_figure": "relative", "subsample_section": "subsample", "curve_figure": "subsample",
             "run_report": "run", "summarize_scores": "run", "scores_report": "run", "top_points_text": "run"}


def __getattr__(name: str):  # sections import their analyses (and torch) only when used
    if name in _SECTIONS:
        import importlib

        return getattr(importlib.import_module(f".{_SECTIONS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
