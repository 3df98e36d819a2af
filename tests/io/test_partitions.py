"""Partitioned, resumable influence outputs (winnow.io.parts + the local backend of winnow.engine.backends).

Reference values come from an explicit numpy computation (closed-form logistic Hessian and gradients, a
dense solve), independent of winnow's chunk functions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import relu_embeddings

from winnow.core.curvature import fit_curvature
from winnow.core.heads import LogisticHead, SoftmaxHead
from winnow.core.influence import InfluenceAnalyzer
from winnow.engine.backends import (
    ColumnFunction,
    partitioned_hessian,
    write_influence_parts,
)
from winnow.errors import OutputExistsError, ValidationError
from winnow.io.parts import MANIFEST, STATE, Partition, plan_partitions
from winnow.io.sources import ArraySource, open_source

# ----------------------------------------------------------------------------------------------- helpers


def write_parquet_dir(path: Path, X: np.ndarray, y: np.ndarray, sizes: list[int], row_group: int,
                      ids: np.ndarray | None = None) -> Path:
    """Write rows of (X, y) to ``len(sizes)`` files of the given sizes, features as fixed_size_list<float32>."""
    path.mkdir(parents=True, exist_ok=True)
    start = 0
    for i, m in enumerate(sizes):
        s = slice(start, start + m)
        cols = {"label": y[s], "features": pa.FixedSizeListArray.from_arrays(
            pa.array(np.ascontiguousarray(X[s], dtype=np.float32).reshape(-1)), X.shape[1])}
        if ids is not None:
            cols = {"id": ids[s], **cols}
        pq.write_table(pa.table(cols), path / f"f{i:02d}.parquet", row_group_size=row_group)
        start += m
    assert start == len(y)
    return path


def data(n: int = 1200, d: int = 6, seed: int = 0):
    X, y = relu_embeddings(n, d_in=5, d=d, seed=seed)
    return X.astype(np.float32), y


def explicit_logistic(head: LogisticHead, X, y, Xt=None, yt=None, rows=None, weights=None, N=None):
    """Dense numpy reference: H = (1/N)Σ w_i s_i(1-s_i) x̃x̃ᵀ + λ·mask, g = (s - y) x̃, influence = -gᵀH⁻¹ḡ_t,
    self-influence gᵀH⁻¹g, from the head's weights only."""
    theta = np.concatenate([head.weight_[0], head.bias_])
    Xa = np.hstack([np.asarray(X, np.float64), np.ones((len(X), 1))])
    s = 1 / (1 + np.exp(-Xa @ theta))
    c = s * (1 - s)
    sel = np.arange(len(X)) if rows is None else rows
    w = np.ones(len(sel)) if weights is None else weights
    N = w.sum() if N is None else N
    mask = np.r_[np.ones(X.shape[1]), 0.0]
    S = (Xa[sel].T * (w * c[sel])) @ Xa[sel]
    H = S / N + head.l2 * np.diag(mask)
    G = (s - y)[:, None] * Xa
    out = {"S": S, "H": H, "self_influence": np.einsum("ip,pi->i", G, np.linalg.solve(H, G.T))}
    if Xt is not None:
        Xta = np.hstack([np.asarray(Xt, np.float64), np.ones((len(Xt), 1))])
        gbar = ((1 / (1 + np.exp(-Xta @ theta)) - yt)[:, None] * Xta).mean(0)
        out["influence"] = -G @ np.linalg.solve(H, gbar)
        out["loss_change_if_removed"] = -out["influence"] / len(X)
    return out


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


@pytest.fixture
def setup(tmp_path):
    X, y = data()
    Xt, yt = data(150, seed=7)
    train = write_parquet_dir(tmp_path / "train", X, y, [500, 300, 400], row_group=100)
    # float32 features, compared with float64 references to 1e-10: the float64 path, not "auto"'s mixed one
    head = LogisticHead(l2=1e-2, precision="float64").fit(X.astype(np.float64), y)
    return tmp_path, X, y, Xt, yt, train, head


def mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}


