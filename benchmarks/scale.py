"""Benchmark: `winnow influence` out of core, in this process and on Dask, against reading the Parquet alone.

For each n it writes (once, streamed, bounded memory) a directory of synthetic Parquet files
(``winnow.datasets.synthetic_embeddings``: nonnegative float32 features from a fixed random ReLU layer, labels
from a logistic model; D = 64, files of 2²⁰ rows, row groups of 65 536 rows), then runs each mode in a fresh
subprocess and reports its wall time and peak memory:

* ``arrow``  - pyarrow alone decoding the two columns (``iter_batches``), one pass;
* ``read``   - winnow's reader alone (``ParquetSource.chunks``: decode, to numpy, finite check), one pass:
  the floor any winnow pass pays. ``winnow influence`` makes two passes (Hessian, scoring);
* ``cli``    - the foundation's `winnow influence TRAIN --head --test --out scores.parquet` (one output file);
* ``local``  - the partitioned job (``winnow.engine.backends.write_influence_parts``: part files, manifest, resumable),
  in this process; through `winnow influence --out DIR` once the CLI has the partitioned options;
* ``dask``   - the same job on a ``LocalCluster`` of 2 single-threaded worker processes (``workers=2``);
* ``pydvl``  - pyDVL's ``DaskInfluenceCalculator`` over ``DirectInfluence`` on the same head (an ``nn.Linear``
  in float64 with the same weights, BCE-with-logits, its Hessian fitted by streaming the same Parquet through
  a DataLoader, L2 λ added to the whole diagonal), influences of the first 100 test points on every training
  point as a Dask array, averaged over the test points; capped in time (``--pydvl-cap``), larger sizes are
  skipped once it failed to finish.

CPU seconds (user + system, summed over the process tree, last value seen per process) are reported beside
the wall time: on a shared machine they show the work done whatever the load. Peak memory is sampled
(every 0.1 s) over the whole process tree: "tree" is the sum of the RSS of the process
and all its children (Dask's nannies and workers included; shared library pages are counted once per
process, so the sum overstates), "main" is the peak RSS of the main process alone.

Usage::

    python benchmarks/scale.py --sizes 1e5,1e6                   # default modes: arrow,read,cli,local,dask,pydvl
    python benchmarks/scale.py --sizes 1e7,3e7 --modes read,local,dask --json big.json
    python benchmarks/scale.py --gpu-check 2e6                   # device= on CUDA vs CPU (same numbers, times)

Data lives under ``--workdir`` (default /tmp/winnow-scale; 3e7 rows take ~7.5 GB) and is reused between runs;
``--clean`` removes each size's data after its runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

D = 64
ROW_GROUP = 1 << 16
ROWS_PER_FILE = 1 << 20
TEST_ROWS = 10_000
PYDVL_TEST_ROWS = 100
HEAD_FIT_ROWS = 100_000
L2 = 1e-3
MiB = float(1 << 20)


# ------------------------------------------------------------------------------------------------- data
def generate(root: Path, n: int, seed: int = 0) -> Path:
    """Stream n synthetic rows into ``root/n{n}/f*.parquet`` (skipped when already complete)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from winnow.datasets import synthetic_embeddings

    d = root / f"n{n}"
    marker = d / "_generated.json"
    if marker.exists() and json.loads(marker.read_text()).get("n") == n:
        return d
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    schema = pa.schema([("label", pa.int64()), ("features", pa.list_(pa.float32(), D))])
    t0 = time.time()
    writer, in_file, k = None, 0, 0
    for X, y in synthetic_embeddings(n, D, seed=seed, chunk_size=ROW_GROUP):
        if writer is None or in_file >= ROWS_PER_FILE:
            if writer is not None:
                writer.close()
            writer = pq.ParquetWriter(d / f"part-{k:05d}.parquet", schema)
            k, in_file = k + 1, 0
        feats = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), D)
        writer.write_table(pa.table({"label": y, "features": feats}, schema=schema), row_group_size=ROW_GROUP)
        in_file += len(y)
    writer.close()
    size = sum(f.stat().st_size for f in d.glob("*.parquet"))
    marker.write_text(json.dumps({"n": n, "files": k, "bytes": size, "seconds": time.time() - t0}))
    print(f"generated n={n:.0e}: {k} files, {size / 2**30:.2f} GiB in {time.time() - t0:.0f} s", flush=True)
    return d


