"""Top-level Python API that the CLI calls (scikit-learn manners; see the classes for details)."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import validation as V
from .core.heads import HEAD_KINDS, Head, LogisticHead, SoftmaxHead


def fit_head(train: Any, *, kind: str = "auto", l2: float = 1e-3, sample_weight: np.ndarray | None = None,
             normalizer: float | None = None, **kwargs: Any) -> Head:
    """Fit a head on ``train`` (arrays tuple, path or DataSource). ``kind``: logistic, softmax or auto
    (logistic when the labels are {0, 1}, else softmax). ``sample_weight`` (n,) and ``normalizer`` N give
    the objective (1/N) Σ w_i ℓ_i + (λ/2)‖W‖² (N defaults to Σ w_i)."""
    src = V.open_data(train, "train")
    V.check_choice(kind, "kind", ("auto", *HEAD_KINDS))
    l2 = V.check_number(l2, "l2", minimum=0.0)
    if kind == "auto":
        labels = V.read_labels(src, "train")
        kind = "logistic" if labels.size and labels.max() <= 1 else "softmax"
    head = LogisticHead(l2=l2, **kwargs) if kind == "logistic" else SoftmaxHead(l2=l2, **kwargs)
    if kind == "logistic":  # a softmax head takes its K from the labels
        V.check_labels(head, src, "train")
    return head.fit(src, sample_weight=sample_weight, normalizer=normalizer)
