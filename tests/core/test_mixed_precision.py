"""Mixed precision (float32 GEMMs, float64 sums/H/solves) against an independent float64 numpy computation.

The reference is written here from the formulas (paper eqs. 19, 27, 28): with ũ = [u, 1], r = σ(θᵀũ) − y
(logistic) or p − e_y (softmax), g = r ⊗ ũ, H = (1/n) Σ ∇²ℓ_i + λ·diag(weight mask) (+ vvᵀ along the softmax
null direction v, orthogonal to every gradient), ḡ the mean test gradient:
influence = −g_pᵀH⁻¹ḡ, loss_change_if_removed = −influence/n, self_influence = g_pᵀH⁻¹g_p,
pairs = −g_pᵀH⁻¹g_t. Errors are max |mixed − exact| / max |exact| per column (entries near 0 have no
meaningful relative error).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from clirun import run

from winnow.analyses.influence import InfluenceAnalyzer
from winnow.core.heads import LogisticHead, SoftmaxHead
from winnow.errors import ValidationError

N, T, D = 3000, 7, 12
#: λ per feature set: the ill-conditioned sets get a small λ so that H really is ill-conditioned (with λ = 1e-3
#: the penalty dominates the collinear directions); cond(H) for seed 0: relu ~1e2, scales ~1e10, collinear ~5e4
L2 = {"relu": 1e-3, "scales": 1e-5, "collinear": 1e-5}
COLUMNS = ("influence", "loss_change_if_removed", "self_influence", "pairs")


def _features(kind: str, rng: np.random.Generator) -> np.ndarray:
    """float32 features: relu embeddings, columns scaled 1e-3..1e3, or nearly collinear columns."""
    if kind == "relu":
        X = np.maximum(rng.normal(size=(N + T, D)) @ rng.normal(size=(D, D)) / np.sqrt(D), 0.0)
    elif kind == "scales":
        X = rng.normal(size=(N + T, D)) * np.logspace(-3, 3, D)
    else:  # collinear: every column is one base column plus 1e-3 of its own noise
        X = rng.normal(size=(N + T, 1)) + 1e-3 * rng.normal(size=(N + T, D))
    return X.astype(np.float32)


def _data(kind: str, K: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = _features(kind, rng)
    Xs = X / X.std(0)
    z = Xs @ rng.normal(size=(D, K)) + rng.gumbel(size=(N + T, K))
    y = (z[:, 0] > z[:, 1]).astype(np.int64) if K == 2 else z.argmax(1)
    return X[:N], y[:N], X[N:], y[N:]


def _reference(theta: np.ndarray, K_out: int, X, y, Xt, yt, l2: float) -> dict[str, np.ndarray]:
    """The scores in float64 numpy from the float32 features' exact values."""
    def grads(A, lab):
        Ua = np.hstack([A.astype(np.float64), np.ones((len(A), 1))])
        Th = theta.reshape(K_out, -1)
        Z = Ua @ Th.T
        if K_out == 1:
            s = 1.0 / (1.0 + np.exp(-Z[:, 0]))
            R = (s - lab)[:, None]
            F = (s * (1 - s))[:, None, None]
        else:
            Pr = np.exp(Z - Z.max(1, keepdims=True))
            Pr /= Pr.sum(1, keepdims=True)
            R = Pr - np.eye(K_out)[lab]
            F = np.einsum("ik,kl->ikl", Pr, np.eye(K_out)) - Pr[:, :, None] * Pr[:, None, :]
        G = (R[:, :, None] * Ua[:, None, :]).reshape(len(A), -1)
        return G, Ua, F

    G, Ua, F = grads(X, y)
    n, D1 = len(X), Ua.shape[1]
    H_sum = np.einsum("ikl,ia,ib->kalb", F, Ua, Ua).reshape(K_out * D1, K_out * D1)
    H = H_sum / n
    mask = np.ones((K_out, D1))
    mask[:, -1] = 0.0
    H += l2 * np.diag(mask.ravel())
    if K_out > 1:
        v = (1.0 - mask).ravel() / np.sqrt(K_out)
        H += np.outer(v, v)
    Gt, _, _ = grads(Xt, yt)
    infl = -G @ np.linalg.solve(H, Gt.mean(0))
    return {"hessian_sum": H_sum, "influence": infl, "loss_change_if_removed": -infl / n,
            "self_influence": np.einsum("ip,ip->i", G, np.linalg.solve(H, G.T).T),
            "pairs": -G @ np.linalg.solve(H, Gt.T)}


def _scores(head, X, y, Xt, yt, precision: str) -> dict[str, np.ndarray]:
    an = InfluenceAnalyzer(head, precision=precision).fit((X, y))
    parts = list(an.iter_scores((Xt, yt), pairs=True))
    return {c: np.concatenate([p[c] for p in parts]) for c in COLUMNS}


def _errors(got: dict, ref: dict) -> dict[str, float]:
    return {c: float(np.abs(got[c] - ref[c]).max() / np.abs(ref[c]).max()) for c in COLUMNS}


def _head(K: int, X, y, l2: float = L2["relu"]):
    head = LogisticHead(l2) if K == 2 else SoftmaxHead(l2)
    return head.fit(X.astype(np.float64), y)


# (mixed, float64) bounds on max |error| / max |exact| of every column. Measured (seed 0, K = 2 and 3, largest
# over the four columns): mixed relu 3.9e-7, scales 2.7e-6 (self-influence, softmax), collinear 1.5e-5
# (influence, softmax: the float32 GEMMs sum nearly cancelling terms, since the columns differ by 1e-3 of
# themselves); float64 relu 1.5e-14, scales 7.9e-11 (cond(H) ~1e10: the reference's own solve is no better),
# collinear 3.5e-12
BOUNDS = {"relu": (1e-6, 1e-10), "scales": (1e-5, 1e-9), "collinear": (1e-4, 1e-10)}


