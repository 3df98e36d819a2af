"""Ground truth by retraining the user's whole model through their own training routine.

The head-only evidence (:mod:`.loo`, :mod:`.lds`, :mod:`.subset`) retrains the head on fixed features. A
user's question is about the whole model: "if I drop these points, or train only on this subset, what does my
network do?" Here the model is retrained by the user's own routine

    ``train_fn(rows, weights, seed) -> model``

``rows`` (m,) int64: the positions (0..n−1) of the training rows to train on, sorted; ``weights`` (m,)
float64 aligned with ``rows`` (the weight of each row in the training loss) or None (all 1); ``seed`` an int
for every random choice of the routine (initialisation, batch order). The trained model is evaluated on the
test points:

- a ``torch.nn.Module`` returning logits, (T,) or (T, 1) for two classes (binary cross-entropy) or (T, K)
  (cross-entropy), fed the test features as a float tensor of its parameters' dtype and device;
- an object with ``predict_proba`` (scikit-learn-like; columns follow its ``classes_`` when it has them):
  the log-loss −log p_y;
- a winnow :class:`~winnow.core.heads.Head`: its own per-example loss;
- anything else with ``loss_fn(model, (X, y)) -> (T,)`` per-point test losses.

Every retrain is an independent task: it runs here one after the other, or on Dask workers (``workers`` /
``scheduler``, the engine's backends), and with ``retrain_dir`` each retrain's test losses are saved there as
it finishes (``<key>.npz``, atomically) beside the run's settings (``_retrain.json``): a rerun with
``resume=True`` checks the settings and retrains only what is missing.

Seeds. A trained network depends on its seed: each removal or subset is retrained with ``seeds`` seeds
(0 .. seeds − 1) and its test losses averaged; leave-one-out pairs each removal with the full-data model of
the same seed, and reports the seed noise (the spread of the full-data test loss across seeds) beside the
effects, which it bounds from below.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from .. import validation as V
from ..analyses.fidelity import GroupPrediction
from ..core.heads import Head
from ..errors import ValidationError
from ..progress import track
from .lds import MIN_SUBSETS, LdsResult, rowwise_spearman
from .loo import LeaveOneOutResult, choose_rows, load_arrays
from .subset import SubsetEvaluation, _agg, _stratified_random

__all__ = ["TrainFn", "LossFn", "Retrain", "model_outputs", "run_retrains", "RetrainedLoo", "RetrainedLds",
           "loo_by_retraining", "lds_by_retraining", "leave_one_out_retrained", "lds_retrained",
           "group_by_retraining", "evaluate_subset_by_retraining", "retrain_metrics", "FORMAT", "SETTINGS"]

TrainFn = Callable[[np.ndarray, "np.ndarray | None", int], Any]
LossFn = Callable[[Any, tuple[np.ndarray, np.ndarray]], Any]
FORMAT = "winnow.retrain/1"
SETTINGS = "_retrain.json"
EVAL_BATCH = 8192


# ============================================================================================ the user's routine
def describe(fn: Any) -> str:
    """``module:qualname`` of a function (how the command line names it), else its repr."""
    mod, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if mod and name:
        return f"{mod}:{name}"
    if type(fn).__repr__ is not object.__repr__:  # a callable object that says what it is (its settings)
        return repr(fn)
    return f"{type(fn).__module__}:{type(fn).__qualname__}"


def check_train_fn(train_fn: Any) -> Any:
    """``train_fn`` if it is callable as ``train_fn(rows, weights, seed)``; else a ValidationError naming it."""
    if not callable(train_fn):
        raise V.fail(f"train_fn must be a function train_fn(rows, weights, seed) -> model, got a "
                     f"{type(train_fn).__name__}", "train_fn")
    try:
        inspect.signature(train_fn).bind(np.zeros(0, np.int64), None, 0)
    except TypeError:
        raise V.fail(f"train_fn {describe(train_fn)} must accept three arguments (rows, weights, seed): the "
                     f"training row positions, their weights or None, and a seed", "train_fn") from None
    except ValueError:  # no signature to inspect (a builtin): try it when it runs
        pass
    return train_fn


def _from_logits(Z: np.ndarray, y: np.ndarray, who: str) -> tuple[np.ndarray, np.ndarray]:
    """(per-point loss, probabilities) from logits (T,), (T, 1) or (T, K): BCE for one logit, CE for K."""
    if Z.ndim == 2 and Z.shape[1] == 1:
        Z = Z[:, 0]
    if Z.ndim == 1:
        if y.size and (y.min() < 0 or y.max() > 1):
            raise V.fail(f"train_fn {who}: the model gives one logit per point (two classes) but the test labels "
                         f"go up to {int(y.max())}", "train_fn")
        # −[y log σ(z) + (1−y) log(1−σ(z))] = softplus(z) − y z, written stably
        loss = np.logaddexp(0.0, Z) - y * Z
        return loss, 1.0 / (1.0 + np.exp(-Z))
    if Z.ndim != 2:
        raise V.fail(f"train_fn {who}: the model returned logits of shape {Z.shape}; expected (T,), (T, 1) or "
                     "(T, K)", "train_fn")
    K = Z.shape[1]
    if y.size and y.max() >= K:
        raise V.fail(f"train_fn {who}: the model gives {K} logits per point but the test labels go up to "
                     f"{int(y.max())}", "train_fn")
    lse = np.logaddexp.reduce(Z, axis=1)
    loss = lse - Z[np.arange(len(y)), y]
    return loss, np.exp(Z - lse[:, None])


def model_outputs(model: Any, X: np.ndarray, y: np.ndarray, loss_fn: LossFn | None = None, *,
                  who: str = "") -> tuple[np.ndarray, np.ndarray | None]:
    """(per-point test losses (T,) float64, class probabilities ((T,) P(y=1) or (T, K)) or None) of a trained
    model on the test points (X, y), as the module docstring describes; ``loss_fn(model, (X, y))`` gives the
    losses when set (the probabilities are then taken from the model where it is one of the known kinds)."""
    import torch

    y = np.asarray(y, dtype=np.int64)
    proba: np.ndarray | None = None
    losses: np.ndarray | None = None
    if isinstance(model, Head):
        from ..core.heads import as_tensor

        Xt = as_tensor(X, model.device)
        losses = model.losses(Xt, torch.as_tensor(y, device=model.device)).cpu().numpy()
        proba = np.asarray(model.predict_proba(Xt), dtype=np.float64)
    elif isinstance(model, torch.nn.Module):
        p = next(iter(model.parameters()), None)
        dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
        device = p.device if p is not None else torch.device("cpu")
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                Z = np.concatenate([model(torch.as_tensor(X[i:i + EVAL_BATCH], dtype=dtype, device=device))
                                    .detach().cpu().double().numpy() for i in range(0, len(X), EVAL_BATCH)])
        finally:
            model.train(was_training)
        if len(Z) != len(y):
            raise V.fail(f"train_fn {who}: the model returned {len(Z)} rows of logits for {len(y)} test points",
                         "train_fn")
        losses, proba = _from_logits(Z, y, who)
    elif hasattr(model, "predict_proba"):
        P = np.asarray(model.predict_proba(X), dtype=np.float64)
        if P.ndim != 2 or P.shape[0] != len(y):
            raise V.fail(f"train_fn {who}: predict_proba returned shape {P.shape}; expected ({len(y)}, K)",
                         "train_fn")
        classes = getattr(model, "classes_", None)
        if classes is not None:  # a retrain on a subset may have seen fewer classes: place its columns
            classes = np.asarray(classes)
            K = max(int(classes.max()) + 1, int(y.max()) + 1 if y.size else 0, 2)
            full = np.zeros((len(y), K))
            full[:, classes.astype(np.int64)] = P
            P = full
        if y.size and y.max() >= P.shape[1]:
            raise V.fail(f"train_fn {who}: predict_proba gives {P.shape[1]} classes but the test labels go up to "
                         f"{int(y.max())}", "train_fn")
        losses = -np.log(np.maximum(P[np.arange(len(y)), y], np.finfo(np.float64).tiny))
        proba = P[:, 1] if P.shape[1] == 2 else P
    elif loss_fn is None:
        raise V.fail(f"train_fn {who} returned a {type(model).__name__}, which cannot be evaluated on the test "
                     "points: return a torch.nn.Module giving logits or an object with predict_proba, or pass "
                     "loss_fn (a function of (model, (X, y)) giving the per-point test losses)", "train_fn", "loss_fn")
    if loss_fn is not None:
        out = loss_fn(model, (X, y))
        if isinstance(out, torch.Tensor):
            out = out.detach().cpu().numpy()
        losses = np.asarray(out, dtype=np.float64)
        if losses.shape != (len(y),):
            raise V.fail(f"loss_fn must return one loss per test point, shape ({len(y)},); got shape "
                         f"{losses.shape}", "loss_fn")
    assert losses is not None
    losses = np.asarray(losses, dtype=np.float64)
    if not np.isfinite(losses).all():
        raise V.fail(f"train_fn {who}: the trained model gives non-finite test losses (diverged training?)",
                     "train_fn")
    return losses, proba


# ================================================================================================== retrains
@dataclass(frozen=True)
class Retrain:
    """One retrain: train on ``rows`` (sorted positions) with ``weights`` (aligned, or None) and ``seed``;
    ``key`` names its result file."""

    key: str
    rows: np.ndarray
    weights: np.ndarray | None
    seed: int


@dataclass(frozen=True)
class _Shared:
    """What every retrain task needs (shipped to each Dask worker once)."""

    train_fn: Any
    loss_fn: Any
    X: np.ndarray
    y: np.ndarray


class _Failed:
    """A retrain that failed on the worker: its one-line message and the parameters it names."""

    def __init__(self, message: str, parameters: tuple[str, ...]) -> None:
        self.message, self.parameters = message, parameters


def _retrain_task(shared: _Shared, job: Retrain) -> tuple[np.ndarray, np.ndarray | None] | _Failed:
    """Train one model and evaluate it on the test points (runs here or on a worker; errors come back as
    values, so their message survives the trip)."""
    who = describe(shared.train_fn)
    where = f"{who} (retrain {job.key}: {len(job.rows)} rows, seed {job.seed})"
    try:
        model = shared.train_fn(job.rows.copy(), None if job.weights is None else job.weights.copy(), job.seed)
    except Exception as e:  # the user's code failed: say where, in one line
        return _Failed(f"train_fn {where} raised {type(e).__name__}: {e}", ("train_fn",))
    if model is None:
        return _Failed(f"train_fn {where} returned None; it must return the trained model", ("train_fn",))
    try:
        return model_outputs(model, shared.X, shared.y, shared.loss_fn, who=where)
    except ValidationError as e:
        return _Failed(str(e), e.parameters)
    except Exception as e:
        name = "loss_fn" if shared.loss_fn is not None else "train_fn"
        return _Failed(f"{name}: evaluating the model of {where} on the test points raised "
                       f"{type(e).__name__}: {e}", (name,))


def _digest(*arrays: Any) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _settings(kind: str, train_fn: Any, loss_fn: Any, n_train: int, test: tuple[np.ndarray, np.ndarray],
              jobs: Sequence[Retrain], extra: dict[str, Any]) -> dict[str, Any]:
    runs = hashlib.sha256()
    for j in jobs:
        runs.update(f"{j.key}|{j.seed}|".encode())
        runs.update(_digest(j.rows, np.zeros(0) if j.weights is None else j.weights).encode())
    return {"format": FORMAT, "kind": kind, "train_fn": describe(train_fn),
            "loss_fn": None if loss_fn is None else describe(loss_fn), "n_train": int(n_train),
            "test": _digest(*test), "retrains": len(jobs), "plan": runs.hexdigest(), **extra}


def _open_dir(retrain_dir: Any, settings: dict[str, Any], resume: bool) -> Path:
    """The result folder, created with its settings, or (``resume``) checked against them."""
    from ..io.outputs import write_json

    d = Path(retrain_dir)
    path = d / SETTINGS
    if d.exists() and not d.is_dir():
        raise V.fail(f"retrain_dir {d} is a file; give a folder for the retrained models' results", "retrain_dir")
    if path.exists():
        if not resume:
            raise V.fail(f"retrain_dir {d} already holds retrains; pass resume=True to continue them (finished "
                         "ones are skipped), or choose another folder", "retrain_dir", "resume=True")
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise V.fail(f"retrain_dir {d}: cannot read {SETTINGS} ({e}); choose another folder",
                         "retrain_dir") from None
        diff = [k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
        if diff:
            shown = ", ".join(f"{k} {old.get(k)!r} -> {settings.get(k)!r}" if k not in ("plan", "test")
                              else f"{k} differs" for k in diff)
            raise V.fail(f"retrain_dir {d} holds retrains of another run ({shown}); resume only the same run, or "
                         "choose another folder", "retrain_dir")
        return d
    if d.exists() and any(not p.name.startswith(".") for p in d.iterdir()):
        raise V.fail(f"retrain_dir {d} holds other files; give an empty or new folder", "retrain_dir")
    d.mkdir(parents=True, exist_ok=True)
    write_json(path, settings, overwrite=True, argument="retrain_dir")
    return d


def _load_result(path: Path, n_test: int) -> tuple[np.ndarray, np.ndarray | None] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            losses = np.asarray(z["losses"], dtype=np.float64)
            proba = np.asarray(z["proba"]) if "proba" in z.files else None
    except (OSError, ValueError, KeyError):
        return None  # unreadable: retrained again
    return (losses, proba) if losses.shape == (n_test,) else None


def run_retrains(train_fn: TrainFn, jobs: Sequence[Retrain], test: tuple[np.ndarray, np.ndarray], *,
                 loss_fn: LossFn | None = None, retrain_dir: str | Path | None = None, resume: bool = False,
                 settings: dict[str, Any] | None = None, workers: int | None = None, scheduler: Any = None,
                 progress: bool = False, description: str = "retrains"
                 ) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Run every retrain of ``jobs`` and evaluate it on ``test`` = (X (T, D), y (T,)): {key: (per-point test
    losses (T,), probabilities or None)}.

    In this process, or on Dask workers (``workers`` / ``scheduler``: the engine's backends; ``train_fn`` and
    ``loss_fn`` must then be importable or picklable there). With ``retrain_dir`` each result is saved as it
    finishes, beside ``settings`` (``_retrain.json``); ``resume`` reuses a folder of the same run and retrains
    only the missing ones. A failing ``train_fn`` stops the run with one line naming it (finished results kept).
    """
    from ..engine.backends import make_backend
    from ..io.outputs import save_npz

    check_train_fn(train_fn)
    if loss_fn is not None and not callable(loss_fn):
        raise V.fail(f"loss_fn must be a function loss_fn(model, (X, y)) -> per-point losses, got a "
                     f"{type(loss_fn).__name__}", "loss_fn")
    X, y = test
    done: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    folder = None
    if retrain_dir is not None:
        folder = _open_dir(retrain_dir, settings or {"format": FORMAT}, resume)
        for j in jobs:
            f = folder / f"{j.key}.npz"
            if f.exists():
                got = _load_result(f, len(y))
                if got is not None:
                    done[j.key] = got
    todo = [j for j in jobs if j.key not in done]
    if not todo:
        return done
    backend = make_backend(workers, scheduler)
    shared = _Shared(train_fn, loss_fn, np.ascontiguousarray(X), np.asarray(y, dtype=np.int64))
    with backend:
        for i, out in track(backend.each(_retrain_task, shared, todo), len(todo), description, "retrains",
                            enabled=progress):
            if isinstance(out, _Failed):
                raise ValidationError(out.message, parameters=out.parameters)
            key = todo[i].key
            done[key] = out
            if folder is not None:
                arrays = {"losses": out[0]} if out[1] is None else {"losses": out[0], "proba": out[1]}
                save_npz(folder / f"{key}.npz", overwrite=True, argument="retrain_dir", **arrays)
    return done


