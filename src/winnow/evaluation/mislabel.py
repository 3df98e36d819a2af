"""Mislabel detection (Koh & Liang 2017, section 5.4): flip a fraction of the training labels, refit the head,
rank the training points and count how many flips are found when only the top of each ranking is checked.

Rankings (each descending, the first point is checked first):

- ``self_influence``  g_pᵀH⁻¹g_p (the magnitude of Koh & Liang's I_up,loss(z_p, z_p) = −g_pᵀH⁻¹g_p)
- ``loss``            the training loss ℓ(z_p, θ̂) under the (possibly flipped) label
- ``valid_influence`` influence on a clean validation set, −ḡ_validᵀH⁻¹g_p: > 0 means the point raises the
                      validation loss (harmful), so harmful points are checked first
- ``random``          a random order (the expected curve is the diagonal)

The clean validation set is ``valid`` when given; otherwise a held-out ``valid_fraction`` of TRAIN's rows,
split off (with ``seed``) *before* any label is flipped, so its labels are the original ones; the flips and
the ranking then concern the remaining rows only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import validation as V
from .._moved import moved_names
from ..analyses.influence import InfluenceAnalyzer
from ..core.heads import Head, LogisticHead, SoftmaxHead, as_tensor
from ..progress import track

RANKINGS = ("self_influence", "loss", "valid_influence", "random")
RANKING_LABELS = {"self_influence": "self-influence", "loss": "training loss",
                  "valid_influence": "influence on clean validation", "random": "random"}
DEFAULT_CHECK = (0.05, 0.1, 0.2, 0.3)


def flip_labels(y: np.ndarray, fraction: float, n_classes: int, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
    """(flipped labels, sorted positions flipped): round(fraction·n) rows (at least one) get 1 − y (binary) or
    a uniformly random other class (K > 2)."""
    check_flip(fraction)
    n = len(y)
    m = max(1, int(round(fraction * n)))
    rows = np.sort(rng.choice(n, size=m, replace=False))
    out = y.copy()
    if n_classes == 2:
        out[rows] = 1 - y[rows]
    else:
        out[rows] = (y[rows] + rng.integers(1, n_classes, size=m)) % n_classes
    return out, rows


def check_flip(fraction: float) -> None:
    ok = isinstance(fraction, (int, float, np.integer, np.floating)) and np.isfinite(fraction)
    if not (ok and 0 < fraction < 0.5):
        raise V.fail(f"flip must be strictly between 0 and 0.5 (the fraction of training labels to flip; at 0.5 or "
                     f"more the flipped labels are no longer the minority), got {fraction!r}", "flip")


def found_curve(order: np.ndarray, flipped: np.ndarray, n: int, fractions: np.ndarray) -> np.ndarray:
    """Fraction of ``flipped`` rows among the first round(f·n) rows of ``order``, for each f in ``fractions``."""
    is_flip = np.zeros(n, dtype=bool)
    is_flip[flipped] = True
    cum = np.concatenate([[0], np.cumsum(is_flip[order])])
    k = np.clip(np.round(np.asarray(fractions) * n).astype(np.int64), 0, n)
    return cum[k] / max(1, len(flipped))


@dataclass
class MislabelResult:
    """Fraction of flipped labels found vs fraction of training points checked, per ranking and seed."""

    grid: np.ndarray                      # (G,) fractions checked, 0..1
    curves: dict[str, np.ndarray]         # ranking -> (seeds, G)
    check_fractions: np.ndarray           # (F,)
    at: dict[str, np.ndarray]             # ranking -> (seeds, F)
    flip: float
    n_train: int
    n_flipped: int
    head_kind: str
    l2: float
    valid: str
    extra: dict = field(default_factory=dict)

    def table(self) -> list[list[Any]]:
        """Rows [ranking, mean ± std found at each check fraction]."""
        return [[RANKING_LABELS[r]] + [f"{m:.3f} ± {s:.3f}" for m, s in zip(self.at[r].mean(0), self.at[r].std(0))]
                for r in self.at]

    def header(self) -> list[str]:
        return ["ranking"] + [f"found at {100 * f:g} % checked" for f in self.check_fractions]

    def summary(self) -> dict[str, Any]:
        return {"flip": self.flip, "n_train": self.n_train, "n_flipped": self.n_flipped, "head_kind": self.head_kind,
                "l2": self.l2, "valid": self.valid, "check_fractions": self.check_fractions,
                "found_mean": {r: self.at[r].mean(0) for r in self.at},
                "found_std": {r: self.at[r].std(0) for r in self.at},
                "found_per_seed": self.at, "curve_grid": self.grid,
                "curve_mean": {r: self.curves[r].mean(0) for r in self.curves}, **self.extra}


def _new_head(kind: str, l2: float, n_classes: int, tol: float) -> Head:
    if kind == "logistic":
        return LogisticHead(l2=l2, tol=tol)
    return SoftmaxHead(l2=l2, n_classes=n_classes, tol=tol)


def evaluate_mislabel(train: Any, *, head_kind: str = "auto", l2: float = 1e-3, flip: float = 0.1, seeds: int = 5,
                      valid: Any = None, valid_fraction: float = 0.2, seed: int = 0, damping: float = 0.0,
                      check_fractions: Sequence[float] = DEFAULT_CHECK, tol: float = 1e-8,
                      progress: bool = False) -> MislabelResult:
    """Flip ``flip`` of the training labels (``seeds`` times), refit a ``head_kind`` head with L2 ``l2``, rank by
    self-influence, loss, influence on the clean validation set and at random; see the module docstring.

    Data are held in memory. Returns a :class:`MislabelResult`; raises ValidationError for ``flip`` outside
    (0, 0.5), ``seeds`` < 1 or a ``valid_fraction`` outside (0, 0.9].
    """
    from .loo import load_arrays

    check_flip(flip)
    seeds = V.check_integer(seeds, "seeds", minimum=1)
    seed, damping = V.check_seed(seed), V.check_damping(damping)
    l2 = V.check_number(l2, "l2", minimum=0.0)
    V.check_choice(head_kind, "head_kind", ("auto", "logistic", "softmax"))
    cf = np.asarray(check_fractions, dtype=np.float64)
    if cf.ndim != 1 or cf.size == 0 or np.any(cf <= 0) or np.any(cf > 1):
        raise V.fail(f"check_fractions must be fractions in (0, 1], got {list(check_fractions)}", "check_fractions")
    if valid is None:
        V.check_fraction(valid_fraction, "valid_fraction", high=0.9)
    data = {"train": V.open_data(train, "train")}
    if valid is not None:
        data["valid"] = V.open_data(valid, "valid")
    if head_kind == "logistic":  # softmax takes K from the labels; auto picks the kind that fits them
        for name, src in data.items():
            V.check_labels(LogisticHead(l2=l2), src, name)
    X, y, _ = load_arrays(data["train"], parameter="train")
    from ..validation import check_classes

    check_classes(y, data["train"].classes, head_kind, "train")  # two classes at least, labels 0..K-1
    if valid is not None:
        Xv, yv, _ = load_arrays(data["valid"], parameter="valid")
        if Xv.shape[1] != X.shape[1]:
            raise V.fail(f"valid ({data['valid'].name}) has {Xv.shape[1]} features per row but train has "
                         f"{X.shape[1]}", "valid", "train")
        valid_desc = "given validation set"
    else:
        perm = np.random.default_rng(seed).permutation(len(y))
        m = max(1, int(round(valid_fraction * len(y))))
        Xv, yv, X, y = X[perm[:m]], y[perm[:m]], X[perm[m:]], y[perm[m:]]
        valid_desc = f"held-out {valid_fraction:g} of TRAIN (seed {seed}), labels not flipped"
    if len(y) < 4:
        raise V.fail(f"too few training rows ({len(y)}) in train to flip labels", "train")
    labels = np.concatenate([y, yv])
    if head_kind == "auto":
        head_kind = "logistic" if labels.max() <= 1 and labels.min() >= 0 else "softmax"
    K = 2 if head_kind == "logistic" else max(int(labels.max()) + 1, 2)
    _new_head(head_kind, l2, K, tol).check_labels(labels, argument="labels")
    n = len(y)
    grid = np.linspace(0, 1, 101)
    curves: dict[str, list[np.ndarray]] = {r: [] for r in RANKINGS}
    at: dict[str, list[np.ndarray]] = {r: [] for r in RANKINGS}
    accs = []
    n_flipped = 0
    for s in track(range(seeds), seeds, "mislabel seeds", "seeds", enabled=progress):
        rng = np.random.default_rng([seed, s])
        y_noisy, flipped = flip_labels(y, flip, K, rng)
        n_flipped = len(flipped)
        head = _new_head(head_kind, l2, K, tol).fit(X, y_noisy)
        an = InfluenceAnalyzer(head, damping=damping).fit((X, y_noisy))
        scores = an.score((Xv, yv))
        losses = head.losses(as_tensor(X, head.device), torch.as_tensor(y_noisy, device=head.device)).cpu().numpy()
        keys = {"self_influence": scores.column("self_influence").to_numpy(), "loss": losses,
                "valid_influence": scores.column("influence").to_numpy()}
        for r in RANKINGS:
            order = rng.permutation(n) if r == "random" else np.argsort(-keys[r], kind="stable")
            curves[r].append(found_curve(order, flipped, n, grid))
            at[r].append(found_curve(order, flipped, n, cf))
        proba = head.predict_proba(Xv)
        pred = (proba > 0.5).astype(np.int64) if proba.ndim == 1 else proba.argmax(1)
        accs.append(float(np.mean(pred == yv)))
    return MislabelResult(grid=grid, curves={r: np.array(v) for r, v in curves.items()}, check_fractions=cf,
                          at={r: np.array(v) for r, v in at.items()}, flip=float(flip), n_train=n,
                          n_flipped=n_flipped, head_kind=head_kind, l2=float(l2), valid=valid_desc,
                          extra={"seeds": seeds, "valid_accuracy_noisy_head": accs, "n_valid": len(yv)})


# the report section lives in winnow.report.mislabel
__getattr__ = moved_names(__name__, __package__, {"mislabel_section": "..report.mislabel:mislabel_section"})