# ---------------------------------------------------------------------------------------------- planning
def test_plan_partitions_cover_rows_at_row_group_boundaries(setup):
    _, X, y, *_, train, _ = setup
    src = open_source(train)
    parts = plan_partitions(src, partition_rows=250)
    # files of 500, 300, 400 rows with row groups of 100: 250 -> groups of 2 row groups (200 rows)
    assert [(p.start, p.stop) for p in parts] == [(0, 200), (200, 400), (400, 500), (500, 700), (700, 800),
                                                  (800, 1000), (1000, 1200)]
    assert [Path(p.file).name for p in parts] == ["f00.parquet"] * 3 + ["f01.parquet"] * 2 + ["f02.parquet"] * 2
    assert [p.name for p in parts] == [f"part-{i:05d}" for i in range(7)]
    whole = plan_partitions(src)  # default: one partition per file
    assert [(p.start, p.stop) for p in whole] == [(0, 500), (500, 800), (800, 1200)]
    arr = plan_partitions(ArraySource(X, y), partition_rows=500)
    assert [(p.start, p.stop) for p in arr] == [(0, 500), (500, 1000), (1000, 1200)]
    with pytest.raises(ValidationError, match="partition_rows"):
        plan_partitions(src, partition_rows=0)


# ------------------------------------------------------------------------------------------ correctness
def test_local_parts_match_explicit_logistic(setup):
    tmp, X, y, Xt, yt, train, head = setup
    out = tmp / "scores"
    res = write_influence_parts(head, train, out, test=(Xt, yt), chunk_size=64, partition_rows=250)
    assert (res.n_parts, res.written, res.skipped, res.resumed) == (7, 7, 0, False)
    ref = explicit_logistic(head, X, y, Xt, yt)
    got = pq.read_table(out)
    assert got.column_names == ["id", "label", "influence", "loss_change_if_removed", "self_influence"]
    np.testing.assert_array_equal(got["id"].to_numpy(), np.arange(len(y)))
    np.testing.assert_array_equal(got["label"].to_numpy(), y)
    for c in ("influence", "loss_change_if_removed", "self_influence"):
        assert rel_err(got[c].to_numpy(), ref[c]) < 1e-10, c
    meta = pq.read_schema(out / "part-00000.parquet").metadata
    assert b"harmful" in meta[b"winnow.influence"] and b"winnow.job_id" in meta
    man = json.loads((out / MANIFEST).read_text())
    assert man["complete"] is True and man["n_train"] == len(y) and len(man["job"]["partitions"]) == 7
    with np.load(out / STATE) as z:  # the stored direction s = H⁻¹ḡ is the explicit one
        Xta = np.hstack([Xt.astype(np.float64), np.ones((len(Xt), 1))])
        theta = np.concatenate([head.weight_[0], head.bias_])
        gbar = ((1 / (1 + np.exp(-Xta @ theta)) - yt)[:, None] * Xta).mean(0)
        assert rel_err(z["direction"], np.linalg.solve(ref["H"], gbar)) < 1e-10


def test_softmax_arrays_match_analyzer(tmp_path):
    X, y = relu_embeddings(600, seed=2, k=3, d=5)
    Xt, yt = relu_embeddings(80, seed=3, k=3, d=5)
    head = SoftmaxHead(l2=1e-2).fit(X, y)
    res = write_influence_parts(head, (X, y), tmp_path / "o", test=(Xt, yt), chunk_size=50, partition_rows=128)
    assert res.n_parts == 5
    got = pq.read_table(tmp_path / "o")
    ref = InfluenceAnalyzer(head, chunk_size=600).fit((X, y)).score((Xt, yt))
    for c in ("influence", "loss_change_if_removed", "self_influence"):
        assert rel_err(got[c].to_numpy(), ref[c].to_numpy()) < 1e-10, c
    # and self-influence against an explicit dense H (autograd) with the pseudo-inverse on gradients
    th = head.theta_.clone().requires_grad_(True)
    Xd, yd = torch.as_tensor(X, dtype=torch.float64), torch.as_tensor(y)

    def risk(t):
        return head.losses(Xd, yd, t).mean() + 0.5 * head.l2 * (t * head.weight_mask() * t).sum()

    H = torch.autograd.functional.hessian(risk, th).numpy()
    G = head.gradients(Xd, yd).numpy()
    si = np.einsum("ip,pi->i", G, np.linalg.pinv(H, rcond=1e-12) @ G.T)
    assert rel_err(got["self_influence"].to_numpy(), si) < 1e-8