def _seeds(seeds: Any) -> int:
    return V.check_integer(seeds, "seeds", minimum=1)


def _test_arrays(test: Any) -> tuple[np.ndarray, np.ndarray]:
    Xte, yte, _ = load_arrays(test, parameter="test")
    return Xte, yte


def _train_ids(train: Any) -> np.ndarray:
    """The training ids (n,), which also give n (every retrain picks positions 0..n−1)."""
    src = V.open_data(train, "train")
    if len(src) == 0:
        raise V.fail(f"train ({src.name}) is empty", "train")
    return load_arrays(src, parameter="train")[2]


def _check_fraction(fraction: Any, n: int) -> tuple[float, int]:
    fraction = V.check_fraction(fraction, "fraction", high_open=True)
    k = int(round(fraction * n))
    if k < 1 or k >= n:
        raise V.fail(f"fraction {fraction:g} of n = {n} rows keeps {k}: need between 1 and n − 1", "fraction")
    return fraction, k


def _without(n: int, rows: np.ndarray) -> np.ndarray:
    keep = np.ones(n, dtype=bool)
    keep[rows] = False
    return np.flatnonzero(keep)


# ======================================================================================================= LOO
@dataclass
class RetrainedLoo:
    """Leave-one-out by retraining the whole model: for each removed row p (positions ``rows``, ids ``ids``)
    and seed s, the change of the mean test loss L(without p, s) − L(full, s); ``actual`` (m,) its mean over
    seeds, ``actual_std`` (m,) its spread across seeds (NaN for one seed); ``full_loss`` (S,) the full-data
    mean test loss of each seed, whose spread (``seed_noise``) is the retraining noise an effect competes
    with."""

    rows: np.ndarray
    ids: np.ndarray
    actual: np.ndarray
    actual_std: np.ndarray
    full_loss: np.ndarray
    seeds: int
    n_train: int
    n_test: int

    @property
    def seed_noise(self) -> float:
        """Standard deviation of the full-data mean test loss across seeds (NaN for one seed)."""
        return float(np.std(self.full_loss, ddof=1)) if self.seeds > 1 else float("nan")

    def against(self, predicted: np.ndarray, *, method: str = "") -> LeaveOneOutResult:
        """Correlate predicted changes of the mean test loss (``loss_change_if_removed``: (n,) for every
        training row, or (m,) for ``rows``) with the retrained ones."""
        p = np.asarray(predicted, dtype=np.float64).reshape(-1)
        if p.shape[0] == self.n_train:
            p = p[self.rows]
        elif p.shape[0] != len(self.rows):
            raise V.fail(f"predicted must hold one change per training row ({self.n_train}) or per removed row "
                         f"({len(self.rows)}), got {p.shape[0]}", "predicted")
        ok = np.isfinite(p).all() and np.ptp(p) > 0 and np.ptp(self.actual) > 0
        pearson = float(np.corrcoef(p, self.actual)[0, 1]) if ok else float("nan")
        spearman = float(stats.spearmanr(p, self.actual).statistic) if ok else float("nan")
        return LeaveOneOutResult(ids=self.ids, predicted=p, actual=self.actual, pearson=pearson, spearman=spearman,
                                 n_train=self.n_train, tol=float("nan"),
                                 extra={"ground_truth": "whole model retrained by train_fn", "seeds": self.seeds,
                                        "seed_noise": self.seed_noise, "full_loss_by_seed": self.full_loss,
                                        "actual_std_across_seeds": self.actual_std,
                                        **({"method": method} if method else {})})


