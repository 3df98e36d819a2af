"""Plain words for the reports: one sentence per section saying what its figures mean for the user, chosen
from the figures themselves (thresholds), never fixed text that could contradict them."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["agreement", "num", "pct", "correlation_reading"]

#: a correlation at or above GOOD agrees well, at or above FAIR moderately, below it poorly
GOOD, FAIR = 0.9, 0.6


def num(x: Any) -> str:
    """A number in a sentence: 3 significant digits (integers as they are)."""
    if isinstance(x, (bool,)) or x is None:
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    x = float(x)
    return "n/a" if math.isnan(x) else f"{x:.3g}"


def pct(x: float) -> str:
    """A fraction in [0, 1] as a percentage ("38%", "0.4%", "<0.1%")."""
    x = float(x)
    if math.isnan(x):
        return "n/a"
    if 0 < x < 0.001:
        return "<0.1%"
    return f"{100 * x:.0f}%" if x == 0 or x >= 0.1 or x == 1 else f"{100 * x:.1f}%"


def agreement(r: float, good: float = GOOD, fair: float = FAIR) -> str:
    """'agree well' (r >= good), 'agree moderately' (r >= fair), 'agree poorly' (below, or NaN)."""
    if r is None or math.isnan(float(r)):
        return "cannot be compared (no variation)"
    return "agree well" if r >= good else "agree moderately" if r >= fair else "agree poorly"


def correlation_reading(r: float, what: str, reference: str, *, measure: str = "Pearson",
                        good: float = GOOD, fair: float = FAIR) -> str:
    """"Pearson 0.98 between <what> and <reference>: they agree well, ..." with the advice that fits."""
    verdict = agreement(r, good, fair)
    advice = {"agree well": "the scores can be trusted to rank points as retraining does.",
              "agree moderately": "use the scores to rank points, but check the top ones by retraining.",
              "agree poorly": "do not rely on single scores; add damping, refit the head, or use the Newton "
                              "columns."}.get(verdict, "the comparison says nothing here.")
    return f"{measure} {num(r)} between {what} and {reference}: they {verdict}; {advice}"
