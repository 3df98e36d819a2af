"""The report of a user's own scores (``winnow.report.run``): every number in the summary equals an independent
pandas/numpy computation on the same scores, whatever the file's layout (one row group, many, a directory of
part files, CSV), and bad input is refused in one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from winnow.errors import OutputExistsError, ValidationError
from winnow.report.run import run_report, summarize_scores

CLASSES = ["cat", "<script>alert(1)</script>", "dog & co", "eel"]


def scores_table(n: int = 3000, seed: int = 0, *, string_ids: bool = True, nonfinite: int = 0) -> pa.Table:
    """Scores shaped like `winnow influence --memorization` output: heavy-tailed influence, label-dependent."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 4, n)
    infl = rng.standard_t(3, n) * 1e-2 + 0.004 * (label == 2)  # label 2 leans harmful
    infl[rng.choice(n, nonfinite, replace=False)] = np.nan
    ids = np.array([f"img-{i:05d}" for i in rng.permutation(n)]) if string_ids else rng.permutation(n) * 3
    mem = rng.exponential(1.0, n)
    cols = {"id": ids, "label": label.astype(np.int64), "influence": infl, "loss_change_if_removed": -infl / n,
            "self_influence": rng.exponential(1.0, n) * (1 + label), "memorization": mem, "memorize": mem > 2.0}
    meta = {"winnow.classes": json.dumps(CLASSES), "winnow.memorize_threshold": "2.0",
            "winnow.stationarity": json.dumps({"gradient_norm": 3e-12, "gradient_scale": 0.5, "relative": 6e-12,
                                               "threshold": 1e-6, "refit": False}),
            "winnow.run": json.dumps({"n_train": n, "n_test": 77, "head": "SoftmaxHead", "l2": 1e-3,
                                      "n_params": 12, "damping": 0.0, "hessian_normalizer": float(n)})}
    return pa.table(cols).replace_schema_metadata(meta)


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return scores_table()


@pytest.fixture(scope="module")
def one_group(tmp_path_factory, table) -> Path:
    p = tmp_path_factory.mktemp("scores") / "one.parquet"
    pq.write_table(table, p)
    assert pq.ParquetFile(p).metadata.num_row_groups == 1
    return p


@pytest.fixture(scope="module")
def many_groups(tmp_path_factory, table) -> Path:
    p = tmp_path_factory.mktemp("scores") / "many.parquet"
    pq.write_table(table, p, row_group_size=211)
    assert pq.ParquetFile(p).metadata.num_row_groups > 10
    return p


def comparable(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("source", "format")}


def assert_close_dict(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], float) and isinstance(b[k], float) and math.isnan(a[k]):
            assert math.isnan(b[k]), k
        elif isinstance(a[k], dict):
            assert_close_dict(a[k], b[k])
        elif not isinstance(a[k], float):
            assert a[k] == b[k], k
        else:
            assert a[k] == pytest.approx(b[k], rel=1e-12, abs=1e-300), k