def loo_by_retraining(train_fn: TrainFn, train: Any, test: Any, *, points: int | np.ndarray = 50, seed: int = 0,
                      seeds: int = 3, loss_fn: LossFn | None = None, retrain_dir: str | Path | None = None,
                      resume: bool = False, workers: int | None = None, scheduler: Any = None,
                      progress: bool = False) -> RetrainedLoo:
    """Retrain the whole model with ``train_fn`` on all rows and without each of ``points`` rows (a count
    drawn with ``seed``, or positions), each with ``seeds`` seeds: (points + 1) · seeds retrains."""
    seeds = _seeds(seeds)
    ids = _train_ids(train)
    n = len(ids)
    test_xy = _test_arrays(test)
    rows = choose_rows(points, n, seed, minimum=2)
    everything = np.arange(n, dtype=np.int64)
    jobs = [Retrain(f"full-s{s}", everything, None, s) for s in range(seeds)]
    jobs += [Retrain(f"drop{int(p)}-s{s}", _without(n, np.array([p])), None, s) for p in rows for s in range(seeds)]
    settings = _settings("leave-one-out", train_fn, loss_fn, n, test_xy, jobs, {"seeds": seeds})
    res = run_retrains(train_fn, jobs, test_xy, loss_fn=loss_fn, retrain_dir=retrain_dir, resume=resume,
                       settings=settings, workers=workers, scheduler=scheduler, progress=progress,
                       description="leave-one-out retrains")
    full = np.array([res[f"full-s{s}"][0].mean() for s in range(seeds)])
    eff = np.array([[res[f"drop{int(p)}-s{s}"][0].mean() - full[s] for s in range(seeds)] for p in rows])
    std = eff.std(axis=1, ddof=1) if seeds > 1 else np.full(len(rows), np.nan)
    return RetrainedLoo(rows=rows, ids=ids[rows], actual=eff.mean(axis=1), actual_std=std, full_loss=full,
                        seeds=seeds, n_train=n, n_test=len(test_xy[1]))


