"""Benchmark: exact influence on a logistic head against the machine's own floor and against pyDVL.

For every (n, D) it prints, side by side from the same run:

* the machine's floor, measured here: one plain read of the float32 features (the fastest of
  ``np.add.reduce(X, 0)`` and ``torch.sum(X, 0)``) and one float64 GEMM X̃ᵀX̃ of X̃ = [X, 1] (n × (D+1), already
  in float64 in memory; the fastest of torch/MKL and numpy/OpenBLAS);
* winnow's Hessian pass (``InfluenceAnalyzer.fit``), scoring pass on a validation set (aggregate influence
  only, and with self-influence), pairwise influence for T = 100 test points, each with its ratio to the floor;
* the process's peak RSS (the features themselves are held in memory: n·D·4 bytes);
* pyDVL's ``DirectInfluence`` on the same head (an ``nn.Linear`` with BCE-with-logits loss, in float64 like
  winnow unless ``--pydvl-dtype float32``, its own DataLoader of 2048 rows): fit, aggregate influence (from the
  mean of the test factors, one pass) and pairwise T = 100, in a separate process capped in time and memory
  ("did not fit" otherwise).

Every measurement is the best of ``--repeat`` runs. Each configuration runs in a fresh subprocess, so its
peak RSS is its own.

Usage::

    python benchmarks/head_influence.py                 # n in {1e5, 1e6}, D in {64, 256}
    python benchmarks/head_influence.py --quick         # a small smoke run (seconds)
    python benchmarks/head_influence.py --memory-1e7    # peak RSS of `winnow influence` over 1e7 rows in Parquet
    python benchmarks/head_influence.py --precision     # precision="float64" vs "mixed", n = 1e6, one thread

``--memory-1e7`` writes 1e7 synthetic rows (D = 64, float32) as a directory of Parquet files under /tmp,
fits a head on a part of them, runs the real ``winnow influence`` command in a subprocess, reports its peak
RSS (from ``wait4``) and wall time, checks the output, and removes everything it wrote.

``--precision`` compares ``precision="float64"`` (every product in float64) with ``"mixed"`` (per-block GEMMs
in float32 on the float32 features, float64 sums, H and solves; what "auto" picks for float32 features) at
n = 1e6, D in {64, 256}, one thread (set ``--threads`` for more): the Hessian pass, the scoring pass
(influence alone and with self-influence) and pairs for T = 100, each in both precisions from the same
process, and the largest error of every mixed column relative to the float64 one, max |mixed − float64| /
max |float64|.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MiB = 1 << 20
VAL_ROWS = 1000
PAIR_ROWS = 100


# ------------------------------------------------------------------------------------------------ helpers
def _rss_now() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1024
    return 0


def _rss_peak() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak() -> None:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux ≥ 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _best(fn, repeat: int, clock=time.perf_counter) -> float:
    """The least time of ``repeat`` runs of ``fn`` on ``clock`` (``time.process_time``: CPU time of every thread
    of this process, steadier than wall time on a shared machine)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best