def test_summary_equals_pandas(many_groups, table):
    df = table.to_pandas()
    k = 15
    s = summarize_scores(many_groups, top=k, batch_size=97)
    assert s["n"] == len(df)
    # the most harmful / helpful points, with their ids, labels and class names
    harm = df[df.influence > 0].nlargest(k, "influence", keep="first")
    helpf = df[df.influence < 0].nsmallest(k, "influence", keep="first")
    assert [r["id"] for r in s["harmful"]] == harm.id.tolist()
    assert [r["id"] for r in s["helpful"]] == helpf.id.tolist()
    assert [r["influence"] for r in s["harmful"]] == harm.influence.tolist()
    assert [r["label"] for r in s["helpful"]] == helpf.label.tolist()
    assert [r["class"] for r in s["harmful"]] == [CLASSES[c] for c in harm.label]
    assert [r["self_influence"] for r in s["harmful"]] == harm.self_influence.tolist()
    # per label: count, mean, std, min, max, shares, quantiles (exact: every row held), self-influence
    g = df.groupby("label")
    assert [d["label"] for d in s["by_label"]] == sorted(df.label.unique())
    assert s["quantiles_exact"]
    for d in s["by_label"]:
        v = g.get_group(d["label"])
        assert d["count"] == len(v)
        assert d["class"] == CLASSES[d["label"]]
        assert d["mean"] == pytest.approx(v.influence.mean(), rel=1e-12)
        assert d["std"] == pytest.approx(v.influence.std(ddof=0), rel=1e-10)
        assert d["min"] == v.influence.min() and d["max"] == v.influence.max()
        assert d["share_harmful"] == pytest.approx((v.influence > 0).mean(), rel=1e-12)
        assert d["share_helpful"] == pytest.approx((v.influence < 0).mean(), rel=1e-12)
        assert list(d["quantiles"].values()) == pytest.approx(
            v.influence.quantile([0.05, 0.25, 0.5, 0.75, 0.95]).tolist(), rel=1e-12)
        assert d["self_influence_mean"] == pytest.approx(v.self_influence.mean(), rel=1e-12)
        assert d["self_influence_quantiles"]["q50"] == pytest.approx(v.self_influence.median(), rel=1e-12)
        assert d["memorize"] == int(v.memorize.sum())
        assert d["memorize_share"] == pytest.approx(v.memorize.mean(), rel=1e-12)
        assert d["memorization_mean"] == pytest.approx(v.memorization.mean(), rel=1e-12)
    ov = s["overall"]
    assert ov["count"] == len(df) and ov["mean"] == pytest.approx(df.influence.mean(), rel=1e-12)
    assert ov["share_harmful"] == pytest.approx((df.influence > 0).mean(), rel=1e-12)
    assert ov["quantiles"]["q95"] == pytest.approx(df.influence.quantile(0.95), rel=1e-12)
    assert s["memorization"] == {"threshold": 2.0, "memorize": int(df.memorize.sum()), "n": len(df),
                                 "verdicts": True}
    assert s["stationarity"]["relative"] == 6e-12
    assert s["settings"]["n_test"] == 77
    assert s["classes"] == CLASSES


def test_one_row_group_and_many_give_the_same_summary(one_group, many_groups):
    a = summarize_scores(one_group, top=7)
    b = summarize_scores(many_groups, top=7, batch_size=53)
    assert a["harmful"] == b["harmful"] and a["helpful"] == b["helpful"]
    for da, db in zip(a["by_label"], b["by_label"], strict=True):
        assert_close_dict(da, db)
    assert_close_dict(a["overall"], b["overall"])


def test_sampled_quantiles_are_a_uniform_sample_and_do_not_depend_on_the_layout(tmp_path):
    """Above sample_size rows per label the quantiles come from a uniform sample: close to pandas' (within a
    sampling tolerance), flagged as not exact, and the same sample whatever the row groups and batch size."""
    t = scores_table(20000, seed=5, string_ids=False)
    pq.write_table(t, tmp_path / "a.parquet")
    pq.write_table(t, tmp_path / "b.parquet", row_group_size=777)
    a = summarize_scores(tmp_path / "a.parquet", sample_size=600)
    b = summarize_scores(tmp_path / "b.parquet", sample_size=600, batch_size=131)
    assert not a["quantiles_exact"] and a["by_label"][0]["sampled"]
    for da, db in zip(a["by_label"], b["by_label"], strict=True):
        assert_close_dict(da, db)
    df = t.to_pandas()
    for d in a["by_label"]:
        v = df.influence[df.label == d["label"]]
        sd = v.std()
        for q, got in zip((0.25, 0.5, 0.75), (d["quantiles"]["q25"], d["quantiles"]["q50"], d["quantiles"]["q75"])):
            assert abs(got - v.quantile(q)) < 0.25 * sd, (d["label"], q)
        assert d["mean"] == pytest.approx(v.mean(), rel=1e-12)  # means stay exact