def leave_one_out_retrained(head: Head, train_fn: TrainFn, train: Any, test: Any, *,
                            points: int | np.ndarray = 50, seed: int = 0, seeds: int = 3,
                            loss_fn: LossFn | None = None, damping: float = 0.0, refit: bool = False,
                            allow_nonstationary: bool = False, retrain_dir: str | Path | None = None,
                            resume: bool = False, workers: int | None = None, scheduler: Any = None,
                            progress: bool = False) -> LeaveOneOutResult:
    """:func:`winnow.evaluation.loo.leave_one_out` with the whole model as ground truth: the head's predicted
    ``loss_change_if_removed`` (from its features, as ``InfluenceAnalyzer(head)`` scores) against retraining
    the model with ``train_fn`` (:func:`loo_by_retraining`). ``train`` holds the head's training features in
    the same row order as ``train_fn``'s rows."""
    from ..analyses.influence import InfluenceAnalyzer

    V.check_head_data(head, train=train, test=test)
    damping = V.check_damping(damping)
    X, y, ids = load_arrays(train, parameter="train")
    Xte, yte, _ = load_arrays(test, parameter="test")
    choose_rows(points, len(y), seed, minimum=2)  # bad points fail before any work
    truth = loo_by_retraining(train_fn, (X, y, ids), (Xte, yte), points=points, seed=seed, seeds=seeds,
                              loss_fn=loss_fn, retrain_dir=retrain_dir, resume=resume, workers=workers,
                              scheduler=scheduler, progress=progress)
    an = InfluenceAnalyzer(head, damping=damping, refit=refit, allow_nonstationary=allow_nonstationary).fit((X, y, ids))
    predicted = an.score((Xte, yte), self_influence=False).column("loss_change_if_removed").to_numpy()
    out = truth.against(predicted, method="head-only influence")
    out.extra["stationarity"] = an.stationarity_.as_dict()
    return out