def test_sampled_hessian_matches_explicit(setup):
    _, X, y, *_, train, head = setup
    rng = np.random.default_rng(3)
    rows = np.sort(rng.choice(len(y), 333, replace=False))
    w = rng.uniform(0.5, 2.0, rows.size)
    S, total = partitioned_hessian(head, train, rows=rows, row_weights=w, chunk_size=40, partition_rows=150)
    ref = explicit_logistic(head, X, y, rows=rows, weights=w)
    assert rel_err(S, ref["S"]) < 1e-12 and total == pytest.approx(w.sum(), rel=1e-14)
    H_loc = fit_curvature(head, train, rows=rows, row_weights=w).hessian.numpy()
    assert rel_err(S / total + head.l2 * np.diag(np.r_[np.ones(X.shape[1]), 0.0]), H_loc) < 1e-12
    with pytest.raises(ValidationError, match="sorted"):
        partitioned_hessian(head, train, rows=rows[::-1])


def test_relative_hessian_job_and_plugin_column(setup):
    """A job with the sampled Hessian (eq. 52, N = m) and an extra plug-in column (per-example loss)."""
    tmp, X, y, Xt, yt, train, head = setup
    rows = np.arange(0, len(y), 3)

    def loss_chunk(h, Xc, yc):
        return {"loss": h.losses(torch.as_tensor(Xc, dtype=torch.float64), torch.as_tensor(yc))}

    col = ColumnFunction(loss_chunk, label="loss")
    write_influence_parts(head, train, tmp / "rel", test=(Xt, yt), self_influence=False, hessian_rows=rows,
                          columns=[col], chunk_size=100)
    got = pq.read_table(tmp / "rel")
    assert got.column_names == ["id", "label", "influence", "loss_change_if_removed", "loss"]
    ref = explicit_logistic(head, X, y, Xt, yt, rows=rows)
    assert rel_err(got["influence"].to_numpy(), ref["influence"]) < 1e-10
    theta = np.concatenate([head.weight_[0], head.bias_])
    z = np.hstack([X.astype(np.float64), np.ones((len(X), 1))]) @ theta
    assert rel_err(got["loss"].to_numpy(), np.logaddexp(0, z) - y * z) < 1e-12


