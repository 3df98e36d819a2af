"""Row blocks of features for the closed-form kernels, and the ``precision`` setting that picks their dtype.

float64 (``precision="float64"``): features are upcast one cache-sized block at a time (no float64 copy of a
chunk). Mixed (``precision="mixed"``, or ``"auto"`` on float32 features): blocks stay float32 (no copy at all
for float32 rows already on the device), the per-block GEMMs run in float32 and every result is summed in
float64 (see ``LinearHead.score_chunk`` and ``winnow.core.curvature.hessian_chunk``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

DTYPE = torch.float64


#: the accepted values of a head's ``precision``: "auto" (mixed for float32 features, float64 otherwise),
#: "float64" (every product in float64), "mixed" (per-block GEMMs in float32, sums and solves in float64)
PRECISIONS = ("auto", "float64", "mixed")


def check_precision(precision: str, parameter: str = "precision") -> str:
    """``precision`` if it is one of ``PRECISIONS``, else a ValidationError naming ``parameter``."""
    from ..errors import ValidationError

    if precision not in PRECISIONS:
        raise ValidationError(f"{parameter} must be one of 'auto', 'float64', 'mixed', got {precision!r} "
                              "('auto' is mixed precision for float32 features and float64 otherwise)",
                              parameters=(parameter,))
    return precision


def block_dtype(precision: str, features_dtype: Any) -> torch.dtype:
    """The dtype of the working blocks for features of ``features_dtype`` under ``precision``: float32 for
    "mixed" and for "auto" with float32 features, float64 otherwise."""
    if precision == "mixed" or (precision == "auto" and np.dtype(features_dtype) == np.float32):
        return torch.float32
    return DTYPE

# Bytes of a float64 working block: features are upcast to float64 one block at a time, so that on a CPU the
# block stays in cache and no float64 copy of a whole chunk is ever made (memory and bandwidth); on an
# accelerator, larger blocks amortise the host-to-device copies and kernel launches.
BLOCK_BYTES = 4 << 20
DEVICE_BLOCK_BYTES = 256 << 20


#: Most rows summed inside one float32 product (mixed precision): its float32 accumulation over b rows errs by
#: ~√b·ε₃₂ relative, so blocks stay short and their results are summed in float64 (the error then does not grow
#: with n, nor with a block that a small D would make long).
MIXED_ROWS = 2048


def row_block(n_cols: int, device: torch.device | str | None = None) -> int:
    """Rows of an (rows, n_cols) float64 working block on ``device`` (``BLOCK_BYTES`` on a CPU)."""
    size = BLOCK_BYTES if device is None or torch.device(device).type == "cpu" else DEVICE_BLOCK_BYTES
    return max(256, size // (8 * max(int(n_cols), 1)))


def block_is_view(X: np.ndarray, dtype: torch.dtype, device: torch.device | str | None) -> bool:
    """Whether ``float64_blocks`` yields rows of ``X`` without copying them (already ``dtype`` on a CPU)."""
    return torch.as_tensor(X[:0]).dtype == dtype and (device is None or torch.device(device).type == "cpu")


def float64_blocks(X: np.ndarray, block: int, device: torch.device | str | None, *,
                   ones_column: bool = False, dtype: torch.dtype = DTYPE) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield (start, stop, X[start:stop] as ``dtype`` (float64 unless given) on ``device``) for row blocks of
    ``block`` rows of a (c, D) array; with ``ones_column`` the block is X̃ = [X, 1] (b, D + 1).

    Rows that need converting (another dtype, another device, the ones column) are copied into one reused
    buffer, so a block is only valid until the next one is yielded; rows already of ``dtype`` on ``device``
    are not copied when no ones column is asked for.
    """
    n, d = int(X.shape[0]), int(X.shape[1])
    buf = None
    for s in range(0, n, block):
        e = min(s + block, n)
        src = torch.as_tensor(X[s:e])
        if not ones_column and src.dtype == dtype and src.device == torch.device(device or "cpu"):
            yield s, e, src
            continue
        if buf is None:
            buf = torch.empty(min(block, n), d + int(ones_column), dtype=dtype, device=device)
            if ones_column:
                buf[:, d] = 1.0
        out = buf[:e - s]
        out[:, :d].copy_(src)
        yield s, e, out


def weighted_gram(X: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """X̃ᵀ diag(a) X̃ for a row block X (b, D), float32 or float64, and float64 weights a ≥ 0 (b,): the float64
    (D + 1, D + 1) matrix [[Xᵀ diag(a) X, Xᵀa], [aᵀX, Σa]]; X̃ = [X, 1] is never formed.

    Every caller's weights are ≥ 0 (s(1 − s), w·p_k·p_l, row weights checked ≥ 0 by ``check_rows``); a NaN
    weight (a row with a NaN or Inf feature) gives a non-finite result, which the engine's finiteness check
    catches. The (D, D) block is the Gram matrix YᵀY of Y = √a·X, one GEMM on torch's BLAS in X's dtype,
    rounded to float64 (mixed precision for a float32 X): positive semi-definite for the rounded Y, so rounding
    perturbs it only through the accumulation (a product Xᵀ(a·X) of two separately rounded factors can come out
    indefinite at the rounding level, which matters when H is ill-conditioned). Xᵀa and Σa are float64 sums
    over the block (not float32 dot products, whose error grows with the block's length).
    """
    D = X.shape[1]
    H = torch.empty(D + 1, D + 1, dtype=DTYPE, device=X.device)
    r = a.sqrt().to(X.dtype)[:, None]
    Y = X * r
    H[:D, :D] = Y.T @ Y
    col = (Y * r).sum(0, dtype=DTYPE)
    H[:D, D] = col
    H[D, :D] = col
    H[D, D] = a.sum()
    return H