# ======================================================================================================= LDS
@dataclass
class RetrainedLds:
    """Test losses of the whole model retrained on M random subsets: ``kept`` (M, n) the rows each keeps,
    ``actual`` (M, T) the per-point test loss averaged over ``seeds`` seeds, ``seed_std`` (M, T) its spread
    across seeds (NaN for one seed)."""

    kept: np.ndarray
    actual: np.ndarray
    seed_std: np.ndarray
    fraction: float
    seeds: int
    seed: int

    @property
    def n_train(self) -> int:
        return int(self.kept.shape[1])

    def against(self, influence: np.ndarray, *, method: str = "") -> LdsResult:
        """LDS of a (T, n) influence matrix I_loss(t, p) (as ``InfluenceAnalyzer.pairwise``; > 0: p harmful to
        t; −n · loss_change_if_removed): per test point, Spearman over the subsets between
        τ_t(S) = (1/n) Σ_{p∈S} I_loss(t, p) and the retrained loss, averaged over test points (constant ones
        left out and counted), as :mod:`winnow.evaluation.lds` defines it."""
        I = np.asarray(influence, dtype=np.float64)
        M, n = self.kept.shape
        if I.shape != (self.actual.shape[1], n):
            raise V.fail(f"influence must be a (test points, training rows) = ({self.actual.shape[1]}, {n}) matrix, "
                         f"got shape {I.shape}", "influence")
        predicted = (self.kept.astype(np.float64) @ I.T) / n
        per_test = rowwise_spearman(predicted, self.actual)
        score = float(np.nanmean(per_test)) if np.isfinite(per_test).any() else float("nan")
        return LdsResult(score=score, per_test=per_test, predicted=predicted, actual=self.actual, kept=self.kept,
                         subsets=M, fraction=self.fraction, n_train=n, renormalize=True,
                         extra={"ground_truth": "whole model retrained by train_fn", "seed": self.seed,
                                "seeds": self.seeds, "kept_per_subset": int(self.kept[0].sum()),
                                "seed_noise": float(np.mean(self.seed_std)) if self.seeds > 1 else float("nan"),
                                "subset_spread": float(np.mean(self.actual.std(axis=0))),
                                **({"method": method} if method else {})})


