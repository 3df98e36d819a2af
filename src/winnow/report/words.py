"""Plain words for the reports: one sentence per section saying what its figures mean for the user, chosen
from the figures themselves (thresholds), never fixed text that could contradict them."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["agreement", "num", "pct", "correlation_reading", "fidelity_reading", "group_reading", "lds_reading",
           "mislabel_reading", "lep_reading", "memorization_reading", "sign_rule_reading", "theorem3_reading",
           "theorem1_reading", "subsample_reading"]

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


def correlation_reading(r: float, between: str, *, measure: str = "Pearson", good: float = GOOD,
                        fair: float = FAIR) -> str:
    """"Pearson 0.98 between <between>: they agree well; <advice>" for predictions checked against retraining."""
    verdict = agreement(r, good, fair)
    advice = _advice(verdict, ("the scores can be trusted to rank points as retraining does.",
                               "use the scores to rank points, but check the top ones by retraining.",
                               "do not rely on single scores; add damping, refit the head, or use the Newton "
                               "columns."))
    return f"{measure} {num(r)} between {between}: they {verdict}; {advice}"


def _advice(verdict: str, advice: tuple[str, str, str]) -> str:
    return {"agree well": advice[0], "agree moderately": advice[1], "agree poorly": advice[2]}.get(
        verdict, "the comparison says nothing here.")


def fidelity_reading(pearson_first: float, pearson_newton: float | None = None) -> str:
    """Leave-one-out: predicted vs actual changes (first order, and the Newton step when given)."""
    text = correlation_reading(pearson_first, "predicted (first-order) and actual leave-one-out changes")
    if pearson_newton is not None and not math.isnan(pearson_newton) and not math.isnan(pearson_first) \
            and pearson_newton - pearson_first >= 0.02:
        text += (f" The Newton step agrees better (Pearson {num(pearson_newton)}): use `--newton` for the effect "
                 f"of removing a point.")
    return text


def group_reading(fraction: float, first_error: float, newton_error: float) -> str:
    """Group removal at the largest group size: median relative errors of first order and Newton."""
    def how(e: float) -> str:
        return "close" if e <= 0.1 else "roughly right" if e <= 0.3 else "far off"

    text = (f"Removing groups of {pct(fraction)} of the training points, first order is {how(first_error)} (median "
            f"error {pct(first_error)} of the actual change) and Newton is {how(newton_error)} "
            f"({pct(newton_error)})")
    if newton_error < first_error / 2:
        return text + ": predict the effect of removing many points with the Newton columns."
    if first_error <= 0.3:
        return text + ": the influence scores can be summed to predict removing a group."
    return text + ": summed scores do not predict large removals well; retrain to check."


def lds_reading(score: float) -> str:
    """The linear datamodeling score."""
    if score is None or math.isnan(float(score)):
        return "The LDS could not be computed (the test losses did not vary over the subsets)."
    verdict = "well" if score >= 0.6 else "moderately" if score >= 0.3 else "poorly"
    return (f"LDS {num(score)}: summed influence scores predict {verdict} how the test loss changes when the head "
            f"is retrained on random subsets of the data" + (
                "." if verdict != "poorly" else "; rank single points with care, and prefer the Newton columns."))


def mislabel_reading(fraction_checked: float, found: dict[str, float], labels: dict[str, str]) -> str:
    """Mislabel detection at one check fraction: ``found`` (ranking -> fraction of flips found)."""
    ranked = {k: v for k, v in found.items() if k != "random"}
    if not ranked:
        return "Only the random ranking was checked."
    best = max(ranked, key=lambda k: ranked[k])
    rnd = found.get("random", fraction_checked)
    text = (f"Checking the top {pct(fraction_checked)} of training points by {labels.get(best, best)} finds "
            f"{pct(ranked[best])} of the flipped labels (random checking: {pct(rnd)})")
    if ranked[best] >= 1.5 * rnd and ranked[best] > rnd + 0.05:
        return text + f": rank by {labels.get(best, best)} to look for wrong labels in your data."
    return text + ": no ranking beats random checking by much here."


def lep_reading(recommended: int | None, n_train: int, metric: str, threshold: float,
                speedup: float | None = None) -> str:
    """The LEP search: the smallest Hessian sample that preserves the influence."""
    if recommended is None:
        return (f"No sample size tried reached {metric} ≥ {num(threshold)}: keep the full Hessian "
                f"(`--hessian full`).")
    text = (f"A Hessian from m = {num(int(recommended))} of the {num(int(n_train))} training rows "
            f"({pct(recommended / max(n_train, 1))}) already gives the same influence ({metric} ≥ {num(threshold)})")
    fast = f", a {speedup:.1f}× faster curvature pass" if speedup is not None and speedup > 1 else ""
    return text + f"{fast}: use `--hessian relative --sample-size {int(recommended)}` on data this size."


def memorization_reading(n: int, memorize: int, threshold: float | None, by_label: list[dict[str, Any]]) -> str:
    """Memorization verdicts: how many memorize, and a label that stands out (``by_label``: dicts with
    ``label`` (shown as given), ``n`` and ``memorize``)."""
    share = memorize / max(n, 1)
    d = f"score > D = {num(threshold)}" if threshold is not None else "score > D; D was not recorded"
    text = (f"{num(int(memorize))} of {num(int(n))} points ({pct(share)}) memorize ({d}): the head fits them on "
            f"their own rather than from what they share with other points.")
    rates = [(c["label"], c["memorize"] / c["n"]) for c in by_label if c["n"]]
    if len(rates) > 1:
        lab, top = max(rates, key=lambda t: t[1])
        text += (f" Label {lab} has the largest share ({pct(top)})." if top - share >= 0.05
                 else " The share is about the same for every label.")
    return text


def sign_rule_reading(hold_rate: float) -> str:
    """Theorem 4: the share of sampled pairs whose sign follows the labels."""
    how = "almost always" if hold_rate >= 0.9 else "mostly" if hold_rate >= 0.6 else "often does not"
    tail = ("" if hold_rate >= 0.6 else "; the sign of an influence score says little about labels here")
    return (f"The sign rule holds for {pct(hold_rate)} of sampled pairs: a training point {how} "
            f"{'helps' if hold_rate >= 0.6 else 'help'} test points of its own label and "
            f"{'harms' if hold_rate >= 0.6 else 'harm'} the others{tail}.")


def theorem3_reading(holds: int, checked: int) -> str:
    """Theorem 3: for how many test points every influential training point exceeds the thresholds."""
    if checked == 0:
        return "No test point was checked."
    if holds == checked:
        return (f"Theorem 3 holds for all {checked} test points checked: every training point that moves their "
                f"loss has a memorization score above the thresholds.")
    return (f"Theorem 3 holds for {holds} of {checked} test points checked; for the others some influential points "
            f"score below the thresholds (the head may be far from the theorem's assumptions).")


def theorem1_reading(spearman: float) -> str:
    """Theorem 1: head-only vs full-model influence."""
    verdict = agreement(spearman)
    advice = _advice(verdict, ("the cheap head-only scores rank points as the whole model's influence does.",
                               "head-only scores are usable for ranking; check the top points with "
                               "`winnow model-influence`.",
                               "do not rely on head-only influence for this model; use `winnow model-influence` "
                               "(`--curvature kfac` for a network of Linear and Conv2d layers: on an MNIST "
                               "MLP where this check disagreed, it predicted retraining the whole network twice "
                               "as well as head-only influence did)."))
    return (f"Spearman {num(spearman)} between head-only and full-model influence: they {verdict}; {advice}")


def subsample_reading(subset: dict[str, Any], random: dict[str, Any] | None, full: dict[str, Any] | None) -> str:
    """Subsampling: the subset's test log-loss against a random subset of the same size and the full data."""
    s = subset["logloss_mean"]
    text = f"The subset of {num(int(subset['n_kept']))} rows gives test log-loss {num(s)}"
    if full is not None:
        text += f" (full data: {num(full['logloss_mean'])})"
    if random is None:
        return text + "."
    r, sd = random["logloss_mean"], max(random.get("logloss_std", 0.0), subset.get("logloss_std", 0.0))
    text += f"; a random subset of the same size and class counts gives {num(r)}"
    if s < r - max(sd, 1e-12):
        return text + ": the influence-guided choice beats random."
    if s > r + max(sd, 1e-12):
        return text + (": the influence-guided choice is worse than random here; keep a larger fraction or try "
                       "another policy.")
    return text + ": the influence-guided choice is no better than random here."
