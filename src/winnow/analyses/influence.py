"""Influence of every training point on a test loss: the analyzer, its columns and its outputs.

Signs (paper eqs. 19, 20, 27, 28, 35, 36; see :mod:`winnow.core.influence`): ``influence`` = −ḡ_testᵀH⁻¹g_p
(> 0 harmful), ``loss_change_if_removed`` = −influence/n (eq. 28, the ε = −1/n objective),
``self_influence`` = g_pᵀH⁻¹g_p ≥ 0, pairs I_loss(z_t, z_p) = −g_tᵀH⁻¹g_p.

:class:`InfluenceAnalyzer` runs every pass on one :class:`winnow.engine.Engine` (in-process, or Dask with
``workers=`` / ``scheduler=``): the Hessian pass, the test-gradient pass, then one scoring pass whose
columns are :class:`winnow.engine.columns.ScoreColumns` (the influence columns, memorization, Newton columns,
user functions). Output is one Parquet file, or with ``parts=True`` a directory of part files that a crashed
run can finish with ``resume=True``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..core.blocks import check_precision
from ..core.curvature import Curvature, Stationarity
from ..core.heads import DTYPE, Head, as_tensor
from ..core.influence import SIGN_METADATA
from ..engine.columns import ColumnFunction, ScoreColumns, ScoreKernel
from ..engine.engine import Engine, check_rows, current_engine
from ..engine.passes import (
    checked_curvature,
    load_rows,
    mean_test_gradient,
    open_for_head,
    refit_head,
    stationarity,
    test_gradients,
)
from ..errors import NotFittedError, ValidationError
from ..io.outputs import check_output_path, table_writer
from ..io.parts import PartsDirectory, digest_array, head_fingerprint, source_fingerprint
from ..validation import check_chunk_size, check_damping, check_head

__all__ = ["InfluenceEstimator", "InfluenceAnalyzer", "InfluenceColumns", "SelfInfluenceColumns", "PartsResult",
           "compute_influence", "write_influence_parts", "write_score_stream", "SCORE_FIELDS", "PAIR_SCHEMA",
           "PAIR_METADATA", "RUN_KEY", "run_settings", "classes_metadata"]

SCORE_FIELDS = [("id", pa.int64()), ("label", pa.int64()), ("influence", pa.float64()),
                ("loss_change_if_removed", pa.float64()), ("self_influence", pa.float64())]
PAIR_SCHEMA = pa.schema([("test_id", pa.int64()), ("train_id", pa.int64()), ("influence", pa.float64())])
PAIR_METADATA = {"winnow.influence": "I_loss(test, train) = -g_test^T H^-1 g_train; > 0 harmful"}
#: key of the scores' metadata holding the run's settings as JSON (``run_settings``); the report reads it
RUN_KEY = "winnow.run"


def run_settings(head: Head, curvature: Curvature, n_train: int, n_test: int | None) -> dict[str, Any]:
    """The settings of a scoring run, as stored (JSON) under ``RUN_KEY`` in the scores' metadata: n (training
    rows), T (test rows; None when not known here), the head's kind, λ, P, the damping and the Hessian's
    normaliser N (N = n: every training row; otherwise a sampled or weighted Hessian) and the head's
    ``precision`` setting ("auto", "float64" or "mixed")."""
    return {"n_train": int(n_train), "n_test": None if n_test is None else int(n_test),
            "head": type(head).__name__, "l2": float(head.l2), "n_params": int(head.n_params),
            "damping": float(curvature.damping), "hessian_normalizer": float(curvature.n),
            "precision": str(getattr(head, "precision", "auto"))}


# ------------------------------------------------------------------------------------------- columns
class InfluenceColumns(ScoreColumns):
    """``influence`` = −g_pᵀs with s = H⁻¹ḡ_test, ``loss_change_if_removed`` = −influence/n and, with
    ``self_influence``, g_pᵀH⁻¹g_p; with ``pairs``, the (c, T) matrix ``pairs`` = −g_pᵀH⁻¹g_t. ``prepare``
    makes the test pass and the solves (or takes a given ``direction``, e.g. from a resumed job)."""

    #: −r_p·(ũ_pᵀs): a NaN/Inf feature makes the row's logit, then r_p or ũ_pᵀs, non-finite
    witness = ("influence",)

    def __init__(self, *, self_influence: bool = True, pairs: bool = False,
                 direction: torch.Tensor | None = None) -> None:
        self.self_influence = bool(self_influence)
        self.pairs = bool(pairs)
        self.direction = direction
        self.metadata = dict(SIGN_METADATA)

    def prepare(self, analyzer: Any, test: Any) -> None:
        head, curv = analyzer.head, analyzer.curvature_
        self.head_ = head
        self.n_train_ = int(analyzer.n_train_)
        self.curvature_ = curv if self.self_influence else None
        n_test = None
        if self.direction is None:
            gbar, n_test = mean_test_gradient(head, test, engine=analyzer.engine)
            self.direction_ = curv.solve(gbar)
        else:
            self.direction_ = torch.as_tensor(self.direction, dtype=DTYPE, device=head.device)
        self.metadata = {**SIGN_METADATA, RUN_KEY: json.dumps(run_settings(head, curv, self.n_train_, n_test))}
        self.pair_factors_ = self.test_ids_ = None
        if self.pairs:
            Gt, self.test_ids_, _ = test_gradients(head, test, engine=analyzer.engine)
            self.pair_factors_ = curv.solve(Gt.T)  # (P, T)

    def chunk(self, X: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        return self.head_.score_chunk(X, y, direction=self.direction_, curvature=self.curvature_,
                                      n_train=self.n_train_, pair_factors=self.pair_factors_)


class SelfInfluenceColumns(ScoreColumns):
    """``self_influence`` = g_pᵀH⁻¹g_p ≥ 0 alone (no test set)."""

    witness = ("self_influence",)  # r_p²‖L⁻¹ũ_p‖²: non-finite with any feature of the row

    def __init__(self) -> None:
        self.metadata = {"winnow.self_influence": SIGN_METADATA["winnow.self_influence"]}

    def prepare(self, analyzer: Any, test: Any) -> None:
        self.head_, self.curvature_ = analyzer.head, analyzer.curvature_
        self.zero_ = torch.zeros(self.curvature_.n_params, dtype=DTYPE, device=self.head_.device)

    def chunk(self, X: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        out = self.head_.score_chunk(X, y, direction=self.zero_, curvature=self.curvature_, n_train=1)
        return {"self_influence": out["self_influence"]}


def _metadata(columns: Sequence[ScoreColumns]) -> dict[str, str]:
    meta: dict[str, str] = {}
    for c in columns:
        meta.update({str(k): str(v) for k, v in (getattr(c, "metadata", None) or {}).items()})
    return meta


# ------------------------------------------------------------------------------------------- outputs
def write_score_stream(chunks: Iterable[dict[str, np.ndarray]], out: str | Path, fields: list | None = None,
                       *, pairs_out: str | Path | None = None, overwrite: bool = False,
                       metadata: Any = dict, final_metadata: Any = None) -> Path:
    """Write per-chunk score dicts (as yielded by ``iter_scores``) to Parquet at ``out`` and, when the chunks
    carry ``pairs`` (c, T) and ``test_ids``, the long-format pairs to ``pairs_out``. Both files are written
    to temporary names and renamed only when complete; ``metadata()`` is called at the first chunk and
    ``final_metadata()`` (optional) after the last one, for figures the pass itself measures. The
    schema is ``fields`` or, when None, that of the first chunk's columns."""
    from ..io.parts import part_schema

    # ``chunks`` is lazy: refuse existing outputs before any pass over the data runs
    check_output_path(out, overwrite, argument="--out", formats="table")
    if pairs_out is not None:
        check_output_path(pairs_out, overwrite, argument="--pairs", formats="table")
    with ExitStack() as stack:
        w = pw = None
        test_ids = None
        for cols in chunks:
            if "test_ids" in cols:
                test_ids = cols.pop("test_ids")
            P = cols.pop("pairs", None)
            if w is None:
                schema = pa.schema(fields) if fields is not None else part_schema(cols)
                schema = _id_types(schema, {"id": cols.get("id")})
                w = stack.enter_context(table_writer(out, schema, overwrite=overwrite, argument="--out",
                                                            metadata=metadata()))
                if pairs_out is not None:
                    pair_schema = _id_types(PAIR_SCHEMA, {"test_id": test_ids, "train_id": cols.get("id")})
                    pw = stack.enter_context(table_writer(pairs_out, pair_schema, overwrite=overwrite,
                                                                 argument="--pairs", metadata=PAIR_METADATA))
            w.write(**{k: cols[k] for k in schema.names})
            if pw is not None and P is not None:
                c, T = P.shape
                pw.write(test_id=np.tile(test_ids, c), train_id=np.repeat(cols["id"], T), influence=P.reshape(-1))
        if w is not None and final_metadata is not None:
            w.add_metadata(final_metadata())
    return Path(out)


