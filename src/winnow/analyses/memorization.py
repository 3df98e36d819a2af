"""Memorization scores, memorize/generalize verdicts and per-point sign statistics (paper section 6).

With H = QΛQᵀ the head Hessian (incl. λ; Λ ascending, Q orthonormal) and g_p = ∇θℓ(z_p, θ̂), the
coordinates of g_p in H's eigenbasis are χ = Qᵀg_p, and those of H⁻¹g_p are Λ⁻¹χ. The memorization score
(Definition 6, eq. 67; eq. 73) is

    memorization(z_p) = ‖Λ⁻¹Qᵀg_p‖₁ = Σ_i |χ_i| / Λ_i ≥ 0.

z_p is D-memorizable when the score is > D (eq. 67, ``memorize``) and D-generalizable when it is ≤ D
(eq. 68). D is given, or chosen as a quantile of the scores. For a softmax head the null direction of H
(the common bias shift) is dropped from the eigenbasis: every gradient is orthogonal to it.

Sign statistics: over a test set, the fraction of test points z_t for which I_loss(z_t, z_p) =
−g_tᵀH⁻¹g_p < 0 (z_p **helps** z_t) and > 0 (z_p **hurts** z_t), for every training point.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from .._moved import moved_names
from ..core.curvature import Curvature
from ..core.heads import DTYPE, Head, as_tensor
from ..engine.columns import ScoreColumns
from ..engine.passes import checked_curvature, map_columns, open_for_head, test_gradients
from ..errors import ValidationError
from ..io.sources import open_source
from ..validation import check_fraction, fail

MEMORIZATION_COLUMNS = ("memorization", "memorize")

MEMORIZATION_METADATA = {
    "winnow.memorization": "||Lambda^-1 Q^T g_p||_1 with H = Q Lambda Q^T (paper Definition 6, eq. 67): the L1 "
                           "norm of H^-1 g_p in H's eigenbasis, >= 0",
    "winnow.memorize": "memorization > D (D-memorizable, eq. 67); false: D-generalizable (eq. 68)",
}

# cap on the number of (train, test) influence values held at once by the sign statistics
_PAIR_BLOCK = 1 << 22


# --------------------------------------------------------------------------------------- per chunk
def eigenbasis(curvature: Curvature) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q (P, P − r), 1/Λ (P − r,)) of H from ``Curvature.eigh()``: the inputs of ``memorization_chunk``."""
    ev, Q = curvature.eigh()
    return Q, 1.0 / ev


def memorization_chunk(head: Head, X: Any, y: Any, Q: Any, inv_eigvals: Any) -> np.ndarray:
    """Memorization scores Σ_i |(Qᵀg_p)_i| / Λ_i for one chunk of training points (pure), shape (c,).

    ``X`` (c, D), ``y`` (c,); ``Q`` (P, P') eigenvectors of H and ``inv_eigvals`` (P',) = 1/Λ (see
    ``eigenbasis``).
    """
    Xt = as_tensor(X, head.device)
    yt = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y, device=head.device)
    Qt = as_tensor(Q, head.device)
    inv = as_tensor(inv_eigvals, head.device)
    chi = head.gradients(Xt, yt) @ Qt  # (c, P') coordinates of g_p in the eigenbasis
    return (chi.abs() @ inv).cpu().numpy()


def check_threshold(threshold: float, argument: str = "threshold") -> float:
    """Validate a memorization threshold D (finite, >= 0: the score is an L1 norm)."""
    try:
        D = float(threshold)
    except (TypeError, ValueError):
        raise fail(f"{argument} must be a number >= 0, got {threshold!r}", argument) from None
    if not np.isfinite(D) or D < 0:
        raise fail(f"{argument} must be a finite number >= 0 (the memorization threshold D; scores are L1 "
                   f"norms); got {threshold!r}", argument)
    return D


def memorize_verdicts(scores: np.ndarray, threshold: float) -> np.ndarray:
    """``memorize`` = score > D (Definition 6); False means D-generalizable (Definition 7). (n,) bool."""
    D = check_threshold(threshold)
    return np.asarray(scores) > D


def memorization_columns(head: Head, X: Any, y: Any, Q: Any, inv_eigvals: Any,
                         threshold: float) -> dict[str, np.ndarray]:
    """The SCORES columns for one chunk (pure): ``memorization`` (c,) float64, ``memorize`` (c,) bool."""
    D = check_threshold(threshold)
    s = memorization_chunk(head, X, y, Q, inv_eigvals)
    return {"memorization": s, "memorize": s > D}