def test_a_directory_of_parts_and_csv_give_the_same_summary(tmp_path, one_group, table):
    parts = tmp_path / "parts"
    parts.mkdir()
    for i, start in enumerate(range(0, table.num_rows, 1000)):
        pq.write_table(table.slice(start, 1000), parts / f"part-{i:05d}.parquet")
    (parts / "_manifest.json").write_text(json.dumps({"complete": True, "n_parts": 3, "n_test": 77,
                                                      "job": {"damping": 0.0}}))
    csv = tmp_path / "scores.csv"
    pacsv.write_csv(table, csv)
    ref = summarize_scores(one_group, top=9)
    for other in (summarize_scores(parts, top=9), summarize_scores(csv, top=9)):
        assert [r["id"] for r in other["harmful"]] == [r["id"] for r in ref["harmful"]]
        assert [r["id"] for r in other["helpful"]] == [r["id"] for r in ref["helpful"]]
        for da, db in zip(ref["by_label"], other["by_label"], strict=True):
            assert db["count"] == da["count"] and db["mean"] == pytest.approx(da["mean"], rel=1e-12)
            assert db["memorize"] == da["memorize"]
    assert summarize_scores(csv)["classes"] is None  # CSV carries no metadata


def test_an_unfinished_parts_directory_is_refused(tmp_path, table):
    parts = tmp_path / "parts"
    parts.mkdir()
    pq.write_table(table.slice(0, 1000), parts / "part-00000.parquet")
    (parts / "_manifest.json").write_text(json.dumps({"complete": False, "n_parts": 3}))
    with pytest.raises(ValidationError) as e:
        summarize_scores(parts)
    assert str(e.value).startswith(f"scores {parts} holds an unfinished run (1 of 3 parts written)")


def test_non_finite_influence_is_counted_and_left_out(tmp_path):
    t = scores_table(500, seed=2, nonfinite=7)
    pq.write_table(t, tmp_path / "s.parquet")
    s = summarize_scores(tmp_path / "s.parquet")
    df = t.to_pandas()
    assert s["nonfinite"] == 7
    assert s["overall"]["count"] == 500 and s["overall"]["n_finite"] == 493
    assert s["overall"]["mean"] == pytest.approx(df.influence.mean(skipna=True), rel=1e-12)
    assert all(np.isfinite(r["influence"]) for r in s["harmful"] + s["helpful"])


def test_the_html_is_self_contained_and_escapes_user_strings(tmp_path, many_groups, table):
    t = table.set_column(0, "id", pa.array(["<script>x</script>"] + table.column("id").to_pylist()[1:]))
    # make the first row the most harmful, so its id is shown
    infl = t.column("influence").to_numpy().copy()
    infl[0] = 10.0
    t = t.set_column(2, "influence", pa.array(infl))
    pq.write_table(t, tmp_path / "s.parquet")
    out = run_report(tmp_path / "s.parquet", tmp_path / "r.html", top=5)
    html = out.read_text(encoding="utf-8")
    assert "<script" not in html
    assert "&lt;script&gt;x&lt;/script&gt;" in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "dog &amp; co" in html
    assert "data:image/png;base64," in html and "src='http" not in html
    assert "removing the first (id &lt;script&gt;x&lt;/script&gt;" in html
    assert "T = 77 test points" in html
    assert "6e-12 ≤ 1e-06: the head sits at its optimum" in html


