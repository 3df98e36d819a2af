"""Full-model influence on a ~50k-parameter MLP: winnow's solvers next to pyDVL and Kronfluence.

Model: a tanh MLP 64 → 256 → 128 → 10 (50 826 parameters) trained (float64) on scikit-learn's digits
(1 257 training images); T = 20 test points × all n training points. Every method targets the same
matrix, the damped Hessian of the mean training loss, H = (1/n) Σ ∇²ℓ_i + d·I (pyDVL's
``regularization`` = d; winnow's ``l2=0, damping=d``). The reference is winnow's CG at relative residual
1e-12 (block CG; a dense Hessian of 50k parameters would take 20 GB; on this size an exact solve to 1e-12 is as good
as dense). Kronfluence's EK-FAC approximates the Gauss–Newton/Fisher matrix, not H, and uses its own
damping: its accuracy is reported as is.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/full_model.py [--threads 1] [--json out.json]

Columns: seconds (fit + the T × n scores), max relative error against the reference, Spearman over all
pairs, and what the solver reported. pyDVL reports +g_tᵀH⁻¹g_p (our −influence): signs are aligned
before comparing. Packages: ``pip install pydvl kronfluence`` (a missing one is reported and skipped).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import traceback
import warnings

import numpy as np
import torch
from scipy import stats

from winnow.core.models import ModelInfluence, refine_model
from winnow.core.solvers import CGSolver, LanczosSolver, LiSSASolver
from winnow.demo.model import load_digit_images


def build_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Tanh(), torch.nn.Linear(256, 128), torch.nn.Tanh(),
                               torch.nn.Linear(128, 10)).double()


def train(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor, l2: float) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(X), y)
        loss = loss + 0.5 * l2 * sum((p * p).sum() for p in model.parameters() if p.ndim >= 2)
        loss.backward()
        opt.step()
    model.eval()
    return refine_model(model, (X, y), l2=l2, max_iter=200, batch_size=4096)


def compare(I: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    a, b = I.ravel(), ref.ravel()
    if np.corrcoef(a, b)[0, 1] < 0:  # sign convention of the other library
        a = -a
    return float(np.abs(a - b).max() / np.abs(b).max()), float(stats.spearmanr(a, b).statistic)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--damping", type=float, default=0.05)
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-lissa", action="store_true", help="skip LiSSA (slow: minutes)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    Xtr, ytr, Xte, yte = load_digit_images(binary=False)
    X = torch.as_tensor(Xtr.reshape(len(ytr), -1))
    y = torch.as_tensor(ytr)
    Xt = torch.as_tensor(Xte.reshape(len(yte), -1))[:20]
    yt = torch.as_tensor(yte)[:20]
    model = build_model()
    t = time.perf_counter()
    gn = train(model, X, y, l2=1e-3)
    P = sum(p.numel() for p in model.parameters())
    print(f"model: {P} parameters, trained in {time.perf_counter() - t:.1f}s, ‖∇R‖∞ = {gn:.2g}; n = {len(y)}, "
          f"T = {len(yt)}, damping d = {args.damping}, torch threads {args.threads}", flush=True)
    d = args.damping
    rows = []

    def run_winnow(name: str, solver, hvp_mode: str = "rev") -> np.ndarray:
        t0 = time.perf_counter()
        mi = ModelInfluence(model, l2=0.0, damping=d, solver=solver, batch_size=2048, hvp_mode=hvp_mode).fit((X, y))
        I = mi.pairwise((Xt, yt))
        secs = time.perf_counter() - t0
        info = mi.solve_info_
        rows.append({"method": f"winnow {name}", "seconds": secs, "info": f"iterations {info.iterations}, "
                     f"residual {info.residual:.2g}" + (f", rank {info.rank}" if info.rank else "")})
        return I

    ref = run_winnow("block CG tol 1e-12 (reference)", CGSolver(tol=1e-12, max_iter=3000))
    rows[-1]["max_rel_err"], rows[-1]["spearman"] = 0.0, 1.0
    print(rows[-1], flush=True)
    I = run_winnow("block CG tol 1e-6, forward-over-reverse HVPs", CGSolver(tol=1e-6), hvp_mode="fwd")
    rows[-1]["max_rel_err"], rows[-1]["spearman"] = compare(I, ref)
    print(rows[-1], flush=True)
    for name, solver in [("block CG tol 1e-6", CGSolver(tol=1e-6)), ("block CG tol 1e-4", CGSolver(tol=1e-4)),
                         ("column-wise CG tol 1e-6", CGSolver(tol=1e-6, block=False)),
                         ("Lanczos rank 100", LanczosSolver(rank=100, n_iter=200)),
                         ("Lanczos rank 300", LanczosSolver(rank=300, n_iter=500)),
                         ] + ([] if args.no_lissa else [("LiSSA tol 1e-4", LiSSASolver(tol=1e-4, max_iter=1000))]):
        I = run_winnow(name, solver)
        rows[-1]["max_rel_err"], rows[-1]["spearman"] = compare(I, ref)
        print(rows[-1], flush=True)

    # ------------------------------------------------------------------ pyDVL
    try:
        from pydvl.influence.torch import ArnoldiInfluence, CgInfluence
        from torch.utils.data import DataLoader, TensorDataset

        loader = DataLoader(TensorDataset(X, y), batch_size=len(y))
        loss = torch.nn.functional.cross_entropy
        for name, make in [("pyDVL CgInfluence rtol 1e-6",
                            lambda: CgInfluence(model, loss, regularization=d, rtol=1e-6, atol=1e-12, maxiter=1000,
                                                solve_simultaneously=True)),
                           ("pyDVL ArnoldiInfluence rank 100",
                            lambda: ArnoldiInfluence(model, loss, regularization=d, rank=100, krylov_dimension=200)),
                           ("pyDVL ArnoldiInfluence rank 300",
                            lambda: ArnoldiInfluence(model, loss, regularization=d, rank=300, krylov_dimension=500))]:
            t0 = time.perf_counter()
            inf = make().fit(loader)
            I = inf.influences(Xt, yt, X, y).detach().numpy()
            secs = time.perf_counter() - t0
            err, rho = compare(I, ref)
            rows.append({"method": name, "seconds": secs, "max_rel_err": err, "spearman": rho, "info": ""})
            print(rows[-1], flush=True)
    except Exception as e:  # report, do not hide
        rows.append({"method": "pyDVL", "error": f"{type(e).__name__}: {e}"})
        print(rows[-1], traceback.format_exc(), flush=True)

    # ------------------------------------------------------------- Kronfluence
    for damping in (None, d):
        try:
            rows.append(run_kronfluence(model, X, y, Xt, yt, ref, damping))
            print(rows[-1], flush=True)
        except Exception as e:
            rows.append({"method": "Kronfluence EK-FAC", "error": f"{type(e).__name__}: {e}"})
            print(rows[-1], traceback.format_exc(), flush=True)

    print("\n| method | seconds | max rel. error vs reference | Spearman | solver report |")
    print("|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['method']} | – | – | – | failed: {r['error']} |")
        else:
            print(f"| {r['method']} | {r['seconds']:.1f} | {r['max_rel_err']:.2e} | {r['spearman']:.5f} | "
                  f"{r['info']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"n_params": P, "damping": d, "threads": args.threads, "rows": rows}, f, indent=1)


def run_kronfluence(model, X, y, Xt, yt, ref, damping: float | None) -> dict:
    import copy

    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task
    from torch.utils.data import TensorDataset

    class ClsTask(Task):
        def compute_train_loss(self, batch, model, sample=False):
            x, t = batch
            logits = model(x)
            if sample:
                with torch.no_grad():
                    t = torch.multinomial(torch.softmax(logits.detach(), -1), 1).flatten()
            return torch.nn.functional.cross_entropy(logits, t, reduction="sum")

        def compute_measurement(self, batch, model):
            x, t = batch
            return torch.nn.functional.cross_entropy(model(x), t, reduction="sum")

    task = ClsTask()
    m = prepare_model(copy.deepcopy(model).float().eval(), task)
    train_ds = TensorDataset(X.float(), y)
    test_ds = TensorDataset(Xt.float(), yt)
    with tempfile.TemporaryDirectory() as tmp:
        an = Analyzer(analysis_name="bench", model=m, task=task, output_dir=tmp, disable_tqdm=True, cpu=True,
                      disable_model_save=True)
        t0 = time.perf_counter()
        an.fit_all_factors(factors_name="ekfac", dataset=train_ds, per_device_batch_size=256,
                           factor_args=FactorArguments(strategy="ekfac"), overwrite_output_dir=True)
        an.compute_pairwise_scores(scores_name="s", factors_name="ekfac", query_dataset=test_ds,
                                   train_dataset=train_ds, per_device_query_batch_size=len(yt),
                                   per_device_train_batch_size=256,
                                   score_args=ScoreArguments(damping_factor=damping),
                                   overwrite_output_dir=True)
        S = an.load_pairwise_scores("s")["all_modules"].double().numpy()
        secs = time.perf_counter() - t0
    err, rho = compare(S, ref)
    dname = "its default damping heuristic" if damping is None else f"damping {damping:g}"
    return {"method": f"Kronfluence EK-FAC ({dname}, float32)", "seconds": secs, "max_rel_err": err,
            "spearman": rho, "info": "approximates the Fisher (GGN), not H"}


if __name__ == "__main__":
    main()