def common(root: Path) -> tuple[Path, Path]:
    """The head (fitted on the first 1e5 rows of every data set) and the test set (10 000 rows, seed 1)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from winnow.core.heads import LogisticHead
    from winnow.datasets import synthetic_embeddings

    root.mkdir(parents=True, exist_ok=True)
    head, test = root / "head.npz", root / "test.parquet"
    if not head.exists():
        X, y = next(synthetic_embeddings(HEAD_FIT_ROWS, D, seed=0, chunk_size=HEAD_FIT_ROWS))
        LogisticHead(l2=L2).fit(X.astype(np.float64), y).save(head)
    if not test.exists():
        X, y = next(synthetic_embeddings(TEST_ROWS, D, seed=1, chunk_size=TEST_ROWS))
        pq.write_table(pa.table({"label": y, "features": pa.FixedSizeListArray.from_arrays(
            pa.array(X.reshape(-1)), D)}), test)
    return head, test


# ------------------------------------------------------------------------------------------ child modes
def child(mode: str, train: Path, head_path: Path, test: Path, out: Path, chunk: int) -> dict:
    """Run one mode in this (fresh) process; returns timings measured inside it (imports excluded)."""
    t0 = time.time()
    res: dict = {}
    if mode == "arrow":
        import pyarrow.parquet as pq

        n = 0
        for f in sorted(train.glob("*.parquet")):
            for b in pq.ParquetFile(f).iter_batches(batch_size=chunk, columns=["label", "features"]):
                n += b.num_rows
        res["rows"] = n
    elif mode == "read":
        from winnow.io.sources import open_source

        res["rows"] = sum(len(c) for c in open_source(train).chunks(chunk))
    elif mode in ("local", "dask"):
        from winnow.core.heads import load_head
        from winnow.engine.backends import write_influence_parts

        r = write_influence_parts(load_head(head_path), train, out, test=test, chunk_size=chunk,
                                  workers=2 if mode == "dask" else None, overwrite=True)
        res["rows"], res["parts"] = r.n_rows, r.n_parts
    elif mode == "pydvl":
        res.update(run_pydvl(train, head_path, test, out, chunk))
    else:
        raise SystemExit(f"unknown mode {mode}")
    res["job_s"] = time.time() - t0
    return res


def run_pydvl(train: Path, head_path: Path, test: Path, out: Path, chunk: int) -> dict:
    """pyDVL's DaskInfluenceCalculator(DirectInfluence) on the same head, streaming the same Parquet."""
    import dask.array as da
    import pyarrow.parquet as pq
    import torch
    from dask import delayed
    from distributed import Client, LocalCluster
    from pydvl.influence import DaskInfluenceCalculator
    from pydvl.influence.torch import DirectInfluence
    from pydvl.influence.torch.util import TorchNumpyConverter
    from torch.utils.data import DataLoader, IterableDataset

    from winnow.core.heads import load_head
    from winnow.io.sources import open_source

    head = load_head(head_path)
    model = torch.nn.Linear(D, 1).double()
    with torch.no_grad():
        model.weight.copy_(torch.as_tensor(head.weight_))
        model.bias.copy_(torch.as_tensor(head.bias_))

    def loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(out.reshape(-1), target.reshape(-1).double())

    class Stream(IterableDataset):
        def __iter__(self):
            for ch in open_source(train).chunks(chunk):
                yield torch.as_tensor(ch.X, dtype=torch.float64), torch.as_tensor(ch.y, dtype=torch.float64)

    t = time.time()
    model_if = DirectInfluence(model, loss, regularization=L2).fit(DataLoader(Stream(), batch_size=None))
    fit_s = time.time() - t

    def read_group(f: str, g: int) -> tuple[np.ndarray, np.ndarray]:
        tb = pq.ParquetFile(f).read_row_group(g, columns=["label", "features"])
        X = tb["features"].combine_chunks().flatten().to_numpy().reshape(-1, D).astype(np.float64)
        return X, tb["label"].to_numpy().astype(np.float64)

    xs, ys = [], []
    for f in sorted(train.glob("*.parquet")):
        md = pq.read_metadata(f)
        for g in range(md.num_row_groups):
            m = md.row_group(g).num_rows
            pair = delayed(read_group, pure=True)(str(f), g)
            xs.append(da.from_delayed(pair[0], shape=(m, D), dtype=np.float64))
            ys.append(da.from_delayed(pair[1], shape=(m,), dtype=np.float64))
    x, y = da.concatenate(xs), da.concatenate(ys)
    tt = pq.read_table(test).slice(0, PYDVL_TEST_ROWS)
    xt = tt["features"].combine_chunks().flatten().to_numpy().reshape(-1, D).astype(np.float64)
    yt = tt["label"].to_numpy().astype(np.float64)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        calc = DaskInfluenceCalculator(model_if, TorchNumpyConverter(), client)
        t = time.time()
        I = calc.influences(da.from_array(xt, chunks=(PYDVL_TEST_ROWS, D)),  # noqa: E741
                            da.from_array(yt, chunks=(PYDVL_TEST_ROWS,)), x, y)
        mean = I.mean(axis=0).compute()
        score_s = time.time() - t
    np.save(out.with_suffix(".npy"), mean)
    return {"rows": int(mean.shape[0]), "fit_s": fit_s, "score_s": score_s}


