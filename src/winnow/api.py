"""Top-level Python API that the CLI calls (scikit-learn manners; see the classes for details)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import validation as V
from .core.heads import HEAD_KINDS, Head, LogisticHead, SoftmaxHead
from .io.columns import DataColumns, format_value


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


def check_classes(labels: np.ndarray, classes: Sequence[Any] | None, kind: str = "auto",
                  parameter: str = "train") -> int:
    """The number of classes K of encoded ``labels`` (n,) int64, checked: at least two classes, and the
    labels are 0..K-1 with every class present (K = len(classes) when the labels were mapped). The messages
    show the labels found and name the settings that map them (``positive_label``, ``classes``)."""
    values, counts = np.unique(labels, return_counts=True)
    name = (lambda v: format_value(classes[int(v)])) if classes is not None else (lambda v: format_value(v))
    found = ", ".join(f"{name(v)} ×{int(c)}" for v, c in zip(values[:6], counts[:6], strict=True)) + (
        f" and {values.size - 6} more" if values.size > 6 else "")
    if values.size == 0:
        raise V.fail(f"{parameter} has no rows; a classifier needs at least two classes", parameter)
    if values.size == 1:
        raise V.fail(f"only one class (label {name(values[0])}) in {parameter}; a classifier needs at least two",
                     parameter)
    K = len(classes) if classes is not None else int(values.max()) + 1
    if values[0] == 0 and values[-1] == K - 1 and values.size == K:
        return K
    if classes is not None:
        missing = [format_value(classes[k]) for k in range(K) if k not in set(values.tolist())]
        raise V.fail(f"{parameter} has no rows of the label values {', '.join(missing)} (found {found}); list "
                     "only the values present in classes", parameter, "classes")
    what = "0 and 1" if kind == "logistic" else "0..K-1"
    hint = ",".join(str(int(v)) for v in values[:6])
    raise V.fail(f"{parameter}: labels must be {what} with every class present; found {found}. Map them "
                 f"with positive_label (binary: the value that means 1) or classes (every value in class order, "
                 f"e.g. {hint})", parameter, "positive_label", "classes")
