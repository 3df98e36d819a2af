"""Benchmark: how far from the optimum a head may be before its influence scores change, and where the
routes users take to a head land (the measurement behind ``winnow.core.curvature.STATIONARITY_THRESHOLD``).

For each data set the converged head θ* (winnow's Newton fit to ‖∇R‖∞ ≤ 1e-12) gives the reference influence
I* = −G H⁻¹ḡ_test of every training point. Every other head θ — θ* moved along a random direction by a
fraction t of ‖θ*‖∞, and scikit-learn heads fitted by the usual routes (lbfgs at its default tol, newton-cg,
sag, a run cut at ``max_iter``, ``class_weight='balanced'``, ``solver='liblinear'``, fit-time
``sample_weight``, SGD) — is scored with the same formula at its own θ, and the table prints

* ``‖∇R‖∞`` and ``relative`` = ‖∇R‖∞ / s with s = (1/n) Σ_i ‖g_i‖∞ (the figure every influence
  computation checks);
* Spearman and Pearson of I(θ) against I*, and ``max rel`` = max |I(θ) − I*| / max |I*|;
* whether the head passes the default threshold.

The heads that scikit-learn cannot map (liblinear, class weights, SGD) are built from their weights with
``from_weights`` and λ = 1/(C·n) (or SGD's alpha), exactly as a user mapping them by hand would.

Usage::

    python benchmarks/stationarity.py            # about a minute on one core
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy import stats

from winnow.core.curvature import STATIONARITY_THRESHOLD
from winnow.core.heads import Head, LogisticHead, SoftmaxHead, as_tensor
from winnow.datasets import Split, load_breast_cancer_embeddings, load_digits_embeddings, synthetic_embeddings
from winnow.engine.passes import fit_curvature, stationarity


def influence(head: Head, train: tuple, test: tuple) -> np.ndarray:
    """−g_pᵀH⁻¹ḡ_test at the head's own θ (no stationarity check: that is what is measured)."""
    curv = fit_curvature(head, train, allow_nonstationary=True)
    Xt, yt = as_tensor(test[0]), torch.as_tensor(test[1])
    gbar = head.gradients(Xt, yt).mean(0)
    G = head.gradients(as_tensor(train[0]), torch.as_tensor(train[1]))
    return (-(G @ curv.solve(gbar))).numpy()


def routes(X: np.ndarray, y: np.ndarray, l2: float, binary: bool) -> list[tuple[str, Head]]:
    """scikit-learn heads fitted by the routes users take, mapped to winnow heads with the same λ."""
    from sklearn.linear_model import LogisticRegression, SGDClassifier

    n = len(y)
    C = 1.0 / (l2 * n)
    cls = LogisticHead if binary else SoftmaxHead
    out: list[tuple[str, Head]] = []

    def by_hand(m: object) -> Head:
        return cls.from_weights(m.coef_, m.intercept_, l2=l2)  # type: ignore[attr-defined]

    for name, kw in [("lbfgs, default tol", {}), ("newton-cg", {"solver": "newton-cg"}),
                     ("sag", {"solver": "sag", "max_iter": 1000}), ("lbfgs, tol=1e-2", {"tol": 1e-2}),
                     ("lbfgs, max_iter=20", {"max_iter": 20}), ("lbfgs, max_iter=5", {"max_iter": 5})]:
        m = LogisticRegression(C=C, **kw).fit(X, y)
        out.append((name, cls.from_sklearn(m, n)))
    out.append(("class_weight='balanced'", by_hand(LogisticRegression(C=C, class_weight="balanced").fit(X, y))))
    w = np.random.default_rng(0).uniform(0.5, 1.5, n)
    out.append(("sample_weight ~ U(0.5, 1.5)", cls.from_sklearn(LogisticRegression(C=C).fit(X, y, sample_weight=w), n)))
    if binary:
        out.append(("liblinear", by_hand(LogisticRegression(C=C, solver="liblinear").fit(X, y))))
        sgd = SGDClassifier(loss="log_loss", alpha=l2, max_iter=50, tol=None, random_state=0).fit(X, y)
        out.append(("SGD (log loss, 50 epochs)", by_hand(sgd)))
    return out


def perturbed(head: Head, ts: list[float], seed: int = 0) -> list[tuple[str, Head]]:
    """θ* + t‖θ*‖∞·v/‖v‖∞ for a random Gaussian v (one per t)."""
    rng = np.random.default_rng(seed)
    th = head.theta_.numpy()
    out = []
    for t in ts:
        v = rng.standard_normal(th.shape)
        new = th + t * np.abs(th).max() * v / np.abs(v).max()
        K = head.n_outputs
        M = new.reshape(K, -1)
        out.append((f"perturbed t={t:.0e}", type(head).from_weights(M[:, :-1], M[:, -1], l2=head.l2)))
    return out


def main() -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    sets = [load_breast_cancer_embeddings(), load_digits_embeddings(binary=True),
            load_digits_embeddings(binary=False)]
    (Xs, ys), = list(synthetic_embeddings(4000, 32, seed=0, chunk_size=4000))
    sets.append(Split(Xs[:3000], ys[:3000], Xs[3000:], ys[3000:], "synthetic ReLU embeddings, D = 32"))
    l2 = 1e-3
    print(f"threshold (relative) = {STATIONARITY_THRESHOLD:g}")
    header = f"{'data':<34} {'head':<28} {'‖∇R‖∞':>9} {'relative':>9} {'Spearman':>9} {'Pearson':>9} " \
             f"{'max rel':>9}  pass"
    print(header)
    print("-" * len(header))
    for s in sets:
        X, y, Xt, yt = (np.asarray(a, dtype=np.float64) if i % 2 == 0 else np.asarray(a)
                        for i, a in enumerate((s.X_train, s.y_train, s.X_test, s.y_test)))
        binary = len(np.unique(y)) == 2
        cls = LogisticHead if binary else SoftmaxHead
        star = cls(l2=l2, tol=1e-12).fit(X, y)
        ref = influence(star, (X, y), (Xt, yt))
        name = s.description.split(",")[0] + (" (binary)" if binary else f" (K={len(np.unique(y))})")
        cands = [("winnow fit (tol 1e-9)", cls(l2=l2).fit(X, y))]
        cands += perturbed(star, [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1])
        cands += routes(X, y, l2, binary)
        for label, h in cands:
            st = stationarity(h, (X, y))
            inf = influence(h, (X, y), (Xt, yt))
            sp = float(stats.spearmanr(inf, ref).statistic)
            pe = float(np.corrcoef(inf, ref)[0, 1])
            rel = float(np.abs(inf - ref).max() / np.abs(ref).max())
            print(f"{name[:34]:<34} {label:<28} {st.gradient_norm:9.2e} {st.relative:9.2e} {sp:9.6f} {pe:9.6f} "
                  f"{rel:9.2e}  {'yes' if st.ok else 'no'}")
        print()


if __name__ == "__main__":
    main()