def test_self_influence_only_and_device(setup):
    tmp, X, y, _, _, train, head = setup
    res = write_influence_parts(head, train, tmp / "si", device="cpu", chunk_size=128)
    got = pq.read_table(tmp / "si")
    assert res.columns == ["id", "label", "self_influence"]
    assert rel_err(got["self_influence"].to_numpy(), explicit_logistic(head, X, y)["self_influence"]) < 1e-10
    with pytest.raises(ValidationError, match="nothing to compute"):
        write_influence_parts(head, train, tmp / "none", self_influence=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_matches_cpu(setup):  # pragma: no cover - runs on GPU machines
    tmp, X, y, Xt, yt, train, head = setup
    write_influence_parts(head, train, tmp / "gpu", test=(Xt, yt), device="cuda", chunk_size=128)
    ref = explicit_logistic(head, X, y, Xt, yt)
    got = pq.read_table(tmp / "gpu")
    for c in ("influence", "self_influence"):
        assert rel_err(got[c].to_numpy(), ref[c]) < 1e-10


# ---------------------------------------------------------------------------------------------- resume
def test_resume_skips_finished_parts_and_redoes_damaged_ones(setup):
    tmp, X, y, Xt, yt, train, head = setup
    out = tmp / "scores"
    write_influence_parts(head, train, out, test=(Xt, yt), chunk_size=64, partition_rows=250)
    first = pq.read_table(out)
    before = mtimes(out)
    # simulate a crash: part 2 never written, part 4 left as junk, a temporary file lying around
    (out / "part-00002.parquet").unlink()
    (out / "part-00004.parquet").write_bytes(b"PAR1 not really")
    (out / ".part-00005.parquet.deadbeef.tmp.parquet").write_bytes(b"half")
    man = json.loads((out / MANIFEST).read_text())
    man["complete"] = False
    (out / MANIFEST).write_text(json.dumps(man))
    time.sleep(0.01)
    res = write_influence_parts(head, train, out, test=(Xt, yt), chunk_size=64, partition_rows=250, resume=True)
    assert (res.written, res.skipped, res.resumed) == (2, 5, True)
    after = mtimes(out)
    changed = sorted(k for k in after if after[k] != before.get(k))
    assert changed == ["part-00002.parquet", "part-00004.parquet"]
    assert not list(out.glob(".*tmp*"))
    assert pq.read_table(out).equals(first)  # bit-identical
    assert json.loads((out / MANIFEST).read_text())["complete"] is True
    # resuming a finished job writes nothing
    assert write_influence_parts(head, train, out, test=(Xt, yt), chunk_size=64, partition_rows=250,
                                 resume=True).written == 0


def test_resume_refuses_a_different_job(setup):
    tmp, X, y, Xt, yt, train, head = setup
    out = tmp / "scores"
    kw = dict(test=(Xt, yt), partition_rows=250)
    write_influence_parts(head, train, out, **kw)
    with pytest.raises(OutputExistsError, match="--resume"):
        write_influence_parts(head, train, out, **kw)
    other = LogisticHead.from_weights(head.weight_ * 1.01, head.bias_, l2=head.l2, precision="float64")
    with pytest.raises(ValidationError, match=r"refusing to resume.*head\.theta_sha256"):
        write_influence_parts(other, train, out, resume=True, allow_nonstationary=True, **kw)
    with pytest.raises(ValidationError, match=r"refusing to resume.*test"):
        write_influence_parts(head, train, out, resume=True, test=(Xt[:-1], yt[:-1]), partition_rows=250)
    with pytest.raises(ValidationError, match=r"refusing to resume.*partitions"):
        write_influence_parts(head, train, out, resume=True, test=(Xt, yt), partition_rows=100)
    with pytest.raises(ValidationError, match=r"refusing to resume.*damping"):
        write_influence_parts(head, train, out, resume=True, damping=1e-3, **kw)
    res = write_influence_parts(other, train, out, overwrite=True, allow_nonstationary=True, **kw)
    assert res.written == 7 and not res.resumed
    ref = explicit_logistic(other, X, y, Xt, yt)
    assert rel_err(pq.read_table(out)["influence"].to_numpy(), ref["influence"]) < 1e-10
    (tmp / "afile").write_text("x")
    with pytest.raises(OutputExistsError, match="is a file"):
        write_influence_parts(head, train, tmp / "afile", **kw)
    (tmp / "busy").mkdir()
    (tmp / "busy" / "notes.txt").write_text("x")
    with pytest.raises(OutputExistsError, match="not empty"):
        write_influence_parts(head, train, tmp / "busy", **kw)


# ------------------------------------------------------------------------------------------- bad input
def _no_output(out: Path) -> bool:
    return not out.exists() or not list(out.iterdir())


def test_truncated_part_is_named_and_nothing_written(setup):
    tmp, X, y, Xt, yt, train, head = setup
    bad = train / "f01.parquet"
    bad.write_bytes(bad.read_bytes()[:-200])
    with pytest.raises(ValidationError, match="f01.parquet"):
        write_influence_parts(head, train, tmp / "o", test=(Xt, yt))
    assert _no_output(tmp / "o")


def test_schema_disagreement_and_missing_label_are_named(setup):
    tmp, X, y, Xt, yt, train, head = setup
    t = pq.read_table(train / "f01.parquet")
    pq.write_table(t.set_column(0, "label", t["label"].cast(pa.string())), train / "f01.parquet")
    with pytest.raises(ValidationError, match=r"f01\.parquet.*label"):
        write_influence_parts(head, train, tmp / "o", test=(Xt, yt))
    assert _no_output(tmp / "o")
    pq.write_table(t.drop(["label"]), train / "f01.parquet")
    with pytest.raises(ValidationError, match=r"f01\.parquet.*'label' is missing"):
        write_influence_parts(head, train, tmp / "o", test=(Xt, yt))
    assert _no_output(tmp / "o")


def corrupt_pages(path: Path, row_group: int) -> None:
    """Scramble the features column chunk of one row group, keeping the footer readable."""
    col = pq.read_metadata(path).row_group(row_group).column(1)
    b = bytearray(path.read_bytes())
    for i in range(col.data_page_offset + 8, col.data_page_offset + col.total_compressed_size - 8):
        b[i] = (b[i] * 7 + 13) % 256
    path.write_bytes(bytes(b))


def test_corrupt_page_in_scoring_pass_spares_other_parts(setup):
    """With a curvature built beforehand, a part whose pages are corrupt fails alone: the error names the
    file, its part is not written, the others are; after repair, --resume finishes the job."""
    tmp, X, y, Xt, yt, train, head = setup
    curv = fit_curvature(head, (X, y))
    good = (train / "f01.parquet").read_bytes()
    corrupt_pages(train / "f01.parquet", 1)
    out = tmp / "o"
    with pytest.raises(ValidationError, match=r"f01\.parquet.*1 of 3 parts were not written"):
        write_influence_parts(head, train, out, test=(Xt, yt), curvature=curv)
    assert sorted(p.name for p in out.glob("part-*")) == ["part-00000.parquet", "part-00002.parquet"]
    assert not list(out.glob(".*tmp*"))
    (train / "f01.parquet").write_bytes(good)
    os.utime(train / "f01.parquet", ns=(0, 0))  # a repaired file is a changed input: the job refuses...
    with pytest.raises(ValidationError, match="refusing to resume.*mtime_ns"):
        write_influence_parts(head, train, out, test=(Xt, yt), curvature=curv, resume=True)
    res = write_influence_parts(head, train, out, test=(Xt, yt), curvature=curv, overwrite=True)
    assert res.written == 3
    ref = explicit_logistic(head, X, y, Xt, yt)
    assert rel_err(pq.read_table(out)["influence"].to_numpy(), ref["influence"]) < 1e-10


def test_bad_label_in_one_part_fails_that_part(setup):
    tmp, X, y, Xt, yt, train, head = setup
    t = pq.read_table(train / "f02.parquet")
    lab = t["label"].to_numpy().copy()
    lab[17] = 2
    pq.write_table(t.set_column(0, "label", pa.array(lab)), train / "f02.parquet", row_group_size=100)
    with pytest.raises(ValidationError, match=r"f02\.parquet.*labels in \{0, 1\}"):
        write_influence_parts(head, train, tmp / "o", test=(Xt, yt))
    assert _no_output(tmp / "o")  # the Hessian pass meets it first: nothing written


# ------------------------------------------------------------------------------- kill -9 and memory
CRASH_SCRIPT = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    from winnow.core.heads import load_head
    from winnow.engine.backends import ColumnFunction, write_influence_parts

    def margin(head, X, y, slow):
        if slow:
            time.sleep(slow)
        import torch
        return {"margin": head.logits(torch.as_tensor(X, dtype=torch.float64))[:, 0]}

    head_path, train, test, out, slow, resume = sys.argv[1:]
    t = np.load(test)
    col = ColumnFunction(margin, {"slow": 0.0}, label="margin")
    if float(slow):
        col = ColumnFunction(margin, {"slow": float(slow)}, label="margin")  # same label: the same job
    head = load_head(head_path)
    head.precision = "float64"  # compared with a float64 reference to 1e-10
    res = write_influence_parts(head, train, out, test=(t["X"], t["y"]), columns=[col],
                                chunk_size=50, partition_rows=100, resume=resume == "1")
    print("RESULT", res.written, res.skipped, res.resumed, flush=True)
""")


@pytest.mark.slow
def test_kill9_during_scoring_then_resume_equals_uninterrupted(setup):
    tmp, X, y, Xt, yt, train, head = setup
    script = tmp / "job.py"
    script.write_text(CRASH_SCRIPT)
    head.save(tmp / "head.npz")
    np.savez(tmp / "test.npz", X=Xt, y=yt)
    args = [sys.executable, str(script), str(tmp / "head.npz"), str(train), str(tmp / "test.npz")]
    out = tmp / "crashed"
    proc = subprocess.Popen(args + [str(out), "0.05", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(list(out.glob("part-*.parquet"))) < 3:
            time.sleep(0.02)
            assert proc.poll() is None, proc.stderr.read().decode()
        os.kill(proc.pid, signal.SIGKILL)  # in the middle of the scoring pass
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    n_done = len(list(out.glob("part-*.parquet")))
    assert 3 <= n_done < 12
    assert json.loads((out / MANIFEST).read_text())["complete"] is False
    resumed = subprocess.run(args + [str(out), "0", "1"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    written, skipped, was_resumed = resumed.stdout.split("RESULT")[1].split()
    assert int(written) + int(skipped) == 12 and int(skipped) >= n_done - 1 and was_resumed == "True"
    clean = subprocess.run(args + [str(tmp / "clean"), "0", "0"], capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0, clean.stderr
    a, b = pq.read_table(out), pq.read_table(tmp / "clean")
    assert a.equals(b)  # bit-identical to an uninterrupted run
    assert not list(out.glob(".*tmp*"))
    ref = explicit_logistic(head, X, y, Xt, yt)
    assert rel_err(a["influence"].to_numpy(), ref["influence"]) < 1e-10


MEMORY_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from winnow.core.heads import load_head
    from winnow.engine.backends import write_influence_parts
    head_path, train, test, out = sys.argv[1:]
    t = np.load(test)
    write_influence_parts(load_head(head_path), train, out, test=(t["X"], t["y"]), chunk_size=1024,
                          allow_nonstationary=True)
    # VmHWM: this process image's own peak RSS (ru_maxrss of a child started by vfork + exec would also
    # count the parent's RSS at the time of the exec)
    hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM")][0]
    print("PEAK_KB", hwm.split()[1])
""")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_peak_memory_does_not_grow_with_rows(tmp_path):
    """Peak RSS of a whole run (Hessian, test and scoring passes, parts written) on 20 chunks' worth of
    rows vs 300 chunks' worth (float32, D = 64): the data grows by 70 MB (140 MB as float64), peak
    memory must not."""
    from winnow.datasets import synthetic_embeddings

    D, chunk = 64, 1024
    head = LogisticHead.from_weights(np.random.default_rng(0).standard_normal(D) * 0.1, 0.0, l2=1e-3)
    head.save(tmp_path / "head.npz")
    Xt, yt = next(synthetic_embeddings(500, D, seed=9, chunk_size=500))
    np.savez(tmp_path / "test.npz", X=Xt, y=yt)
    peaks = {}
    for n in (20 * chunk, 300 * chunk):
        d = tmp_path / f"train{n}"
        for i, (Xc, yc) in enumerate(synthetic_embeddings(n, D, seed=1, chunk_size=50 * chunk)):
            write_parquet_dir(d / f"{i}", Xc, yc, [len(yc)], row_group=chunk)
            (d / f"{i}" / "f00.parquet").rename(d / f"f{i:03d}.parquet")
            (d / f"{i}").rmdir()
        r = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path / "head.npz"), str(d),
                            str(tmp_path / "test.npz"), str(tmp_path / f"out{n}")],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        peaks[n] = int(r.stdout.split("PEAK_KB")[1]) / 1024
        assert pq.read_metadata(tmp_path / f"out{n}" / "part-00000.parquet").num_rows > 0
    small, big = peaks[20 * chunk], peaks[300 * chunk]
    data_mb = 280 * chunk * D * 4 / 2**20
    print(f"peak RSS (VmHWM) by rows: {peaks} MiB; the data grew by {data_mb:.0f} MiB")
    assert big - small < 0.25 * data_mb, (peaks, data_mb)


