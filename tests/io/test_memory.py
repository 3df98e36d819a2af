"""Memory stays bounded: ``winnow influence`` over 20× more Parquet rows needs no more memory.

Runs the real command in a subprocess on 1e5 and 2e6 training rows (small chunks) and compares the peak
RSS of the two runs (the child's own VmHWM from /proc: ``wait4``'s ru_maxrss would also count the parent's
high-water mark, which the kernel carries into a child at exec, and could hide growth behind pytest's RSS).
The full-scale check (1e7 rows under 1 GiB) is
``python benchmarks/head_influence.py --memory-1e7``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from winnow.core.heads import LogisticHead

D = 16
CHUNK = 16384
SMALL, LARGE = 100_000, 2_000_000


def write_rows(directory: Path, n: int, files: int = 1, seed: int = 0) -> Path:
    """n rows (D float32 features in a fixed-size list, labels 0/1) streamed into ``files`` Parquet files
    with row groups of 65536 rows (one file by default: memory must not grow with the file either)."""
    directory.mkdir()
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(D)
    schema = pa.schema([("label", pa.int64()), ("features", pa.list_(pa.float32(), D))])
    per_file = -(-n // files)
    done = 0
    for f in range(files):
        with pq.ParquetWriter(directory / f"part-{f}.parquet", schema) as writer:
            stop = min(n, done + per_file)
            while done < stop:
                m = min(65536, stop - done)
                X = np.maximum(rng.standard_normal((m, D)), 0).astype(np.float32)
                y = (rng.random(m) < 1 / (1 + np.exp(-(X @ w - 0.5)))).astype(np.int64)
                feats = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), D)
                writer.write_table(pa.Table.from_arrays([pa.array(y), feats], schema=schema))
                done += m
    return directory


def peak_rss_mb(argv: list[str]) -> float:
    """Run ``winnow`` in a fresh interpreter; return its own peak RSS (VmHWM) in MiB (it must succeed)."""
    code = ("import sys; from winnow.cli import main; main(sys.argv[1:]); "
            "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0], file=sys.stderr)")
    # one thread: memory does not depend on it, and a shared CI machine does not slow it down
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", code, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       env=env, text=True)
    assert p.returncode == 0, p.stderr
    return int(p.stderr.strip().splitlines()[-1]) / 1024


@pytest.mark.slow
def test_influence_memory_does_not_grow_with_n(tmp_path):
    head = LogisticHead.from_weights(np.linspace(-1, 1, D), -0.3, l2=1e-3).save(tmp_path / "head.npz")
    rng = np.random.default_rng(1)
    test = tmp_path / "test.npz"
    np.savez(test, X=np.maximum(rng.standard_normal((500, D)), 0).astype(np.float32),
             y=rng.integers(0, 2, 500))
    peaks = {}
    for n in (SMALL, LARGE):
        train = write_rows(tmp_path / f"train{n}", n)
        out = tmp_path / f"scores{n}.parquet"
        peaks[n] = peak_rss_mb(["influence", str(train), "--head", str(head), "--test", str(test), "--out",
                                str(out), "--chunk-size", str(CHUNK), "--allow-nonstationary", "--quiet"])
        md = pq.read_metadata(out)
        assert md.num_rows == n
        assert np.isfinite(pq.read_table(out, columns=["influence"])["influence"].to_numpy()).all()
    grow = peaks[LARGE] - peaks[SMALL]
    # holding the extra 1.9e6 rows would take ≈ 1.9e6 · 40 B ≈ 76 MB more for the five score columns alone
    # (122 MB for the features); reading the one Parquet file whole (pyarrow's iter_batches over a file
    # pre-buffers all its row groups) cost ≈ 100 MB more. Streaming row group by row group: ≈ 15 MB.
    assert grow < 60, (f"peak RSS grew by {grow:.0f} MiB from n = {SMALL} ({peaks[SMALL]:.0f} MiB) to "
                       f"{LARGE} ({peaks[LARGE]:.0f} MiB)")
