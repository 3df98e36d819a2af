"""Full-model curvature on a small trained CNN that is not at a minimum: Gauss-Newton vs the exact Hessian,
CG with and without the Jacobi preconditioner, the damping chosen from the spectrum, and `check-head`'s cost.

Model: two 3×3 convolutions (1 → 16 → 20 channels, ReLU, 2×2 max-pool) and a linear head (320 → 10),
6 270 parameters, trained with SGD (momentum 0.9, no weight decay) on scikit-learn's 8×8 digits (1 437
training / 360 test images; ``--quick``: 400 training images, fewer epochs). Everything in float64 on one
thread. For each curvature: the damping chosen from the spectrum (30 Lanczos steps), then CG on the mean
test gradient (tol 1e-6, at most ``--max-iter`` iterations) with and without the preconditioner (time,
iterations, the true relative residual after the solve, converged); then the Theorem 1 check over all
parameters (Lanczos rank ``--rank`` with the closed-form head block), and the dense build's estimate
(timed on its first 16 columns, refused at once).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/full_model_curvature.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch

from winnow.core.models import ModelInfluence
from winnow.core.solvers import CGSolver
from winnow.demo.model import load_digit_images
from winnow.errors import ValidationError
from winnow.evaluation.theorem1 import theorem1_check


class CNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 20, 3, padding=1)
        self.fc = torch.nn.Linear(20 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x.reshape(-1, 1, 8, 8)))
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


def train_cnn(X: torch.Tensor, y: torch.Tensor, epochs: int, seed: int = 0) -> CNN:
    torch.manual_seed(seed)
    net = CNN().double()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for s in range(0, len(y), 64):
            idx = perm[s:s + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(X[idx]), y[idx]).backward()
            opt.step()
    return net.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--max-iter", type=int, default=None)
    ap.add_argument("--rank", type=int, default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    n_train, epochs = (400, 15) if a.quick else (None, 30)
    max_iter = a.max_iter or (100 if a.quick else 300)
    rank = a.rank or (20 if a.quick else 60)
    Xtr, ytr, Xte, yte = (torch.as_tensor(v) for v in load_digit_images(binary=False))
    if n_train:
        Xtr, ytr = Xtr[:n_train], ytr[:n_train]
    Xtr, Xte = Xtr.double(), Xte.double()
    t0 = time.perf_counter()
    net = train_cnn(Xtr, ytr, epochs)
    train_s = time.perf_counter() - t0
    with torch.no_grad():
        acc = float((net(Xte).argmax(1) == yte).double().mean())
    P = sum(p.numel() for p in net.parameters())
    out: dict = {"n_train": len(ytr), "n_params": P, "train_seconds": train_s, "test_accuracy": acc, "cg": [],
                 "max_iter": max_iter}
    print(f"CNN: P = {P}, n = {len(ytr)}, trained in {train_s:.1f} s, test accuracy {acc:.3f}")
    b = None
    for curvature in ("hessian", "ggn"):
        t = time.perf_counter()
        mi = ModelInfluence(net, curvature=curvature, damping="auto", solver="cg").fit((Xtr, ytr))
        choose_s = time.perf_counter() - t
        info = mi.damping_info()
        print(f"{curvature}: {mi.damping_choice_.describe()} [{choose_s:.1f} s]")
        if b is None:
            b = mi.gradients((Xte, yte))[0].mean(0)
        for pre in ("diagonal", None):
            s = CGSolver(tol=1e-6, max_iter=max_iter, preconditioner=pre)
            t = time.perf_counter()
            s.fit(mi.hessian_)
            s.solve(b)
            secs = time.perf_counter() - t
            row = {"curvature": curvature, "damping": info["damping"], "lambda_max": info["lambda_max"],
                   "lambda_min": info["lambda_min"], "preconditioned": pre is not None, "seconds": secs,
                   "iterations": s.info_.iterations, "residual": s.info_.residual, "converged": s.info_.converged,
                   "negative_curvature": s.info_.extra["negative_curvature_columns"]}
            out["cg"].append(row)
            print(f"  CG {'with' if pre else 'without'} preconditioner: {secs:.1f} s, {row['iterations']} "
                  f"iterations, relative residual {row['residual']:.2e}, converged {row['converged']}, "
                  f"negative curvature {row['negative_curvature']}")
    for curvature in ("hessian", "ggn"):
        t = time.perf_counter()
        res = theorem1_check(net, "fc", (Xtr, ytr), (Xte, yte), n_train=100, n_test=10, max_dense=1000, rank=rank,
                             curvature=curvature)
        secs = time.perf_counter() - t
        out[f"check_head_{curvature}"] = {"seconds": secs, "method": res.method, "spearman": res.spearman,
                                          "damping_added": res.damping_added, "n_negative": res.n_negative}
        print(f"check-head ({curvature}, {res.method}): {secs:.1f} s, Spearman {res.spearman:.3f}, damping "
              f"{res.damping_added:.3g}, negative Ritz values {res.n_negative}")
    try:
        ModelInfluence(net, damping=1e-3, solver="dense", max_dense_seconds=0.0).fit((Xtr, ytr))
    except ValidationError as e:
        out["dense_refusal"] = str(e)
        print(f"dense build: {e}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
