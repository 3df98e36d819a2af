"""One read of each chunk per pass: the Hessian and scoring passes of a closed-form head check their own results
for NaN/Inf instead of scanning the features first, and still refuse non-finite features with the same error.

The NaN or Inf is planted at a feature whose weight is exactly 0 as well as at an ordinary one, in float64 and
mixed precision, in memory and in Parquet: whatever the position, the pass must refuse it naming the first bad
row, and a finite input must never be scanned separately.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import winnow.io.sources as sources
from winnow.analyses.influence import InfluenceAnalyzer
from winnow.core.heads import LogisticHead, SoftmaxHead
from winnow.errors import ValidationError


def _data(n=300, d=6, k=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = (X[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(np.int64) if k == 2 else rng.integers(0, k, n)
    return X, y


def _head(X, y, k=2):
    head = (LogisticHead(l2=1e-2) if k == 2 else SoftmaxHead(l2=1e-2)).fit(X.astype(np.float64), y)
    # feature 3 has weight exactly 0: a NaN there reaches the results only through 0·NaN
    W, b = head.weight_.copy(), head.bias_.copy()
    W[:, 3] = 0.0
    return type(head).from_weights(W, b, l2=1e-2)


def _parquet(path, X, y):
    d = X.shape[1]
    feats = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), d)
    pq.write_table(pa.table({"id": np.arange(len(y), dtype=np.int64) + 1000, "label": y, "features": feats}),
                   path, row_group_size=64)
    return str(path)


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("precision", ["float64", "mixed"])
@pytest.mark.parametrize("value, column", [(np.nan, 3), (np.inf, 3), (-np.inf, 1)])  # column 3: weight exactly 0
def test_every_pass_refuses_a_non_finite_feature(tmp_path, k, precision, value, column):
    X, y = _data(k=k)
    head = _head(X, y, k)
    bad = X.copy()
    bad[137, column] = value
    bad[201, 0] = value
    train = _parquet(tmp_path / "train.parquet", bad, y)
    test = (X[:20], y[:20])
    # the Hessian pass (with its stationarity sums)
    with pytest.raises(ValidationError, match=r"features must be finite.*first at row id 1137"):
        InfluenceAnalyzer(head, precision=precision, allow_nonstationary=True, chunk_size=100).fit(train)
    # the scoring passes, on a Hessian built from the clean rows
    clean = InfluenceAnalyzer(head, precision=precision, allow_nonstationary=True, chunk_size=100).fit((X, y))
    an = InfluenceAnalyzer(head, precision=precision, allow_nonstationary=True, chunk_size=100).fit(
        train, curvature=clean.curvature_)  # no pass over the training data yet
    for run in (lambda: an.score(test), lambda: an.score(test, self_influence=False),
                lambda: an.score(None, self_influence=True), lambda: an.pairwise(test)):
        with pytest.raises(ValidationError, match=r"features must be finite.*first at row id 1137"):
            run()


def test_in_memory_arrays_are_refused_too():
    X, y = _data()
    head = _head(X, y)
    bad = X.copy()
    bad[42, 3] = np.nan
    with pytest.raises(ValidationError, match=r"features must be finite.*first at row id 42"):
        InfluenceAnalyzer(head, allow_nonstationary=True).fit((bad, y))


def test_finite_data_is_not_scanned_before_the_passes(tmp_path, monkeypatch):
    """The reader's scan for NaN/Inf does not run in the Hessian and scoring passes of a closed-form head (the
    kernels check their results), and still runs for a reader that keeps it (load the labels' chunks)."""
    X, y = _data()
    head = _head(X, y)
    train = _parquet(tmp_path / "train.parquet", X, y)
    calls = []
    real = sources.check_finite_features
    monkeypatch.setattr(sources, "check_finite_features", lambda *a: (calls.append(1), real(*a))[1])
    an = InfluenceAnalyzer(head, allow_nonstationary=True, chunk_size=100).fit(train)
    assert calls == []
    an.score((X[:20], y[:20]))
    an.pairwise((X[:20], y[:20]))
    assert len(calls) == 2  # the test set's gradient passes (one chunk each) keep the scan; 3 training chunks don't
    before = len(calls)
    list(sources.open_source(train).chunks(100))  # a plain reader keeps its check
    assert len(calls) - before == -(-300 // 64)  # once per Parquet batch (row groups of 64)
