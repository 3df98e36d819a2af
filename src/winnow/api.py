"""Top-level Python API that the CLI calls (scikit-learn manners; see the classes for details)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import validation as V
from .core.heads import HEAD_KINDS, Head, LogisticHead, SoftmaxHead
from .io.columns import DataColumns
from .validation import check_classes


def fit_head(train: Any, *, kind: str = "auto", l2: float = 1e-3, sample_weight: np.ndarray | None = None,
             normalizer: float | None = None, columns: DataColumns | None = None,
             label_column: str | None = None, id_column: str | None = None, features_column: str | None = None,
             feature_columns: Sequence[str] | None = None, exclude: Sequence[str] | None = None,
             classes: Sequence[Any] | None = None, positive_label: Any = None, **kwargs: Any) -> Head:
    """Fit a head on ``train``: arrays ``(X, y[, ids])``, a path (.csv, .tsv, .parquet, a directory of
    Parquet files, .npz), a pandas / polars DataFrame, a PyArrow Table, Features or a DataSource.

    ``kind``: logistic, softmax or auto (logistic for two classes, else softmax). Labels must be the classes
    0..K-1, every one present, or be mapped: ``positive_label`` (two classes: that value -> 1, the other
    -> 0) or ``classes`` (``classes[i]`` -> i). ``columns`` (a :class:`~winnow.io.columns.DataColumns`) or
    the keywords ``label_column``, ``id_column``, ``features_column``, ``feature_columns`` (default: every
    numeric column but the label and id), ``exclude`` say how to read a table. The fitted head keeps the label
    values in ``classes_`` and the table settings in ``data_columns_`` (saved with it, and used to read data
    for it later). ``sample_weight`` (n,) and ``normalizer`` N give the objective (1/N) Σ w_i ℓ_i + (λ/2)‖W‖²
    (N defaults to Σ w_i).
    """
    cols = (DataColumns.coerce(columns) or DataColumns()).merged(DataColumns(
        label_column=label_column, id_column=id_column, features_column=features_column,
        feature_columns=feature_columns, exclude=exclude, classes=classes, positive_label=positive_label))
    src = V.open_data(train, "train", columns=cols)
    V.check_choice(kind, "kind", ("auto", *HEAD_KINDS))
    l2 = V.check_number(l2, "l2", minimum=0.0)
    n_classes = check_classes(V.read_labels(src, "train"), src.classes, kind)
    if kind == "auto":
        kind = "logistic" if n_classes == 2 else "softmax"
    head = LogisticHead(l2=l2, **kwargs) if kind == "logistic" else SoftmaxHead(l2=l2, **kwargs)
    if kind == "logistic":  # a softmax head takes its K from the labels
        V.check_labels(head, src, "train")
    fit_kw: dict[str, Any] = {} if kind == "logistic" else {"n_classes": n_classes}
    head.fit(src, sample_weight=sample_weight, normalizer=normalizer, **fit_kw)
    head.classes_ = src.classes
    head.data_columns_ = src.data_columns
    return head
