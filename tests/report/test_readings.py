"""Every report section carries one plain sentence chosen from its own figures: the words change with the
numbers (thresholds), and a section built from a real result says what its figures say."""

from __future__ import annotations

import html as htmllib

import numpy as np
import pytest
from conftest import relu_embeddings

from winnow.core.heads import LogisticHead
from winnow.report import Report, lds_section, memorization_section, mislabel_section, removal_methods_section
from winnow.report import words as W


def test_correlation_words_follow_the_thresholds():
    assert W.agreement(0.95) == "agree well" and W.agreement(0.9) == "agree well"
    assert W.agreement(0.7) == "agree moderately" and W.agreement(0.3) == "agree poorly"
    assert "cannot be compared" in W.agreement(float("nan"))
    good = W.fidelity_reading(0.98)
    assert good.startswith("Pearson 0.98 between predicted (first-order) and actual leave-one-out changes: they "
                           "agree well; the scores can be trusted")
    assert "agree poorly; do not rely on single scores" in W.fidelity_reading(0.2)
    assert "Newton step agrees better (Pearson 0.99)" in W.fidelity_reading(0.8, 0.99)
    assert "Newton" not in W.fidelity_reading(0.98, 0.985)
    assert "they agree poorly; do not rely on head-only" in W.theorem1_reading(0.1)


def test_each_reading_changes_with_its_figures():
    assert "predict well" in W.lds_reading(0.7) and "predict moderately" in W.lds_reading(0.4)
    assert "predict poorly" in W.lds_reading(0.1)
    labels = {"self_influence": "self-influence", "random": "random"}
    assert W.mislabel_reading(0.1, {"self_influence": 0.6, "random": 0.1}, labels) == (
        "Checking the top 10% of training points by self-influence finds 60% of the flipped labels (random "
        "checking: 10%): rank by self-influence to look for wrong labels in your data.")
    assert "no ranking beats random" in W.mislabel_reading(0.1, {"self_influence": 0.12, "random": 0.1}, labels)
    assert W.lep_reading(None, 1000, "spearman", 0.95).startswith("No sample size tried reached spearman ≥ 0.95")
    assert "m = 2,048 of the 60,000 training rows (3.4%)" in W.lep_reading(2048, 60000, "spearman", 0.95, 4.0)
    assert "--sample-size 2048" in W.lep_reading(2048, 60000, "spearman", 0.95)
    assert "almost always helps" in W.sign_rule_reading(0.95) and "often does not help" in W.sign_rule_reading(0.3)
    assert W.theorem3_reading(3, 3).startswith("Theorem 3 holds for all 3 test points")
    assert W.theorem3_reading(1, 3).startswith("Theorem 3 holds for 1 of 3 test points")
    assert "Newton columns" in W.group_reading(0.5, 0.4, 0.05)
    assert "can be summed" in W.group_reading(0.01, 0.05, 0.04)
    assert "retrain to check" in W.group_reading(0.5, 0.6, 0.5)
    by = [{"label": 0, "n": 100, "memorize": 5}, {"label": 1, "n": 100, "memorize": 35}]
    assert "Label 1 has the largest share (35%)" in W.memorization_reading(200, 40, 1.5, by)
    even = [{"label": 0, "n": 100, "memorize": 10}, {"label": 1, "n": 100, "memorize": 11}]
    assert "about the same for every label" in W.memorization_reading(200, 21, 1.5, even)
    sub = {"n_kept": 100, "logloss_mean": 0.30, "logloss_std": 0.01}
    assert "beats random" in W.subsample_reading(sub, {"logloss_mean": 0.40, "logloss_std": 0.02}, None)
    assert "worse than random" in W.subsample_reading(sub, {"logloss_mean": 0.20, "logloss_std": 0.02}, None)
    assert "no better than random" in W.subsample_reading(sub, {"logloss_mean": 0.305, "logloss_std": 0.02}, None)


@pytest.fixture(scope="module")
def small():
    X, y = relu_embeddings(160, d_in=6, d=5, seed=11)
    head = LogisticHead(l2=1e-2, tol=1e-11).fit(X[:120], y[:120])
    return head, (X[:120], y[:120]), (X[120:], y[120:])


def readings(rep: Report) -> list[str]:
    return [htmllib.unescape(p.split(">", 1)[1].rsplit("<", 1)[0]) for p in rep.parts if "class='reading'" in p]


def test_sections_read_their_own_figures(small):
    from winnow.analyses.fidelity import compare_removal_methods
    from winnow.analyses.memorization import MemorizationAnalyzer
    from winnow.evaluation.lds import linear_datamodeling_score

    head, train, test = small
    res = compare_removal_methods(head, train, test, points=12, seed=0)
    p = res.pearson["first_order"]
    # the verdict written out here from the value, independently of the library's thresholds table
    verdict = "agree well" if p >= 0.9 else "agree moderately" if p >= 0.6 else "agree poorly"
    (text,) = readings(removal_methods_section(Report("t"), res))
    assert text.startswith(f"Pearson {p:.3g} between predicted (first-order) and actual leave-one-out changes: "
                           f"they {verdict}")
    lds = linear_datamodeling_score(head, train, test, subsets=12, seed=0)
    (text,) = readings(lds_section(Report("t"), lds))
    assert text.startswith(f"LDS {lds.score:.3g}: summed influence scores predict "
                           f"{'well' if lds.score >= 0.6 else 'moderately' if lds.score >= 0.3 else 'poorly'}")
    mem = MemorizationAnalyzer(quantile=0.8).fit(head, train).result()
    (text,) = readings(memorization_section(Report("t"), mem))
    k = int(np.sum(mem.scores > mem.threshold))
    assert text.startswith(f"{k} of 120 points ({round(100 * k / 120)}%) memorize (score > D = "
                           f"{mem.threshold:.3g})")


def test_mislabel_section_names_the_best_ranking(small):
    from winnow.evaluation.mislabel import evaluate_mislabel

    head, train, _ = small
    res = evaluate_mislabel(train, flip=0.1, seeds=1, l2=1e-2, check_fractions=(0.1, 0.2))
    found = {r: float(a.mean(0)[0]) for r, a in res.at.items()}
    best = max((r for r in found if r != "random"), key=found.get)
    (text,) = readings(mislabel_section(Report("t"), res))
    from winnow.evaluation.mislabel import RANKING_LABELS

    assert text.startswith(f"Checking the top 10% of training points by {RANKING_LABELS[best]} finds "
                           f"{W.pct(found[best])} of the flipped labels")