def _id_types(schema: pa.Schema, ids: dict[str, Any]) -> pa.Schema:
    """``schema`` with each id column given in ``ids`` typed string when those ids are strings."""
    for name, a in ids.items():
        i = schema.get_field_index(name)
        if a is not None and i >= 0 and np.asarray(a).dtype.kind in "OU":
            schema = schema.set(i, pa.field(name, pa.string()))
    return schema


def classes_metadata(head: Any) -> dict[str, str]:
    """``winnow.classes``: the JSON list of the head's class names as strings (index = encoded label), when
    the head has ``classes_``."""
    import json

    classes = getattr(head, "classes_", None)
    if classes is None:
        return {}
    return {"winnow.classes": json.dumps([str(c) for c in classes])}


@dataclass
class PartsResult:
    """What a partitioned job did: the output directory, partitions in all / written now / already
    finished (skipped on resume), rows, the column names and whether state came from a previous run."""

    path: Path
    n_parts: int
    written: int
    skipped: int
    n_rows: int
    columns: list[str]
    resumed: bool


def _identity(spec: Any) -> str:
    if hasattr(spec, "identity"):
        return str(spec.identity)
    return f"{type(spec).__module__}.{type(spec).__qualname__}"


# ------------------------------------------------------------------------------------------ protocol
@runtime_checkable
class InfluenceEstimator(Protocol):
    """What every influence estimator offers, with the same names and signatures: the head path
    (:class:`InfluenceAnalyzer`) and the whole-model path (:class:`winnow.core.models.ModelInfluence`).
    Settings (the head, or the model) go in the constructor; ``fit(train)`` returns the estimator."""

    def fit(self, train: Any) -> Any: ...

    def iter_scores(self, test: Any, *, self_influence: bool | None = None, pairs: bool = False,
                    extra: Sequence[Any] = ()) -> Iterator[dict[str, np.ndarray]]: ...

    def score(self, test: Any, *, self_influence: bool | None = None, extra: Sequence[Any] = ()) -> pa.Table: ...

    def write_scores(self, test: Any, out: str | Path, *, pairs_out: str | Path | None = None,
                     overwrite: bool = False, self_influence: bool | None = None, extra: Sequence[Any] = (),
                     parts: bool = False, resume: bool = False) -> Any: ...

    def pairwise(self, test: Any) -> np.ndarray: ...

    def self_influence(self) -> np.ndarray: ...

    def influence_up(self, X: Any, y: Any = None) -> np.ndarray: ...

    def parameter_change_if_removed(self, X: Any, y: Any = None) -> np.ndarray: ...