# ------------------------------------------------------------------------------------------ measurement
def measure(cmd: list[str], cap: float | None = None) -> dict:
    """Run ``cmd``; wall time, peak RSS of the process tree (sum) and of the main process, sampled."""
    import psutil

    load0 = os.getloadavg()[0]
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak_tree = peak_main = 0
    cpu: dict[int, float] = {}  # last CPU seconds (user + system) seen per process of the tree
    timed_out = False
    while proc.poll() is None:
        try:
            main = ps.memory_info().rss
            t = ps.cpu_times()
            cpu[ps.pid] = t.user + t.system
            tree = main
            for c in ps.children(recursive=True):
                try:
                    tree += c.memory_info().rss
                    t = c.cpu_times()
                    cpu[c.pid] = t.user + t.system
                except psutil.Error:
                    pass
            peak_main, peak_tree = max(peak_main, main), max(peak_tree, tree)
        except psutil.Error:
            pass
        if cap is not None and time.time() - t0 > cap:
            timed_out = True
            for c in ps.children(recursive=True):
                try:
                    c.kill()
                except psutil.Error:
                    pass
            proc.kill()
            break
        time.sleep(0.1)
    out, err = proc.communicate()
    res = {"wall_s": time.time() - t0, "cpu_s": sum(cpu.values()), "peak_tree_mib": peak_tree / MiB,
           "peak_main_mib": peak_main / MiB,
           "load_before": load0, "load_after": os.getloadavg()[0], "rc": proc.returncode,
           "timed_out": timed_out}
    for line in out.splitlines():
        if line.startswith("RESULT "):
            res.update(json.loads(line[7:]))
    if proc.returncode != 0 and not timed_out:
        res["error"] = err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}"
    return res


def cli_has_parts() -> bool:
    """Whether `winnow influence` has the partitioned options (--workers) yet."""
    winnow = Path(sys.executable).with_name("winnow")
    r = subprocess.run([str(winnow), "influence", "--help"], capture_output=True, text=True)
    return "--workers" in r.stdout


