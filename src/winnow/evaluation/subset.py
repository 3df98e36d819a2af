"""Subsets proven by retraining: retrain a head on chosen rows (``fit_subset``), score it
(``classification_metrics``), and compare a SUBSET with the full data and with random subsets of the same
size and class counts (``evaluate_subset``; paper sections 6 and 8)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import validation as V
from ..core.heads import Head, SoftmaxHead, as_tensor
from ..errors import ValidationError
from ..io.sources import open_source
from ..io.subsets import load_subset, subset_source
from ..progress import track

__all__ = ["classification_metrics", "fit_subset", "SubsetEvaluation", "evaluate_subset", "CURVE_FRACTIONS"]

CURVE_FRACTIONS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7)
POLICIES = ("paper", "influence", "wang", "random")


# ================================================================================================ metrics
def classification_metrics(head: Head, data: Any, *, chunk_size: int = 65536, require_auc: bool = False,
                           parameter: str = "valid") -> dict[str, float]:
    """Mean log-loss, AUC (binary; macro one-vs-rest for K classes) and accuracy of ``head`` on ``data``.

    AUC is NaN when a class is missing from ``data``, or raises ValidationError with ``require_auc``.
    """
    from sklearn.metrics import roc_auc_score

    argument = parameter
    (src,) = V.check_head_data(head, **{parameter: data}, labels=False)
    from ..engine.passes import map_columns

    n = len(src)
    if n == 0:
        raise V.fail(f"{argument} is empty", argument)
    cols = map_columns(head, src, _metric_columns, chunk_size=chunk_size, description="metrics")
    loss, correct = float(cols["loss"].sum()), int(cols["correct"].sum())
    y_all, P_all = cols["y"], cols["proba"]
    K = 2 if P_all.ndim == 1 else P_all.shape[1]
    missing = sorted(set(range(K)) - set(np.unique(y_all).tolist()))
    if missing:
        if require_auc:
            raise V.fail(f"{argument} has no examples of class {missing[0]} (classes missing: {missing}); AUC "
                         f"needs every one of the {K} classes: use a larger or stratified validation set, or tune "
                         "for logloss", argument)
        auc = float("nan")
    elif K == 2:
        auc = float(roc_auc_score(y_all, P_all))
    else:
        auc = float(roc_auc_score(y_all, P_all, multi_class="ovr", average="macro", labels=list(range(K))))
    return {"logloss": loss / n, "auc": auc, "accuracy": correct / n}


def _metric_columns(head: Head, X: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Per row: loss, predicted probabilities ((c,) or (c, K)), whether the prediction is right, the label."""
    Xt = as_tensor(X, head.device)
    P = head.predict_proba(Xt)
    pred = (P > 0.5).astype(np.int64) if P.ndim == 1 else P.argmax(1)
    return {"loss": head.losses(Xt, torch.as_tensor(y, device=head.device)).cpu().numpy(), "proba": P,
            "correct": pred == y, "y": y}


# ============================================================================================= retraining
def _blank_head(head: Head, tol: float = 1e-8) -> Head:
    """An unfitted head of the same kind, λ, device (and K) as ``head``."""
    return head.blank(tol)


def fit_subset(head: Head, train: Any, rows: np.ndarray, weights: np.ndarray | None = None,
               normalizer: float | None = None, *, labels: np.ndarray | None = None,
               warm_start: bool = True) -> Head:
    """Retrain a head like ``head`` (kind, λ) on ``rows`` of ``train`` and return it.

    ``weights`` (m,) aligned with ``rows``; ``normalizer`` N of (1/N)Σwℓ (n_train for Horvitz–Thompson
    weights, None for Σw). Warm-started from ``head``'s θ. Raises ConvergenceError if Newton fails.
    """
    src = open_source(train)
    sub = subset_source(src, np.asarray(rows, dtype=np.int64), labels)
    new = _blank_head(head)
    init = head.theta_ if (warm_start and head.is_fitted) else None
    kw: dict[str, Any] = {}
    if isinstance(new, SoftmaxHead):
        kw["n_classes"] = head.n_outputs
    return new.fit(sub, sample_weight=weights, normalizer=normalizer, init=init, **kw)


