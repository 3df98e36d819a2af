"""Report: the HTML report and its figures (every section a user reads)."""

from .html import Report, figure_png, influence_by_label_figure, loo_scatter_figure, top_points_rows

__all__ = ["Report", "figure_png", "influence_by_label_figure", "loo_scatter_figure", "top_points_rows"]