def choose_threshold(scores: np.ndarray, quantile: float) -> float:
    """D as the ``quantile`` (in [0, 1]) of the scores: a fraction 1 − quantile of the points memorize."""
    try:
        q = float(quantile)
    except (TypeError, ValueError):
        raise ValidationError(f"quantile must be a number in [0, 1], got {quantile!r}") from None
    if not (0.0 <= q <= 1.0):
        raise ValidationError(f"quantile must be in [0, 1], got {quantile!r}")
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        raise ValidationError("scores is empty: cannot choose a threshold quantile")
    return float(np.quantile(s, q))


# ------------------------------------------------------------------------------------- streaming
def memorization_scores(head: Head, curvature: Curvature, data: Any, chunk_size: int = 65536,
                        progress: bool = False, *, engine: Any = None) -> np.ndarray:
    """Memorization score ‖Λ⁻¹Qᵀg_p‖₁ of every row of ``data`` (one engine pass), shape (n,)."""
    source = open_for_head(head, data, "data")
    if len(source) == 0:
        return np.zeros(0)
    Q, inv = eigenbasis(curvature)
    return map_columns(head, source, memorization_chunk, label="memorization", chunk_size=chunk_size,
                       progress=progress, engine=engine, description="memorization", Q=Q,
                       inv_eigvals=inv)["memorization"]


def check_threshold_choice(threshold: float | None, quantile: float | None) -> tuple[float | None, float | None]:
    """Exactly one of ``threshold`` (D >= 0) or ``quantile`` (in [0, 1]), checked; returns them as floats."""
    if (threshold is None) == (quantile is None):
        raise fail("give exactly one of threshold (D) or quantile", "threshold", "quantile")
    if threshold is not None:
        return check_threshold(threshold, "threshold"), None
    return None, check_fraction(quantile, "quantile", low_open=False, high_open=False)


def resolve_threshold(head: Head, curvature: Curvature, data: Any, *, threshold: float | None = None,
                      quantile: float | None = None, chunk_size: int = 65536, progress: bool = False,
                      engine: Any = None) -> float:
    """D from exactly one of ``threshold`` (validated) or ``quantile`` (one extra scoring pass)."""
    threshold, quantile = check_threshold_choice(threshold, quantile)
    if threshold is not None:
        return threshold
    return choose_threshold(memorization_scores(head, curvature, data, chunk_size, progress, engine=engine),
                            quantile)


