"""A report of the user's own run: ``winnow report SCORES`` and ``winnow influence ... --report``.

:func:`summarize_scores` reads a scores file written by ``winnow influence`` (one Parquet file, a directory of
part files, or CSV) in **one streaming pass** over its record batches and returns plain numbers; memory is
bounded whatever the number of rows:

- the ``top`` most harmful (largest positive ``influence``) and most helpful (most negative) points: each
  batch's best ``top`` by ``numpy.argpartition``, merged with those kept so far (ties: the earlier row first);
- per label: count, mean, standard deviation (Chan's merge of per-batch moments), min, max, the share of
  harmful / helpful points, the mean self-influence and memorization counts, all exact;
- quantiles per label (and over all rows) from a **uniform random sample**: every row gets a random key from a
  fixed seed and the ``sample_size`` rows with the smallest keys of each label are kept (a bottom-k sample,
  merged batch by batch). A label with at most that many rows is held completely, so its quantiles are exact;
  ``quantiles_exact`` says whether that holds for every label. The per-label histograms are drawn from the
  same samples, scaled to the label's count.

:func:`run_report` writes the summary as one self-contained HTML file (figures inline, user strings escaped)
and returns its path.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ValidationError
from ..validation import check_integer, fail
from .words import memorization_reading, num, pct

__all__ = ["summarize_scores", "run_report", "scores_report", "default_report_path", "QUANTILES",
           "SAMPLE_SIZE"]

#: quantiles reported per label
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
#: rows of each label held for its quantiles (exact below this many rows)
SAMPLE_SIZE = 100_000
_SAMPLE_BUDGET = 20  # all labels together hold at most this many times SAMPLE_SIZE values...
_SAMPLE_FLOOR = 1_000  # ...but every label at least this many
#: a label stands out when its share exceeds the overall one by this much, or its median by this factor
SPREAD, RATIO = 0.05, 1.25
_REQUIRED = ("influence", "label")
_OPTIONAL = ("id", "loss_change_if_removed", "self_influence", "loss_change_if_removed_newton",
             "loss_change_if_removed_newton_exact", "memorization", "memorize")
_TOP_EXTRA = ("loss_change_if_removed", "self_influence", "loss_change_if_removed_newton",
              "loss_change_if_removed_newton_exact", "memorization", "memorize")


# ---------------------------------------------------------------------------------------------- reading
@dataclass
class _Scores:
    """An opened scores file: its name, columns, metadata and a batch iterator over the columns needed."""

    path: Path
    kind: str  # "parquet", "parts" or "csv"
    names: list[str]
    metadata: dict[str, str]
    files: list[Path] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)

    def batches(self, columns: list[str], batch_size: int) -> Iterator[pa.RecordBatch]:
        if self.kind == "csv":
            from pyarrow import csv

            reader = csv.open_csv(self.path, convert_options=csv.ConvertOptions(include_columns=columns))
            yield from reader
            return
        for f in self.files:
            # pre_buffer=False: with pyarrow's default read-ahead the batch reader keeps every batch it has read
            # (memory grows with the file); a bounded read buffer keeps it flat
            pf = pq.ParquetFile(f, pre_buffer=False, buffer_size=1 << 22)
            yield from pf.iter_batches(batch_size=batch_size, columns=columns)


def _open_scores(scores: str | Path) -> _Scores:
    p = Path(scores)
    if not p.exists():
        raise fail(f"scores {p} does not exist; give the scores written by `winnow influence --out`", "scores")
    try:
        if p.is_dir():
            files = sorted(f for f in p.glob("*.parquet") if not f.name.startswith(("_", ".")))
            manifest: dict[str, Any] = {}
            mpath = p / "_manifest.json"
            if mpath.is_file():
                manifest = json.loads(mpath.read_text(encoding="utf-8"))
                if not manifest.get("complete", False):
                    raise fail(f"scores {p} holds an unfinished run ({len(files)} of "
                               f"{manifest.get('n_parts', '?')} parts written); finish it with `winnow "
                               f"influence ... --resume` first", "scores")
            if not files:
                raise fail(f"scores {p} is a directory without Parquet part files; give the scores written by "
                           f"`winnow influence --out`", "scores")
            schema = pq.read_schema(files[0])
            kind = "parts"
        elif p.suffix.lower() == ".csv":
            from pyarrow import csv

            schema = csv.open_csv(p).schema
            files, manifest, kind = [p], {}, "csv"
        else:
            schema = pq.read_schema(p)
            files, manifest, kind = [p], {}, "parquet"
    except ValidationError:
        raise
    except (pa.ArrowException, OSError, ValueError) as e:
        raise fail(f"scores {p} cannot be read as a winnow scores file ({type(e).__name__}: "
                   f"{' '.join(str(e).split())[:200]}); give the Parquet file, directory of part files or CSV "
                   f"written by `winnow influence --out`", "scores") from None
    names = list(schema.names)
    missing = [c for c in _REQUIRED if c not in names]
    if missing:
        raise fail(f"scores {p} is not a winnow scores file: it has no {' or '.join(repr(c) for c in missing)} "
                   f"column (columns: {', '.join(names[:12])}{' ...' if len(names) > 12 else ''}); give the "
                   f"scores written by `winnow influence --out` with --test", "scores")
    if kind == "csv":  # a CSV's metadata lives in its sidecar
        from ..io.outputs import csv_metadata

        meta = csv_metadata(p)
    else:
        meta = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace")
                for k, v in (schema.metadata or {}).items()}
    return _Scores(p, kind, names, meta, files, manifest)


def _json_meta(meta: dict[str, str], key: str) -> Any:
    try:
        return json.loads(meta[key]) if key in meta else None
    except (TypeError, ValueError):
        return None


def _float_meta(meta: dict[str, str], key: str) -> float | None:
    try:
        return float(meta[key]) if key in meta else None
    except ValueError:
        return None


# ------------------------------------------------------------------------------------------ accumulators
class _Moments:
    """Exact per-group count, mean, M2 (Chan's parallel merge), min, max, harmful/helpful counts and sums of
    optional columns, over groups 0..G-1 (grown as labels appear)."""

    def __init__(self) -> None:
        self.size = 0
        z = np.zeros(0)
        self.rows, self.n, self.mean, self.m2 = z.copy(), z.copy(), z.copy(), z.copy()
        self.min, self.max, self.harmful, self.helpful = z.copy(), z.copy(), z.copy(), z.copy()
        self.self_n, self.self_sum, self.mem_n, self.mem_sum = z.copy(), z.copy(), z.copy(), z.copy()
        self.memorize_n, self.verdict_n = z.copy(), z.copy()

    def grow(self, size: int) -> None:
        extra = size - self.size
        if extra <= 0:
            return
        for name in ("rows", "n", "mean", "m2", "harmful", "helpful", "self_n", "self_sum", "mem_n", "mem_sum",
                     "memorize_n", "verdict_n"):
            setattr(self, name, np.concatenate([getattr(self, name), np.zeros(extra)]))
        self.min = np.concatenate([self.min, np.full(extra, np.inf)])
        self.max = np.concatenate([self.max, np.full(extra, -np.inf)])
        self.size = size

    def update(self, g: np.ndarray, v: np.ndarray, finite: np.ndarray, cols: dict[str, np.ndarray]) -> None:
        """``g`` (b,) group of each row, ``v`` (b,) influence, ``finite`` (b,) mask, ``cols`` optional columns."""
        G = self.size
        self.rows += np.bincount(g, minlength=G)
        gf, vf = g[finite], v[finite]
        nb = np.bincount(gf, minlength=G).astype(float)
        sb = np.bincount(gf, weights=vf, minlength=G)
        mb = np.divide(sb, nb, out=np.zeros(G), where=nb > 0)
        m2b = np.bincount(gf, weights=(vf - mb[gf]) ** 2, minlength=G)
        n = self.n + nb
        delta = mb - self.mean
        ratio = np.divide(nb, n, out=np.zeros(G), where=n > 0)
        self.m2 += m2b + delta ** 2 * self.n * ratio
        self.mean += delta * ratio
        self.n = n
        if vf.size:
            np.minimum.at(self.min, gf, vf)
            np.maximum.at(self.max, gf, vf)
        self.harmful += np.bincount(gf[vf > 0], minlength=G)
        self.helpful += np.bincount(gf[vf < 0], minlength=G)
        if "self_influence" in cols:
            s = cols["self_influence"]
            ok = np.isfinite(s)
            self.self_n += np.bincount(g[ok], minlength=G)
            self.self_sum += np.bincount(g[ok], weights=s[ok], minlength=G)
        if "memorization" in cols:
            s = cols["memorization"]
            ok = np.isfinite(s)
            self.mem_n += np.bincount(g[ok], minlength=G)
            self.mem_sum += np.bincount(g[ok], weights=s[ok], minlength=G)
        if "memorize" in cols:
            m = cols["memorize"]
            self.verdict_n += np.bincount(g, minlength=G)
            self.memorize_n += np.bincount(g[m], minlength=G)


class _Sample:
    """Bottom-k samples per group: of each group's rows, the ``capacity`` ones with the smallest random keys
    (a uniform sample without replacement; all rows while a group has at most ``capacity``)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.keys: dict[int, np.ndarray] = {}
        self.values: dict[int, np.ndarray] = {}  # (m, 2): influence, self-influence (NaN when absent)

    def threshold(self, groups: int) -> np.ndarray:
        """Per group: the key a new row must be below to enter (inf while the group is not full)."""
        t = np.full(groups, np.inf)
        for gi, k in self.keys.items():
            if k.size >= self.capacity:
                t[gi] = k.max()
        return t

    def shrink(self, capacity: int) -> None:
        """Keep the ``capacity`` smallest keys of every group (still a uniform sample)."""
        self.capacity = capacity
        for gi in list(self.keys):
            self._keep(gi, self.keys[gi], self.values[gi])

    def _keep(self, gi: int, k: np.ndarray, vals: np.ndarray) -> None:
        if k.size > self.capacity:
            idx = np.argpartition(k, self.capacity - 1)[: self.capacity]
            k, vals = k[idx], vals[idx]
        self.keys[gi], self.values[gi] = k, vals

    def update(self, g: np.ndarray, keys: np.ndarray, vals: np.ndarray, groups: int) -> None:
        cand = keys < self.threshold(groups)[g]
        if not cand.any():
            return
        g, keys, vals = g[cand], keys[cand], vals[cand]
        order = np.argsort(g, kind="stable")
        g, keys, vals = g[order], keys[order], vals[order]
        starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
        for s, e in zip(starts, np.r_[starts[1:], g.size]):
            gi = int(g[s])
            if gi in self.keys:
                self._keep(gi, np.concatenate([self.keys[gi], keys[s:e]]),
                           np.concatenate([self.values[gi], vals[s:e]]))
            else:
                self._keep(gi, keys[s:e].copy(), vals[s:e].copy())

    def get(self, gi: int) -> np.ndarray:
        return self.values.get(gi, np.zeros((0, 2)))


class _Top:
    """The ``k`` rows with the largest ``sign * influence`` seen so far (ties: the earlier row first)."""

    def __init__(self, k: int, sign: float) -> None:
        self.k, self.sign = k, sign
        self.score = np.zeros(0)
        self.row = np.zeros(0, dtype=np.int64)
        self.records: list[dict[str, Any]] = []

    def _best(self, score: np.ndarray, row: np.ndarray) -> np.ndarray:
        idx = np.arange(score.size)
        if score.size > self.k:
            kth = np.partition(-score, self.k - 1)[self.k - 1]
            idx = np.flatnonzero(-score <= kth)  # every row tied with the k-th stays a candidate
        order = np.lexsort((row[idx], -score[idx]))
        return idx[order][: self.k]

    def update(self, batch: pa.RecordBatch, v: np.ndarray, finite: np.ndarray, row0: int,
               label: np.ndarray) -> None:
        s = self.sign * v
        ok = finite & (s > 0)  # harmful: influence > 0; helpful: influence < 0
        if len(self.records) >= self.k:
            ok &= s > self.score.min()  # a later row tied with the k-th never enters
        cand = np.flatnonzero(ok)
        if cand.size == 0:
            return
        pick = cand[self._best(s[cand], cand)]
        ids = (batch.column("id").take(pa.array(pick)).to_pylist() if "id" in batch.schema.names
               else [int(row0 + i) for i in pick])
        extra = {c: batch.column(c).take(pa.array(pick)).to_pylist() for c in _TOP_EXTRA
                 if c in batch.schema.names}
        new = [{"id": ids[j], "label": int(label[i]), "influence": float(v[i]), "row": int(row0 + i),
                **{c: extra[c][j] for c in extra}} for j, i in enumerate(pick)]
        records = self.records + new
        score = np.r_[self.score, s[pick]]
        row = np.r_[self.row, row0 + pick]
        keep = self._best(score, row)
        self.records = [records[i] for i in keep]
        self.score, self.row = score[keep], row[keep]


# ------------------------------------------------------------------------------------------- summary
def _quantiles(values: np.ndarray) -> dict[str, float]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return {f"q{round(q * 100):02d}": math.nan for q in QUANTILES}
    return {f"q{round(q * 100):02d}": float(x) for q, x in zip(QUANTILES, np.quantile(v, QUANTILES))}


def _class_name(classes: list[Any] | None, label: int) -> str | None:
    if classes is not None and 0 <= label < len(classes):
        return str(classes[label])
    return None


def summarize_scores(scores: str | Path, *, top: int = 20, sample_size: int = SAMPLE_SIZE,
                     batch_size: int = 65536, seed: int = 0,
                     _capture: dict[int, np.ndarray] | None = None) -> dict[str, Any]:
    """Summary of a scores file (see the module docstring), in one streaming pass with bounded memory.

    Returns a dict: ``source``, ``format``, ``n`` (rows), ``columns``, ``top``, ``harmful`` / ``helpful``
    (lists of at most ``top`` records ``{id, label, class, influence, row, ...}``, the most harmful first /
    the most helpful first; only points with influence > 0 / < 0), ``by_label`` (one dict per label, sorted:
    ``label``, ``class``, ``count``, ``n_finite``, ``mean``, ``std`` (population), ``min``, ``max``,
    ``quantiles`` {q05..q95}, ``share_harmful``, ``share_helpful`` (of the finite rows),
    ``self_influence_mean``, ``self_influence_quantiles``, ``memorize``, ``memorize_share``,
    ``memorization_mean``), ``overall`` (the same over all rows), ``quantiles_exact``, ``sample_size``,
    ``nonfinite``, ``memorization`` ({``threshold``, ``memorize``, ``n``} or None), ``stationarity``
    (the recorded dict or None), ``settings`` (the run's settings, {} when not recorded), ``classes``.
    """
    top = check_integer(top, "top", minimum=1)
    sample_size = check_integer(sample_size, "sample_size", minimum=1)
    batch_size = check_integer(batch_size, "batch_size", minimum=1)
    src = _open_scores(scores)
    meta = src.metadata
    classes = _json_meta(meta, "winnow.classes")
    classes = [str(c) for c in classes] if isinstance(classes, list) else None
    columns = [c for c in (*_REQUIRED, *_OPTIONAL) if c in src.names]
    stats_cols = [c for c in ("self_influence", "memorization", "memorize") if c in columns]

    slot: dict[int, int] = {}
    labels_seen: list[int] = []
    per_label, overall = _Moments(), _Moments()
    overall.grow(1)

    def per_cap() -> int:  # each label's share of the budget, never below the floor nor above sample_size
        return min(sample_size, max(_SAMPLE_FLOOR, _SAMPLE_BUDGET * sample_size // max(len(slot), 1)))

    samples, all_sample = _Sample(sample_size), _Sample(sample_size)
    harmful, helpful = _Top(top, 1.0), _Top(top, -1.0)
    rng = np.random.default_rng(seed)
    row0 = 0
    try:
        for batch in src.batches(columns, batch_size):
            b = batch.num_rows
            if b == 0:
                continue
            lab_col = batch.column("label")
            if lab_col.null_count or not pa.types.is_integer(lab_col.type):
                raise fail(f"scores {src.path}: the label column must hold integer labels with no missing "
                           f"values (found {lab_col.type}{', with missing values' if lab_col.null_count else ''}); "
                           f"give the scores written by `winnow influence --out`", "scores")
            label = lab_col.to_numpy().astype(np.int64)
            v = batch.column("influence").cast(pa.float64()).to_numpy(zero_copy_only=False)
            v = np.asarray(v, dtype=np.float64)
            finite = np.isfinite(v)
            cols = {c: np.asarray(batch.column(c).cast(pa.float64()).to_numpy(zero_copy_only=False))
                    for c in stats_cols if c != "memorize"}
            if "memorize" in stats_cols:
                m = batch.column("memorize")
                cols["memorize"] = np.asarray(m.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
            uniq, inv = np.unique(label, return_inverse=True)
            new = [int(u) for u in uniq if int(u) not in slot]
            for u in new:
                slot[u] = len(labels_seen)
                labels_seen.append(u)
            if new:
                per_label.grow(len(slot))
                samples.shrink(per_cap())
            g = np.array([slot[int(u)] for u in uniq], dtype=np.int64)[inv.reshape(-1)]
            per_label.update(g, v, finite, cols)
            overall.update(np.zeros(b, dtype=np.int64), v, finite, cols)
            keys = rng.random(b)
            si = cols.get("self_influence", np.full(b, np.nan))
            vals = np.column_stack([v, si])[finite]
            samples.update(g[finite], keys[finite], vals, len(slot))
            all_sample.update(np.zeros(int(finite.sum()), dtype=np.int64), keys[finite], vals, 1)
            harmful.update(batch, v, finite, row0, label)
            helpful.update(batch, v, finite, row0, label)
            row0 += b
    except (pa.ArrowException, OSError) as e:
        raise fail(f"scores {src.path} cannot be read ({type(e).__name__}: {' '.join(str(e).split())[:200]})",
                   "scores") from None

    def group(acc: _Moments, gi: int, sample: np.ndarray, label: int | None) -> dict[str, Any]:
        nf = float(acc.n[gi])
        d: dict[str, Any] = {
            "count": int(acc.rows[gi]), "n_finite": int(nf),
            "mean": float(acc.mean[gi]) if nf else math.nan,
            "std": float(math.sqrt(acc.m2[gi] / nf)) if nf else math.nan,
            "min": float(acc.min[gi]) if nf else math.nan, "max": float(acc.max[gi]) if nf else math.nan,
            "quantiles": _quantiles(sample[:, 0]),
            "share_harmful": float(acc.harmful[gi] / nf) if nf else math.nan,
            "share_helpful": float(acc.helpful[gi] / nf) if nf else math.nan,
            "n_harmful": int(acc.harmful[gi]), "n_helpful": int(acc.helpful[gi]),
            "self_influence_mean": float(acc.self_sum[gi] / acc.self_n[gi]) if acc.self_n[gi] else None,
            "self_influence_quantiles": _quantiles(sample[:, 1]) if "self_influence" in columns else None,
            "memorization_mean": float(acc.mem_sum[gi] / acc.mem_n[gi]) if acc.mem_n[gi] else None,
            "memorize": int(acc.memorize_n[gi]) if "memorize" in columns else None,
            "memorize_share": float(acc.memorize_n[gi] / acc.verdict_n[gi]) if acc.verdict_n[gi] else None,
            "sampled": bool(sample.shape[0] < nf),
        }
        if label is not None:
            d = {"label": label, "class": _class_name(classes, label), **d}
        return d

    order = sorted(range(len(labels_seen)), key=lambda gi: labels_seen[gi])
    if _capture is not None:
        _capture.update({labels_seen[gi]: samples.get(gi) for gi in order})
    by_label = [group(per_label, gi, samples.get(gi), labels_seen[gi]) for gi in order]
    all_stats = group(overall, 0, all_sample.get(0), None)
    for rec in harmful.records + helpful.records:
        rec["class"] = _class_name(classes, rec["label"])
    memo = None
    if "memorize" in columns or "memorization" in columns:
        memo = {"threshold": _float_meta(meta, "winnow.memorize_threshold"),
                "memorize": all_stats["memorize"], "n": row0,
                "verdicts": "memorize" in columns}
    settings = _json_meta(meta, "winnow.run")
    settings = dict(settings) if isinstance(settings, dict) else {}
    if src.manifest:  # a partitioned run records T and the damping in its manifest
        if settings.get("n_test") is None and src.manifest.get("n_test"):
            settings["n_test"] = int(src.manifest["n_test"])
        job = src.manifest.get("job", {})
        if "damping" not in settings and isinstance(job, dict) and "damping" in job:
            settings["damping"] = float(job["damping"])
    stationarity = _json_meta(meta, "winnow.stationarity")
    return {
        "source": str(src.path), "format": src.kind, "n": row0, "columns": src.names, "top": top,
        "harmful": harmful.records, "helpful": helpful.records, "by_label": by_label, "overall": all_stats,
        "quantiles_exact": not any(d["sampled"] for d in [*by_label, all_stats]),
        "sample_size": sample_size, "nonfinite": int(overall.rows[0] - overall.n[0]),
        "memorization": memo, "stationarity": stationarity if isinstance(stationarity, dict) else None,
        "settings": settings, "classes": classes,
    }


# -------------------------------------------------------------------------------------------- report
def default_report_path(scores: str | Path) -> Path:
    """Where ``winnow report SCORES`` writes without ``--out``: next to SCORES, suffix ``.html``."""
    p = Path(scores)
    return p.with_name(p.name + ".html") if p.is_dir() else p.with_suffix(".html")


def _who(rec: dict[str, Any]) -> str:
    cls = f" ({rec['class']})" if rec.get("class") is not None else ""
    return f"id {rec['id']}, label {rec['label']}{cls}"


def _label_name(d: dict[str, Any]) -> str:
    return f"label {d['label']}" + (f" ({d['class']})" if d.get("class") is not None else "")


def _settings_rows(s: dict[str, Any], n: int) -> tuple[list[list[Any]], str]:
    rows: list[list[Any]] = [["training points scored (rows)", n]]
    if not s:
        return rows, ("The run's settings (damping, Hessian, test set size) were not recorded in this file; it "
                      "was written by an older winnow or converted by another tool.")
    if s.get("n_test") is not None:
        rows.append(["test points T", s["n_test"]])
    for key, name in (("head", "head"), ("n_params", "parameters P"), ("l2", "λ (L2)"), ("damping", "damping")):
        if key in s:
            rows.append([name, s[key]])
    N, ntr = s.get("hessian_normalizer"), s.get("n_train")
    full = N is not None and ntr is not None and float(N) == float(ntr)
    if N is not None:
        rows.append(["Hessian", f"every training row (N = n = {num(ntr)})" if full
                     else f"a sample or weighted rows (N = {num(N)}, n = {num(ntr)})"])
    test = f"the mean loss of T = {num(s['n_test'])} test points" if s.get("n_test") else "the mean test loss"
    damp = float(s.get("damping", 0.0))
    text = (f"Every one of the {num(n)} training points was scored against {test}"
            + (", with the Hessian over every training row" if full else
               ", with a Hessian from a sample of rows (`--hessian relative`): the scores approximate the "
               "full-Hessian ones" if N is not None else "")
            + (f", damped by {num(damp)} (the scores are those of a slightly stiffer head)." if damp > 0
               else ", without damping."))
    return rows, text


def _stationarity_text(st: dict[str, Any] | None) -> str:
    if st is None:
        return ("Stationarity (‖∇R(θ̂)‖∞ at the head) was not recorded in this file. Influence functions assume "
                "the head sits at its optimum: check the final ‖∇R‖∞ that `winnow fit-head` prints.")
    rel, thr = st.get("relative"), st.get("threshold")
    refit = " The head was refit before scoring." if st.get("refit") else ""
    if rel is None or thr is None:
        return "Stationarity was recorded without its relative gradient or threshold." + refit
    if float(rel) <= float(thr):
        return (f"‖∇R‖∞ / s = {num(rel)} ≤ {num(thr)}: the head sits at its optimum, so the influence formulas "
                f"(which assume a stationary point) apply." + refit)
    return (f"‖∇R‖∞ / s = {num(rel)} > {num(thr)}: the head was NOT at its optimum when scored, so the scores can "
            f"be off. Score again with `--refit` (or fit the head with `winnow fit-head`)." + refit)


def _top_section(report: Any, summary: dict[str, Any], harmful: bool) -> None:
    recs = summary["harmful" if harmful else "helpful"]
    k = summary["top"]
    word = "harmful" if harmful else "helpful"
    title = f"Most {word} training points"
    if not recs:
        report.section(title, "")
        report.reading(f"No training point {'raises' if harmful else 'lowers'} the mean test loss (every "
                       f"influence is {'≤' if harmful else '≥'} 0).")
        return
    first = recs[0]
    lc = first.get("loss_change_if_removed")
    if lc is None and summary["n"]:
        lc = -first["influence"] / summary["n"]
    change = f"{'lower' if harmful else 'raise'} it by {num(abs(lc))} (its loss_change_if_removed)"
    advice = ("Check them for wrong labels or unusual inputs." if harmful else
              "These are the points the model relies on most; keep them.")
    fewer = f" Only {len(recs)} points are {word}." if len(recs) < k else ""
    report.section(title, "influence > 0 raises the mean test loss (harmful), < 0 lowers it (helpful); "
                          "loss_change_if_removed = −influence/n is the predicted change of the mean test loss "
                          "when the point is left out.")
    report.reading(f"The {len(recs)} points below {'raise' if harmful else 'lower'} the mean test loss the most: "
                   f"removing the first ({_who(first)}) would {change}. {advice}{fewer}")
    extra = [c for c in _TOP_EXTRA if c in summary["columns"]]
    header = ["rank", "id", "label", *(["class"] if summary["classes"] else []), "influence", *extra]
    rows = []
    for i, r in enumerate(recs, 1):
        rows.append([i, r["id"], r["label"], *([r["class"] or ""] if summary["classes"] else []),
                     r["influence"], *[r.get(c) for c in extra]])
    report.table(header, rows)


def _by_label_figure(summary: dict[str, Any], samples_note: str) -> Any:
    import matplotlib.pyplot as plt

    groups = summary["_samples"]
    show = sorted(summary["by_label"], key=lambda d: -d["count"])[:12]
    cols = min(4, len(show))
    rows = math.ceil(len(show) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    allv = np.concatenate([groups[d["label"]][:, 0] for d in show]) if show else np.zeros(0)
    allv = allv[np.isfinite(allv)]
    lo, hi = (np.quantile(allv, [0.005, 0.995]) if allv.size else (0.0, 1.0))
    bins = np.linspace(lo, hi, 40) if hi > lo else 20
    for ax, d in zip(axes.flat, show):
        v = groups[d["label"]][:, 0]
        v = v[np.isfinite(v)]
        w = np.full(v.size, d["n_finite"] / max(v.size, 1))
        ax.hist(np.clip(v, lo, hi), bins=bins, weights=w, color="tab:blue", alpha=0.8)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_title(_label_name(d)[:40], fontsize=8)
        ax.tick_params(labelsize=7)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 3))
    for ax in list(axes.flat)[len(show):]:
        ax.set_visible(False)
    fig.supxlabel("influence on the mean test loss (> 0 harmful, < 0 helpful; clipped to the 0.5–99.5% range)",
                  fontsize=8)
    fig.supylabel("training points", fontsize=8)
    fig.tight_layout()
    return fig


def scores_report(summary: dict[str, Any], title: str | None = None, report: Any = None) -> Any:
    """The report (a :class:`winnow.report.Report`) of a summary from :func:`summarize_scores`; with ``report``
    its sections are added to that report instead of a new one."""
    from .html import Report

    rep = report if report is not None else Report(title or f"winnow report: {Path(summary['source']).name}")
    n = summary["n"]
    rows, text = _settings_rows(summary["settings"], n)
    rep.section("Your run", f"scores: {summary['source']} ({summary['format']}); columns: "
                            f"{', '.join(summary['columns'])}")
    rep.reading(text)
    rep.table(["setting", "value"], rows)
    rep.section("Stationarity of the head")
    st = summary["stationarity"]
    rep.reading(_stationarity_text(st))
    if st is not None:
        rep.table(["quantity", "value"], [[k, v] for k, v in st.items()])
    ov = summary["overall"]
    if summary["nonfinite"]:
        rep.section("Non-finite scores")
        rep.reading(f"{num(summary['nonfinite'])} rows have a non-finite influence (NaN or ±inf) and are left out "
                    f"of every statistic below; this usually means a singular Hessian: score again with "
                    f"--damping > 0.")
    _top_section(rep, summary, True)
    _top_section(rep, summary, False)

    labs = summary["by_label"]
    rep.section("Influence by label", _quantile_note(summary))
    text = (f"{pct(ov['share_harmful'])} of all training points are harmful (influence > 0) and "
            f"{pct(ov['share_helpful'])} helpful. ")
    shares = [d for d in labs if not math.isnan(d["share_harmful"])]
    if len(shares) > 1:
        worst = max(shares, key=lambda d: d["share_harmful"])
        lo = min(d["share_harmful"] for d in shares)
        if worst["share_harmful"] - ov["share_harmful"] >= SPREAD:
            text += (f"{_label_name(worst).capitalize()} has the largest share of harmful points "
                     f"({pct(worst['share_harmful'])}, mean influence {num(worst['mean'])}): look there first "
                     f"for wrong labels.")
        else:
            text += (f"Harmful points are spread evenly over the labels ({pct(lo)} to "
                     f"{pct(worst['share_harmful'])}): no label stands out.")
    rep.reading(text)
    header = ["label", *(["class"] if summary["classes"] else []), "points", "harmful share", "mean", "std",
              *[f"q{round(q * 100):02d}" for q in QUANTILES], "min", "max"]
    body = [[d["label"], *([d["class"] or ""] if summary["classes"] else []), d["count"], d["share_harmful"],
             d["mean"], d["std"], *d["quantiles"].values(), d["min"], d["max"]] for d in labs]
    body.append(["all", *([""] if summary["classes"] else []), ov["count"], ov["share_harmful"], ov["mean"],
                 ov["std"], *ov["quantiles"].values(), ov["min"], ov["max"]])
    rep.table(header, body)
    if "_samples" in summary and labs:
        more = f" (the 12 labels with the most points of {len(labs)})" if len(labs) > 12 else ""
        rep.figure(_by_label_figure(summary, ""), f"Influence per label{more}; bars scaled to the label's points.")

    if "self_influence" in summary["columns"]:
        rep.section("Self-influence by label", "self_influence = g_pᵀH⁻¹g_p ≥ 0: how strongly a point pulls the "
                                               "head towards fitting itself.")
        text = f"The median self-influence over all points is {num(ov['self_influence_quantiles']['q50'])}"
        meds = [d for d in labs if not math.isnan(d["self_influence_quantiles"]["q50"])]
        if len(meds) > 1:
            top_si = max(meds, key=lambda d: d["self_influence_quantiles"]["q50"])
            q = top_si["self_influence_quantiles"]["q50"]
            if q > RATIO * ov["self_influence_quantiles"]["q50"]:
                text += (f"; {_label_name(top_si)} has the highest median ({num(q)}): its points are the least "
                         f"like the others (each pulls the head towards itself the most)")
            else:
                text += "; it is about the same for every label"
        rep.reading(text + ".")
        rep.table(["label", "points", "mean", *[f"q{round(q * 100):02d}" for q in QUANTILES]],
                  [[d["label"], d["count"], d["self_influence_mean"], *d["self_influence_quantiles"].values()]
                   for d in [*labs, {**ov, "label": "all"}]])

    memo = summary["memorization"]
    if memo is not None:
        D = memo["threshold"]
        rep.section("Memorization", "memorization score ‖Λ⁻¹Qᵀg_p‖₁ (paper Definition 6); a point memorizes when "
                                    "its score exceeds the threshold D.")
        if memo["verdicts"]:
            counts = [{"label": _label_name(d)[len("label "):], "n": d["count"], "memorize": d["memorize"]}
                      for d in labs]
            text = memorization_reading(memo["n"], memo["memorize"], D, counts)
            rep.reading(text)
        else:
            rep.reading("The file has memorization scores but no verdicts (no threshold D was set): score again "
                        "with --memorization to get them.")
        rep.table(["label", "points", "memorize", "memorize share", "mean score"],
                  [[d["label"], d["count"], d["memorize"], d["memorize_share"], d["memorization_mean"]]
                   for d in [*labs, {**ov, "label": "all"}]])
    return rep


def _quantile_note(summary: dict[str, Any]) -> str:
    if summary["quantiles_exact"]:
        return "Counts, means and shares are exact; quantiles are exact (every row held)."
    return (f"Counts, means and shares are exact; quantiles and histograms come from a uniform random sample of "
            f"up to {num(summary['sample_size'])} points per label (all of a label's points when it has fewer).")


def run_report(scores: str | Path, out: str | Path | None = None, *, top: int = 20, overwrite: bool = False,
               sample_size: int = SAMPLE_SIZE, batch_size: int = 65536, argument: str = "out") -> Path:
    """Write the HTML report of a scores file (``out``; default next to it with suffix .html) and return its
    path. Refuses an existing ``out`` unless ``overwrite``; nothing is written when the scores cannot be read."""
    return write_scores_report(scores, out, top=top, overwrite=overwrite, sample_size=sample_size,
                               batch_size=batch_size, argument=argument)[0]


def write_scores_report(scores: str | Path, out: str | Path | None = None, *, top: int = 20,
                        overwrite: bool = False, sample_size: int = SAMPLE_SIZE, batch_size: int = 65536,
                        argument: str = "out") -> tuple[Path, dict[str, Any]]:
    """:func:`run_report` that also returns the summary it drew (see :func:`summarize_scores`)."""
    from ..io.outputs import check_output_path

    top = check_integer(top, "top", minimum=1)
    out = default_report_path(scores) if out is None else Path(out)
    check_output_path(out, overwrite, argument=argument)
    summary = summarize_with_samples(scores, top=top, sample_size=sample_size, batch_size=batch_size)
    return scores_report(summary).write(out, overwrite=overwrite, argument=argument), summary


def top_points_text(summary: dict[str, Any], k: int | None = None) -> str:
    """The most harmful and most helpful training points of ``summary`` as plain text for a terminal: one
    line per point (rank, id, label with its class name, influence, loss_change_if_removed)."""
    n = summary["n"]
    lines: list[str] = []
    for word, recs in (("harmful", summary["harmful"]), ("helpful", summary["helpful"])):
        recs = recs[:k] if k is not None else recs
        sign = "raise" if word == "harmful" else "lower"
        lines.append(f"most {word} training points (they {sign} the mean test loss; removing one changes it by "
                     f"loss_change_if_removed):")
        if not recs:
            lines.append("  none")
            continue
        rows = [("rank", "id", "label", "influence", "loss_change_if_removed")]
        for i, r in enumerate(recs, 1):
            lc = r.get("loss_change_if_removed")
            if lc is None and n:
                lc = -r["influence"] / n
            label = str(r["label"]) + (f" ({r['class']})" if r.get("class") is not None else "")
            rows.append((str(i), str(r["id"]), label, f"{r['influence']:.4g}", f"{lc:+.3g}"))
        widths = [max(len(row[j]) for row in rows) for j in range(len(rows[0]))]
        for row in rows:
            lines.append("  " + "  ".join(c.ljust(w) if j < 3 else c.rjust(w)
                                           for j, (c, w) in enumerate(zip(row, widths, strict=True))))
    return "\n".join(lines)


def summarize_with_samples(scores: str | Path, **kwargs: Any) -> dict[str, Any]:
    """``summarize_scores`` plus ``_samples`` (label -> the label's sample (m, 2)) for the histograms."""
    captured: dict[str, Any] = {}
    summary = summarize_scores(scores, _capture=captured, **kwargs)
    summary["_samples"] = captured
    return summary
