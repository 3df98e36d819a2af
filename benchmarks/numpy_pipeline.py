"""The plain numpy pipeline that ``winnow influence`` is measured against (``head_influence.py --pipeline``).

It does the job of ``winnow influence TRAIN --head HEAD --test TEST --out OUT`` for a logistic head on
Parquet data with a ``features`` fixed-size-list float32 column, ``label`` and ``id``, and nothing else (no
checks, no metadata): read Parquet in 65 536-row batches, float32 GEMMs with a float64 Hessian
H = (1/n) Σ s(1−s) x̃x̃ᵀ + λ·diag(1, …, 1, 0), Cholesky, s = H⁻¹ḡ_test, then for every training row
influence = −r·x̃ᵀs, loss_change_if_removed = −influence/n and self_influence = r²‖L⁻¹x̃‖², written to Parquet.

Usage: ``python benchmarks/numpy_pipeline.py TRAIN.parquet HEAD.npz TEST.parquet OUT.parquet``
"""

import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.linalg import cho_solve, cholesky, solve_triangular


def batches(path, d, size=65536):
    for b in pq.ParquetFile(path).iter_batches(batch_size=size, columns=["id", "label", "features"]):
        X = b.column("features").values.to_numpy().reshape(-1, d)  # float32, no copy
        yield b.column("id").to_numpy(), b.column("label").to_numpy(), X


def hessian_factor(blocks, w, b, l2):
    """(Cholesky factor L (lower) of H, n) from (y, X) blocks: float32 GEMMs summed in float64."""
    d = w.size
    w32 = w.astype(np.float32)
    H, n = np.zeros((d + 1, d + 1)), 0
    for y, X in blocks:
        p = 1 / (1 + np.exp(-((X @ w32).astype(np.float64) + b)))
        a = p * (1 - p)
        Xa = X * a.astype(np.float32)[:, None]
        H[:d, :d] += Xa.T @ X
        H[:d, d] += Xa.sum(0, dtype=np.float64)
        H[d, d] += a.sum()
        n += len(y)
    H /= n
    H[d, :d] = H[:d, d]
    H[np.arange(d), np.arange(d)] += l2
    return cholesky(H, lower=True), n


def main(train, head_path, test, out):
    z = np.load(head_path)
    w, b, l2 = z["weight"].reshape(-1), float(z["bias"][0]), float(z["l2"])
    d = w.size
    w32 = w.astype(np.float32)
    L, n = hessian_factor(((y, X) for _, y, X in batches(train, d)), w, b, l2)  # pass 1: the Hessian
    g, t = np.zeros(d + 1), 0
    for _, y, X in batches(test, d):  # the mean test gradient
        r = 1 / (1 + np.exp(-((X @ w32).astype(np.float64) + b))) - y
        g[:d] += r.astype(np.float32) @ X
        g[d] += r.sum()
        t += len(y)
    s = cho_solve((L, True), g / t)
    M = solve_triangular(L, np.eye(d + 1), lower=True).T.astype(np.float32)  # x̃ᵀM = (L⁻¹x̃)ᵀ
    V = np.concatenate([w[:, None], s[:d, None], M[:d]], axis=1).astype(np.float32)  # one GEMM per batch
    shift = np.concatenate([[b, s[d]], M[d]])
    schema = pa.schema([("id", pa.int64()), ("label", pa.int64()), ("influence", pa.float64()),
                        ("loss_change_if_removed", pa.float64()), ("self_influence", pa.float64())])
    with pq.ParquetWriter(out, schema) as wr:  # pass 2: the scores
        for ids, y, X in batches(train, d):
            Z = (X @ V).astype(np.float64) + shift
            r = 1 / (1 + np.exp(-Z[:, 0])) - y
            infl = -r * Z[:, 1]
            self_infl = r * r * np.einsum("ij,ij->i", Z[:, 2:], Z[:, 2:])
            wr.write_table(pa.table([ids, y, infl, infl / -n, self_infl], schema=schema))


if __name__ == "__main__":
    main(*sys.argv[1:5])