# ------------------------------------------------------------------------------------------ analyzer
class InfluenceAnalyzer:
    """Exact influence of every training point on a head, streaming over the training data.

    Settings: ``head`` a fitted Head; ``damping`` added to H's diagonal; ``chunk_size`` rows per chunk;
    ``progress`` shows bars; ``engine`` an :class:`winnow.engine.Engine`, or ``workers`` (a local Dask
    cluster of N processes) / ``scheduler`` (an existing one) / ``partition_rows`` to build one; ``device``
    moves the head's maths there. ``fit(train)`` builds the Hessian (``curvature_``, ``n_train_``,
    ``train_``) and measures in the same pass how far the head is from an optimum of its objective
    (``stationarity_``, a :class:`winnow.core.curvature.Stationarity`; the scores' ``winnow.stationarity``
    metadata). Every formula assumes ∇R(θ̂) = 0: a head above the threshold is refused (ValidationError)
    unless ``allow_nonstationary=True`` (score it as it is) or ``refit=True`` (first polish a copy to the
    optimum by Newton from its weights, same λ; ``head`` is then that copy). ``precision`` ("auto",
    "float64", "mixed"; None keeps the head's own ``precision``, "auto" unless set) picks the dtype of the
    per-block GEMMs of the Hessian and scoring passes: "auto" runs float32 features in mixed precision
    (float32 GEMMs, float64 sums, H, factorisation and solves) and float64 features in float64.
    """

    def __init__(self, head: Head, *, damping: float = 0.0, chunk_size: int = 65536, progress: bool = False,
                 engine: Engine | None = None, workers: int | None = None, scheduler: Any = None,
                 partition_rows: int | None = None, device: torch.device | str | None = None,
                 timeout: float = 30.0, refit: bool = False, allow_nonstationary: bool = False,
                 precision: str | None = None) -> None:
        head = check_head(head)
        if precision is not None and check_precision(precision) != head.precision:
            head = copy.copy(head)  # the caller's head keeps its own setting
            head.precision = precision
        self.refit = bool(refit)
        self.allow_nonstationary = bool(allow_nonstationary)
        damping, chunk_size = check_damping(damping), check_chunk_size(chunk_size)
        self.head = _on_device(head, device)
        self.damping = float(damping)
        self.chunk_size = int(chunk_size)
        self.progress = progress
        if engine is None and workers is None and scheduler is None and partition_rows is None:
            engine = current_engine()  # inside a ``with Engine(...)`` block: its passes run there
        self.engine = engine if engine is not None else Engine(
            workers=workers, scheduler=scheduler, chunk_size=int(chunk_size), partition_rows=partition_rows,
            progress=progress, timeout=timeout)

    # ----------------------------------------------------------------------------------------- fit
    def fit(self, train: Any, *, curvature: Curvature | None = None, rows: Any = None, row_weights: Any = None,
            normalizer: float | None = None) -> InfluenceAnalyzer:
        """Build H over all of ``train`` (paper eq. 4), over ``rows`` with ``row_weights`` (a relative
        Hessian, eq. 52, N = ``normalizer`` or Σw), or take a prebuilt ``curvature``."""
        if curvature is not None and self.refit:
            raise ValidationError("refit=True polishes the head and builds its Hessian: pass either curvature= "
                                  "(a Hessian of the head as it is) or refit=True, not both",
                                  parameters=("refit=True",))
        r, w = self._plan(train, curvature, rows, row_weights, normalizer)
        if curvature is None:
            self.head, self.curvature_ = checked_curvature(
                self.head, self.train_, refit=self.refit, allow_nonstationary=self.allow_nonstationary,
                damping=self.damping, rows=r, row_weights=w, normalizer=normalizer, engine=self.engine)
        else:
            self.curvature_ = curvature
            if curvature.stationarity is None:  # a Hessian built elsewhere: one gradient pass for the figure
                curvature.stationarity = stationarity(self.head, self.train_, engine=self.engine)
            curvature.stationarity.check(self.allow_nonstationary)
        self.stationarity_: Stationarity = self.curvature_.stationarity
        return self

    def _stationarity_metadata(self) -> dict[str, str]:
        st = getattr(self, "stationarity_", None)
        return st.metadata() if st is not None else {}

    def _plan(self, train: Any, curvature: Curvature | None, rows: Any, row_weights: Any,
              normalizer: float | None) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Open and check ``train`` (``train_``, ``n_train_``) and the Hessian's rows; ``hessian_spec_`` names
        the Hessian in a resumable job's manifest. Returns the checked rows and weights."""
        self.train_ = open_for_head(self.head, train, "train")
        self.n_train_ = len(self.train_)
        if self.n_train_ == 0:
            raise ValidationError(f"training data {self.train_.name} is empty")
        if curvature is not None and (rows is not None or row_weights is not None):
            raise ValidationError("pass either curvature= or rows=/row_weights= (the Hessian's rows), not both")
        r, w = check_rows(rows, row_weights, self.n_train_)
        if curvature is not None:
            spec: dict[str, Any] = {"given_sha256": digest_array(curvature.hessian), "n": float(curvature.n)}
        else:
            spec = {"rows": "all"} if r is None else {"rows_sha256": digest_array(r), "m": int(r.size),
                                                      "weights_sha256": None if w is None else digest_array(w)}
        spec["normalizer"] = None if normalizer is None else float(normalizer)
        self.hessian_spec_ = spec
        return r, w

    def _check(self) -> None:
        if not hasattr(self, "curvature_"):
            raise NotFittedError("this InfluenceAnalyzer is not fitted: call fit(train) before scoring")

    def _columns(self, test: Any, *, self_influence: bool, pairs: bool = False, extra: Sequence[Any] = (),
                 direction: torch.Tensor | None = None) -> list[ScoreColumns]:
        """The prepared column sets of a scoring pass."""
        self._check()
        test_src = None
        if test is not None:
            test_src = open_for_head(self.head, test, "test")
        columns: list[ScoreColumns] = []
        if test_src is not None:
            columns.append(InfluenceColumns(self_influence=self_influence, pairs=pairs, direction=direction))
        elif self_influence:
            columns.append(SelfInfluenceColumns())
        columns += list(extra)
        for c in columns:
            c.prepare(self, test_src)
        return columns

    # -------------------------------------------------------------------------------------- scores
    def iter_scores(self, test: Any, *, self_influence: bool | None = None, pairs: bool = False,
                    extra: Sequence[ScoreColumns] = ()) -> Iterator[dict[str, np.ndarray]]:
        """Yield per-chunk columns for every training point: ``id``, ``label``, ``influence``,
        ``loss_change_if_removed``, ``self_influence`` (see the module docstring for signs), then the columns
        of each ``extra`` column set; with ``pairs`` also ``pairs`` (c, T) and ``test_ids`` once in the first
        chunk's dict. ``self_influence`` None means True (it is cheap for a head)."""
        columns = self._columns(test, self_influence=self_influence is not False, pairs=pairs, extra=extra)
        self.score_metadata_ = _metadata(columns)  # the sign conventions, the run's settings, extra columns'
        test_ids = columns[0].test_ids_ if pairs else None
        first = True
        with self.engine:
            for cols in self.engine.iter(self.train_, ScoreKernel(self.head, columns), description="scoring pass"):
                if pairs and first:
                    cols["test_ids"] = test_ids
                first = False
                yield cols

    def score(self, test: Any, *, self_influence: bool | None = None,
              extra: Sequence[ScoreColumns] = ()) -> pa.Table:
        """One row per training point (see ``iter_scores``), as an Arrow table with the sign metadata."""
        parts = list(self.iter_scores(test, self_influence=self_influence, extra=extra))
        cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "test_ids"}
        return pa.table(cols).replace_schema_metadata(self._score_file_metadata())

    def _score_file_metadata(self) -> dict[str, str]:
        """The metadata of a scores file: signs, the prepared columns' and the run's settings, the head's
        stationarity figure and class names (read once the column sets are prepared)."""
        return {**SIGN_METADATA, **self.score_metadata_, **self._stationarity_metadata(),
                **classes_metadata(self.head)}

    def write_scores(self, test: Any, out: str | Path, *, pairs_out: str | Path | None = None,
                     overwrite: bool = False, self_influence: bool | None = None,
                     extra: Sequence[ScoreColumns] = (), parts: bool = False,
                     resume: bool = False) -> Path | PartsResult:
        """Stream scores to Parquet at ``out`` (and long-format pairs ``test_id, train_id, influence`` to
        ``pairs_out``), each written to a temporary name and renamed when complete. With ``parts`` (or
        ``resume``) ``out`` is a directory of part files, one per partition (see ``write_parts``)."""
        if parts or resume:
            if pairs_out is not None:
                raise ValidationError("pairs_out writes one long-format file and cannot be combined with "
                                      "partitioned output (parts=True); write the pairs separately")
            return self.write_parts(test, out, self_influence=self_influence is not False, extra=extra,
                                    resume=resume, overwrite=overwrite)
        self._check()
        fields = SCORE_FIELDS + [f for columns in extra for f in getattr(columns, "fields", [])]
        has_fields = all(getattr(c, "fields", None) for c in extra)
        chunks = self.iter_scores(test, self_influence=self_influence, pairs=pairs_out is not None, extra=extra)
        # the metadata is read at the first chunk, once the extra column sets are prepared
        return write_score_stream(chunks, out, fields if has_fields else None, pairs_out=pairs_out,
                                  overwrite=overwrite, metadata=self._score_file_metadata)

    def write_parts(self, test: Any, out: str | Path, *, self_influence: bool = True,
                    extra: Sequence[Any] = (), resume: bool = False, overwrite: bool = False) -> PartsResult:
        """Score every training point into a directory ``out`` of Parquet part files (one per partition),
        each published atomically. ``resume=True`` finishes an interrupted run of the same job (the same
        head, data, Hessian and columns; refused otherwise); ``overwrite=True`` starts over."""
        self._check()
        return _run_parts(self, test, out, self_influence=self_influence, extra=extra, resume=resume,
                          overwrite=overwrite)

    def pairwise(self, test: Any) -> np.ndarray:
        """The matrix I_loss(z_t, z_p) = −g_tᵀH⁻¹g_p, a C-contiguous (T, n) float64 array (row t: the influence
        of every training point on test point t), written chunk by chunk into one preallocated array (dense:
        only for moderate T·n)."""
        self._check()
        test_src = open_for_head(self.head, test, "test")
        Gt, _, _ = test_gradients(self.head, test_src, engine=self.engine)
        factors = self.curvature_.solve(Gt.T)  # (P, T)
        zero = torch.zeros(self.head.n_params, dtype=DTYPE, device=self.head.device)
        col = ColumnFunction(_pairs_chunk, {"direction": zero, "pair_factors": factors}, label="pairs",
                             head=self.head, witness=("pairs",))
        out = np.empty((factors.shape[1], self.n_train_))
        start = 0
        for cols in self.engine.iter(self.train_, ScoreKernel(self.head, [col], ids=False), description="pairwise"):
            stop = start + len(cols["pairs"])
            out[:, start:stop] = cols["pairs"].T
            start = stop
        return out

    def self_influence(self) -> np.ndarray:
        """g_pᵀH⁻¹g_p for every training point, shape (n,)."""
        self._check()
        columns = self._columns(None, self_influence=True)
        return self.engine.map(self.train_, ScoreKernel(self.head, columns, ids=False),
                               description="self-influence")["self_influence"]

    def influence_up(self, X: Any, y: Any = None) -> np.ndarray:
        """I_up(z_p) = −H⁻¹g_p for chosen points, shape (k, P) (paper eq. 19); ``X`` (k, D) with labels
        ``y``, or any data source."""
        self._check()

        if y is not None:
            X = (np.atleast_2d(np.asarray(X)), np.atleast_1d(np.asarray(y)))
        src = open_for_head(self.head, X, "X")
        Xa, ya, _ = load_rows(src, engine=self.engine)
        self.head.check_labels(ya, argument="X")
        G = self.head.gradients(as_tensor(Xa, self.head.device), torch.as_tensor(ya, device=self.head.device))
        return (-self.curvature_.solve(G.T).T).cpu().numpy()

    def parameter_change_if_removed(self, X: Any, y: Any = None) -> np.ndarray:
        """Predicted θ̂₋ₚ − θ̂ ≈ +(1/n) H⁻¹g_p for chosen points, shape (k, P) (paper eq. 20)."""
        return -self.influence_up(X, y) / self.n_train_


