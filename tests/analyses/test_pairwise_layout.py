"""``pairwise`` returns one C-contiguous (T, n) array, stitched from its chunks in order, equal to the closed
form written out in numpy: I[t, p] = −g_tᵀH⁻¹g_p with g = (σ(θᵀx̃) − y)·x̃ and H = (1/n)Σ s(1−s)x̃x̃ᵀ + λ·diag(1…1, 0)."""

from __future__ import annotations

import numpy as np
import pytest

from winnow.analyses.influence import InfluenceAnalyzer
from winnow.core.heads import LogisticHead


@pytest.mark.parametrize("precision, tol", [("float64", 1e-10), ("mixed", 2e-5)])
def test_pairwise_is_c_contiguous_t_by_n_and_matches_numpy(precision, tol):
    rng = np.random.default_rng(3)
    n, d, T, lam = 700, 5, 7, 1e-2
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = (X @ rng.normal(size=d) + rng.normal(size=n) > 0).astype(np.int64)
    Xt, yt = X[:T] + 0.1, y[:T]
    head = LogisticHead(l2=lam).fit(X.astype(np.float64), y)
    an = InfluenceAnalyzer(head, precision=precision, chunk_size=128).fit((X, y))  # 6 chunks
    got = an.pairwise((Xt, yt))
    assert got.shape == (T, n) and got.flags.c_contiguous and got.dtype == np.float64

    w, b = head.weight_.reshape(-1), float(head.bias_[0])
    Xa, Xta = np.c_[X.astype(np.float64), np.ones(n)], np.c_[Xt.astype(np.float64), np.ones(T)]
    s = 1 / (1 + np.exp(-(Xa @ np.r_[w, b])))
    H = (Xa * (s * (1 - s))[:, None]).T @ Xa / n + lam * np.diag(np.r_[np.ones(d), 0.0])
    G = (s - y)[:, None] * Xa
    st = 1 / (1 + np.exp(-(Xta @ np.r_[w, b])))
    Gt = (st - yt)[:, None] * Xta
    expected = -Gt @ np.linalg.solve(H, G.T)
    assert np.max(np.abs(got - expected)) <= tol * np.max(np.abs(expected))