def test_partition_dataclass_describes_itself():
    p = Partition(3, 10, 20, "/x/f.parquet")
    assert p.name == "part-00003" and p.n_rows == 10 and "rows 10..19" in p.where() and "/x/f.parquet" in p.where()


def test_cli_glue_relative_hessian_and_memorization_columns(setup):
    """`winnow influence` with partitioned output: the sampled Hessian of winnow.analyses.relative and the command's
    ScoreColumns (memorization with a threshold) give the one-file output's numbers."""
    memo = pytest.importorskip("winnow.analyses.memorization")
    from winnow.analyses.relative import make_curvature
    from winnow.cli.scale import influence_parts_command, wants_parts

    tmp, X, y, Xt, yt, train, head = setup
    res = influence_parts_command(head, train, (Xt, yt), tmp / "parts", hessian="relative", sample_size=400,
                                  seed=3, extra=[memo.MemorizationColumns(threshold=5.0)], partition_rows=250,
                                  quiet=True)
    assert res.n_parts == 7
    curv = make_curvature(head, train, hessian="relative", sample_size=400, seed=3)
    an = InfluenceAnalyzer(head).fit(train, curvature=curv)
    an.write_scores((Xt, yt), tmp / "one.parquet", extra=[memo.MemorizationColumns(threshold=5.0)])
    a, b = pq.read_table(tmp / "one.parquet"), pq.read_table(tmp / "parts")
    assert b.column_names == a.column_names
    for c in ("influence", "self_influence", "memorization"):
        assert rel_err(b[c].to_numpy(), a[c].to_numpy()) < 1e-10, c
    np.testing.assert_array_equal(a["memorize"].to_numpy(), b["memorize"].to_numpy())
    assert wants_parts(tmp / "x.parquet", workers=2) and wants_parts(tmp / "parts")
    assert not wants_parts(tmp / "x.parquet")
    with pytest.raises(ValidationError, match="--pairs"):
        influence_parts_command(head, train, (Xt, yt), tmp / "p2", pairs=tmp / "pairs.parquet", quiet=True)