@pytest.mark.parametrize("kind", ["relu", "scales", "collinear"])
@pytest.mark.parametrize("K", [2, 3])
def test_mixed_and_float64_match_an_independent_float64_computation(kind, K):
    X, y, Xt, yt = _data(kind, K)
    head = _head(K, X, y, L2[kind])
    ref = _reference(head.theta_.numpy(), head.n_outputs, X, y, Xt, yt, L2[kind])
    exact = _errors(_scores(head, X, y, Xt, yt, "float64"), ref)
    mixed = _errors(_scores(head, X, y, Xt, yt, "mixed"), ref)
    auto = _scores(head, X, y, Xt, yt, "auto")  # float32 features: auto is the mixed path
    assert max(exact.values()) < BOUNDS[kind][1], exact
    assert max(mixed.values()) < BOUNDS[kind][0], mixed
    assert max(mixed.values()) > 1e-12  # it really ran in float32
    assert _errors(auto, ref) == mixed


def test_auto_keeps_float64_features_on_the_float64_path():
    X, y, Xt, yt = _data("relu", 2)
    X64, Xt64 = X.astype(np.float64), Xt.astype(np.float64)
    head = _head(2, X, y)
    ref = _reference(head.theta_.numpy(), 1, X, y, Xt, yt, L2["relu"])
    auto = _errors(_scores(head, X64, y, Xt64, yt, "auto"), ref)
    assert max(auto.values()) < 1e-12, auto
    mixed = _errors(_scores(head, X64, y, Xt64, yt, "mixed"), ref)  # "mixed" rounds float64 features too
    assert 1e-12 < max(mixed.values()) < 1e-6, mixed


@pytest.mark.parametrize("K", [2, 3])
def test_mixed_hessian_sum_is_float64_and_close(K):
    from winnow.core.curvature import hessian_chunk

    X, y, _, _ = _data("relu", K)
    head = _head(K, X, y)
    ref = _reference(head.theta_.numpy(), head.n_outputs, X, y, X[:2], y[:2], L2["relu"])["hessian_sum"]
    for precision, bound in (("float64", 1e-13), ("mixed", 1e-6)):
        head.precision = precision
        S = hessian_chunk(head, X)
        assert S.dtype == torch.float64
        err = float(np.abs(S.numpy() - ref).max() / np.abs(ref).max())
        assert err < bound and (precision == "float64" or err > 1e-12), (precision, err)


def test_precision_setting_is_checked():
    with pytest.raises(ValidationError, match="precision must be one of 'auto', 'float64', 'mixed', got 'half'"):
        LogisticHead(precision="half")
    X, y, _, _ = _data("relu", 2)
    head = _head(2, X, y)
    with pytest.raises(ValidationError, match="precision must be one of"):
        InfluenceAnalyzer(head, precision="single")
    assert InfluenceAnalyzer(head, precision="mixed").head.precision == "mixed"
    assert head.precision == "auto"  # the caller's head is not changed
    assert head.blank().precision == "auto"
    assert LogisticHead(precision="mixed").blank().precision == "mixed"


def test_cli_precision_flag(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    X, y, Xt, yt = _data("relu", 2)
    head = _head(2, X, y)
    head.save(tmp_path / "h.npz")
    for name, A, lab in (("train", X, y), ("test", Xt, yt)):
        pq.write_table(pa.table({**{f"f{j}": A[:, j] for j in range(D)}, "label": lab}), tmp_path / f"{name}.parquet")
    ref = _reference(head.theta_.numpy(), 1, X, y, Xt, yt, L2["relu"])
    errs = {}
    for prec in ("float64", "mixed"):
        out = tmp_path / f"{prec}.parquet"
        assert run(["influence", tmp_path / "train.parquet", "--head", tmp_path / "h.npz", "--test",
                    tmp_path / "test.parquet", "--out", out, "--quiet", "--precision", prec]) == 0
        errs[prec] = np.abs(pq.read_table(out)["influence"].to_numpy() - ref["influence"]).max()
    scale = np.abs(ref["influence"]).max()
    assert errs["float64"] < 1e-10 * scale and 1e-12 * scale < errs["mixed"] < 1e-6 * scale
    assert run(["influence", tmp_path / "train.parquet", "--head", tmp_path / "h.npz", "--test",
                tmp_path / "test.parquet", "--out", tmp_path / "x.parquet", "--precision", "half"]) == 2
    assert not (tmp_path / "x.parquet").exists()


def test_precision_is_recorded_and_a_job_resumes_only_in_its_own_precision(tmp_path):
    import json

    import pyarrow.parquet as pq

    from winnow.analyses.influence import RUN_KEY, write_influence_parts

    X, y, Xt, yt = _data("relu", 2)
    head = _head(2, X, y)
    an = InfluenceAnalyzer(head, precision="mixed").fit((X, y))
    an.write_scores((Xt, yt), tmp_path / "s.parquet")
    meta = pq.read_schema(tmp_path / "s.parquet").metadata
    assert json.loads(meta[RUN_KEY.encode()])["precision"] == "mixed"
    kw = dict(test=(Xt, yt), partition_rows=1000)
    head.precision = "float64"
    write_influence_parts(head, (X, y), tmp_path / "p", **kw)
    head.precision = "mixed"
    with pytest.raises(ValidationError, match=r"refusing to resume.*precision"):
        write_influence_parts(head, (X, y), tmp_path / "p", resume=True, **kw)
