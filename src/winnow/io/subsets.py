"""SUBSET files (``id``, ``weight`` and the choices in the Parquet metadata, as ``Subsampler.write`` writes
them) mapped onto a training source, and a source that streams chosen rows of another."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .. import validation as V
from ..errors import ValidationError
from .columns import format_id
from .outputs import read_table
from .sources import ArraySource, Chunk, DataSource

__all__ = ["SUBSET_METADATA", "MATERIALIZE_LIMIT", "SubsetSource", "subset_source", "LoadedSubset", "load_subset",
           "load_subset_weights"]

#: a subset of at most this many feature values (m · D) is gathered in memory for retraining
MATERIALIZE_LIMIT = 1 << 26

SUBSET_METADATA = {
    "winnow.weight": "1/pi (Horvitz-Thompson) for weighted subsets, fitted with normaliser n_train; 1.0 "
                     "otherwise (fitted on the subset mean)",
    "winnow.inclusion_probability": "pi: probability that the point is kept under the sampling design "
                                    "(randomised systematic sampling within each class, fixed size)",
    "winnow.influence": "-g_valid^T H^-1 g_p on the validation loss; > 0 harmful",
    "winnow.memorization": "||Lambda^-1 Q^T g_p||_1 (paper Definition 6); memorize = score > D",
}


class SubsetSource(DataSource):
    """The rows ``rows`` (sorted unique positions) of another source, streamed from it (bounded memory)."""

    def __init__(self, source: DataSource, rows: np.ndarray, labels: np.ndarray | None = None) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 1 or (rows.size and (rows[0] < 0 or rows[-1] >= len(source)
                                             or np.any(np.diff(rows) <= 0))):
            raise ValidationError(f"rows must be sorted unique positions in [0, {len(source)})")
        self.source = source
        self.rows = rows
        self.name = f"{source.name}[{rows.shape[0]} rows]"
        self._labels = None if labels is None else np.asarray(labels)[rows]

    @property
    def n_features(self) -> int:
        return self.source.n_features

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    @property
    def defers_finite_check(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.source, "defers_finite_check", False))

    def chunks(self, chunk_size: int = 65536, rows: np.ndarray | None = None, *,
               check_finite: bool = True) -> Iterator[Chunk]:
        chunk_size, sel = self._check_args(chunk_size, rows)
        rows = self.rows if sel is None else self.rows[sel]
        if check_finite:
            return self.source.chunks(chunk_size, rows=rows)
        return self.source.chunks(chunk_size, rows=rows, check_finite=False)

    def labels(self) -> np.ndarray:
        if self._labels is None:
            self._labels = super().labels()
        return self._labels


def subset_source(source: DataSource, rows: np.ndarray, labels: np.ndarray | None = None) -> DataSource:
    """``rows`` of ``source``: gathered in memory when m · D ≤ MATERIALIZE_LIMIT, else streamed."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.shape[0] * source.n_features > MATERIALIZE_LIMIT or rows.shape[0] == 0:
        return SubsetSource(source, rows, labels)
    if isinstance(source, ArraySource):
        X = source.X[rows]
        ids = source.id[rows] if source.id is not None else rows
        return ArraySource(X, source.y[rows], ids, name=f"{source.name}[{rows.shape[0]} rows]")
    parts = list(source.chunks(1 << 16, rows=rows))
    return ArraySource(np.concatenate([p.X for p in parts]), np.concatenate([p.y for p in parts]),
                       np.concatenate([p.ids for p in parts]), name=f"{source.name}[{rows.shape[0]} rows]")


@dataclass
class LoadedSubset:
    """A SUBSET file mapped onto a training source: kept ``rows`` (sorted positions), their ``weights``,
    the ``normalizer`` to fit with (None: Σw) and the ``summary`` stored by ``winnow subsample`` (or {})."""

    rows: np.ndarray
    weights: np.ndarray
    normalizer: float | None
    summary: dict[str, Any]
    weighted: bool