def _cli(argv: list) -> int:
    from clirun import run

    return run(argv)


def test_cli_influence_parts_and_resume(setup, capsys):
    """`winnow influence --parts / --resume / --scheduler` end to end (active once cli/core.py has the options)."""
    import inspect

    from winnow.cli import core

    if "partition_rows" not in inspect.signature(core.influence).parameters:
        pytest.skip("`winnow influence` has no partitioned options yet (see cli/scale.py)")
    tmp, X, y, Xt, yt, train, head = setup
    head.save(tmp / "head.npz")
    np.savez(tmp / "test.npz", X=Xt, y=yt)
    base = ["influence", train, "--head", tmp / "head.npz", "--test", tmp / "test.npz", "--quiet",
            "--precision", "float64"]
    assert _cli(base + ["--out", tmp / "one.parquet"]) == 0
    assert _cli(base + ["--out", tmp / "parts", "--partition-rows", 250]) == 0
    one, parts = pq.read_table(tmp / "one.parquet"), pq.read_table(tmp / "parts")
    assert parts.column_names == one.column_names and len(list((tmp / "parts").glob("part-*"))) == 7
    for c in ("influence", "self_influence"):
        assert rel_err(parts[c].to_numpy(), one[c].to_numpy()) < 1e-10
    assert _cli(base + ["--out", tmp / "parts", "--partition-rows", 250]) == 2
    assert "--resume" in capsys.readouterr().err
    (tmp / "parts" / "part-00003.parquet").unlink()
    assert _cli(base + ["--out", tmp / "parts", "--partition-rows", 250, "--resume"]) == 0
    assert pq.read_table(tmp / "parts").equals(parts)
    assert _cli(base + ["--out", tmp / "x", "--scheduler", "tcp://127.0.0.1:1", "--cluster-timeout", 1]) == 2
    assert "cannot connect" in capsys.readouterr().err