def make_data(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n rows of winnow's synthetic ReLU embeddings, float32 (n, d), labels int64 (n,)."""
    from winnow.datasets import synthetic_embeddings

    X = np.empty((n, d), dtype=np.float32)
    y = np.empty(n, dtype=np.int64)
    s = 0
    for Xc, yc in synthetic_embeddings(n, d, seed=seed, positive_rate=0.3):
        X[s:s + len(yc)] = Xc
        y[s:s + len(yc)] = yc
        s += len(yc)
    return X, y


def make_head(d: int, l2: float = 1e-3):
    """A logistic head fitted (tightly) on 20 000 rows of the same distribution (seed 1)."""
    from winnow.core.heads import LogisticHead

    X, y = make_data(20_000, d, seed=1)
    return LogisticHead(l2=l2).fit(X, y)


# ------------------------------------------------------------------------------------------- winnow worker
def worker_winnow(n: int, d: int, repeat: int, chunk_size: int) -> dict:
    import torch

    from winnow.analyses.influence import InfluenceAnalyzer

    X, y = make_data(n, d, seed=0)
    Xv, yv = make_data(VAL_ROWS, d, seed=2)
    head = make_head(d)
    res: dict = {"n": n, "D": d, "torch_threads": torch.get_num_threads()}
    res["rss_data_mb"] = _rss_now() / MiB

    # --- winnow
    _reset_peak()
    holder: dict = {}

    def hess():
        # timing only: the head is fitted on other rows of the same distribution (not stationary on these), and
        # this table is the float64 path (the precision mode below compares it with mixed precision)
        holder["an"] = InfluenceAnalyzer(head, chunk_size=chunk_size, allow_nonstationary=True,
                                         precision="float64").fit((X, y))

    res["hessian_s"] = _best(hess, repeat)
    an = holder["an"]
    res["score_s"] = _best(lambda: an.score((Xv, yv), self_influence=False), repeat)
    res["score_self_s"] = _best(lambda: an.score((Xv, yv), self_influence=True), repeat)
    res["pairs_s"] = _best(lambda: an.pairwise((Xv[:PAIR_ROWS], yv[:PAIR_ROWS])), repeat)
    res["peak_rss_mb"] = _rss_peak() / MiB

    # --- the machine's floor, same process, same data
    res["read_how"], res["read_s"] = floor_read(X, repeat)
    res["gemm_how"], res["gemm_s"], res["syrk_s"] = floor_gemm(X, repeat)

    # --- sanity: the aggregate equals the mean of the pairwise rows on the first test rows
    sc = an.score((Xv[:PAIR_ROWS], yv[:PAIR_ROWS]), self_influence=False)["influence"].to_numpy()
    pw = an.pairwise((Xv[:PAIR_ROWS], yv[:PAIR_ROWS]))
    res["check_aggregate_vs_pairs"] = float(np.max(np.abs(sc - pw.mean(0))) / np.max(np.abs(sc)))
    if n <= 200_000:
        res["pydvl_check"] = _pydvl_agreement(head, X[:2000], y[:2000], Xv[:10], yv[:10])
    return res


def floor_read(X: np.ndarray, repeat: int) -> tuple[str, float]:
    """The fastest of a few plain reads of X: (how, seconds)."""
    import torch

    Xt = torch.from_numpy(X)
    reads = {"numpy add.reduce(X, 0)": _best(lambda: np.add.reduce(X, axis=0), repeat),
             "numpy X.sum()": _best(lambda: X.sum(), repeat),
             "torch sum(X, 0)": _best(lambda: torch.sum(Xt, 0), repeat)}
    return min(reads.items(), key=lambda kv: kv[1])


def floor_gemm(X: np.ndarray, repeat: int) -> tuple[str, float, float]:
    """X̃ᵀX̃ for X̃ = [X, 1] float64 already in memory: (how, GEMM seconds, SYRK seconds).

    GEMM: the faster of torch (MKL) and numpy (OpenBLAS) on two distinct operands (a general product,
    2n(D+1)² flops). SYRK: numpy's ``X̃.T @ X̃`` on one operand, which OpenBLAS computes as a symmetric
    rank-k update (half the flops).
    """
    import torch

    n, d = X.shape
    Xa = np.empty((n, d + 1), dtype=np.float64)
    Xa[:, :d] = X
    Xa[:, d] = 1.0
    Xb = Xa.copy()
    Xat = torch.from_numpy(Xa)
    gemms = {"torch mm": _best(lambda: torch.mm(Xat.T, Xat), repeat),
             "numpy matmul": _best(lambda: Xa.T @ Xb, repeat)}
    how, gemm = min(gemms.items(), key=lambda kv: kv[1])
    return how, gemm, _best(lambda: Xa.T @ Xa, repeat)


def _pydvl_agreement(head, X, y, Xv, yv) -> float | None:
    """Max relative difference between pyDVL's float64 DirectInfluence and winnow's pairwise (sign flipped:
    pyDVL's "up" influence is +g_tᵀH⁻¹g_p) on a small problem with the same Hessian (damping λ on every
    coordinate, as pyDVL's regularization)."""
    try:
        import torch
        from pydvl.influence.torch import DirectInfluence
        from torch.utils.data import DataLoader, TensorDataset
    except ImportError:
        return None
    from winnow.analyses.influence import InfluenceAnalyzer
    from winnow.core.heads import LogisticHead

    lam = 1e-3
    lin = _linear(head, torch.float64)
    Xt, yt = torch.from_numpy(X).double(), torch.from_numpy(y).double()[:, None]
    dvl = DirectInfluence(lin, _bce, regularization=lam).fit(DataLoader(TensorDataset(Xt, yt), batch_size=1024))
    ref = -dvl.influences(torch.from_numpy(Xv).double(), torch.from_numpy(yv).double()[:, None], Xt, yt).numpy()
    h0 = LogisticHead.from_weights(head.weight_, head.bias_, l2=0.0)
    ours = InfluenceAnalyzer(h0, damping=lam).fit((X, y)).pairwise((Xv, yv))
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def _bce(out, target):
    import torch

    return torch.nn.functional.binary_cross_entropy_with_logits(out, target)


def _linear(head, dtype):
    import torch

    lin = torch.nn.Linear(head.n_features_, 1).to(dtype)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(head.weight_))
        lin.bias.copy_(torch.from_numpy(head.bias_))
    return lin


# -------------------------------------------------------------------------------------------- pyDVL worker
def worker_pydvl(n: int, d: int, repeat: int, dtype: str) -> dict:
    import warnings

    warnings.filterwarnings("ignore")
    import torch
    from pydvl.influence.torch import DirectInfluence
    from torch.utils.data import DataLoader, TensorDataset

    X, y = make_data(n, d, seed=0)
    Xv, yv = make_data(VAL_ROWS, d, seed=2)
    head = make_head(d)
    dt = getattr(torch, dtype)
    lin = _linear(head, dt)
    Xt, yt = torch.from_numpy(X).to(dt), torch.from_numpy(y).to(dt)[:, None]
    Xvt, yvt = torch.from_numpy(Xv).to(dt), torch.from_numpy(yv).to(dt)[:, None]
    loader = DataLoader(TensorDataset(Xt, yt), batch_size=2048)
    res: dict = {"n": n, "D": d, "dtype": dtype}
    holder: dict = {}

    def fit():
        holder["m"] = DirectInfluence(lin, _bce, regularization=head.l2).fit(loader)

    res["fit_s"] = _best(fit, repeat)
    m = holder["m"]
    step = 65536

    def aggregate():
        f = m.influence_factors(Xvt, yvt).mean(0, keepdim=True)  # (1, P): H⁻¹ ḡ_t
        return [m.influences_from_factors(f, Xt[s:s + step], yt[s:s + step]) for s in range(0, n, step)]

    def pairs():
        f = m.influence_factors(Xvt[:PAIR_ROWS], yvt[:PAIR_ROWS])  # (T, P)
        return [m.influences_from_factors(f, Xt[s:s + step], yt[s:s + step]) for s in range(0, n, step)]

    res["aggregate_s"] = _best(aggregate, repeat)
    res["pairs_s"] = _best(pairs, repeat)
    res["peak_rss_mb"] = _rss_peak() / MiB
    return res