class MemorizationColumns(ScoreColumns):
    """``memorization`` and ``memorize`` as extra columns of the scoring pass, with D given as ``threshold``
    or as a ``quantile`` of all scores (one extra pass over the training data in ``prepare``); with
    ``score_only`` just the ``memorization`` score (no threshold, no extra pass)."""

    fields = [("memorization", pa.float64()), ("memorize", pa.bool_())]

    def __init__(self, *, threshold: float | None = None, quantile: float | None = None,
                 score_only: bool = False) -> None:
        if not score_only:  # checked here, so that a bad D fails before any pass over the data
            threshold, quantile = check_threshold_choice(threshold, quantile)
        self.threshold, self.quantile, self.score_only = threshold, quantile, bool(score_only)
        if score_only:
            self.fields = [("memorization", pa.float64())]

    def prepare(self, analyzer: Any, test: Any) -> None:
        self.head = analyzer.head
        self.basis = eigenbasis(analyzer.curvature_)
        if self.score_only:
            self.metadata = {"winnow.memorization": MEMORIZATION_METADATA["winnow.memorization"]}
            return
        self.threshold_ = resolve_threshold(analyzer.head, analyzer.curvature_, analyzer.train_,
                                            threshold=self.threshold, quantile=self.quantile,
                                            chunk_size=analyzer.chunk_size, progress=analyzer.progress,
                                            engine=analyzer.engine)
        self.metadata = {**MEMORIZATION_METADATA, "winnow.memorize_threshold": repr(self.threshold_)}

    def chunk(self, X: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        if self.score_only:
            return {"memorization": memorization_chunk(self.head, X, y, *self.basis)}
        return memorization_columns(self.head, X, y, *self.basis, self.threshold_)


def sign_statistics_chunk(head: Head, X: Any, y: Any, test_factors: torch.Tensor) -> dict[str, np.ndarray]:
    """Helps/hurts fractions for one chunk of training points (pure).

    ``test_factors`` = H⁻¹G_tᵀ (P, T). Returns ``helps_fraction`` (c,) = fraction of test points with
    I_loss(z_t, z_p) < 0, ``hurts_fraction`` (c,) with I_loss > 0 (ties at 0 count in neither).
    """
    Xt = as_tensor(X, head.device)
    yt = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y, device=head.device)
    G = head.gradients(Xt, yt)  # (c, P)
    c, T = G.shape[0], test_factors.shape[1]
    helps = torch.zeros(c, dtype=DTYPE, device=head.device)
    hurts = torch.zeros(c, dtype=DTYPE, device=head.device)
    step = max(1, _PAIR_BLOCK // max(c, 1))
    for s in range(0, T, step):
        infl = -(G @ test_factors[:, s:s + step])  # (c, t) I_loss
        helps += (infl < 0).sum(1)
        hurts += (infl > 0).sum(1)
    return {"helps_fraction": (helps / T).cpu().numpy(), "hurts_fraction": (hurts / T).cpu().numpy()}


def sign_statistics(head: Head, curvature: Curvature, train: Any, test: Any, *, chunk_size: int = 65536,
                    progress: bool = False, engine: Any = None) -> dict[str, np.ndarray]:
    """Per training point, over all T test points: ``helps_fraction`` (I_loss < 0) and ``hurts_fraction``
    (I_loss > 0), each (n,). Cost n·T·P; the test gradients (T, P) are held in memory."""
    src = open_for_head(head, train, "train")
    Gt, _, _ = test_gradients(head, test, chunk_size=chunk_size, engine=engine)
    factors = curvature.solve(Gt.T)  # (P, T)
    return map_columns(head, src, sign_statistics_chunk, chunk_size=chunk_size, progress=progress, engine=engine,
                       description="sign statistics", test_factors=factors)


# ------------------------------------------------------------------------------------ analysis
@dataclass
class MemorizationResult:
    """Scores, threshold and verdicts for every training point (``summary()`` for JSON)."""

    ids: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    threshold: float
    quantile: float | None
    memorize: np.ndarray
    helps_fraction: np.ndarray | None = None
    hurts_fraction: np.ndarray | None = None

    def counts_by_label(self) -> list[dict[str, Any]]:
        """Per label: rows, memorize count, generalize count."""
        out = []
        for lab in np.unique(self.labels):
            m = self.labels == lab
            out.append({"label": int(lab), "n": int(m.sum()), "memorize": int(self.memorize[m].sum()),
                        "generalize": int((~self.memorize[m]).sum())})
        return out

    def summary(self) -> dict[str, Any]:
        s = self.scores
        d: dict[str, Any] = {
            "threshold": self.threshold, "quantile": self.quantile, "n": int(s.size),
            "memorize": int(self.memorize.sum()), "generalize": int((~self.memorize).sum()),
            "by_label": self.counts_by_label(),
            "score_quantiles": {str(q): float(np.quantile(s, q)) for q in (0.0, 0.1, 0.5, 0.9, 0.99, 1.0)},
        }
        if self.helps_fraction is not None and self.hurts_fraction is not None:
            d["mean_helps_fraction"] = float(self.helps_fraction.mean())
            d["mean_hurts_fraction"] = float(self.hurts_fraction.mean())
            d["memorize_mean_hurts_fraction"] = (float(self.hurts_fraction[self.memorize].mean())
                                                 if self.memorize.any() else None)
            d["generalize_mean_hurts_fraction"] = (float(self.hurts_fraction[~self.memorize].mean())
                                                   if (~self.memorize).any() else None)
        return d


def write_points(result: MemorizationResult, path: Any, *, overwrite: bool = False,
                 argument: str = "--points-out") -> Any:
    """Write one row per training point (``id``, ``label``, ``memorization``, ``memorize`` and, when computed,
    ``helps_fraction``, ``hurts_fraction``) to Parquet (``.parquet``) or CSV (``.csv``, metadata in
    ``<path>.json``), atomically."""
    import pyarrow as pa

    from ..io.outputs import table_writer

    fields = [("id", pa.int64()), ("label", pa.int64()), ("memorization", pa.float64()), ("memorize", pa.bool_())]
    cols: dict[str, np.ndarray] = {"id": result.ids, "label": result.labels, "memorization": result.scores,
                                   "memorize": result.memorize}
    if result.helps_fraction is not None and result.hurts_fraction is not None:
        fields += [("helps_fraction", pa.float64()), ("hurts_fraction", pa.float64())]
        cols.update(helps_fraction=result.helps_fraction, hurts_fraction=result.hurts_fraction)
    meta = {**MEMORIZATION_METADATA, "winnow.memorize_threshold": repr(float(result.threshold)),
            "winnow.helps_fraction": "fraction of test points with I_loss(z_t, z_p) < 0 (z_p lowers their loss)",
            "winnow.hurts_fraction": "fraction of test points with I_loss(z_t, z_p) > 0 (z_p raises their loss)"}
    with table_writer(path, pa.schema(fields), overwrite=overwrite, argument=argument,
                             metadata=meta) as w:
        w.write(**cols)
    return path


class MemorizationAnalyzer:
    """Memorization scores and memorize/generalize verdicts for every training point.

    Settings: ``threshold`` D (>= 0) or ``quantile`` q in [0, 1] (D = q-quantile of the scores; default
    q = 0.9 when neither is given), ``damping``, ``chunk_size``, ``progress``; ``refit`` /
    ``allow_nonstationary``: a head off the optimum of its training objective is refused unless
    ``allow_nonstationary``, and ``refit`` first polishes a copy (Newton, same λ) that is scored instead.
    ``fit(head, train)`` sets ``curvature_``, ``head_`` (the head scored), ``stationarity_`` (its ‖∇R(θ̂)‖∞
    figure, or None for a given curvature that carries none), ``scores_`` (n,), ``threshold_``,
    ``memorize_`` (n,) bool, ``ids_``, ``labels_``.
    """

    def __init__(self, head: Head | None = None, *, threshold: float | None = None, quantile: float | None = None,
                 damping: float = 0.0, chunk_size: int = 65536, progress: bool = False, refit: bool = False,
                 allow_nonstationary: bool = False) -> None:
        self.head = head
        if threshold is not None and quantile is not None:
            raise ValidationError("give threshold (D) or quantile, not both")
        if threshold is not None:
            check_threshold(threshold)
        if quantile is not None and not (0.0 <= float(quantile) <= 1.0):
            raise ValidationError(f"quantile must be in [0, 1], got {quantile!r}")
        self.threshold = threshold
        self.quantile = quantile if (quantile is not None or threshold is not None) else 0.9
        self.damping = damping
        self.chunk_size = chunk_size
        self.progress = progress
        self.refit = bool(refit)
        self.allow_nonstationary = bool(allow_nonstationary)

    def fit(self, *data: Any, curvature: Curvature | None = None) -> MemorizationAnalyzer:
        """``fit(train)`` with the constructor's head (or ``fit(head, train)``): H (or the given
        ``curvature``), every training point's score, the threshold and the verdicts."""
        from .relative import _head_and_train

        head, train = _head_and_train(self, data)
        src = open_source(train)
        if curvature is not None:
            if self.refit:
                raise ValidationError("refit=True polishes the head and builds its Hessian: pass either "
                                      "curvature= (a Hessian of the head as it is) or refit=True, not both",
                                      parameters=("refit=True",))
            if curvature.stationarity is not None:
                curvature.stationarity.check(self.allow_nonstationary)
        else:
            head, curvature = checked_curvature(head, src, refit=self.refit,
                                                allow_nonstationary=self.allow_nonstationary,
                                                damping=self.damping, chunk_size=self.chunk_size,
                                                progress=self.progress)
        self.curvature_ = curvature
        self.stationarity_ = curvature.stationarity
        self.head_ = head
        self.scores_ = memorization_scores(head, self.curvature_, src, self.chunk_size, self.progress)
        self.threshold_ = (check_threshold(self.threshold) if self.threshold is not None
                           else choose_threshold(self.scores_, self.quantile))
        self.memorize_ = self.scores_ > self.threshold_
        self.labels_ = src.labels()
        self.ids_ = src.ids()
        self.train_ = src
        return self

    def sign_statistics(self, test: Any) -> dict[str, np.ndarray]:
        """Helps/hurts fractions of every training point over ``test`` (see ``sign_statistics``)."""
        if not hasattr(self, "scores_"):
            raise ValidationError("call fit(head, train) first")
        return sign_statistics(self.head_, self.curvature_, self.train_, test, chunk_size=self.chunk_size,
                               progress=self.progress)

    def result(self, test: Any = None) -> MemorizationResult:
        """A ``MemorizationResult`` (with sign statistics over ``test`` when given)."""
        if not hasattr(self, "scores_"):
            raise ValidationError("call fit(head, train) first")
        st = self.sign_statistics(test) if test is not None else {}
        return MemorizationResult(ids=self.ids_, labels=self.labels_, scores=self.scores_,
                                  threshold=self.threshold_,
                                  quantile=None if self.threshold is not None else self.quantile,
                                  memorize=self.memorize_, helps_fraction=st.get("helps_fraction"),
                                  hurts_fraction=st.get("hurts_fraction"))

    def iter_columns(self, chunk_size: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Yield ``id``, ``label``, ``memorization``, ``memorize`` per chunk (for Parquet writers)."""
        from ..engine.columns import ColumnFunction, ScoreKernel
        from ..engine.passes import default_engine

        Q, inv = eigenbasis(self.curvature_)
        col = ColumnFunction(memorization_columns, {"Q": Q, "inv_eigvals": inv, "threshold": self.threshold_},
                             head=self.head_)
        engine = default_engine(chunk_size=chunk_size or self.chunk_size)
        yield from engine.iter(self.train_, ScoreKernel(self.head_, [col]), description="memorization")


# figures and report sections live in winnow.report.memorization
__getattr__ = moved_names(__name__, __package__, {
    "memorization_figure": "..report.memorization:memorization_figure",
    "report_section": "..report.memorization:memorization_section",
})