def pydvl_agreement(train: Path, head_path: Path, test: Path, pydvl_out: Path) -> dict:
    """pyDVL's mean influence over the first 100 test points vs winnow's (opposite sign convention:
    pyDVL reports g_tᵀH⁻¹g_p, winnow −g_tᵀH⁻¹g_p); pyDVL regularises the bias too, winnow does not."""
    import pyarrow.parquet as pq

    from winnow.analyses.influence import InfluenceAnalyzer
    from winnow.core.heads import load_head

    tt = pq.read_table(test).slice(0, PYDVL_TEST_ROWS)
    Xt = tt["features"].combine_chunks().flatten().to_numpy().reshape(-1, D)
    yt = tt["label"].to_numpy().copy()
    ref = -InfluenceAnalyzer(load_head(head_path)).fit(str(train)).score((np.array(Xt), yt))["influence"].to_numpy()
    got = np.load(pydvl_out.with_suffix(".npy"))
    return {"pearson": float(np.corrcoef(ref, got)[0, 1]),
            "rel_err": float(np.max(np.abs(ref - got)) / np.max(np.abs(ref)))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1e5,1e6,1e7,3e7", help="comma-separated n (floats ok: 1e6)")
    ap.add_argument("--modes", default="arrow,read,cli,local,dask,pydvl")
    ap.add_argument("--workdir", default="/tmp/winnow-scale", type=Path)
    ap.add_argument("--chunk-size", type=int, default=1 << 16)
    ap.add_argument("--pydvl-cap", type=float, default=900.0, help="seconds before pyDVL is stopped")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--clean", action="store_true", help="remove each size's data after its runs")
    ap.add_argument("--gpu-check", type=float, metavar="N", help="compare device='cuda' with 'cpu' on N rows")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--train", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        head, test = common(a.workdir)
        print("RESULT " + json.dumps(child(a.child, a.train, head, test, a.out, a.chunk_size)), flush=True)
        return
    if a.gpu_check:
        print(json.dumps(gpu_check(int(a.gpu_check), a.workdir), indent=1))
        return
    sizes = [int(float(s)) for s in a.sizes.split(",")]
    modes = a.modes.split(",")
    head, test = common(a.workdir)
    parts_cli = cli_has_parts()
    winnow = str(Path(sys.executable).with_name("winnow"))
    results, pydvl_failed = [], False
    print(f"cores: {os.cpu_count()}, load average at start: {os.getloadavg()}", flush=True)
    for n in sizes:
        train = generate(a.workdir, n)
        for mode in modes:
            out = a.workdir / f"out-{mode}-{n}"
            shutil.rmtree(out, ignore_errors=True)
            if out.with_suffix(".parquet").exists():
                out.with_suffix(".parquet").unlink()
            if mode == "pydvl" and pydvl_failed:
                results.append({"n": n, "mode": mode, "skipped": "did not finish at a smaller n"})
                continue
            if mode == "cli":
                cmd = [winnow, "influence", str(train), "--head", str(head), "--test", str(test), "--out",
                       str(out.with_suffix(".parquet")), "--chunk-size", str(a.chunk_size), "--quiet"]
            elif mode in ("local", "dask") and parts_cli:
                cmd = [winnow, "influence", str(train), "--head", str(head), "--test", str(test), "--out",
                       str(out), "--chunk-size", str(a.chunk_size), "--quiet"] + (
                    ["--workers", "2"] if mode == "dask" else [])
            else:
                cmd = [sys.executable, __file__, "--child", mode, "--train", str(train), "--out", str(out),
                       "--workdir", str(a.workdir), "--chunk-size", str(a.chunk_size)]
            r = measure(cmd, cap=a.pydvl_cap if mode == "pydvl" else None)
            r.update(n=n, mode=mode)
            if mode == "pydvl":
                if r.get("rc") != 0:
                    pydvl_failed = True
                elif n <= 200_000:
                    r.update(pydvl_agreement(train, head, test, out))
            results.append(r)
            print(json.dumps(r), flush=True)
            shutil.rmtree(out, ignore_errors=True)
            for p in (out.with_suffix(".parquet"), out.with_suffix(".npy")):
                if p.exists():
                    p.unlink()
        if a.clean:
            shutil.rmtree(train, ignore_errors=True)
    print_table(results)
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))


