"""Influence of training points on test losses, streamed chunk by chunk (DESIGN.md conventions).

Signs (paper eqs. 19, 20, 27, 28, 35, 36), with g = ∇θℓ at θ̂ and H the head Hessian (incl. λ):

- ``influence``  I_loss(z_t, z_p) = −g_tᵀ H⁻¹ g_p. Positive: up-weighting z_p *raises* the test loss, so
  z_p is harmful to z_t; negative: z_p helps. On a test set, g_t is the mean test gradient.
- ``loss_change_if_removed`` = −influence / n = +(1/n) g_tᵀ H⁻¹ g_p: predicted change of the (mean)
  test loss when z_p is left out (eq. 28). Positive: removing z_p hurts.
- ``self_influence`` = g_pᵀ H⁻¹ g_p ≥ 0.
- I_up(z_p) = −H⁻¹ g_p (eq. 19) and the predicted parameter change on removal (1/n) H⁻¹ g_p (eq. 20).

peers (pyDVL, Captum's TracIn, TRAK) often report the opposite sign; the column names above say which way
ours point.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from ..errors import NotFittedError, ValidationError
from ..io.outputs import ParquetStreamWriter, check_output_path
from ..io.sources import DataSource, open_source
from ..progress import track_rows
from .curvature import Curvature, fit_curvature, float64_blocks, row_block
from .heads import DTYPE, Head, LogisticHead, SoftmaxHead, as_tensor

SCORE_COLUMNS = ("id", "label", "influence", "loss_change_if_removed", "self_influence")

SIGN_METADATA = {
    "winnow.influence": "I_loss = -g_test^T H^-1 g_train averaged over the test set; > 0 means the training "
                        "point raises the test loss (harmful), < 0 means it lowers it (helpful)",
    "winnow.loss_change_if_removed": "= -influence / n: predicted change of mean test loss if the point is "
                                     "removed (paper eq. 28)",
    "winnow.self_influence": "g^T H^-1 g >= 0",
}


def _chunk_tensors(head: Head, chunk: Any, argument: str) -> tuple[torch.Tensor, torch.Tensor]:
    head.check_features(chunk.X, argument=argument)
    head.check_labels(chunk.y, argument=argument)
    return as_tensor(chunk.X, head.device), torch.as_tensor(chunk.y, device=head.device)


def mean_test_gradient(head: Head, test: Any, *, chunk_size: int = 65536,
                       progress: bool = False) -> tuple[torch.Tensor, int]:
    """(ḡ_t = (1/T) Σ_t g_t of shape (P,), T), streaming over ``test``."""
    source = open_source(test)
    total = torch.zeros(head.n_params, dtype=DTYPE, device=head.device)
    T = 0
    for ch in track_rows(source.chunks(chunk_size), len(source), "test gradient", progress):
        X, y = _chunk_tensors(head, ch, source.name)
        total += head.gradients(X, y).sum(0)
        T += len(ch)
    if T == 0:
        raise ValidationError(f"test data {source.name} is empty")
    return total / T, T


def test_gradients(head: Head, test: Any, *, chunk_size: int = 65536) -> tuple[torch.Tensor, np.ndarray,
                                                                               np.ndarray]:
    """All test gradients G_t (T, P) with their ids (T,) and labels (T,) (for pairwise scores; T moderate)."""
    source = open_source(test)
    G, ids, ys = [], [], []
    for ch in source.chunks(chunk_size):
        X, y = _chunk_tensors(head, ch, source.name)
        G.append(head.gradients(X, y))
        ids.append(ch.ids)
        ys.append(ch.y)
    if not G:
        raise ValidationError(f"test data {source.name} is empty")
    return torch.cat(G), np.concatenate(ids), np.concatenate(ys)


def score_chunk(head: Head, X: np.ndarray, y: np.ndarray, *, direction: torch.Tensor,
                curvature: Curvature | None, n_train: int,
                pair_factors: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """Scores for one chunk of training points (pure; shared by the local loop and Dask).

    ``direction`` s = H⁻¹ḡ_t (P,); ``curvature`` for self-influence (None skips it); ``pair_factors``
    H⁻¹G_tᵀ (P, T) for the pairwise matrix. Returns numpy columns ``influence`` (c,),
    ``loss_change_if_removed`` (c,), ``self_influence`` (c,) and ``pairs`` (c, T) when asked.
    """
    if type(head) in (LogisticHead, SoftmaxHead):
        return _score_chunk_linear(head, X, y, direction=direction, curvature=curvature, n_train=n_train,
                                   pair_factors=pair_factors)
    Xt = as_tensor(X, head.device)
    yt = torch.as_tensor(y, device=head.device)
    G = head.gradients(Xt, yt)  # (c, P)
    infl = -(G @ direction)
    out = {"influence": infl.cpu().numpy(), "loss_change_if_removed": (-infl / n_train).cpu().numpy()}
    if curvature is not None:
        W = curvature.whiten(G)
        out["self_influence"] = (W * W).sum(0).cpu().numpy()
    if pair_factors is not None:
        out["pairs"] = (-(G @ pair_factors)).cpu().numpy()
    return out


def _score_chunk_linear(head: LogisticHead | SoftmaxHead, X: np.ndarray, y: np.ndarray, *,
                        direction: torch.Tensor, curvature: Curvature | None, n_train: int,
                        pair_factors: torch.Tensor | None,
                        pairs_out: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """``score_chunk`` for the closed-form heads, without forming the (c, P) gradients.

    With g_p = r_p ⊗ ũ_p (ũ = [u, 1]) every score is a GEMM on the features: for V (P, m) seen as
    (K, D + 1, m), g_pᵀV = Σ_k r_pk (u_pᵀ V_k[:D] + V_k[D]). The logits, the aggregate direction s and the
    pair factors share one GEMM; self-influence is ‖L⁻¹g_p‖² = ‖Σ_k r_pk (L⁻¹)_k ũ_p‖² with (L⁻¹)_k the
    columns of L⁻¹ for output k. Features are upcast to float64 one cache-sized block at a time.
    ``pairs_out`` (c, T) float64, if given, receives the pairs (no extra copy on a CPU).
    """
    K, D = head.n_outputs, head.n_features_
    dev = head.device

    def split(V: torch.Tensor) -> torch.Tensor:
        """V (P, m) -> Vᵀ per output, (K·m, D + 1) contiguous: row k·m + j = V_k[:, j], so ũ_pᵀV_k[:, j] is
        entry (p, k·m + j) of X̃ @ split(V).T."""
        return V.reshape(K, D + 1, -1).permute(0, 2, 1).reshape(-1, D + 1).contiguous()

    blocks = [head.theta_.reshape(-1, 1), direction.reshape(-1, 1)]  # logits z_k = θ_kᵀũ, s_kᵀũ
    T = 0
    if pair_factors is not None:
        T = int(pair_factors.shape[1])
        blocks.append(pair_factors)
    # the GEMMs below take the transposed view of a contiguous (m, D + 1) matrix: much faster in MKL than a
    # row-major (D + 1, m) right-hand side when m is small
    VT = torch.cat([split(V) for V in blocks])
    if curvature is not None:
        MT = split(curvature.inverse_factor().T)  # (K·P, D + 1): rows of (L⁻¹)_k

    c = int(X.shape[0])
    infl = torch.empty(c, dtype=DTYPE, device=dev)
    self_infl = torch.empty(c, dtype=DTYPE, device=dev) if curvature is not None else None
    pairs = None
    if T:
        direct = pairs_out is not None and torch.device(dev).type == "cpu"
        pairs = torch.from_numpy(pairs_out) if direct else torch.empty(c, T, dtype=DTYPE, device=dev)
    yt_all = torch.as_tensor(y, device=dev)
    B = row_block(max(D + 1, VT.shape[0], MT.shape[0] if curvature is not None else 0), dev)
    for s, e, Xb in float64_blocks(X, B, dev, ones_column=True):  # Xb = X̃ (b, D + 1)
        Z = Xb @ VT.T  # (b, K + K + K·T)
        r = head._residuals_from_logits(Z[:, :K], yt_all[s:e])  # (b, K)
        rn = r.neg_()  # −r: the influences carry a minus sign
        torch.sum(rn * Z[:, K:2 * K], 1, out=infl[s:e])
        if pairs is not None:
            if K == 1:
                torch.mul(Z[:, 2:], rn, out=pairs[s:e])
            else:
                torch.sum(rn[:, :, None] * Z[:, 2 * K:].reshape(-1, K, T), 1, out=pairs[s:e])
        if self_infl is not None:
            W = Xb @ MT.T  # (b, K·P): row p, block k = (L⁻¹)_k ũ_p
            W = W.mul_(rn) if K == 1 else (W.reshape(-1, K, W.shape[1] // K) * rn[:, :, None]).sum(1)
            torch.sum(W * W, 1, out=self_infl[s:e])
    infl_np = infl.cpu().numpy()
    out = {"influence": infl_np, "loss_change_if_removed": infl_np / -n_train}
    if self_infl is not None:
        out["self_influence"] = self_infl.cpu().numpy()
    if pairs is not None:
        if pairs_out is None:
            out["pairs"] = pairs.cpu().numpy()
        else:
            if not direct:
                pairs_out[...] = pairs.cpu().numpy()
            out["pairs"] = pairs_out
    return out


class ScoreColumns(ABC):
    """Extra per-training-point columns computed in the same scoring pass as the influence.

    ``prepare`` runs once with the fitted analyzer and the test source (solves, eigenbases, thresholds);
    ``chunk`` maps one training chunk to its columns (pure given the prepared state, so the Dask backend can
    ship the prepared object to workers). ``fields`` gives the Parquet schema of those columns.
    """

    fields: list[tuple[str, pa.DataType]] = []
    metadata: dict[str, str] = {}

    @abstractmethod
    def prepare(self, analyzer: InfluenceAnalyzer, test: DataSource) -> None:
        """Compute whatever the per-chunk function needs from the fitted analyzer and the test set."""

    @abstractmethod
    def chunk(self, X: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        """Columns (each (c,)) for one chunk of training points."""


SCORE_FIELDS = [("id", pa.int64()), ("label", pa.int64()), ("influence", pa.float64()),
                ("loss_change_if_removed", pa.float64()), ("self_influence", pa.float64())]
PAIR_SCHEMA = pa.schema([("test_id", pa.int64()), ("train_id", pa.int64()), ("influence", pa.float64())])
PAIR_METADATA = {"winnow.influence": "I_loss(test, train) = -g_test^T H^-1 g_train; > 0 harmful"}


def write_score_stream(chunks: Iterable[dict[str, np.ndarray]], out: str | Path, fields: list,
                       *, pairs_out: str | Path | None = None, overwrite: bool = False,
                       metadata: Callable[[], dict[str, str]]) -> Path:
    """Write per-chunk score dicts (as yielded by ``iter_scores``) to Parquet at ``out`` and, when the chunks
    carry ``pairs`` (c, T) and ``test_ids``, the long-format pairs to ``pairs_out``. Both files are written
    to temporary names and renamed only when complete; ``metadata()`` is called at the first chunk."""
    # ``chunks`` is lazy: refuse existing outputs before any pass over the data runs
    check_output_path(out, overwrite, argument="--out")
    if pairs_out is not None:
        check_output_path(pairs_out, overwrite, argument="--pairs")
    schema = pa.schema(fields)
    with ExitStack() as stack:
        w = pw = None
        test_ids = None
        for cols in chunks:
            if w is None:
                w = stack.enter_context(ParquetStreamWriter(out, schema, overwrite=overwrite, argument="--out",
                                                            metadata=metadata()))
                if pairs_out is not None:
                    pw = stack.enter_context(ParquetStreamWriter(pairs_out, PAIR_SCHEMA, overwrite=overwrite,
                                                                 argument="--pairs", metadata=PAIR_METADATA))
            if "test_ids" in cols:
                test_ids = cols.pop("test_ids")
            P = cols.pop("pairs", None)
            w.write(**{k: cols[k] for k in schema.names})
            if pw is not None and P is not None:
                c, T = P.shape
                pw.write(test_id=np.tile(test_ids, c), train_id=np.repeat(cols["id"], T), influence=P.reshape(-1))
    return Path(out)


def _metadata(extra: Sequence[ScoreColumns]) -> dict[str, str]:
    meta = dict(SIGN_METADATA)
    for columns in extra:
        meta.update(columns.metadata)
    return meta


class InfluenceAnalyzer:
    """Exact influence of every training point on a head, streaming over the training data.

    Parameters: ``head`` a fitted Head; ``damping`` added to H's diagonal; ``chunk_size`` rows per chunk;
    ``progress`` shows bars. ``fit(train)`` builds the Hessian (``curvature_``, ``n_train_``).
    """

    def __init__(self, head: Head, *, damping: float = 0.0, chunk_size: int = 65536,
                 progress: bool = False) -> None:
        if not isinstance(head, Head):
            raise ValidationError(f"head must be a winnow Head, got {type(head).__name__}")
        head._check_fitted()
        if chunk_size < 1:
            raise ValidationError(f"chunk_size must be >= 1, got {chunk_size}")
        self.head = head
        self.damping = damping
        self.chunk_size = int(chunk_size)
        self.progress = progress

    def fit(self, train: Any, *, curvature: Curvature | None = None) -> InfluenceAnalyzer:
        """Build H over all of ``train`` (or take a prebuilt ``curvature``, e.g. a relative Hessian)."""
        self.train_ = open_source(train)
        self.head.check_features(np.empty((0, self.train_.n_features)), argument=self.train_.name)
        self.n_train_ = len(self.train_)
        if self.n_train_ == 0:
            raise ValidationError(f"training data {self.train_.name} is empty")
        self.curvature_ = curvature if curvature is not None else fit_curvature(
            self.head, self.train_, damping=self.damping, chunk_size=self.chunk_size, progress=self.progress)
        return self

    def _check(self) -> None:
        if not hasattr(self, "curvature_"):
            raise NotFittedError("this InfluenceAnalyzer is not fitted: call fit(train) before scoring")

    # ----------------------------------------------------------------- scores
    def iter_scores(self, test: Any, *, self_influence: bool = True, pairs: bool = False,
                    extra: Sequence[ScoreColumns] = ()) -> Iterator[dict[str, np.ndarray]]:
        """Yield per-chunk score columns for every training point (see ``score_chunk``) plus ``id``/``label``
        and the columns of each ``extra`` column set; with ``pairs`` also ``test_ids`` once in the first
        chunk's dict."""
        self._check()
        test_src = open_source(test)
        self.head.check_features(np.empty((0, test_src.n_features)), argument=f"test ({test_src.name})")
        gbar, _ = mean_test_gradient(self.head, test_src, chunk_size=self.chunk_size)
        direction = self.curvature_.solve(gbar)
        pair_factors, test_ids = None, None
        if pairs:
            Gt, test_ids, _ = test_gradients(self.head, test_src, chunk_size=self.chunk_size)
            pair_factors = self.curvature_.solve(Gt.T)
        for columns in extra:
            columns.prepare(self, test_src)
        first = True
        for ch in track_rows(self.train_.chunks(self.chunk_size), self.n_train_, "scoring pass",
                             self.progress):
            self.head.check_labels(ch.y, argument=self.train_.name)
            cols = score_chunk(self.head, ch.X, ch.y, direction=direction,
                               curvature=self.curvature_ if self_influence else None,
                               n_train=self.n_train_, pair_factors=pair_factors)
            cols = {"id": ch.ids, "label": ch.y, **cols}
            for columns in extra:
                cols.update(columns.chunk(ch.X, ch.y))
            if pairs and first:
                cols["test_ids"] = test_ids
            first = False
            yield cols

    def score(self, test: Any, *, self_influence: bool = True, extra: Sequence[ScoreColumns] = ()) -> pa.Table:
        """One row per training point: ``id``, ``label``, ``influence``, ``loss_change_if_removed``,
        ``self_influence`` (see the module docstring for signs), then the ``extra`` column sets' columns."""
        parts = list(self.iter_scores(test, self_influence=self_influence, extra=extra))
        cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "test_ids"}
        return pa.table(cols).replace_schema_metadata(_metadata(extra))

    def write_scores(self, test: Any, out: str | Path, *, pairs_out: str | Path | None = None,
                     overwrite: bool = False, extra: Sequence[ScoreColumns] = ()) -> Path:
        """Stream scores to Parquet at ``out`` (and long-format pairs ``test_id, train_id, influence`` to
        ``pairs_out``), each written to a temporary name and renamed when complete."""
        fields = SCORE_FIELDS + [f for columns in extra for f in columns.fields]
        chunks = self.iter_scores(test, pairs=pairs_out is not None, extra=extra)
        # the metadata is read at the first chunk, once the extra column sets are prepared
        return write_score_stream(chunks, out, fields, pairs_out=pairs_out, overwrite=overwrite,
                                  metadata=lambda: _metadata(extra))

    def pairwise(self, test: Any) -> np.ndarray:
        """The matrix I_loss(z_t, z_p) = −g_tᵀH⁻¹g_p, shape (T, n) (dense: only for moderate T·n)."""
        self._check()
        test_src = open_source(test)
        self.head.check_features(np.empty((0, test_src.n_features)), argument=f"test ({test_src.name})")
        Gt, _, _ = test_gradients(self.head, test_src, chunk_size=self.chunk_size)
        factors = self.curvature_.solve(Gt.T)  # (P, T)
        zero = torch.zeros(self.head.n_params, dtype=DTYPE, device=self.head.device)
        # written in place chunk by chunk: no list of chunk results and no concatenated copy
        out = np.empty((self.n_train_, factors.shape[1]))
        start = 0
        for ch in track_rows(self.train_.chunks(self.chunk_size), self.n_train_, "pairwise", self.progress):
            self.head.check_labels(ch.y, argument=self.train_.name)
            stop = start + len(ch)
            if type(self.head) in (LogisticHead, SoftmaxHead):
                _score_chunk_linear(self.head, ch.X, ch.y, direction=zero, curvature=None, n_train=self.n_train_,
                                    pair_factors=factors, pairs_out=out[start:stop])
            else:
                out[start:stop] = score_chunk(self.head, ch.X, ch.y, direction=zero, curvature=None,
                                              n_train=self.n_train_, pair_factors=factors)["pairs"]
            start = stop
        return out.T

    def self_influence(self) -> np.ndarray:
        """g_pᵀH⁻¹g_p for every training point, shape (n,)."""
        self._check()
        zero = torch.zeros(self.head.n_params, dtype=DTYPE, device=self.head.device)
        out = []
        for ch in self.train_.chunks(self.chunk_size):
            self.head.check_features(ch.X, argument=self.train_.name)
            self.head.check_labels(ch.y, argument=self.train_.name)
            out.append(score_chunk(self.head, ch.X, ch.y, direction=zero, curvature=self.curvature_,
                                   n_train=self.n_train_)["self_influence"])
        return np.concatenate(out)

    def influence_up(self, X: Any, y: Any) -> np.ndarray:
        """I_up(z_p) = −H⁻¹g_p for chosen points, shape (k, P) (paper eq. 19)."""
        self._check()
        Xt, yt = as_tensor(np.atleast_2d(X), self.head.device), torch.as_tensor(np.atleast_1d(y))
        self.head.check_features(Xt)
        self.head.check_labels(yt.numpy())
        return (-self.curvature_.solve(self.head.gradients(Xt, yt.to(self.head.device)).T).T).cpu().numpy()

    def parameter_change_if_removed(self, X: Any, y: Any) -> np.ndarray:
        """Predicted θ̂₋ₚ − θ̂ ≈ +(1/n) H⁻¹g_p for chosen points, shape (k, P) (paper eq. 20)."""
        return -self.influence_up(X, y) / self.n_train_


def compute_influence(head: Head, train: Any, test: Any, *, damping: float = 0.0,
                      chunk_size: int = 65536, progress: bool = False) -> pa.Table:
    """One-call convenience: ``InfluenceAnalyzer(head, ...).fit(train).score(test)``."""
    return InfluenceAnalyzer(head, damping=damping, chunk_size=chunk_size,
                             progress=progress).fit(train).score(test)