# -------------------------------------------------------------------------------------------- pairs worker
def numpy_fit(X: np.ndarray, y: np.ndarray, w: np.ndarray, b: float, l2: float, chunk: int = 65536):
    """The plain numpy closed form's Hessian (``numpy_pipeline.hessian_factor`` over in-memory chunks): float32
    GEMMs summed in float64, H = (1/n) Σ s(1−s) x̃x̃ᵀ + λ·diag(1, …, 1, 0); its Cholesky factor (lower)."""
    from numpy_pipeline import hessian_factor

    return hessian_factor(((y[s:s + chunk], X[s:s + chunk]) for s in range(0, len(y), chunk)), w, b, l2)[0]


def numpy_pairs(X: np.ndarray, y: np.ndarray, w: np.ndarray, b: float, L: np.ndarray, Xt: np.ndarray,
                yt: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """I_loss(z_t, z_p) = −g_tᵀH⁻¹g_p as a C-contiguous (T, n) float64 array, the plain numpy way: F = H⁻¹G_tᵀ,
    then per chunk one float32 GEMM X @ F[:D], upcast, + F[D], times −r_p."""
    from scipy.linalg import cho_solve

    d = X.shape[1]
    rt = 1 / (1 + np.exp(-(Xt.astype(np.float64) @ w + b))) - yt
    Gt = np.concatenate([rt[:, None] * Xt, rt[:, None]], axis=1)  # (T, D + 1)
    F = cho_solve((L, True), Gt.T)  # (D + 1, T)
    V = np.concatenate([w[:, None], F[:d]], axis=1).astype(np.float32)
    shift = np.concatenate([[b], F[d]])
    out = np.empty((len(yt), len(y)))
    for s in range(0, len(y), chunk):
        Z = (X[s:s + chunk] @ V).astype(np.float64) + shift
        r = 1 / (1 + np.exp(-Z[:, 0])) - y[s:s + chunk]
        out[:, s:s + chunk] = (Z[:, 1:] * -r[:, None]).T
    return out


def worker_pairs(n: int, d: int, repeat: int, chunk_size: int) -> dict:
    """Fit + pairwise T = 100 in this fresh process: winnow (mixed precision, float32 features) and the plain
    numpy closed form, each timed on its first call and as the best of ``repeat``; their agreement."""
    import torch

    from winnow.analyses.influence import InfluenceAnalyzer

    X, y = make_data(n, d, seed=0)
    Xv, yv = make_data(PAIR_ROWS, d, seed=2)
    head = make_head(d)
    w, b, l2 = head.weight_.reshape(-1), float(head.bias_[0]), head.l2
    res: dict = {"n": n, "D": d, "T": PAIR_ROWS, "torch_threads": torch.get_num_threads()}
    holder: dict = {}
    # On a virtual machine the first touch of memory the process has never used is slow (here ~2.6 s/GB, then
    # ~0.06 s/GB once the pages were touched and freed): touch as much as both outputs need first, so that
    # "first call" measures the first call and not the order of the calls.
    t0 = time.perf_counter()
    np.ones((3 * PAIR_ROWS, n)).sum()
    res["first_touch_s"] = time.perf_counter() - t0

    def w_fit():
        holder["an"] = InfluenceAnalyzer(head, chunk_size=chunk_size, allow_nonstationary=True).fit((X, y))

    def n_fit():
        holder["L"] = numpy_fit(X, y, w, b, l2, chunk_size)

    def w_pairs():
        holder["w"] = holder["an"].pairwise((Xv, yv))

    def n_pairs():
        holder["n"] = numpy_pairs(X, y, w, b, holder["L"], Xv, yv, chunk_size)

    for name, fn in (("winnow_fit", w_fit), ("winnow_pairs", w_pairs), ("numpy_fit", n_fit),
                     ("numpy_pairs", n_pairs)):
        t0 = time.perf_counter()
        fn()
        res[name + "_first_s"] = time.perf_counter() - t0
    for name, fn in (("winnow_fit", w_fit), ("winnow_pairs", w_pairs), ("numpy_fit", n_fit),
                     ("numpy_pairs", n_pairs)):
        res[name + "_s"] = min(res[name + "_first_s"], _best(fn, repeat))
    ours, ref = holder["w"], holder["n"]
    res["winnow_pairs_c_contiguous"] = bool(ours.flags.c_contiguous and ours.shape == (PAIR_ROWS, n))
    res["max_rel_diff"] = float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))
    res["write_floor_s"] = _best(lambda: np.empty((PAIR_ROWS, n)).fill(1.0), repeat)  # first-touch + write
    return res