def print_table(results: list[dict]) -> None:
    base = {r["n"]: r["wall_s"] for r in results if r.get("mode") == "read" and r.get("rc") == 0}
    print("\n| n | mode | wall s | job s | CPU s | rows/s (wall) | × read (wall) | peak RSS main MiB "
          "| peak RSS tree MiB | load |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if "skipped" in r:
            print(f"| {r['n']:.0e} | {r['mode']} | skipped: {r['skipped']} | | | | | | | |")
            continue
        if r.get("timed_out"):
            status = f"> {r['wall_s']:.0f} (stopped)"
        elif r.get("rc") != 0:
            status = f"failed: {r.get('error', '')[:60]}"
        else:
            status = f"{r['wall_s']:.1f}"
        ratio = f"{r['wall_s'] / base[r['n']]:.2f}" if r['n'] in base and r.get("rc") == 0 else ""
        rate = f"{r['n'] / r['wall_s']:,.0f}" if r.get("rc") == 0 else ""
        job = f"{r['job_s']:.1f}" if "job_s" in r else ""
        cpu = f"{r['cpu_s']:.0f}" if "cpu_s" in r else ""
        print(f"| {r['n']:.0e} | {r['mode']} | {status} | {job} | {cpu} | {rate} | {ratio} | "
              f"{r['peak_main_mib']:.0f} | {r['peak_tree_mib']:.0f} | {r['load_before']:.1f}→{r['load_after']:.1f} |")


# ------------------------------------------------------------------------------------------- GPU check
def gpu_check(n: int, root: Path) -> dict:
    """device='cuda' against device='cpu' for the whole partitioned job (influence, self-influence,
    memorization) on n rows, and a softmax head's sampled Hessian; relative differences and times."""
    import pyarrow.parquet as pq
    import torch

    from winnow.core.heads import SoftmaxHead, load_head
    from winnow.engine.backends import fit_curvature_partitioned, write_influence_parts

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    head_path, test = common(root)
    t0 = time.time()
    train = generate(root, n)
    res: dict = {"device": dev, "gpu": torch.cuda.get_device_name(0) if dev == "cuda" else None, "n": n,
                 "generate_s": time.time() - t0, "torch": torch.__version__, "cpu_threads": torch.get_num_threads()}
    head = load_head(head_path)
    for d in dict.fromkeys(["cpu", dev]):
        t = time.time()
        write_influence_parts(head, train, root / f"gpu-{d}", test=test, device=d, overwrite=True,
                              memorization=True)
        res[f"job_{d}_s"] = time.time() - t
    a, b = pq.read_table(root / "gpu-cpu"), pq.read_table(root / f"gpu-{dev}")
    for c in ("influence", "self_influence", "memorization"):
        x, z = a[c].to_numpy(), b[c].to_numpy()
        res[f"relerr_{c}"] = float(np.max(np.abs(x - z)) / np.max(np.abs(x)))
    from winnow.datasets import synthetic_embeddings

    X, _ = next(synthetic_embeddings(20_000, D, seed=3, chunk_size=20_000))
    y = np.argmax(X[:, :4] - X[:, 4:8], axis=1).astype(np.int64)
    sm = SoftmaxHead(l2=1e-2).fit(X.astype(np.float64), y)
    rows = np.arange(0, len(y), 3)
    w = np.linspace(0.5, 2.0, rows.size)
    H = {d: fit_curvature_partitioned(sm, (X, y), rows=rows, row_weights=w, device=d, partition_rows=4096)
         .hessian.cpu().numpy() for d in ("cpu", dev)}
    res["relerr_softmax_sampled_hessian"] = float(np.max(np.abs(H["cpu"] - H[dev])) / np.max(np.abs(H["cpu"])))
    return res


if __name__ == "__main__":
    main()