def lds_by_retraining(train_fn: TrainFn, train: Any, test: Any, *, subsets: int = 100, fraction: float = 0.5,
                      seed: int = 0, seeds: int = 1, loss_fn: LossFn | None = None,
                      retrain_dir: str | Path | None = None, resume: bool = False, workers: int | None = None,
                      scheduler: Any = None, progress: bool = False) -> RetrainedLds:
    """Retrain the whole model with ``train_fn`` on ``subsets`` random subsets keeping ``fraction`` of the rows
    (drawn with ``seed``, as :func:`winnow.evaluation.lds.linear_datamodeling_score` draws them), each with
    ``seeds`` seeds (TRAK/dattri average several models per subset): subsets · seeds retrains."""
    if not (isinstance(subsets, (int, np.integer)) and not isinstance(subsets, bool) and subsets >= MIN_SUBSETS):
        raise V.fail(f"subsets must be an integer >= {MIN_SUBSETS}, got {subsets!r}: the LDS is a Spearman "
                     "correlation across subsets for each test point, and with so few subsets it is too coarse and "
                     "noisy to mean anything", "subsets")
    seed, seeds = V.check_seed(seed), _seeds(seeds)
    n = len(_train_ids(train))
    fraction, k = _check_fraction(fraction, n)
    test_xy = _test_arrays(test)
    rng = np.random.default_rng(seed)
    kept = np.zeros((subsets, n), dtype=bool)
    for m in range(subsets):
        kept[m, rng.choice(n, size=k, replace=False)] = True
    jobs = [Retrain(f"subset{m}-s{s}", np.flatnonzero(kept[m]), None, s) for m in range(subsets) for s in range(seeds)]
    settings = _settings("lds", train_fn, loss_fn, n, test_xy, jobs, {"seeds": seeds, "subsets": int(subsets),
                                                                      "fraction": fraction, "seed": seed})
    res = run_retrains(train_fn, jobs, test_xy, loss_fn=loss_fn, retrain_dir=retrain_dir, resume=resume,
                       settings=settings, workers=workers, scheduler=scheduler, progress=progress,
                       description="LDS retrains")
    L = np.array([[res[f"subset{m}-s{s}"][0] for s in range(seeds)] for m in range(subsets)])  # (M, S, T)
    std = L.std(axis=1, ddof=1) if seeds > 1 else np.full((subsets, L.shape[2]), np.nan)
    return RetrainedLds(kept=kept, actual=L.mean(axis=1), seed_std=std, fraction=fraction, seeds=seeds, seed=seed)


