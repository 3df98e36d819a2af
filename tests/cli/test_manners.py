"""The command line's manners: output formats by extension, strict JSON, honest theorem summaries, progress
without a terminal, demo's overwrite, help texts, one-line warnings and safe model files."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import typer
from clirun import run
from conftest import relu_embeddings
from typer.testing import CliRunner

from winnow.cli import app
from winnow.core.heads import LogisticHead


def strict_loads(text: str) -> object:
    def refuse(name: str) -> None:
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def one_error_line(argv: list, capsys) -> str:
    code = run(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("manners")
    X, y = relu_embeddings(100, d=4, seed=5)
    np.savez(d / "train.npz", X=X[:70], y=y[:70])
    np.savez(d / "test.npz", X=X[70:], y=y[70:])
    LogisticHead(l2=1e-2).fit(X[:70], y[:70]).save(d / "head.npz")
    # Theorem 3 made vacuous: TRAIN holds the test point twice, once with each label, so that for it
    # T⁺ = 0 (the flipped copy: χ_iψ_i ≤ 0 for every i) and T⁻ = 0 (the equal copy: χ = ψ), hence D± = 0
    xt = X[70:71]
    Xv, yv = np.vstack([X[:60], xt, xt]), np.r_[y[:60], 0, 1]
    np.savez(d / "train_dup.npz", X=Xv, y=yv)
    np.savez(d / "test_one.npz", X=xt, y=np.array([0]))
    LogisticHead(l2=1e-2).fit(Xv, yv).save(d / "head_dup.npz")
    return d


# ---------------------------------------------------------------------------------------------- formats
def test_influence_writes_csv_for_a_csv_path(files, tmp_path, capsys):
    assert run(["influence", files / "train.npz", "--head", files / "head.npz", "--test", files / "test.npz",
                "--out", tmp_path / "s.csv", "-q"]) == 0
    assert run(["influence", files / "train.npz", "--head", files / "head.npz", "--test", files / "test.npz",
                "--out", tmp_path / "s.parquet", "-q"]) == 0
    with open(tmp_path / "s.csv", newline="") as f:
        rows = list(csv.reader(f))
    ref = pq.read_table(tmp_path / "s.parquet")
    assert rows[0] == ref.column_names and len(rows) - 1 == ref.num_rows == 70
    np.testing.assert_array_equal([float(r[2]) for r in rows[1:]], ref.column("influence").to_numpy())
    assert "winnow.influence" in strict_loads((tmp_path / "s.csv.json").read_text())


@pytest.mark.parametrize("command, flag, name, accepted", [
    ("influence", "--out", "scores.txt", ".parquet or .csv"),
    ("influence-pairs", "--pairs", "pairs.json", ".parquet or .csv"),
    ("validate-loo", "--json", "loo.txt", ".json"),
    ("fit-head", "--out", "head.pt", ".npz"),
    ("check-theorems", "--report", "r.pdf", ".html"),
])
def test_a_wrong_extension_is_one_line_naming_the_flag(files, tmp_path, capsys, command, flag, name, accepted):
    out = tmp_path / "o"
    common = ["--head", files / "head.npz", "--test", files / "test.npz"]
    argv = {
        "influence": ["influence", files / "train.npz", *common, "--out", out / name],
        "influence-pairs": ["influence", files / "train.npz", *common, "--out", out / "s.parquet", "--pairs",
                            out / name],
        "validate-loo": ["validate-loo", files / "train.npz", *common, "--points", "3", "--json", out / name],
        "fit-head": ["fit-head", files / "train.npz", "--out", out / name],
        "check-theorems": ["check-theorems", files / "train.npz", *common, "--report", out / name],
    }[command]
    line = one_error_line(argv + ["-q"], capsys)
    ext = Path(name).suffix
    assert line == (f"error: {flag} {out / name} ends in '{ext}'; the extension chooses the format written: "
                    f"use a path ending in {accepted}")
    assert not out.exists() or not any(out.iterdir())


# ------------------------------------------------------------------------------------- JSON and theorems
def test_check_theorems_uses_all_pairs_when_fewer_exist_and_says_so(files, tmp_path, capsys):
    assert run(["check-theorems", files / "train.npz", "--head", files / "head.npz", "--test", files / "test.npz",
                "--l2-grid", "1e-2", "--removal-fraction", "0.1", "--json", tmp_path / "t.json", "-q"]) == 0
    out = capsys.readouterr().out
    n_pairs = 70 * 30
    assert f"Theorem 4 (eq. 91) on {n_pairs:,} pairs (all of them)".replace(",", " ") in out
    assert "sampled pairs" not in out
    s = strict_loads((tmp_path / "t.json").read_text())["sign_rule"]
    assert (s["n_pairs"], s["pairs_requested"], s["all_pairs"]) == (n_pairs, 100_000, True)
    assert sum(map(sum, s["table"]["pairs"])) == n_pairs


def test_sign_rule_pairs_are_distinct_and_all_of_them_when_asked_for_more():
    from winnow.analyses.theorems import sign_rule
    from winnow.engine.passes import fit_curvature

    X, y = relu_embeddings(60, d=4, seed=8)
    head = LogisticHead(l2=1e-2).fit(X[:40], y[:40])
    curv = fit_curvature(head, (X[:40], y[:40]))
    every = sign_rule(head, curv, (X[:40], y[:40]), (X[40:], y[40:]), pairs=10_000)
    got = set(zip(every.pair_test_rows.tolist(), every.pair_train_rows.tolist()))
    assert every.all_pairs and every.n_pairs == 800 and got == {(t, p) for t in range(20) for p in range(40)}
    some = sign_rule(head, curv, (X[:40], y[:40]), (X[40:], y[40:]), pairs=500, seed=3)
    pairs = list(zip(some.pair_test_rows.tolist(), some.pair_train_rows.tolist()))
    assert not some.all_pairs and some.n_pairs == 500 and len(set(pairs)) == 500
    assert some.pairs_text == "500 sampled pairs" and every.pairs_text == "800 pairs (all of them)"


def test_vacuous_theorem3_is_said_in_words_json_and_report(files, tmp_path, capsys):
    argv = ["check-theorems", files / "train_dup.npz", "--head", files / "head_dup.npz", "--test",
            files / "test_one.npz", "--no-sign-rule", "--test-points", "1", "--json", tmp_path / "t.json",
            "--report", tmp_path / "t.html", "-q"]
    assert run(argv) == 0
    out = capsys.readouterr().out
    assert "vacuously" in out and "holds only vacuously" in " ".join(out.split())
    text = (tmp_path / "t.json").read_text()
    t3 = strict_loads(text)["theorem3"]  # min score / D is infinite here: strict JSON writes null
    assert t3["vacuous"] is True and t3["holds"] is True and t3["vacuous_test_points"] == 1
    p = t3["test_points"][0]
    assert p["D_plus"] == 0.0 and p["D_minus"] == 0.0 and p["vacuous"] is True
    assert math.copysign(1.0, p["D_minus"]) == 1.0 and "-0 " not in out  # a zero threshold is 0, not -0
    assert p["verdict"].startswith("vacuously") and p["min_ratio_positive"] is None
    assert "Infinity" not in text and "NaN" not in text
    assert "holds only vacuously" in (tmp_path / "t.html").read_text()


def test_theorem3_verdicts():
    from winnow.analyses.theorems import Theorem3Result

    base = dict(test_row=0, test_id=0, test_label=0, lambda_min=1.0, hessian_eig_max=1.0, max_abs_psi=1.0,
                T_plus=1.0, T_minus=1.0, D_plus=0.5, D_minus=0.5, n_positive=3, n_positive_exceeding=3,
                n_negative=2, n_negative_exceeding=2, n_zero=0, n_positive_exceeding_pointwise=3,
                n_negative_exceeding_pointwise=2, n_positive_exceeding_weighted=3,
                n_negative_exceeding_weighted=2, min_ratio_positive=2.0, min_ratio_negative=2.0)
    assert Theorem3Result(**base).verdict == "yes" and not Theorem3Result(**base).vacuous
    r = Theorem3Result(**{**base, "D_minus": 0.0})
    assert r.verdict == "yes (D⁻ = 0: vacuous)" and r.vacuous_minus and not r.vacuous
    r = Theorem3Result(**{**base, "n_positive": 0, "n_positive_exceeding": 0, "D_minus": 0.0})
    assert r.vacuous and r.verdict == "vacuously (no point has I > 0, D⁻ = 0)"
    r = Theorem3Result(**{**base, "D_plus": 0.0, "D_minus": 0.0})
    assert r.vacuous and r.verdict == "vacuously (D⁺ = D⁻ = 0)" and r.holds
    assert Theorem3Result(**{**base, "n_negative_exceeding": 1}).verdict == "NO"


@pytest.mark.parametrize("command", ["validate-loo", "check-theorems", "subsample", "validate-group", "lep"])
def test_every_json_the_cli_writes_is_strict(files, tmp_path, command):
    tr, hd, te = files / "train.npz", files / "head.npz", files / "test.npz"
    j = tmp_path / "o.json"
    argv = {
        "validate-loo": ["validate-loo", tr, "--head", hd, "--test", te, "--points", "3"],
        "check-theorems": ["check-theorems", files / "train_dup.npz", "--head", files / "head_dup.npz", "--test",
                           files / "test_one.npz", "--no-sign-rule", "--test-points", "1"],
        "subsample": ["subsample", tr, "--head", hd, "--keep", "0.5", "--policy", "random", "--out",
                      tmp_path / "sub.parquet"],
        "validate-group": ["validate-group", tr, "--head", hd, "--test", te, "--sweep", "--fractions", "0.1",
                           "--random-groups", "1"],
        "lep": ["lep", tr, "--head", hd, "--test", te, "--start", "20", "--max-size", "40"],
    }[command]
    assert run(argv + ["--json", j, "-q"]) == 0
    strict_loads(j.read_text())


# ------------------------------------------------------------------------------------------- progress
def test_progress_without_a_terminal_ends_with_the_final_state(files, tmp_path, capsys):
    tr, hd, te = files / "train.npz", files / "head.npz", files / "test.npz"
    assert run(["validate-loo", tr, "--head", hd, "--test", te, "--points", "4"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"^leave-one-out: 4/4 retrains in \d:\d\d:\d\d$", err, re.M), err
    assert "\x1b[" not in err  # no terminal codes in a pipe or a file
    assert run(["validate-group", tr, "--head", hd, "--test", te, "--sweep", "--fractions", "0.1,0.2",
                "--random-groups", "2"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"^group retrains: 8/8 retrains in ", err, re.M), err  # 2 sizes × (2 random + 2 ranked)
    assert run(["subsample", tr, "--head", hd, "--keep", "0.5", "--policy", "random", "--out",
                tmp_path / "sub.parquet", "-q"]) == 0
    capsys.readouterr()
    assert run(["evaluate-subset", tr, "--subset", tmp_path / "sub.parquet", "--test", te, "--head", hd,
                "--seeds", "3"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"^random-subset retrains: 3/3 retrains in ", err, re.M), err


def test_model_progress_counts_rows(files, tmp_path, capsys):
    import nets

    torch.manual_seed(0)
    model = nets.small_mlp()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    Xm = np.random.default_rng(0).standard_normal((37, 4)).astype(np.float32)
    ym = (Xm[:, 0] > 0).astype(np.int64)
    np.savez(tmp_path / "in.npz", X=Xm, y=ym)
    assert run(["extract-features", tmp_path / "w.pt", tmp_path / "in.npz", "--head", "2", "--out",
                tmp_path / "f.parquet", "--batch-size", "8", "--factory", "nets:small_mlp"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"^features: 37/37 rows in ", err, re.M), err
    assert run(["model-influence", tmp_path / "w.pt", "--train", tmp_path / "in.npz", "--test", tmp_path / "in.npz",
                "--out", tmp_path / "s.parquet", "--batch-size", "8", "--damping", "1", "--factory",
                "nets:small_mlp"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"^scoring pass: 37/37 rows in ", err, re.M), err
    assert re.search(r"^Hessian columns \(about [^)]*\): 19/19 columns in ", err, re.M), err  # P = 4·3 + 3 + 3 + 1
    assert run(["check-head", tmp_path / "w.pt", "--head", "2", "--train", tmp_path / "in.npz", "--test",
                tmp_path / "in.npz", "--batch-size", "8", "--damping", "1", "--pairs-train", "5", "--pairs-test", "3",
                "--factory", "nets:small_mlp"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"^gradients: 37/37 rows in ", err, re.M), err
    assert re.search(r"^Hessian columns \(about [^)]*\): 19/19 columns in ", err, re.M), err


# --------------------------------------------------------------------------------------- demo and help
def test_demo_refuses_a_folder_with_files_like_every_command(files, tmp_path, capsys):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "mine.txt").write_text("keep me")
    line = one_error_line(["demo", "--out", tmp_path / "demo", "-q"], capsys)
    assert line == f"error: --out {tmp_path / 'demo'} exists; pass --overwrite to replace it"
    (tmp_path / "s.parquet").write_text("")
    other = one_error_line(["influence", files / "train.npz", "--head", files / "head.npz", "--test",
                            files / "test.npz", "--out", tmp_path / "s.parquet", "-q"], capsys)
    assert other == f"error: --out {tmp_path / 's.parquet'} exists; pass --overwrite to replace it"
    assert [p.name for p in (tmp_path / "demo").iterdir()] == ["mine.txt"]


def _commands() -> list[str]:
    return sorted(typer.main.get_command(app).commands)


@pytest.mark.parametrize("command", ["", *_commands()])
def test_help_renders_without_noise(command):
    argv = [command, "--help"] if command else ["--help"]
    r = CliRunner().invoke(app, argv, terminal_width=120)
    assert r.exit_code == 0, r.output
    text = r.output
    assert "--help" in text
    for noise in ("<bool>", "BOOLEAN", "[default: False]", "%%"):
        assert noise not in text, (command, noise)
    if command == "subsample":
        assert "10% memorize" in " ".join(text.replace("│", " ").split())


# --------------------------------------------------------------------------------------------- warnings
def test_warnings_of_every_kind_print_as_one_line(files, tmp_path, capsys, monkeypatch):
    import winnow.api

    fit = winnow.api.fit_head

    def noisy_fit(*args, **kwargs):
        warnings.warn("a warning\nthat spans\n   lines", UserWarning, stacklevel=1)
        torch.nn.functional.softmax(torch.zeros(2, 2))  # torch's own UserWarning (implicit dim)
        from sklearn.linear_model import LogisticRegression

        LogisticRegression(max_iter=1).fit(np.random.default_rng(0).standard_normal((40, 3)),
                                           np.arange(40) % 2)  # scikit-learn's ConvergenceWarning
        logging.getLogger("some.library").warning("logged %s", "by a library")
        logging.captureWarnings(True)
        try:
            warnings.warn("routed through logging", RuntimeWarning, stacklevel=1)
        finally:
            logging.captureWarnings(False)
        return fit(*args, **kwargs)

    monkeypatch.setattr(winnow.api, "fit_head", noisy_fit)
    assert run(["fit-head", files / "train.npz", "--out", tmp_path / "h.npz", "-q"]) == 0
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "warning: a warning that spans lines" in lines
    assert "warning: logged by a library" in lines
    assert "warning: routed through logging" in lines
    assert any(ln.startswith("warning: ") and "softmax" in ln for ln in lines)
    assert any(ln.startswith("warning: ") and "lbfgs failed to converge" in ln.lower() for ln in lines), err
    assert all(ln.startswith("warning: ") for ln in lines), err  # no source lines, no file:line prefixes
    assert ".py:" not in err
    assert logging.getLogger().handlers == [h for h in logging.getLogger().handlers if "OneLine" not in
                                            type(h).__name__]  # the handler goes with the command


# ------------------------------------------------------------------------------------------ model files
class RunsCode:
    """Unpickling this creates a folder: a stand-in for a model file that runs code when loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_a_model_file_that_runs_code_is_refused_without_trust(files, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    torch.save(RunsCode(marker), tmp_path / "evil.pt")
    np.savez(tmp_path / "in.npz", X=np.zeros((4, 4), np.float32), y=np.array([0, 1, 0, 1]))
    for argv in (["extract-features", tmp_path / "evil.pt", tmp_path / "in.npz", "--head", "2", "--out",
                  tmp_path / "f.parquet"],
                 ["model-influence", tmp_path / "evil.pt", "--train", tmp_path / "in.npz", "--test",
                  tmp_path / "in.npz", "--out", tmp_path / "s.parquet"],
                 ["check-head", tmp_path / "evil.pt", "--head", "2", "--train", tmp_path / "in.npz", "--test",
                  tmp_path / "in.npz"]):
        line = one_error_line(argv + ["-q"], capsys)
        assert line == (f"error: MODEL: {tmp_path / 'evil.pt'} is a whole pickled model, which can run code when "
                        f"it is loaded; save its weights with torch.save(model.state_dict(), path) and pass "
                        f"--factory module:function that builds the model, or pass --trust-model-file if you "
                        f"trust this file")
        assert not marker.exists()
    # the file does run code once trusted: the refusal above is what kept the folder from appearing
    line = one_error_line(["extract-features", tmp_path / "evil.pt", tmp_path / "in.npz", "--head", "2", "--out",
                           tmp_path / "f.parquet", "--trust-model-file", "-q"], capsys)
    assert marker.is_dir() and "expected a state_dict" in line
    assert not (tmp_path / "f.parquet").exists()


def test_safe_route_and_its_errors(files, tmp_path, capsys):
    import nets

    torch.manual_seed(1)
    model = nets.small_mlp().double()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    torch.save(model, tmp_path / "whole.pt")
    np.savez(tmp_path / "in.npz", X=np.random.default_rng(1).standard_normal((12, 4)), y=np.arange(12) % 2)
    base = ["extract-features", tmp_path / "w.pt", tmp_path / "in.npz", "--head", "2", "-q"]
    assert run(base + ["--out", tmp_path / "f.npz", "--factory", "nets:small_mlp"]) == 0
    with torch.no_grad():  # the head's input, computed here from the model itself, in float64
        want = model[1](model[0](torch.as_tensor(np.load(tmp_path / "in.npz")["X"]))).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "f.npz")["X"], want, rtol=1e-6)  # features are saved as float32
    from winnow.cli.models import load_model

    built = load_model(tmp_path / "w.pt", factory="nets:small_mlp")  # float64 weights: a float64 model, exact
    assert all(p.dtype == torch.float64 for p in built.parameters()) and not built.training
    for a, b in zip(built.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert run(["extract-features", tmp_path / "whole.pt", tmp_path / "in.npz", "--head", "2", "-q", "--out",
                tmp_path / "g.npz", "--trust-model-file"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "g.npz")["X"], np.load(tmp_path / "f.npz")["X"])
    cases = {
        "weights, no factory": (base + ["--out", tmp_path / "x.npz"],
                                f"error: MODEL: {tmp_path / 'w.pt'} holds weights only (a state_dict); pass "
                                f"--factory module:function that builds the model to load them into"),
        "no colon": (base + ["--out", tmp_path / "x.npz", "--factory", "nets.small_mlp"],
                     "error: --factory must be written module:function (or module:Class), e.g. "
                     "mypkg.nets:make_cnn; got 'nets.small_mlp'"),
        "no module": (base + ["--out", tmp_path / "x.npz", "--factory", "no_such_module_xyz:f"],
                      "error: --factory no_such_module_xyz:f: cannot import module 'no_such_module_xyz'"),
        "no attribute": (base + ["--out", tmp_path / "x.npz", "--factory", "nets:nope"],
                         "error: --factory nets:nope: nets has no attribute 'nope'"),
        "wrong model": (base + ["--out", tmp_path / "x.npz", "--factory", "nets:Net"],
                        f"error: MODEL: the weights in {tmp_path / 'w.pt'} do not fit the model --factory nets:Net "
                        f"builds"),
    }
    for name, (argv, start) in cases.items():
        line = one_error_line(argv, capsys)
        assert line.startswith(start), (name, line)
    assert not (tmp_path / "x.npz").exists()