def run_pairs(args) -> list[dict]:
    """Pairwise T = 100 at n = 1e6, D = 64, one thread: winnow vs the numpy closed form vs pyDVL."""
    rows = []
    for n in [int(float(s)) for s in args.sizes.split(",")]:
        for d in [int(s) for s in args.dims.split(",")]:
            r = _run_worker("pairs", n, d, args, None, None)
            if "error" in r:
                print(f"n = {n:.0e}, D = {d}: winnow worker {r['error']}")
                continue
            dvl = ({"error": "skipped (--no-pydvl)"} if args.no_pydvl else
                   _run_worker("pydvl", n, d, args, args.pydvl_timeout, args.pydvl_mem_gb * 1024))
            r["pydvl"] = dvl
            rows.append(r)
            wt, nt = r["winnow_fit_s"] + r["winnow_pairs_s"], r["numpy_fit_s"] + r["numpy_pairs_s"]
            line = (f"n = {n:.0e}, D = {d}, T = {PAIR_ROWS} ({r['torch_threads']} thread(s)): pairs winnow "
                    f"{_fmt_s(r['winnow_pairs_s'])} (first call {_fmt_s(r['winnow_pairs_first_s'])}), numpy closed "
                    f"form {_fmt_s(r['numpy_pairs_s'])} (first {_fmt_s(r['numpy_pairs_first_s'])}): "
                    f"{r['winnow_pairs_s'] / r['numpy_pairs_s']:.2f}× (goal ≤ 1.5×); writing the (T, n) float64 "
                    f"result alone {_fmt_s(r['write_floor_s'])}; fit + pairs winnow {_fmt_s(wt)}, numpy "
                    f"{_fmt_s(nt)}; max rel. difference {r['max_rel_diff']:.1e}; C-contiguous (T, n): "
                    f"{r['winnow_pairs_c_contiguous']}; first touch of the process's memory (before both) "
                    f"{_fmt_s(r['first_touch_s'])}")
            if "error" in dvl:
                line += f"; pyDVL {dvl['error']}"
            else:
                dt = dvl["fit_s"] + dvl["pairs_s"]
                line += (f"; pyDVL DirectInfluence ({dvl['dtype']}) fit {_fmt_s(dvl['fit_s'])} + pairs "
                         f"{_fmt_s(dvl['pairs_s'])}: winnow is {dt / wt:.1f}× faster on fit + pairs (goal ≥ 20×), "
                         f"{dvl['pairs_s'] / r['winnow_pairs_s']:.1f}× on the pairs alone")
            print(line, flush=True)
    return rows


# ------------------------------------------------------------------------------------------------- driver
def _precision_run(head, X, y, Xv, yv, precision: str, repeat: int, chunk_size: int) -> tuple[dict, dict]:
    """(times of every pass, score columns) of one precision."""
    from winnow.analyses.influence import InfluenceAnalyzer

    holder: dict = {}

    def hess():
        # the head is fitted on other rows of the same distribution: timing and agreement need no optimum
        holder["an"] = InfluenceAnalyzer(head, chunk_size=chunk_size, precision=precision,
                                         allow_nonstationary=True).fit((X, y))

    r = {"hessian_s": _best(hess, repeat)}
    an = holder["an"]
    r["score_s"] = _best(lambda: an.score((Xv, yv), self_influence=False), repeat)
    r["score_self_s"] = _best(lambda: an.score((Xv, yv), self_influence=True), repeat)
    r["pairs_s"] = _best(lambda: an.pairwise((Xv[:PAIR_ROWS], yv[:PAIR_ROWS])), repeat)
    t = an.score((Xv, yv), self_influence=True)
    cols = {c: t[c].to_numpy() for c in ("influence", "loss_change_if_removed", "self_influence")}
    cols["pairs"] = an.pairwise((Xv[:PAIR_ROWS], yv[:PAIR_ROWS]))
    return r, cols


def worker_precision(n: int, d: int, repeat: int, chunk_size: int) -> dict:
    """Times and errors of precision="float64" vs "mixed" on the same float32 data and head."""
    import torch

    X, y = make_data(n, d, seed=0)
    Xv, yv = make_data(VAL_ROWS, d, seed=2)
    head = make_head(d)
    res: dict = {"n": n, "D": d, "torch_threads": torch.get_num_threads()}
    cols: dict = {}
    for prec in ("float64", "mixed"):
        res[prec], cols[prec] = _precision_run(head, X, y, Xv, yv, prec, repeat, chunk_size)
    res["max_rel_error"] = {c: float(np.max(np.abs(cols["mixed"][c] - a)) / np.max(np.abs(a)))
                            for c, a in cols["float64"].items()}
    res["read_how"], res["read_s"] = floor_read(X, repeat)
    return res


def conditioning_errors() -> list[str]:
    """Mixed and float64 against an independent float64 computation (numpy, from the definitions) on the
    well- and ill-conditioned sets of tests/core/test_mixed_precision.py: ReLU embeddings (cond(H) ~1e2),
    columns scaled 1e-3..1e3 (~1e10), nearly collinear columns (~5e4); logistic and 3-class softmax."""
    tests = Path(__file__).resolve().parents[1] / "tests"
    sys.path[:0] = [str(tests), str(tests / "core")]
    import test_mixed_precision as t

    cols = ("influence", "loss_change_if_removed", "self_influence", "pairs")
    lines = ["| data | K | path | " + " | ".join(cols) + " |", "|" + "---|" * (3 + len(cols))]
    for kind in ("relu", "scales", "collinear"):
        for K in (2, 3):
            X, y, Xt, yt = t._data(kind, K)
            head = t._head(K, X, y, t.L2[kind])
            ref = t._reference(head.theta_.numpy(), head.n_outputs, X, y, Xt, yt, t.L2[kind])
            for prec in ("float64", "mixed"):
                e = t._errors(t._scores(head, X, y, Xt, yt, prec), ref)
                lines.append(f"| {kind} | {K} | {prec} | " + " | ".join(f"{e[c]:.1e}" for c in cols) + " |")
    return lines