def test_the_readings_follow_the_figures(tmp_path):
    """A sentence that would contradict the numbers is not written: an unrecorded run says so, a head away from
    its optimum is flagged, a label with many more harmful points is named."""
    n = 400
    lab = np.repeat([0, 1], n // 2)
    infl = np.where(lab == 1, 0.5, -0.5) + np.linspace(-0.1, 0.1, n)
    t = pa.table({"label": lab, "influence": infl}).replace_schema_metadata(
        {"winnow.stationarity": json.dumps({"relative": 0.01, "threshold": 1e-6})})
    pq.write_table(t, tmp_path / "s.parquet")
    html = run_report(tmp_path / "s.parquet", tmp_path / "r.html").read_text(encoding="utf-8")
    assert "settings (damping, Hessian, test set size) were not recorded" in html
    assert "the head was NOT at its optimum" in html
    assert "Label 1 has the largest share of harmful points (100%" in html
    # without an id column the row number is the id; loss change from −influence/n when the column is absent
    top = max(range(n), key=lambda i: infl[i])
    assert f"removing the first (id {top}, label 1) would lower it by {infl[top] / n:.3g}" in html
    # the same scores with the labels balanced: no label stands out
    t2 = pa.table({"label": np.tile([0, 1], n // 2), "influence": np.linspace(-1, 1, n)})
    pq.write_table(t2, tmp_path / "even.parquet")
    html = run_report(tmp_path / "even.parquet").read_text(encoding="utf-8")
    assert "no label stands out" in html and "was not recorded in this file" in html


@pytest.mark.parametrize("columns, missing", [({"id": [1], "label": [0]}, "'influence'"),
                                              ({"id": [1], "influence": [0.1]}, "'label'")])
def test_a_file_that_is_not_scores_is_refused_in_one_line(tmp_path, columns, missing):
    p = tmp_path / "x.parquet"
    pq.write_table(pa.table(columns), p)
    with pytest.raises(ValidationError) as e:
        summarize_scores(p)
    assert str(e.value) == (f"scores {p} is not a winnow scores file: it has no {missing} column (columns: "
                            f"{', '.join(columns)}); give the scores written by `winnow influence --out` with --test")
    assert e.value.parameters == ("scores",)
    assert not (tmp_path / "x.html").exists()
    with pytest.raises(ValidationError, match="^top must be an integer >= 1, got 0$"):
        run_report(p, top=0)


def test_the_report_functions_are_reachable_from_winnow_report():
    import winnow.report

    assert winnow.report.run_report is run_report and winnow.report.summarize_scores is summarize_scores


def test_an_existing_report_is_refused_and_kept(tmp_path, one_group):
    out = tmp_path / "r.html"
    out.write_text("mine")
    with pytest.raises(OutputExistsError):
        run_report(one_group, out)
    assert out.read_text() == "mine"
    run_report(one_group, out, overwrite=True)
    assert out.read_text().startswith("<!doctype html>")


def test_reading_memory_stays_bounded(tmp_path, monkeypatch):
    """One pass with bounded memory: while a 2.4e6-row file (77 MB of columns, one row group) is summarized,
    Arrow never holds more than a fraction of it (the reader does not keep the batches it has read)."""
    import winnow.report.run as R

    n = 2_400_000
    rng = np.random.default_rng(3)
    v = rng.standard_normal(n)
    pq.write_table(pa.table({"id": np.arange(n), "label": rng.integers(0, 3, n), "influence": v,
                             "self_influence": rng.exponential(1.0, n)}), tmp_path / "big.parquet",
                   row_group_size=n)
    peak = []
    batches = R._Scores.batches

    def watched(self, columns, batch_size):
        for b in batches(self, columns, batch_size):
            peak.append(pa.total_allocated_bytes())
            yield b

    monkeypatch.setattr(R._Scores, "batches", watched)
    s = summarize_scores(tmp_path / "big.parquet", top=3)
    assert s["n"] == n and [r["influence"] for r in s["harmful"]] == sorted(v, reverse=True)[:3]
    assert len(peak) > 10 and max(peak) < 40e6, max(peak)


def test_labels_that_are_not_integers_are_refused(tmp_path):
    p = tmp_path / "s.parquet"
    pq.write_table(pa.table({"label": pa.array([0, None, 1], pa.int64()), "influence": [0.1, 0.2, -0.1]}), p)
    with pytest.raises(ValidationError) as e:
        summarize_scores(p)
    assert str(e.value) == (f"scores {p}: the label column must hold integer labels with no missing values (found "
                            f"int64, with missing values); give the scores written by `winnow influence --out`")
