"""Row blocks in float64: features are upcast one cache-sized block at a time (no float64 copy of a chunk)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

DTYPE = torch.float64

# Bytes of a float64 working block: features are upcast to float64 one block at a time, so that on a CPU the
# block stays in cache and no float64 copy of a whole chunk is ever made (memory and bandwidth); on an
# accelerator, larger blocks amortise the host-to-device copies and kernel launches.
BLOCK_BYTES = 4 << 20
DEVICE_BLOCK_BYTES = 256 << 20


def row_block(n_cols: int, device: torch.device | str | None = None) -> int:
    """Rows of an (rows, n_cols) float64 working block on ``device`` (``BLOCK_BYTES`` on a CPU)."""
    size = BLOCK_BYTES if device is None or torch.device(device).type == "cpu" else DEVICE_BLOCK_BYTES
    return max(256, size // (8 * max(int(n_cols), 1)))


def float64_blocks(X: np.ndarray, block: int, device: torch.device | str | None, *,
                   ones_column: bool = False) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield (start, stop, X[start:stop] as float64 on ``device``) for row blocks of ``block`` rows of a
    (c, D) array; with ``ones_column`` the block is X̃ = [X, 1] (b, D + 1).

    Rows that need converting (float32 features, another device, the ones column) are copied into one reused
    buffer, so a block is only valid until the next one is yielded; float64 rows already on ``device`` are
    not copied when no ones column is asked for.
    """
    n, d = int(X.shape[0]), int(X.shape[1])
    buf = None
    for s in range(0, n, block):
        e = min(s + block, n)
        src = torch.as_tensor(X[s:e])
        if not ones_column and src.dtype == DTYPE and src.device == torch.device(device or "cpu"):
            yield s, e, src
            continue
        if buf is None:
            buf = torch.empty(min(block, n), d + int(ones_column), dtype=DTYPE, device=device)
            if ones_column:
                buf[:, d] = 1.0
        out = buf[:e - s]
        out[:, :d].copy_(src)
        yield s, e, out