# ============================================================================================= evaluation
def _agg(values: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k in ("logloss", "auc", "accuracy"):
        arr = np.asarray([v[k] for v in values], dtype=np.float64)
        out[f"{k}_mean"] = float(arr.mean())
        out[f"{k}_std"] = float(arr.std(ddof=1)) if arr.shape[0] > 1 else 0.0
    out["n_runs"] = len(values)
    return out


@dataclass
class SubsetEvaluation:
    """Test metrics of heads retrained on the subset, the full data and random subsets (``rows``), and of
    every policy over keep fractions (``curve``); each entry holds ``*_mean``/``*_std`` over runs;
    ``stationarity`` the ‖∇R(θ̂)‖∞ figure of the head that scored the curve's points (None without one)."""

    rows: list[dict[str, Any]]
    curve: list[dict[str, Any]] = field(default_factory=list)
    subset_summary: dict[str, Any] = field(default_factory=dict)
    stationarity: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        return {"results": self.rows, "curve": self.curve, "subset": self.subset_summary,
                "stationarity": self.stationarity}


def _stratified_random(labels: np.ndarray, counts: np.ndarray, weighted: bool,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Uniform random rows with exactly ``counts`` per class; weights n_c/m_c (weighted) or 1."""
    rows, ws = [], []
    for c, m_c in enumerate(counts):
        idx = np.flatnonzero(labels == c)
        if m_c == 0:
            continue
        rows.append(rng.choice(idx, size=int(m_c), replace=False))
        ws.append(np.full(int(m_c), idx.shape[0] / m_c if weighted else 1.0))
    r, w = np.concatenate(rows), np.concatenate(ws)
    o = np.argsort(r)
    return r[o], w[o]


def evaluate_subset(train: Any, subset: str | Path, test: Any, *, valid: Any = None, head: Head | None = None,
                    l2: float | None = None, seeds: int = 5, curve: bool = False,
                    fractions: Sequence[float] = CURVE_FRACTIONS, policies: Sequence[str] = POLICIES,
                    weightings: Sequence[bool] | None = None, chunk_size: int = 65536,
                    progress: bool = False, refit: bool = False,
                    allow_nonstationary: bool = False) -> SubsetEvaluation:
    """Retrain on the SUBSET (weighted if it has weights), on the full TRAIN and on ``seeds`` random subsets
    of the same size and class counts; report TEST log-loss, AUC and accuracy (mean ± std).

    ``head``: the full-data head (its λ and kind; also the one that scores points for ``curve``); else
    one is fitted on TRAIN with λ = ``l2`` or the λ stored in the subset. ``curve``: for every policy and
    weighting (default: the subset's; both for paper/influence) and keep fraction, the choices are made
    on ``valid`` once and ``seeds`` subsets are drawn and retrained. The head that scores the points must
    be at an optimum of its training objective (refused otherwise unless ``allow_nonstationary``; ``refit``
    first polishes a copy, Newton with the same λ, which then scores the points).
    """
    from ..analyses.sampling import budget_size
    from ..analyses.subsample import Subsampler, compute_scores, split_validation
    from ..api import fit_head

    seeds = V.check_integer(seeds, "seeds", minimum=1)
    chunk_size = V.check_chunk_size(chunk_size)
    if l2 is not None:
        l2 = V.check_number(l2, "l2", minimum=0.0)
    if head is not None:
        data = {"train": train, "test": test, **({"valid": valid} if valid is not None else {})}
        src, test, *rest = V.check_head_data(head, **data)
        valid = rest[0] if rest else None
    else:
        src = V.open_data(train, "train")
    sub = load_subset(subset, src)
    meta = sub.summary
    labels = V.read_labels(src, "train")
    V.check_classes(labels, src.classes, head.kind if head is not None else "auto", "train")
    if head is None:
        lam = l2 if l2 is not None else meta.get("head", {}).get("l2", 1e-3)
        kind = meta.get("head", {}).get("kind", "auto")
        head = fit_head(src, kind=kind, l2=float(lam), tol=1e-9)
    try:  # the first pass over every row of TRAIN: its data errors (NaN features...) name it
        full = fit_subset(head, src, np.arange(len(src)), labels=labels)
    except ValidationError as e:
        raise V.data_error(e, "train") from None
    K = 2 if head.n_outputs == 1 else head.n_outputs
    counts = np.bincount(labels[sub.rows], minlength=K)
    rows: list[dict[str, Any]] = []

    def test_metrics(h: Head) -> dict[str, float]:
        return classification_metrics(h, test, chunk_size=chunk_size, parameter="test")

    rows.append({"method": "full", "weighted": False, "n_kept": len(src),
                 **_agg([test_metrics(full)])})
    h_sub = fit_subset(head, src, sub.rows, sub.weights if sub.weighted else None,
                       sub.normalizer if sub.weighted else None, labels=labels)
    name = f"subset ({meta.get('policy', 'given')})"
    rows.append({"method": name, "weighted": sub.weighted, "n_kept": int(sub.rows.shape[0]),
                 **_agg([test_metrics(h_sub)])})
    res = []
    for s in track(range(int(seeds)), int(seeds), "random-subset retrains", "retrains", enabled=progress):
        r, w = _stratified_random(labels, counts, sub.weighted, np.random.default_rng([s, 104729]))
        res.append(test_metrics(fit_subset(head, src, r, w if sub.weighted else None,
                                           float(len(src)) if sub.weighted else None, labels=labels)))
    rows.append({"method": "random (same size and class counts)", "weighted": sub.weighted,
                 "n_kept": int(sub.rows.shape[0]), **_agg(res)})

    points: list[dict[str, Any]] = []
    stationarity = None
    if curve:
        if valid is None:
            raise V.fail("curve needs a validation set (valid): every policy makes its choices on it", "curve",
                         "valid")
        for f in fractions:
            budget_size(f, len(src))
        policies = list(policies)
        for p in policies:
            if p not in POLICIES:
                raise V.fail(f"policies must be among {', '.join(POLICIES)}; got {p!r}", "policies")
        score_fraction = meta.get("score_fraction", 0.5)
        # the subset's own tuning: cross-fitting on the two halves of VALID and the split memorize rule (a
        # SUBSET file written before these existed has neither key: its choices were made the earlier way)
        crossfit, split_memorize = bool(meta.get("crossfit", False)), bool(meta.get("split_memorize", False))
        need_infl = any(p in ("influence", "wang") for p in policies) or ("paper" in policies and split_memorize)
        folds = split_validation(valid, 0.5, 0) if crossfit and need_infl else None
        score_valid = None if folds else split_validation(valid, score_fraction, 0)[0] if score_fraction else valid
        scores = compute_scores(head, src, score_valid, influence=need_infl,
                                memorization="paper" in policies, chunk_size=chunk_size, progress=progress,
                                refit=refit, allow_nonstationary=allow_nonstationary, folds=folds)
        if scores.head is not None:
            head = scores.head
            stationarity = scores.stationarity.as_dict() if scores.stationarity is not None else None
        combos = []
        for p in policies:
            ws = weightings if weightings is not None else ((sub.weighted,) if p == "random" else (False, True))
            for wt in ws:
                for f in fractions:
                    combos.append((p, bool(wt), float(f)))
        for p, wt, f in track(combos, len(combos), "curve", "points", enabled=progress):
            # every choice (k, D, ratio) is made afresh on VALID at each fraction: a D that suits one budget
            # can exceed a smaller one
            sampler = Subsampler(f, policy=p, weighted=wt, tune_ratio=meta.get("tune_ratio"), seed=0,
                                 score_fraction=score_fraction, chunk_size=chunk_size, crossfit=crossfit,
                                 split_memorize=split_memorize)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                sampler.fit(src, head, valid, scores=scores)
            res = []
            for s in range(int(seeds)):
                r, w = sampler.resample(s)
                res.append(test_metrics(sampler.fit_head(r, w)))
            points.append({"policy": p, "weighted": wt, "keep": f, "n_kept": sampler.budget_,
                           "sharpness": getattr(sampler, "sharpness_", None),
                           "alpha": getattr(sampler, "alpha_", None),
                           "memorize_quantile": getattr(sampler, "memorize_quantile_", None),
                           "class_budget": sampler.class_budget_.tolist(), **_agg(res)})
        full_row = rows[0]
        for f in fractions:
            points.append({"policy": "full", "weighted": False, "keep": float(f), "n_kept": len(src),
                           **{k: v for k, v in full_row.items() if k.endswith(("_mean", "_std")) or k == "n_runs"}})
    return SubsetEvaluation(rows=rows, curve=points, subset_summary=meta, stationarity=stationarity)