def run_precision(args) -> list[dict]:
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    dims = [int(d) for d in args.dims.split(",")]
    print(f"# winnow precision=float64 vs mixed (float32 features): {_machine(args.threads)}", flush=True)
    rows = []
    for n in sizes:
        for d in dims:
            print(f"  n = {n:.0e}, D = {d} ...", end="", flush=True)
            rows.append({"n": n, "D": d, "result": _run_worker("precision", n, d, args, None, None)})
            print(" done", flush=True)
    head = ["n", "D", "pass", "float64", "mixed", "speed-up"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    errs = ["| n | D | influence | loss_change_if_removed | self_influence | pairs T=100 |",
            "|---|---|---|---|---|---|"]
    for row in rows:
        r = row["result"]
        if "error" in r:
            lines.append(f"| {row['n']:.0e} | {row['D']} | {r['error']} |")
            continue
        for key, name in (("hessian_s", "Hessian"), ("score_s", "score (influence)"),
                          ("score_self_s", "score (+self-infl.)"), ("pairs_s", "pairs T=100")):
            a, b = r["float64"][key], r["mixed"][key]
            lines.append(f"| {row['n']:.0e} | {row['D']} | {name} | {_fmt_s(a)} | {_fmt_s(b)} | {a / b:.2f}× |")
        e = r["max_rel_error"]
        errs.append(f"| {row['n']:.0e} | {row['D']} | " + " | ".join(
            f"{e[c]:.1e}" for c in ("influence", "loss_change_if_removed", "self_influence", "pairs")) + " |")
        lines.append(f"| {row['n']:.0e} | {row['D']} | one read of the features ({r['read_how']}) | | "
                     f"{_fmt_s(r['read_s'])} | scoring pass (influence) = "
                     f"{r['mixed']['score_s'] / r['read_s']:.2f}× one read (goal ≤ 2×) |")
    print()
    print("\n".join(lines))
    print()
    print("max |mixed − float64| / max |float64| per column:")
    print("\n".join(errs))
    print()
    print("max |winnow − independent float64| / max |independent| per column, well- and ill-conditioned data:")
    print("\n".join(conditioning_errors()))
    return rows


def _run_worker(kind: str, n: int, d: int, args, timeout: float | None, mem_cap_mb: float | None) -> dict:
    """Run a worker in a fresh interpreter; kill it past ``timeout`` seconds or ``mem_cap_mb`` of RSS."""
    import psutil

    python = args.pydvl_python if kind == "pydvl" and args.pydvl_python else sys.executable
    cmd = [python, __file__, "--_worker", kind, "--_n", str(n), "--_d", str(d),
           "--repeat", str(args.repeat), "--chunk-size", str(args.chunk_size), "--pydvl-dtype", args.pydvl_dtype]
    env = dict(os.environ)
    if kind == "pydvl" and args.pydvl_python:  # winnow's sources for make_head, pyDVL from that environment
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                             env.get("PYTHONPATH", "")])
    if args.threads:
        t = str(args.threads)
        env.update(OMP_NUM_THREADS=t, MKL_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        proc = psutil.Process(p.pid)
        t0 = time.monotonic()
        reason = None
        while p.poll() is None:
            try:
                rss = proc.memory_info().rss / MiB
            except psutil.NoSuchProcess:
                break
            if mem_cap_mb is not None and rss > mem_cap_mb:
                reason = f"did not fit: RSS > {mem_cap_mb / 1024:.0f} GiB"
            elif timeout is not None and time.monotonic() - t0 > timeout:
                reason = f"did not fit: > {timeout:.0f} s"
            if reason:
                p.kill()
                p.wait()
                return {"error": reason}
            time.sleep(0.2)
        out.seek(0)
        err.seek(0)
        text = out.read().decode()
        if p.returncode != 0:
            tail = err.read().decode().strip().splitlines()[-1:] or ["?"]
            return {"error": f"failed: {tail[0][:80]}"}
    return json.loads(text.strip().splitlines()[-1])


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def _table(rows: list[dict]) -> str:
    head = ["n", "D", "read floor", "GEMM floor", "SYRK", "Hessian pass", "×GEMM", "×SYRK", "score (influence)",
            "×read", "score (+self-infl.)", "×GEMM", "pairs T=100", "×GEMM", "peak RSS (data)",
            "pyDVL fit", "pyDVL aggregate", "pyDVL pairs T=100", "pyDVL RSS", "speed-up fit+score",
            "speed-up pairs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        w, p = r["winnow"], r.get("pydvl") or {}
        if "error" in w:
            lines.append(f"| {r['n']:.0e} | {r['D']} | winnow {w['error']} |")
            continue
        g = w["gemm_s"]
        cells = [f"{r['n']:.0e}", str(r["D"]), _fmt_s(w["read_s"]), _fmt_s(g), _fmt_s(w["syrk_s"]),
                 _fmt_s(w["hessian_s"]), f"{w['hessian_s'] / g:.2f}", f"{w['hessian_s'] / w['syrk_s']:.2f}",
                 _fmt_s(w["score_s"]), f"{w['score_s'] / w['read_s']:.1f}",
                 _fmt_s(w["score_self_s"]), f"{w['score_self_s'] / g:.2f}",
                 _fmt_s(w["pairs_s"]), f"{w['pairs_s'] / g:.2f}",
                 f"{w['peak_rss_mb']:.0f} MB ({w['rss_data_mb']:.0f})"]
        if not p:
            cells += ["skipped"] * 4 + ["-", "-"]
        elif "error" in p:
            cells += [p["error"]] + ["-"] * 5
        else:
            ours = w["hessian_s"] + w["score_s"]
            theirs = p["fit_s"] + p["aggregate_s"]
            cells += [_fmt_s(p["fit_s"]), _fmt_s(p["aggregate_s"]), _fmt_s(p["pairs_s"]),
                      f"{p['peak_rss_mb']:.0f} MB", f"{theirs / ours:.0f}×", f"{p['pairs_s'] / w['pairs_s']:.1f}×"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _machine(threads: int) -> str:
    import torch

    load = os.getloadavg()[0]
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({threads or torch.get_num_threads()} threads), numpy {np.__version__}, "
            f"load average at start {load:.2f}")


def run_table(args) -> list[dict]:
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    dims = [int(d) for d in args.dims.split(",")]
    print(f"# winnow head-influence benchmark: {_machine(args.threads)}; pyDVL in {args.pydvl_dtype}", flush=True)
    rows = []
    for n in sizes:
        for d in dims:
            print(f"  n = {n:.0e}, D = {d}: winnow ...", end="", flush=True)
            r = {"n": n, "D": d, "winnow": _run_worker("winnow", n, d, args, None, None)}
            if not args.no_pydvl:
                print(" pyDVL ...", end="", flush=True)
                r["pydvl"] = _run_worker("pydvl", n, d, args, args.pydvl_timeout, args.pydvl_mem_gb * 1024)
            print(f" done (load average {os.getloadavg()[0]:.1f})", flush=True)
            rows.append(r)
    print()
    print(_table(rows))
    print()
    notes = []
    for r in rows:
        w = r["winnow"]
        if "check_aggregate_vs_pairs" in w:
            notes.append(f"n={r['n']:.0e} D={r['D']}: aggregate vs mean of pairs rel. diff "
                         f"{w['check_aggregate_vs_pairs']:.1e}; floors: read = {w['read_how']}, "
                         f"GEMM = {w['gemm_how']}"
                         + (f"; pyDVL float64 agreement (n=2000, T=10) rel. diff {w['pydvl_check']:.1e}"
                            if w.get("pydvl_check") is not None else ""))
    print("\n".join(notes))
    return rows


# --------------------------------------------------------------------------------------------- memory 1e7
def run_memory(args) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from winnow.core.heads import LogisticHead
    from winnow.datasets import synthetic_embeddings

    n, d = int(float(args.memory_rows)), 64
    files = args.memory_files
    root = Path(tempfile.mkdtemp(prefix="winnow-mem-", dir="/tmp"))
    try:
        train = root / "train"
        train.mkdir()
        per_file = -(-n // files)
        t0 = time.perf_counter()
        gen = synthetic_embeddings(n, d, seed=0, positive_rate=0.3, chunk_size=1 << 17)
        written, part, writer = 0, 0, None
        fit_X, fit_y = [], []
        schema = pa.schema([("id", pa.int64()), ("label", pa.int64()), ("features", pa.list_(pa.float32(), d))])
        for Xc, yc in gen:
            if writer is None or written >= (part + 1) * per_file:
                if writer is not None:
                    writer.close()
                    part += 1
                writer = pq.ParquetWriter(train / f"part-{part:03d}.parquet", schema)
            feats = pa.FixedSizeListArray.from_arrays(pa.array(Xc.reshape(-1)), d)
            ids = pa.array(np.arange(written, written + len(yc), dtype=np.int64))
            writer.write_table(pa.Table.from_arrays([ids, pa.array(yc), feats], schema=schema),
                               row_group_size=1 << 17)
            if written < 100_000:
                fit_X.append(Xc)
                fit_y.append(yc)
            written += len(yc)
        writer.close()
        gen_s = time.perf_counter() - t0
        size_gb = sum(f.stat().st_size for f in train.iterdir()) / 1e9
        Xv, yv = make_data(VAL_ROWS, d, seed=2)
        test = root / "test.npz"
        np.savez(test, X=Xv, y=yv)
        head = LogisticHead(l2=1e-3).fit(np.concatenate(fit_X)[:100_000], np.concatenate(fit_y)[:100_000])
        head_path = head.save(root / "head.npz")
        del fit_X, fit_y
        out = root / "scores.parquet"
        exe = Path(sys.executable).with_name("winnow")
        cmd = ([str(exe)] if exe.exists() else [sys.executable, "-c", "from winnow.cli import main; main()"])
        cmd += ["influence", str(train), "--head", str(head_path), "--test", str(test), "--out", str(out),
                "--chunk-size", str(args.chunk_size), "--quiet"]
        print(f"# memory: {n:.0e} rows × D = {d} in {len(list(train.iterdir()))} Parquet files "
              f"({size_gb:.2f} GB, written in {gen_s:.0f} s); running: {' '.join(cmd[-12:])}", flush=True)
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        err = p.stderr.read().decode() if p.stderr else ""
        res = {"rows": n, "D": d, "files": files, "parquet_gb": size_gb, "exit_code": p.returncode,
               "peak_rss_mb": usage.ru_maxrss / 1024, "wall_s": wall, "chunk_size": args.chunk_size}
        if p.returncode == 0:
            md = pq.read_metadata(out)
            res["out_rows"] = md.num_rows
            infl = pq.read_table(out, columns=["influence"])["influence"].to_numpy()
            res["out_finite"] = bool(np.isfinite(infl).all())
        else:
            res["stderr"] = err[-500:]
        ok = res.get("out_rows") == n and res.get("out_finite") and res["peak_rss_mb"] < 1024
        print(f"winnow influence over {n:.0e} rows (D = {d}, chunk {args.chunk_size}): exit {p.returncode}, "
              f"peak RSS {res['peak_rss_mb']:.0f} MiB (goal < 1024 MiB: {'met' if ok else 'MISSED'}), "
              f"wall {wall:.0f} s, {res.get('out_rows', 0):,} output rows", flush=True)
        return res
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ pipeline
def _write_parquet(path: Path, X: np.ndarray, y: np.ndarray, row_group: int = 65536) -> None:
    """(id, label, features fixed_size_list<float32>[D]) in row groups of ``row_group`` rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = X.shape[1]
    schema = pa.schema([("id", pa.int64()), ("label", pa.int64()), ("features", pa.list_(pa.float32(), d))])
    with pq.ParquetWriter(path, schema) as w:
        for s in range(0, len(y), row_group):
            e = min(s + row_group, len(y))
            feats = pa.FixedSizeListArray.from_arrays(pa.array(X[s:e].reshape(-1)), d)
            w.write_table(pa.Table.from_arrays([pa.array(np.arange(s, e, dtype=np.int64)), pa.array(y[s:e]),
                                                feats], schema=schema))


# A small process that runs the command and reports its wall time, CPU time (user + system, every thread) and
# peak RSS: a child's ru_maxrss starts from its parent's peak at exec, so the benchmark's own (large) process
# must not be the direct parent.
_RUNNER = ("import json, os, subprocess, sys, time\n"
           "t = time.perf_counter(); p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
           "_, st, ru = os.wait4(p.pid, 0)\n"
           "print(json.dumps({'wall': time.perf_counter() - t, 'cpu': ru.ru_utime + ru.ru_stime,\n"
           "                  'rss_mb': ru.ru_maxrss / 1024, 'rc': os.waitstatus_to_exitcode(st)}))\n")


def _timed(cmd: list[str], env: dict) -> dict:
    """{wall, cpu, rss_mb} of one run of ``cmd`` (stderr passed through on failure)."""
    p = subprocess.run([sys.executable, "-c", _RUNNER, *cmd], capture_output=True, text=True, env=env)
    res = json.loads(p.stdout.strip().splitlines()[-1])
    if res["rc"] != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{p.stderr[-2000:]}")
    return res


def run_pipeline(args) -> list[dict]:
    """``winnow influence`` on Parquet against the plain numpy pipeline (benchmarks/numpy_pipeline.py), whole
    processes, alternated, best of ``--repeat``; and the largest difference of each score column."""
    import pyarrow.parquet as pq

    from winnow.core.heads import LogisticHead

    threads = args.threads or 1
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "OPENBLAS_NUM_THREADS": str(threads)}
    exe = Path(sys.executable).with_name("winnow")
    winnow_cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "winnow"]
    rows = []
    for n in [int(float(s)) for s in args.sizes.split(",")]:
        for d in [int(s) for s in args.dims.split(",")]:
            root = Path(tempfile.mkdtemp(prefix="winnow-pipe-", dir="/tmp"))
            try:
                X, y = make_data(n, d, seed=0)
                Xv, yv = make_data(VAL_ROWS, d, seed=2)
                _write_parquet(root / "train.parquet", X, y)
                _write_parquet(root / "test.parquet", Xv, yv)
                head = LogisticHead(l2=1e-3, tol=1e-10).fit(X, y)  # the optimum on these rows: stationary
                head.save(root / "head.npz")
                del X, y
                size_gb = (root / "train.parquet").stat().st_size / 1e9
                train_path = root / "train.parquet"
                read_s = _best(lambda p=train_path: pq.read_table(p, columns=["features"]), args.repeat,
                               time.process_time)
                w_out, np_out = root / "winnow.parquet", root / "numpy.parquet"
                cmds = {"winnow": winnow_cmd + ["influence", str(root / "train.parquet"), "--head",
                                                str(root / "head.npz"), "--test", str(root / "test.parquet"),
                                                "--out", str(w_out), "--overwrite", "--quiet"],
                        "numpy": [sys.executable, str(Path(__file__).with_name("numpy_pipeline.py")),
                                  str(root / "train.parquet"), str(root / "head.npz"),
                                  str(root / "test.parquet"), str(np_out)]}
                best = {k: {"wall": float("inf"), "cpu": float("inf"), "rss_mb": 0.0} for k in cmds}
                for _ in range(args.repeat):
                    for k, cmd in cmds.items():
                        r = _timed(cmd, env)
                        best[k] = {"wall": min(best[k]["wall"], r["wall"]), "cpu": min(best[k]["cpu"], r["cpu"]),
                                   "rss_mb": max(best[k]["rss_mb"], r["rss_mb"])}
                a, b = pq.read_table(w_out), pq.read_table(np_out)
                err = {c: float(np.max(np.abs(a[c].to_numpy() - b[c].to_numpy())) / np.max(np.abs(b[c].to_numpy())))
                       for c in ("influence", "loss_change_if_removed", "self_influence")}
                row = {"n": n, "D": d, "threads": threads, "parquet_gb": size_gb, "read_features_cpu_s": read_s,
                       "winnow": best["winnow"], "numpy": best["numpy"],
                       "ratio_cpu": best["winnow"]["cpu"] / best["numpy"]["cpu"],
                       "ratio_wall": best["winnow"]["wall"] / best["numpy"]["wall"], "max_rel_diff": err,
                       "load_average": os.getloadavg()[0]}
                rows.append(row)
                w, m = best["winnow"], best["numpy"]
                print(f"n = {n:.0e}, D = {d} ({size_gb:.2f} GB Parquet, {threads} thread(s), load average "
                      f"{row['load_average']:.1f}): winnow influence {w['cpu']:.2f} s CPU / {w['wall']:.2f} s wall "
                      f"({w['rss_mb']:.0f} MiB), numpy pipeline {m['cpu']:.2f} s CPU / {m['wall']:.2f} s wall "
                      f"({m['rss_mb']:.0f} MiB): ratio {row['ratio_cpu']:.2f}× CPU, {row['ratio_wall']:.2f}× wall "
                      f"(goal ≤ 1.0×, at least ≤ 1.3×); one read of the features (pyarrow) {read_s:.2f} s CPU; "
                      "max rel. difference " + ", ".join(f"{c} {v:.1e}" for c, v in err.items()), flush=True)
            finally:
                shutil.rmtree(root, ignore_errors=True)
    return rows


# ------------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1e5,1e6", help="comma-separated n (default 1e5,1e6)")
    ap.add_argument("--dims", default="64,256", help="comma-separated D (default 64,256)")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs per measurement")
    ap.add_argument("--chunk-size", type=int, default=65536, help="winnow's rows per chunk")
    ap.add_argument("--threads", type=int, default=0,
                    help="threads for torch/MKL/OpenBLAS in every measurement, floors included (default: the "
                         "libraries' own, one per core); 1 gives steadier numbers on a shared machine")
    ap.add_argument("--quick", action="store_true", help="small smoke run: n = 2e4, D = 32, 2 repeats")
    ap.add_argument("--no-pydvl", action="store_true", help="skip pyDVL")
    ap.add_argument("--pydvl-timeout", type=float, default=600.0, help="seconds before pyDVL 'did not fit'")
    ap.add_argument("--pydvl-dtype", choices=["float64", "float32"], default="float64",
                    help="pyDVL's model and data dtype (winnow computes in float64)")
    ap.add_argument("--pydvl-mem-gb", type=float, default=12.0, help="RSS (GiB) before pyDVL 'did not fit'")
    ap.add_argument("--json", type=Path, help="also write the raw measurements here")
    ap.add_argument("--memory-1e7", action="store_true",
                    help="measure peak RSS of `winnow influence` over 1e7 Parquet rows (D = 64) instead")
    ap.add_argument("--memory-rows", default="1e7", help="rows for --memory-1e7 (default 1e7)")
    ap.add_argument("--memory-files", type=int, default=10, help="Parquet files for --memory-1e7 (default 10)")
    ap.add_argument("--precision", action="store_true",
                    help="compare precision float64 vs mixed instead (n = 1e6, D in {64, 256}, one thread unless "
                         "--threads, best of 2 unless --repeat)")
    ap.add_argument("--pipeline", action="store_true",
                    help="`winnow influence` on Parquet vs the plain numpy pipeline, whole processes "
                         "(n = 1e6, D = 256)")
    ap.add_argument("--pairs", action="store_true",
                    help="fit + pairwise T = 100: winnow vs the numpy closed form vs pyDVL (n = 1e6, D = 64, 1 thread)")
    ap.add_argument("--pydvl-python", help="the Python of an environment with pyDVL (it pins numpy<2: keep it apart)")
    ap.add_argument("--_worker", choices=["winnow", "pydvl", "precision", "pairs"], help=argparse.SUPPRESS)
    ap.add_argument("--_n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--_d", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._worker:
        fn = {"winnow": worker_winnow, "pydvl": worker_pydvl, "precision": worker_precision,
              "pairs": worker_pairs}[args._worker]
        extra = (args.pydvl_dtype,) if args._worker == "pydvl" else (args.chunk_size,)
        print(json.dumps(fn(args._n, args._d, args.repeat, *extra)))
        return
    if args.precision:
        if "--sizes" not in (argv if argv is not None else sys.argv):
            args.sizes = "1e6"
        if "--repeat" not in (argv if argv is not None else sys.argv):
            args.repeat = 2
        args.threads = args.threads or 1
    given = argv if argv is not None else sys.argv
    if args.pipeline or args.pairs:
        args.sizes = args.sizes if "--sizes" in given else "1e6"
        args.dims = args.dims if "--dims" in given else ("256" if args.pipeline else "64")
        args.threads = args.threads or 1
    if args.quick:
        args.sizes, args.dims, args.repeat = "2e4", "32", 2
    result = (run_memory(args) if args.memory_1e7 else run_precision(args) if args.precision
              else run_pipeline(args) if args.pipeline else run_pairs(args) if args.pairs else run_table(args))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
