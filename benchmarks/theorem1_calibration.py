"""Theorem 1's verdict against retraining: on the demo's digits model, does "head-only influence can / cannot be
trusted" match how well head-only and full-model influence predict retraining the whole network?

The model is the one `winnow demo` trains (scikit-learn's 8×8 digits, digit ≥ 5 vs < 5; a tanh MLP 64 → 16 → 12
and a linear head, trained jointly in float64 and polished by L-BFGS to a stationary point of its objective,
λ = 1e-3 on the weights). Its own training routine is the ground truth: the whole network retrained from scratch
on M random halves of the training set, a few seeds each (:func:`winnow.evaluation.retrain.lds_by_retraining`).
Methods on the full-data network (seed 0), scored by LDS on the same retrains:

- head-only influence: the closed form on the head's features (``InfluenceAnalyzer.pairwise``);
- full-model influence, exact Hessian (``ModelInfluence``, dense, the demo's damping);
- full-model influence, Kronecker-factored Gauss-Newton (``ModelInfluence(curvature="kfac")``);

beside ``theorem1_check``'s verdict on the same network (dense: exact on 200 × 20 sampled pairs). The MNIST
networks' verdicts and LDS are in benchmarks/full_model_lds.py.

    python benchmarks/theorem1_calibration.py --quick     # M = 20 halves x 2 seeds
    python benchmarks/theorem1_calibration.py             # M = 50 halves x 3 seeds
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from winnow.analyses.influence import InfluenceAnalyzer
from winnow.core.models import ModelInfluence, extract_features, head_from_module
from winnow.demo.model import DEMO_DAMPING, DEMO_MODEL_L2, load_digit_images, train_digits_model
from winnow.evaluation.retrain import lds_by_retraining
from winnow.evaluation.theorem1 import theorem1_check


def train_fn(X: np.ndarray, y: np.ndarray):
    """The demo's training routine as a ``train_fn(rows, weights, seed)``."""
    def fit(rows: np.ndarray, weights: np.ndarray | None, seed: int) -> torch.nn.Module:
        torch.set_num_threads(1)
        return train_digits_model(X[rows], y[rows], seed=seed)[0]
    fit.__qualname__ = "train_digits_model"
    return fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="M = 20 halves x 2 seeds")
    ap.add_argument("--cache", type=Path, default=Path("benchmarks/.retrains"), help="folder of cached retrains")
    args = ap.parse_args()
    torch.set_num_threads(1)
    M, S = (20, 2) if args.quick else (50, 3)
    Xtr, ytr, Xte, yte = load_digit_images(binary=True, seed=0)
    Xtr, Xte = Xtr.reshape(len(Xtr), -1), Xte.reshape(len(Xte), -1)  # the model reshapes rows itself
    fit = train_fn(Xtr, ytr)
    t = time.perf_counter()
    truth = lds_by_retraining(fit, (Xtr, ytr), (Xte, yte), subsets=M, fraction=0.5, seeds=S, seed=0,
                              retrain_dir=args.cache / f"demo-lds-{M}x{S}", resume=True, progress=True)
    print(f"demo model: ground truth {M} halves x {S} seeds ({time.perf_counter() - t:.0f} s)", flush=True)

    model = fit(np.arange(len(ytr)), None, 0)
    rows = []
    t = time.perf_counter()
    ftr = extract_features(model, "head", (Xtr, ytr))
    fte = extract_features(model, "head", (Xte, yte))
    head = head_from_module(model.head, l2=DEMO_MODEL_L2)
    I = InfluenceAnalyzer(head, damping=DEMO_DAMPING).fit(ftr.as_tuple()[:2]).pairwise(fte.as_tuple()[:2])
    rows.append(("head-only, closed form", truth.against(I).score, time.perf_counter() - t))
    t = time.perf_counter()
    mi = ModelInfluence(model, l2=DEMO_MODEL_L2, regularize="weights", damping=DEMO_DAMPING,
                        solver="dense").fit((Xtr, ytr))
    rows.append((f"full model, exact Hessian ({mi.n_params} parameters, dense)",
                 truth.against(mi.pairwise((Xte, yte))).score, time.perf_counter() - t))
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mk = ModelInfluence(model, curvature="kfac", l2=DEMO_MODEL_L2, regularize="weights").fit((Xtr, ytr))
        rows.append(("full model, K-FAC", truth.against(mk.pairwise((Xte, yte))).score, time.perf_counter() - t))
    t = time.perf_counter()
    t1 = theorem1_check(model, "head", (Xtr, ytr), (Xte, yte), l2=DEMO_MODEL_L2, damping=DEMO_DAMPING,
                        n_train=200, n_test=20, seed=0, batch_size=2048)
    print(f"\nTheorem 1 ({t1.method}, {t1.n_params} parameters, {time.perf_counter() - t:.1f} s): Spearman "
          f"{t1.spearman:.3f}, signs agree {t1.sign_agreement:.3f}; {t1.verdict}\n")
    print("| method | LDS | seconds |")
    print("|---|---:|---:|")
    for name, lds, sec in rows:
        print(f"| {name} | {lds:.3f} | {sec:.1f} |")


if __name__ == "__main__":
    main()
