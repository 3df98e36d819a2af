"""GPU check (< 2 min): the key computations on device="cuda" against the same on CPU, as a table.

Run from the repository root on a machine with a CUDA GPU:

    PYTHONPATH=src python3 benchmarks/gpu_check.py [--json out.json]

Rows: closed-form head influence (logistic, softmax), the autodiff (torch.func) MLP head, full-model
influence of a ~4.5k-parameter MLP with each solver (dense, CG, LiSSA, Lanczos), the Theorem 1 check on
the demo model, feature extraction, and CG / Lanczos timings on a ~50k-parameter MLP. Each row gives the
CPU and CUDA wall times and the largest relative difference between the two results (float64 on both).
Exits 1 if a difference exceeds its tolerance.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

import numpy as np
import torch

from winnow.analyses.influence import InfluenceAnalyzer
from winnow.core.autodiff import AutodiffHead
from winnow.core.heads import LogisticHead, SoftmaxHead
from winnow.core.models import ModelInfluence, extract_features, refine_model
from winnow.core.solvers import CGSolver, LanczosSolver, LiSSASolver
from winnow.engine.passes import fit_curvature
from winnow.evaluation.theorem1 import theorem1_check

ROWS: list[dict] = []


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(f):
    sync()
    t = time.perf_counter()
    out = f()
    sync()
    return out, time.perf_counter() - t


def rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def row(name: str, f_cpu, f_gpu, tol: float, note: str = "") -> None:
    (a, t_cpu) = timed(f_cpu) if f_cpu is not None else (None, float("nan"))
    (b, t_gpu) = timed(f_gpu)
    d = rel(b, a) if a is not None else float("nan")
    ok = bool(d <= tol) if a is not None else True
    ROWS.append({"check": name, "cpu_s": t_cpu, "cuda_s": t_gpu, "max_rel_diff": d, "tol": tol, "ok": ok,
                 "note": note})
    print(f"{name:<48} cpu {t_cpu:8.3f}s  cuda {t_gpu:8.3f}s  rel.diff {d:9.2e}  {'ok' if ok else 'FAIL'} {note}",
          flush=True)


def mlp(d: int, widths: tuple[int, ...], k: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    prev = d
    for w in widths:
        layers += [torch.nn.Linear(prev, w), torch.nn.Tanh()]
        prev = w
    layers.append(torch.nn.Linear(prev, k))
    return torch.nn.Sequential(*layers).double().eval()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    ap.add_argument("--device", default="cuda", help="device to compare with CPU (cpu: a dry run)")
    ap.add_argument("--skip-big", action="store_true", help="skip the 50k-parameter timings")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 0
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else args.device
    print(f"torch {torch.__version__}, {name}", flush=True)
    warnings.simplefilter("ignore")
    rng = np.random.default_rng(0)
    cuda = torch.device(args.device)

    # 1. closed-form heads
    n, D = 20000, 64
    X = np.maximum(rng.standard_normal((n, D)), 0)
    w = rng.standard_normal(D)
    yb = (rng.random(n) < 1 / (1 + np.exp(-(X @ w) / 4))).astype(np.int64)
    yk = np.digitize(X @ w, np.quantile(X @ w, [0.25, 0.5, 0.75]))
    Xte = X[:200]
    for name, cls, y in (("logistic head influence (n=20k, P=65)", LogisticHead, yb),
                         ("softmax head influence (n=20k, K=4, P=260)", SoftmaxHead, yk)):
        def run(dev, cls=cls, y=y):
            h = cls(l2=1e-3, device=dev).fit(X, y)
            return InfluenceAnalyzer(h).fit((X, y)).score((Xte, y[:200]))["influence"].to_numpy()
        run(cuda)  # warm-up
        row(name, lambda run=run: run("cpu"), lambda run=run: run(cuda), 1e-8)

    # 2. autodiff head
    Xs, ys = X[:3000, :16], yk[:3000]
    head_mlp = mlp(16, (12,), 4, 1)
    refine_model(head_mlp, (torch.as_tensor(Xs), torch.as_tensor(ys)), l2=1e-2, max_iter=300)

    def ad(dev):
        m = mlp(16, (12,), 4, 1)
        m.load_state_dict(head_mlp.state_dict())
        h = AutodiffHead(m.to(dev), l2=1e-2, tol=1e-9).fit(Xs, ys)
        an = InfluenceAnalyzer(h).fit((Xs, ys), curvature=fit_curvature(h, (Xs, ys)))
        return an.pairwise((Xs[:20], ys[:20]))
    row("autodiff MLP head: fit + influence (P=256)", lambda: ad("cpu"), lambda: ad(cuda), 1e-6)

    # 3. full-model solvers on a ~4.5k-parameter MLP
    g = torch.Generator().manual_seed(0)
    Xm = torch.randn(400, 20, generator=g, dtype=torch.float64)
    ym = (Xm[:, 0] + Xm[:, 1] ** 2 - 1 > 0).long()
    base = mlp(20, (64, 48), 1, 0)
    refine_model(base, (Xm, ym), l2=1e-2, regularize="all", max_iter=200)
    kw = dict(l2=1e-2, regularize="all", damping=0.1, batch_size=400)
    for sname, make in (("dense", lambda: "dense"), ("cg", lambda: CGSolver(tol=1e-10)),
                        ("lissa", lambda: LiSSASolver(tol=1e-8, max_iter=2000)),
                        ("lanczos", lambda: LanczosSolver(rank=120, n_iter=300))):
        def full(dev, make=make):
            m = mlp(20, (64, 48), 1, 0)
            m.load_state_dict(base.state_dict())
            m = m.to(dev)
            mi = ModelInfluence(m, solver=make(), **kw).fit((Xm.to(dev), ym.to(dev)))
            return mi.pairwise((Xm[:10].to(dev), ym[:10].to(dev)))
        row(f"full-model influence, {sname} (P=4513, n=400)", lambda full=full: full("cpu"),
            lambda full=full: full(cuda), 1e-7 if sname != "lissa" else 1e-5)

    # 4. Theorem 1 on the demo digits model
    from winnow.demo.model import DEMO_DAMPING, DEMO_MODEL_L2, load_digit_images, train_digits_model

    Xtr, ytr, Xte2, yte2 = load_digit_images()
    model, _ = train_digits_model(Xtr, ytr)

    def th1(dev):
        m = model.to(dev)
        r = theorem1_check(m, "head", (torch.as_tensor(Xtr), torch.as_tensor(ytr)),
                           (torch.as_tensor(Xte2), torch.as_tensor(yte2)), l2=DEMO_MODEL_L2, damping=DEMO_DAMPING,
                           batch_size=2048)
        return np.concatenate([r.influence_full.ravel(), r.influence_head.ravel()])
    row("Theorem 1 check, demo model (P=1257, n=1258)", lambda: th1("cpu"), lambda: th1(cuda), 1e-7)

    def feats(dev):
        m = model.to(dev)
        return extract_features(m, "head", (torch.as_tensor(Xtr), torch.as_tensor(ytr)), dtype=np.float64).X
    row("extract_features (forward hook)", lambda: feats("cpu"), lambda: feats(cuda), 1e-12)

    # 5. timings on a ~50k-parameter MLP (the benchmark model), CUDA vs CPU, CG and Lanczos
    if args.skip_big:
        return finish(args, name)
    Xb = torch.randn(2000, 64, generator=g, dtype=torch.float64)
    yb2 = torch.bucketize(Xb[:, :3].sum(1), torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64))
    big = mlp(64, (256, 128), 4, 3)
    refine_model(big, (Xb, yb2), l2=1e-3, regularize="all", max_iter=100)
    for sname, make, tol in (("cg", lambda: CGSolver(tol=1e-8, max_iter=500), 1e-5),
                             ("lanczos", lambda: LanczosSolver(rank=50, n_iter=100), 1e-5)):
        def bigrun(dev, make=make):
            m = mlp(64, (256, 128), 4, 3)
            m.load_state_dict(big.state_dict())
            m = m.to(dev)
            mi = ModelInfluence(m, solver=make(), l2=1e-3, regularize="all", damping=1e-2, batch_size=2000)
            mi.fit((Xb.to(dev), yb2.to(dev)))
            return mi.score((Xb[:50].to(dev), yb2[:50].to(dev)), self_influence=False)["influence"].to_numpy()
        row(f"full-model influence, {sname} (P=50k, n=2000)", lambda bigrun=bigrun: bigrun("cpu"),
            lambda bigrun=bigrun: bigrun(cuda), tol)

    return finish(args, name)


def finish(args: argparse.Namespace, name: str) -> int:
    ok = all(r["ok"] for r in ROWS)
    print("ALL OK" if ok else "SOME CHECKS FAILED", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "device": name, "rows": ROWS}, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