def _pairs_chunk(head: Head, X: np.ndarray, y: np.ndarray, *, direction: torch.Tensor,
                 pair_factors: torch.Tensor) -> np.ndarray:
    return head.score_chunk(X, y, direction=direction, curvature=None, n_train=1, pair_factors=pair_factors)["pairs"]


def _on_device(head: Head, device: torch.device | str | None) -> Head:
    from ..engine.backends import on_device

    return on_device(head, device)


def compute_influence(head: Head, train: Any, test: Any, *, damping: float = 0.0,
                      chunk_size: int = 65536, progress: bool = False, refit: bool = False,
                      allow_nonstationary: bool = False) -> pa.Table:
    """One-call convenience: ``InfluenceAnalyzer(head, ...).fit(train).score(test)``."""
    return InfluenceAnalyzer(head, damping=damping, chunk_size=chunk_size, progress=progress, refit=refit,
                             allow_nonstationary=allow_nonstationary).fit(train).score(test)


# ---------------------------------------------------------------------------------- partitioned jobs
def _run_parts(an: InfluenceAnalyzer, test: Any, out: str | Path, *, self_influence: bool, extra: Sequence[Any],
               resume: bool, overwrite: bool, fit: Any = None) -> PartsResult:
    """The partitioned scoring job: manifest, saved state (H and s, before any part), one part per
    partition. ``fit`` (a callable) builds the analyzer's curvature when no saved state is reused."""
    if resume and overwrite:
        raise ValidationError("pass either resume=True (keep finished parts) or overwrite=True (start over), "
                              "not both", parameters=("resume=True", "overwrite=True"))
    train = an.train_
    test_src = None if test is None else open_for_head(an.head, test, "test")
    extra = list(extra)
    if test_src is None and not self_influence and not extra:
        raise ValidationError("nothing to compute: give test data (influence), self_influence=True or extra "
                              "columns")
    parts = an.engine.plan(train)
    job = {"task": "influence", "head": head_fingerprint(an.head), "train": source_fingerprint(train),
           "test": None if test_src is None else source_fingerprint(test_src),
           "damping": float(an.damping), "hessian": an.hessian_spec_,
           "columns": (["influence"] if test_src is not None else []) + (["self_influence"] if self_influence
                                                                         else [])
           + [_identity(c) for c in extra],
           "partitions": [p.as_json() for p in parts]}
    pdir = PartsDirectory(out, argument="--out")
    state = pdir.prepare(job, resume=resume, overwrite=overwrite)
    resumed = state is not None
    n_train = an.n_train_
    with an.engine:
        if state is None:
            if fit is not None:
                fit()
            curv = an.curvature_
            direction, n_test = np.zeros(0), 0
            if test_src is not None:
                gbar, n_test = mean_test_gradient(an.head, test_src, engine=an.engine)
                direction = curv.solve(gbar).cpu().numpy()
            null = curv.null if curv.null is not None else an.head.null_directions()
            st = curv.stationarity
            state = {"stationarity": np.array([] if st is None else [st.gradient_norm, st.gradient_scale,
                                                                       st.threshold, float(st.refit)]),
                     "hessian": curv.hessian.cpu().numpy(), "null": null.cpu().numpy(),
                     "n": np.array(float(curv.n)), "damping": np.array(float(curv.damping)),
                     "direction": direction, "n_train": np.array(n_train), "n_test": np.array(n_test)}
            pdir.start(state, {"n_train": n_train, "n_test": n_test, "n_parts": len(parts)}, overwrite=overwrite)
        # the scoring pass always uses the curvature rebuilt from the saved state, so that a resumed run
        # computes its parts from exactly the same H and s as the parts written before the crash
        dev = an.head.device
        an.curvature_ = Curvature(hessian=torch.as_tensor(state["hessian"], dtype=DTYPE, device=dev),
                                  n=float(state["n"]), l2=an.head.l2, damping=float(state["damping"]),
                                  null=torch.as_tensor(state["null"], dtype=DTYPE, device=dev))
        direction = torch.as_tensor(state["direction"], dtype=DTYPE, device=dev) if test_src is not None else None
        saved = np.asarray(state["stationarity"]) if "stationarity" in state else np.zeros(0)
        if saved.size == 4:
            an.stationarity_ = an.curvature_.stationarity = Stationarity(
                gradient_norm=float(saved[0]), gradient_scale=float(saved[1]), threshold=float(saved[2]),
                refit=bool(saved[3]))
        columns = an._columns(test_src, self_influence=self_influence, extra=extra, direction=direction)
        meta = {**_metadata(columns), **an._stationarity_metadata(), **classes_metadata(an.head)}
        todo = [p for p in parts if not pdir.is_complete(p)]
        failures = an.engine.write_parts(train, ScoreKernel(an.head, columns), pdir.path, todo,
                                         lambda p: pdir.part_metadata(p, meta)) if todo else []
    if failures:
        part, exc = failures[0]
        more = f" (and {len(failures) - 1} more: {', '.join(p.name for p, _ in failures[1:4])})" \
            if len(failures) > 1 else ""
        raise ValidationError(f"{exc}{more}; {len(failures)} of {len(parts)} parts were not written (first: "
                              f"{part.name}), the others are complete in {pdir.path}: fix the input and rerun "
                              f"with resume=True", parameters=("resume=True",)) from exc
    names = list(pq.read_schema(pdir.part_path(parts[0])).names) if parts else []
    pdir.finish({"columns": names})
    return PartsResult(path=pdir.path, n_parts=len(parts), written=len(todo), skipped=len(parts) - len(todo),
                       n_rows=n_train, columns=names, resumed=resumed)