def load_subset(subset: str | Path, train: Any) -> LoadedSubset:
    """Read a SUBSET Parquet (columns ``id``, ``weight``) and map its ids onto ``train``'s rows.

    Raises ValidationError for ids not in TRAIN, duplicate ids, or weights that are not finite and > 0.
    """
    p = Path(subset)
    if not p.exists():
        raise V.fail(f"subset {p} does not exist", "subset")
    try:
        table, meta = read_table(p, columns=("id", "weight"))
    except (pa.ArrowException, OSError, ValueError) as e:
        raise V.fail(f"subset {p} is not a readable Parquet or CSV file ({e})", "subset") from None
    if "id" not in table.column_names:
        raise V.fail(f"subset {p} has no 'id' column (expected id and weight, as Subsampler.write writes)",
                     "subset")
    id_type = table.schema.field("id").type
    ids = table.column("id").to_numpy()
    if pa.types.is_string(id_type) or pa.types.is_large_string(id_type):
        ids = ids.astype(object)
    elif ids.dtype.kind not in "iu":
        raise V.fail(f"subset {p}: column 'id' must hold integer or string ids, got {id_type}", "subset")
    else:
        ids = ids.astype(np.int64)
    if "weight" in table.column_names:
        w = table.column("weight").to_numpy(zero_copy_only=False).astype(np.float64)
    else:
        w = np.ones(ids.shape[0])
    if ids.shape[0] == 0:
        raise V.fail(f"subset {p} is empty", "subset")
    bad = ~np.isfinite(w) | (w <= 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise V.fail(f"subset {p}: weights must be finite and > 0; id {format_id(ids[i])} has weight "
                     f"{w[i]!r} "
                     f"({int(bad.sum())} bad weights)", "subset")
    uniq, counts = np.unique(ids, return_counts=True)
    if uniq.shape[0] != ids.shape[0]:
        raise V.fail(f"subset {p}: ids must be unique; id {format_id(uniq[np.argmax(counts > 1)])} appears "
                     "more than once", "subset")
    src = V.open_data(train, "train")
    train_ids = src.ids()
    if (train_ids.dtype.kind == "O") != (ids.dtype.kind == "O"):
        kinds = ("string" if ids.dtype.kind == "O" else "integer", "string" if train_ids.dtype.kind == "O"
                 else "integer")
        raise V.fail(f"subset {p} holds {kinds[0]} ids but train ({src.name}) has {kinds[1]} ids; read train "
                     "with the id column the subset was made with (id_column)", "subset", "id_column")
    order = np.argsort(train_ids, kind="stable")
    sorted_ids = train_ids[order]
    pos = np.searchsorted(sorted_ids, ids)
    pos_c = np.minimum(pos, sorted_ids.shape[0] - 1)
    found = sorted_ids[pos_c] == ids
    if not found.all():
        missing = ids[~found]
        raise V.fail(f"subset {p}: {missing.shape[0]} ids are not in train ({src.name}), e.g. "
                     f"{missing[:5].tolist()}; was the subset made from another training set?", "subset", "train")
    rows = order[pos_c]
    srt = np.argsort(rows, kind="stable")
    rows, w = rows[srt], w[srt]
    summary: dict[str, Any] = {}
    raw = meta.get("winnow.subsample")
    if raw:
        try:
            summary = json.loads(raw)
        except ValueError:
            summary = {}
    weighted = bool(summary.get("weighted", not np.allclose(w, 1.0)))
    if summary and summary.get("n_train") not in (None, len(src)):
        raise V.fail(f"subset {p} was made from a training set of {summary['n_train']} rows but train "
                     f"({src.name}) has {len(src)}", "subset", "train")
    normalizer = float(summary["normalizer"]) if (weighted and "normalizer" in summary) else None
    return LoadedSubset(rows=rows, weights=w, normalizer=normalizer, summary=summary, weighted=weighted)


def load_subset_weights(subset: str | Path, train: Any, *,
                        return_normalizer: bool = False) -> np.ndarray | tuple[np.ndarray, float | None]:
    """Per-row sample weights (n,) for ``Head.fit(train, sample_weight=...)``: the subset's weight on kept
    rows, 0 elsewhere. With ``return_normalizer`` also N for ``fit(normalizer=N)`` (n_train for weighted
    subsets, None = Σw otherwise)."""
    sub = load_subset(subset, train)
    w = np.zeros(len(V.open_data(train, "train")))
    w[sub.rows] = sub.weights
    return (w, sub.normalizer) if return_normalizer else w
