"""`winnow influence --report` and `winnow report SCORES`: the HTML is written, its numbers match the scores file
read independently with pandas, and bad input gives one line and exit status 2 without touching any file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from clirun import run
from conftest import relu_embeddings


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("report-cli")
    X, y = relu_embeddings(260, d=6, seed=7, k=3)
    np.savez(d / "train.npz", X=X[:200], y=y[:200])
    np.savez(d / "test.npz", X=X[200:], y=y[200:])
    assert run(["fit-head", d / "train.npz", "--out", d / "head.npz", "--l2", "1e-2", "-q"]) == 0
    return {"dir": d, "train": d / "train.npz", "test": d / "test.npz", "head": d / "head.npz"}


def influence_args(data: dict, out: Path) -> list:
    return ["influence", data["train"], "--head", data["head"], "--test", data["test"], "--out", out, "-q"]


def cells(html: str, title: str) -> list[list[str]]:
    """The rows of the first table after the section ``title``."""
    part = html.split(f"<h2>{title}</h2>", 1)[1]
    table = part.split("<table>", 1)[1].split("</table>", 1)[0]
    return [re.findall(r"<td>(.*?)</td>", r) for r in table.split("</tr>")[1:] if "<td>" in r]


def test_influence_report_matches_the_scores(data, tmp_path):
    scores, report = tmp_path / "s.parquet", tmp_path / "r.html"
    assert run(influence_args(data, scores) + ["--memorization", "--report", report]) == 0
    html = report.read_text(encoding="utf-8")
    df = pq.read_table(scores).to_pandas()
    meta = json.loads(pq.read_schema(scores).metadata[b"winnow.run"])
    assert (meta["n_train"], meta["n_test"], meta["damping"], meta["hessian_normalizer"]) == (200, 60, 0.0, 200.0)
    assert "against the mean loss of T = 60 test points, with the Hessian over every training row" in html
    harm = df[df.influence > 0].nlargest(20, "influence")
    rows = cells(html, "Most harmful training points")
    assert [int(r[1]) for r in rows] == harm.id.tolist()
    assert [int(r[2]) for r in rows] == harm.label.tolist()
    first = harm.iloc[0]
    assert (f"removing the first (id {first.id}, label {first.label}) would lower it by "
            f"{abs(first.loss_change_if_removed):.3g}") in html
    help_rows = cells(html, "Most helpful training points")
    assert [int(r[1]) for r in help_rows] == df[df.influence < 0].nsmallest(20, "influence").id.tolist()
    by_label = cells(html, "Influence by label")
    for r in by_label[:-1]:
        v = df[df.label == int(r[0])]
        assert int(r[1]) == len(v)
        assert float(r[2]) == pytest.approx((v.influence > 0).mean(), rel=1e-3)
        assert float(r[3]) == pytest.approx(v.influence.mean(), rel=1e-3)
    assert by_label[-1][0] == "all" and int(by_label[-1][1]) == 200
    assert f"{int(df.memorize.sum())} of 200 points" in html


def test_report_command_default_path_top_and_overwrite(data, tmp_path, capsys):
    scores = tmp_path / "scores.parquet"
    assert run(influence_args(data, scores)) == 0
    assert run(["report", scores, "--top", 3]) == 0
    out = tmp_path / "scores.html"
    assert capsys.readouterr().err.strip() == f"wrote {out}"
    html = out.read_text(encoding="utf-8")
    assert len(cells(html, "Most harmful training points")) == 3
    assert "The 3 points below raise the mean test loss the most" in html
    before = out.read_bytes()
    assert run(["report", scores]) == 2
    assert capsys.readouterr().err.strip() == f"error: --out {out} exists; pass --overwrite to replace it"
    assert out.read_bytes() == before
    assert run(["report", scores, "--overwrite", "-q"]) == 0
    assert len(cells(out.read_text(encoding="utf-8"), "Most harmful training points")) == 20


def test_partitioned_influence_with_report(data, tmp_path):
    parts, report = tmp_path / "parts", tmp_path / "r.html"
    assert run(influence_args(data, parts) + ["--parts", "--partition-rows", 64, "--damping", "0.01",
                                              "--report", report]) == 0
    df = pq.read_table(parts).to_pandas()
    html = report.read_text(encoding="utf-8")
    assert [int(r[1]) for r in cells(html, "Most harmful training points")] == \
        df[df.influence > 0].nlargest(20, "influence").id.tolist()
    assert "T = 60 test points" in html and "damped by 0.01" in html


@pytest.mark.parametrize("case", ["not-scores", "top-0", "missing", "report-exists"])
def test_bad_input_is_one_line_and_exit_2(data, tmp_path, capsys, case):
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"id": [1, 2], "label": [0, 1]}), other)
    scores = tmp_path / "s.parquet"
    if case == "not-scores":
        argv = ["report", other]
        want = (f"error: SCORES {other} is not a winnow scores file: it has no 'influence' column (columns: id, "
                f"label); give the scores written by `winnow influence --out` with --test")
    elif case == "top-0":
        argv = ["report", other, "--top", 0]
        want = "error: --top must be an integer >= 1, got 0"
    elif case == "missing":
        argv = ["report", tmp_path / "nope.parquet"]
        want = f"error: SCORES {tmp_path / 'nope.parquet'} does not exist; give the scores written by `winnow " \
               f"influence --out`"
    else:
        (tmp_path / "r.html").write_text("mine")
        argv = influence_args(data, scores) + ["--report", tmp_path / "r.html"]
        want = f"error: --report {tmp_path / 'r.html'} exists; pass --overwrite to replace it"
    capsys.readouterr()
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert err.strip() == want and err.count("\n") == 1
    assert not scores.exists()  # influence refuses before any pass over the data
    assert not (tmp_path / "other.html").exists() and not (tmp_path / "nope.html").exists()