def write_influence_parts(head: Head, train: Any, out: str | Path, *, test: Any = None,
                          self_influence: bool = True, memorization: bool = False,
                          columns: Iterable[Any] = (), damping: float = 0.0,
                          curvature: Curvature | None = None, hessian_rows: Any = None,
                          hessian_weights: Any = None, normalizer: float | None = None,
                          workers: int | None = None, scheduler: Any = None, resume: bool = False,
                          overwrite: bool = False, chunk_size: int = 65536, partition_rows: int | None = None,
                          device: torch.device | str | None = None, progress: bool = False,
                          timeout: float = 30.0, argument: str = "--out", refit: bool = False,
                          allow_nonstationary: bool = False) -> PartsResult:
    """Score every training point into a directory ``out`` of Parquet part files (one per partition): the
    job of ``InfluenceAnalyzer(head, ...).fit(train, ...).write_parts(test, out, ...)``, except that a
    resumed run reuses the saved Hessian instead of building it again.

    Columns: ``id``, ``label``; with ``test``: ``influence`` (−ḡ_testᵀH⁻¹g_p, > 0 harmful),
    ``loss_change_if_removed`` (−influence/n); with ``self_influence``: g_pᵀH⁻¹g_p; with ``memorization``:
    ``memorization`` (‖Λ⁻¹Qᵀg_p‖₁); then each of ``columns`` (ScoreColumns, e.g. a ColumnFunction).

    H is the full Hessian (all rows), the Hessian of ``hessian_rows`` with ``hessian_weights`` (paper
    eq. 52, N = ``normalizer`` or Σw), or a given ``curvature``. ``workers`` / ``scheduler`` run the
    partitions on Dask. A part whose input cannot be read is not written, the others are, and a
    ValidationError naming the file is raised at the end.

    A head off the optimum is refused unless ``allow_nonstationary``; ``refit`` polishes it first (before the
    job is planned, so a resumed run polishes it again to the same head).
    """
    if refit:
        head = refit_head(check_head(head), train, chunk_size=chunk_size)
    an = InfluenceAnalyzer(head, damping=damping, chunk_size=chunk_size, progress=progress, workers=workers,
                           scheduler=scheduler, partition_rows=partition_rows, device=device, timeout=timeout,
                           allow_nonstationary=allow_nonstationary)
    rows, w = an._plan(train, curvature, hessian_rows, hessian_weights, normalizer)
    extra = list(columns)
    if memorization:
        from .memorization import MemorizationColumns

        extra.insert(0, MemorizationColumns(score_only=True))
    def fit() -> None:
        an.fit(an.train_, curvature=curvature, rows=rows, row_weights=w, normalizer=normalizer)

    with an.engine:
        return _run_parts(an, test, out, self_influence=self_influence, extra=extra, resume=resume,
                          overwrite=overwrite, fit=fit)