def lds_retrained(head: Head, train_fn: TrainFn, train: Any, test: Any, *, subsets: int = 100,
                  fraction: float = 0.5, seed: int = 0, seeds: int = 1, loss_fn: LossFn | None = None,
                  damping: float = 0.0, refit: bool = False, allow_nonstationary: bool = False,
                  retrain_dir: str | Path | None = None, resume: bool = False, workers: int | None = None,
                  scheduler: Any = None, progress: bool = False) -> LdsResult:
    """:func:`winnow.evaluation.lds.linear_datamodeling_score` with the whole model as ground truth: the
    head's pairwise influence (from its features) against the model retrained by ``train_fn`` on each subset
    (:func:`lds_by_retraining`). ``train`` holds the head's features in ``train_fn``'s row order."""
    from ..analyses.influence import InfluenceAnalyzer

    V.check_head_data(head, train=train, test=test)
    damping = V.check_damping(damping)
    X, y, ids = load_arrays(train, parameter="train")
    Xte, yte, _ = load_arrays(test, parameter="test")
    truth = lds_by_retraining(train_fn, (X, y, ids), (Xte, yte), subsets=subsets, fraction=fraction, seed=seed,
                              seeds=seeds, loss_fn=loss_fn, retrain_dir=retrain_dir, resume=resume, workers=workers,
                              scheduler=scheduler, progress=progress)
    an = InfluenceAnalyzer(head, damping=damping, refit=refit, allow_nonstationary=allow_nonstationary).fit((X, y, ids))
    out = truth.against(an.pairwise((Xte, yte)), method="head-only influence")
    out.extra["stationarity"] = an.stationarity_.as_dict()
    return out


# ============================================================================================== group removal
def group_by_retraining(train_fn: TrainFn, train: Any, test: Any, subset: Any, *, head: Head | None = None,
                        seeds: int = 3, loss_fn: LossFn | None = None, renormalize: bool = False,
                        damping: float = 0.0, refit: bool = False, allow_nonstationary: bool = False,
                        retrain_dir: str | Path | None = None, resume: bool = False, workers: int | None = None,
                        scheduler: Any = None, progress: bool = False) -> GroupPrediction:
    """Change of the mean test loss when the training rows with ids ``subset`` are removed together, the
    whole model retrained by ``train_fn`` with and without them (``seeds`` seeds, paired): ``actual`` the
    mean over seeds, ``extra``-like figures in ``stationarity`` left to the head. With ``head`` the
    predictions (first order, Newton) are the head's, as :func:`winnow.analyses.fidelity.group_effect`
    gives them; without, they are NaN."""
    from ..analyses.fidelity import group_effect, rows_for_ids

    seeds = _seeds(seeds)
    if head is not None:
        pred = group_effect(head, train, test, subset, retrain=False, renormalize=renormalize, damping=damping,
                            refit=refit, allow_nonstationary=allow_nonstationary)
    ids = _train_ids(train)
    n = len(ids)
    rows = rows_for_ids(ids, subset)
    if len(rows) >= n:
        raise V.fail("subset holds every training id: nothing would be left to train on", "subset")
    if head is None:
        pred = GroupPrediction(size=len(rows), fraction=len(rows) / n, first_order=float("nan"),
                               newton=float("nan"), newton_exact=float("nan"))
    test_xy = _test_arrays(test)
    everything, kept = np.arange(n, dtype=np.int64), _without(n, rows)
    jobs = [Retrain(f"full-s{s}", everything, None, s) for s in range(seeds)]
    jobs += [Retrain(f"group-s{s}", kept, None, s) for s in range(seeds)]
    settings = _settings("group", train_fn, loss_fn, n, test_xy, jobs, {"seeds": seeds})
    res = run_retrains(train_fn, jobs, test_xy, loss_fn=loss_fn, retrain_dir=retrain_dir, resume=resume,
                       settings=settings, workers=workers, scheduler=scheduler, progress=progress,
                       description="group retrains")
    eff = np.array([res[f"group-s{s}"][0].mean() - res[f"full-s{s}"][0].mean() for s in range(seeds)])
    pred.actual = float(eff.mean())
    pred.kind = "given (whole model)"
    pred.actual_std = float(eff.std(ddof=1)) if seeds > 1 else float("nan")  # type: ignore[attr-defined]
    return pred


# ======================================================================================== evaluating a subset
def retrain_metrics(losses: np.ndarray, proba: np.ndarray | None, y: np.ndarray) -> dict[str, float]:
    """TEST metrics of one retrained model from what :func:`run_retrains` returns for it: per-point losses
    (T,), probabilities ((T,) P(y=1) or (T, K), or None) and the labels y (T,). {"logloss": mean loss,
    "auc": binary AUC or macro one-vs-rest AUC for K classes (NaN when a class is missing from y or there
    are no probabilities), "accuracy": share of argmax (binary: P > 0.5) predictions equal to y (NaN without
    probabilities)}."""
    from sklearn.metrics import roc_auc_score

    out = {"logloss": float(losses.mean()), "auc": float("nan"), "accuracy": float("nan")}
    if proba is None:
        return out
    P = np.asarray(proba, dtype=np.float64)
    pred = (P > 0.5).astype(np.int64) if P.ndim == 1 else P.argmax(1)
    out["accuracy"] = float((pred == y).mean())
    K = 2 if P.ndim == 1 else P.shape[1]
    if set(range(K)) <= set(np.unique(y).tolist()):
        if K == 2:
            out["auc"] = float(roc_auc_score(y, P if P.ndim == 1 else P[:, 1]))
        else:
            Pn = P / np.maximum(P.sum(1, keepdims=True), np.finfo(np.float64).tiny)
            out["auc"] = float(roc_auc_score(y, Pn, multi_class="ovr", average="macro", labels=list(range(K))))
    return out


def evaluate_subset_by_retraining(train_fn: TrainFn, train: Any, subset: str | Path, test: Any, *,
                                  seeds: int = 5, loss_fn: LossFn | None = None,
                                  retrain_dir: str | Path | None = None, resume: bool = False,
                                  workers: int | None = None, scheduler: Any = None,
                                  progress: bool = False) -> SubsetEvaluation:
    """Train the whole model with ``train_fn`` on the SUBSET (with its weights if it has them), on all of
    ``train`` and on random subsets of the same size and class counts (one per seed), each with ``seeds``
    seeds; TEST log-loss, AUC and accuracy as mean ± std over seeds (the rows of
    :func:`winnow.evaluation.subset.evaluate_subset`)."""
    from ..io.subsets import load_subset

    seeds = _seeds(seeds)
    src = V.open_data(train, "train")
    sub = load_subset(subset, src)
    labels = V.read_labels(src, "train")
    n = len(src)
    test_xy = _test_arrays(test)
    K = max(int(labels.max()) + 1, 2) if n else 2
    counts = np.bincount(labels[sub.rows], minlength=K)
    everything = np.arange(n, dtype=np.int64)
    weights = np.asarray(sub.weights, dtype=np.float64) if sub.weighted else None
    jobs = [Retrain(f"full-s{s}", everything, None, s) for s in range(seeds)]
    jobs += [Retrain(f"subset-s{s}", np.asarray(sub.rows, dtype=np.int64), weights, s) for s in range(seeds)]
    for s in range(seeds):
        r, w = _stratified_random(labels, counts, sub.weighted, np.random.default_rng([s, 104729]))
        jobs.append(Retrain(f"random-s{s}", r.astype(np.int64), w if sub.weighted else None, s))
    settings = _settings("subset", train_fn, loss_fn, n, test_xy, jobs, {"seeds": seeds})
    res = run_retrains(train_fn, jobs, test_xy, loss_fn=loss_fn, retrain_dir=retrain_dir, resume=resume,
                       settings=settings, workers=workers, scheduler=scheduler, progress=progress,
                       description="subset retrains")
    yte = test_xy[1]

    def agg(prefix: str) -> dict[str, float]:
        return _agg([retrain_metrics(*res[f"{prefix}-s{s}"], yte) for s in range(seeds)])

    meta = sub.summary
    rows = [{"method": "full", "weighted": False, "n_kept": n, **agg("full")},
            {"method": f"subset ({meta.get('policy', 'given')})", "weighted": sub.weighted,
             "n_kept": int(sub.rows.shape[0]), **agg("subset")},
            {"method": "random (same size and class counts)", "weighted": sub.weighted,
             "n_kept": int(sub.rows.shape[0]), **agg("random")}]
    return SubsetEvaluation(rows=rows, subset_summary={**meta, "ground_truth": "whole model retrained by train_fn",
                                                       "seeds": seeds})
