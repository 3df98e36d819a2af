"""Every command, every bad input: one line ``error: ...`` on stderr, exit status 2, no traceback, no output
file, the same message for the same bad input in every command, written with the command line's own flags;
and the Python API raising ValidationError that names the Python parameter for the same inputs.

Expected messages are written out here by hand (not taken from the library), so a command that words an
error differently, or lets a traceback through, fails.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from clirun import run
from conftest import relu_embeddings

from winnow.cli.options import FLAGS, cli_message, command_flags
from winnow.core.heads import LogisticHead
from winnow.errors import ValidationError

COMMANDS = ("fit-head", "influence", "validate-loo", "lep", "check-theorems", "validate-group", "evaluate-mislabel",
            "evaluate-lds", "subsample", "evaluate-subset", "extract-features", "model-influence", "check-head",
            "demo")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad-inputs")
    X, y = relu_embeddings(160, d=6, seed=3)
    np.savez(d / "train.npz", X=X[:120], y=y[:120])
    np.savez(d / "test.npz", X=X[120:], y=y[120:])
    y2 = y[:120].copy()
    y2[7] = 2
    np.savez(d / "train_label2.npz", X=X[:120], y=y2)
    np.savez(d / "train_float.npz", X=X[:120], y=np.full(120, 0.5))  # not integer labels
    LogisticHead(l2=1e-2).fit(X[:120], y[:120]).save(d / "head.npz")
    X5, y5 = relu_embeddings(80, d=5, seed=4)
    LogisticHead(l2=1e-2).fit(X5, y5).save(d / "head_d5.npz")
    pq.write_table(pa.table({"id": pa.array(np.arange(0, 120, 2), pa.int64()),
                             "weight": pa.array(np.ones(60))}), d / "subset.parquet")
    np.save(d / "group.npy", np.arange(5, dtype=np.int64))
    # a small PyTorch model (one output: sigmoid + BCE) with its inputs, for the model commands
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    torch.save(model.state_dict(), d / "model.pt")  # weights only: built by --factory nets:small_mlp
    rng = np.random.default_rng(0)
    Xm = rng.standard_normal((30, 4)).astype(np.float32)
    ym = (rng.random(30) < 0.5).astype(np.int64)
    np.savez(d / "inputs.npz", X=Xm, y=ym)
    ym2 = ym.copy()
    ym2[0] = 2
    np.savez(d / "inputs_label2.npz", X=Xm, y=ym2)
    return {p.stem: p for p in d.iterdir()}


FACTORY = ["--factory", "nets:small_mlp"]  # builds the model whose weights MODEL holds (tests/nets.py)

# argv of each command, with TRAIN (or the model inputs), the head and every output it can write under ``out``
Argv = Callable[[dict[str, Path], Path, Path, Path], list[str]]
ARGV: dict[str, Argv] = {
    "fit-head": lambda f, tr, hd, out: ["fit-head", tr, "--out", out / "head.npz", "--kind", "logistic"],
    "influence": lambda f, tr, hd, out: ["influence", tr, "--head", hd, "--test", f["test"], "--out",
                                         out / "scores.parquet"],
    "validate-loo": lambda f, tr, hd, out: ["validate-loo", tr, "--head", hd, "--test", f["test"], "--points", "3",
                                            "--json", out / "loo.json"],
    "lep": lambda f, tr, hd, out: ["lep", tr, "--head", hd, "--test", f["test"], "--json", out / "lep.json"],
    "check-theorems": lambda f, tr, hd, out: ["check-theorems", tr, "--head", hd, "--test", f["test"], "--l2-grid",
                                              "", "--json", out / "t.json"],
    "validate-group": lambda f, tr, hd, out: ["validate-group", tr, "--head", hd, "--test", f["test"], "--subset",
                                              f["group"], "--json", out / "g.json"],
    "evaluate-mislabel": lambda f, tr, hd, out: ["evaluate-mislabel", tr, "--head-kind", "logistic", "--seeds", "1",
                                                 "--json", out / "m.json"],
    "evaluate-lds": lambda f, tr, hd, out: ["evaluate-lds", tr, "--head", hd, "--test", f["test"], "--subsets", "10",
                                            "--json", out / "lds.json"],
    "subsample": lambda f, tr, hd, out: ["subsample", tr, "--head", hd, "--keep", "0.5", "--policy", "random",
                                         "--out", out / "subset.parquet", "--json", out / "s.json"],
    "evaluate-subset": lambda f, tr, hd, out: ["evaluate-subset", tr, "--head", hd, "--subset", f["subset"],
                                               "--test", f["test"], "--json", out / "e.json"],
    "extract-features": lambda f, tr, hd, out: ["extract-features", f["model"], tr, "--head", "2", "--out",
                                                out / "features.npz", "--head-out", out / "head.npz", *FACTORY],
    "model-influence": lambda f, tr, hd, out: ["model-influence", f["model"], "--train", tr, "--test", f["inputs"],
                                               "--out", out / "scores.parquet", *FACTORY],
    "check-head": lambda f, tr, hd, out: ["check-head", f["model"], "--head", "2", "--train", tr, "--test",
                                          f["inputs"], "--json", out / "c.json", *FACTORY],
    "demo": lambda f, tr, hd, out: ["demo", "--out", out / "demo"],
}

HEAD_FROM_FILE = ("influence", "validate-loo", "lep", "check-theorems", "validate-group", "evaluate-lds",
                  "subsample", "evaluate-subset")
FEATURE_DATA = ("fit-head", *HEAD_FROM_FILE, "evaluate-mislabel")
MODEL_COMMANDS = ("extract-features", "model-influence", "check-head")
WHY_NOT = {
    "fit-head": "fits its own head: there is no head to mismatch",
    "evaluate-mislabel": "fits its own heads: there is no head to mismatch",
    "extract-features": "the head is a module of MODEL: its D is the model's",
    "model-influence": "the head is a module of MODEL: its D is the model's",
    "check-head": "the head is a module of MODEL: its D is the model's",
    "demo": "takes no data, head or numeric option",
}


#: (case, command) -> why that bad input does not apply to that command, filled by ``_cases``
NOT_APPLICABLE: dict[tuple[str, str], str] = {}


def _cases() -> list:
    """(case, command, bad input, the expected message as a function of the files) for every command the input
    applies to; where it does not, the reason is recorded in NOT_APPLICABLE (checked below, never a skipped
    test)."""
    out = []

    def add(case: str, cmds: tuple[str, ...], why: dict[str, str], build: Callable, expect: Callable) -> None:
        for cmd in COMMANDS:
            if cmd in cmds:
                out.append(pytest.param(case, cmd, build, expect, id=f"{case}-{cmd}"))
            else:
                NOT_APPLICABLE[case, cmd] = why.get(cmd, WHY_NOT.get(cmd))

    add("head-D5-data-D6", HEAD_FROM_FILE, WHY_NOT,
        lambda f: dict(train=f["train"], head=f["head_d5"], extra=[]),
        lambda f: f"error: TRAIN ({f['train']}) has 6 features per row but the head expects D = 5 (feature "
                  "dimension mismatch between head and data)")
    add("label-2-logistic", FEATURE_DATA, {c: "model inputs: see test_model_commands_refuse_labels_the_model_cannot_fit"
                                           for c in MODEL_COMMANDS},
        lambda f: dict(train=f["train_label2"], head=f["head"], extra=[]),
        lambda f: f"error: TRAIN ({f['train_label2']}): a logistic head needs labels in {{0, 1}}, found [2]")
    add("float-labels", FEATURE_DATA, {c: "model inputs are read by the model loader" for c in MODEL_COMMANDS},
        lambda f: dict(train=f["train_float"], head=f["head"], extra=[]),
        lambda f: f"error: TRAIN: {f['train_float']}: array 'y' must hold integer labels (floats are accepted only "
                  "when integral, e.g. 0.0 and 1.0); got 0.5 at row position 0")
    with_damping = ("influence", "validate-loo", "lep", "check-theorems", "validate-group", "evaluate-mislabel",
                    "evaluate-lds", "subsample", "model-influence", "check-head")
    no_damping = {c: "has no --damping option" for c in COMMANDS if c not in with_damping}
    for value, shown in (("-1", "-1.0"), ("nan", "nan")):
        add(f"damping-{value}", with_damping, no_damping,
            lambda f, value=value: dict(train=None, head=f["head"], extra=["--damping", value]),
            lambda f, shown=shown: f"error: --damping must be a finite number >= 0, got {shown}")
    with_chunks = ("influence", "lep", "check-theorems", "subsample", "evaluate-subset")
    add("chunk-size-0", with_chunks, {c: "has no --chunk-size option" for c in COMMANDS if c not in with_chunks},
        lambda f: dict(train=None, head=f["head"], extra=["--chunk-size", "0"]),
        lambda f: "error: --chunk-size must be an integer >= 1, got 0")
    return out



def check_one_line_error(argv: list, capsys, out: Path) -> str:
    code = run(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, f"exit {code} for {argv}:\n{err}"
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert not out.exists() or not any(out.iterdir()), f"output left behind: {list(out.iterdir())}"
    return lines[0]


MESSAGES: dict[str, dict[str, str]] = {}


@pytest.mark.parametrize("case, command, build, expect", _cases())
def test_bad_input_gives_one_line_and_status_2(files, tmp_path, capsys, case, command, build, expect):
    spec = build(files)
    model_inputs = command in MODEL_COMMANDS
    train = spec["train"] or (files["inputs"] if model_inputs else files["train"])
    out = tmp_path / "out"
    argv = ARGV[command](files, train, spec["head"], out) + spec["extra"] + ["--quiet"]
    line = check_one_line_error(argv, capsys, out)
    assert line == expect(files)
    # the command line's words, never the Python parameter names
    assert re.search(r"(?<![-\w/.])(damping|chunk_size|train)(?=[ :(])", line) is None, line
    MESSAGES.setdefault(case, {})[command] = line


def test_every_command_is_covered_or_says_why_not():
    """Each (bad input, command) pair is either a test above or has a recorded reason it does not apply."""
    cases = {p.values[0] for p in _cases()}
    for case in cases:
        for cmd in COMMANDS:
            tested = any(p.values[:2] == (case, cmd) for p in _cases())
            assert tested or NOT_APPLICABLE.get((case, cmd)), (case, cmd)


def test_the_same_bad_input_reads_the_same_in_every_command(files, tmp_path, capsys):
    """Across the commands of each case: the messages the test above collected, or (when it did not run in this
    session, e.g. a test selection) the same runs made here."""
    if not MESSAGES:
        for case, command, build, expect in (p.values for p in _cases()):
            test_bad_input_gives_one_line_and_status_2(files, tmp_path / f"{case}-{command}", capsys, case,
                                                       command, build, expect)
    for case, by_command in MESSAGES.items():
        assert len(set(by_command.values())) == 1, (case, by_command)


def test_model_commands_refuse_labels_the_model_cannot_fit(files, tmp_path, capsys):
    """Label 2 for a one-output model: the same one line in model-influence and check-head; extract-features
    (which reads the labels as DATA) refuses it before writing any features."""
    out = tmp_path / "out"
    lines = {}
    for cmd in ("model-influence", "check-head", "extract-features"):
        lines[cmd] = check_one_line_error(ARGV[cmd](files, files["inputs_label2"], files["head"], out) + ["-q"],
                                          capsys, out)
    expected = ("the model has 1 output (sigmoid + BCE), which needs labels in {0, 1}, but the labels include [2] "
                "(max label 2)")
    assert lines["model-influence"] == lines["check-head"]
    assert lines["model-influence"].startswith("error: --train labels: " + expected)
    assert lines["extract-features"].startswith("error: DATA: head '2' has 1 output (sigmoid + BCE)")


def test_usage_errors_are_one_line_too(files, tmp_path, capsys):
    out = tmp_path / "out"
    line = check_one_line_error(ARGV["influence"](files, files["train"], files["head"], out) + ["--bogus"],
                                capsys, out)
    assert line.startswith("error: No such option: --bogus") and "winnow influence --help" in line
    line = check_one_line_error(ARGV["influence"](files, files["train"], files["head"], out)
                                + ["--hessian", "partial"], capsys, out)
    assert "--hessian" in line


# ------------------------------------------------------------------------------------------ Python API
def _api_calls(files: dict[str, Path]) -> dict[str, Callable]:
    """The function each command calls, as a Python user calls it: fn(train, head, **options)."""
    from winnow.analyses.fidelity import group_divergence, group_effect
    from winnow.analyses.relative import make_curvature, two_sample_search
    from winnow.analyses.subsample import Subsampler, evaluate_subset
    from winnow.analyses.theorems import check_theorems
    from winnow.api import fit_head
    from winnow.evaluation.lds import linear_datamodeling_score
    from winnow.evaluation.loo import leave_one_out
    from winnow.evaluation.mislabel import evaluate_mislabel

    te = files["test"]
    return {
        "fit_head": lambda tr, h, **kw: fit_head(tr, kind="logistic"),
        "make_curvature": lambda tr, h, **kw: make_curvature(h, tr, **kw),
        "leave_one_out": lambda tr, h, **kw: leave_one_out(h, tr, te, points=3, **kw),
        "two_sample_search": lambda tr, h, **kw: two_sample_search(h, tr, te, **kw),
        "check_theorems": lambda tr, h, **kw: check_theorems(h, tr, te, l2_grid=None, **kw),
        "group_effect": lambda tr, h, **kw: group_effect(h, tr, te, np.arange(3), **kw),
        "group_divergence": lambda tr, h, **kw: group_divergence(h, tr, te, **kw),
        "evaluate_mislabel": lambda tr, h, **kw: evaluate_mislabel(tr, head_kind="logistic", seeds=1, **kw),
        "linear_datamodeling_score": lambda tr, h, **kw: linear_datamodeling_score(h, tr, te, subsets=10, **kw),
        "Subsampler.fit": lambda tr, h, **kw: Subsampler(0.5, policy="random", **kw).fit(tr, h),
        "evaluate_subset": lambda tr, h, **kw: evaluate_subset(tr, files["subset"], te, head=h, **kw),
    }


TAKES = {"damping": ("make_curvature", "leave_one_out", "two_sample_search", "check_theorems", "group_effect",
                     "group_divergence", "evaluate_mislabel", "linear_datamodeling_score", "Subsampler.fit"),
         "chunk_size": ("make_curvature", "two_sample_search", "check_theorems", "Subsampler.fit",
                        "evaluate_subset")}


@pytest.mark.parametrize("api", ["fit_head", "make_curvature", "leave_one_out", "two_sample_search",
                                 "check_theorems", "group_effect", "group_divergence", "evaluate_mislabel",
                                 "linear_datamodeling_score", "Subsampler.fit", "evaluate_subset"])
def test_python_api_names_the_python_parameter(files, api):
    from winnow.core.heads import load_head

    call = _api_calls(files)[api]
    head, head5 = load_head(files["head"]), load_head(files["head_d5"])
    tr = str(files["train"])
    if api not in ("fit_head", "evaluate_mislabel"):
        with pytest.raises(ValidationError) as e:
            call(tr, head5)
        assert str(e.value) == (f"train ({tr}) has 6 features per row but the head expects D = 5 (feature "
                                "dimension mismatch between head and data)")
        assert e.value.parameters == ("train",)
    bad = str(files["train_label2"])
    with pytest.raises(ValidationError) as e:
        call(bad, head)
    assert str(e.value) == f"train ({bad}): a logistic head needs labels in {{0, 1}}, found [2]"
    assert e.value.parameters == ("train",)
    for option, value, expected in (("damping", -1.0, "damping must be a finite number >= 0, got -1.0"),
                                    ("chunk_size", 0, "chunk_size must be an integer >= 1, got 0")):
        if api in TAKES[option]:
            with pytest.raises(ValidationError) as e:
                call(tr, head, **{option: value})
            assert str(e.value) == expected


# ------------------------------------------------------------------------------------------ the table
def test_every_flag_in_the_table_exists():
    """FLAGS must not name a flag that no command has (a renamed option would leave a stale entry)."""
    import typer

    from winnow.cli import app

    every_command = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    everywhere = set().union(*(command_flags(c) for c in every_command))
    for name, flags in FLAGS.items():
        for flag in (flags,) if isinstance(flags, str) else flags:
            assert flag in everywhere, (name, flag)


def test_rewriting_touches_whole_names_only():
    e = ValidationError("train (data/train.npz) has 6 features; sample_size = 5 and train_size stay", parameters=(
        "train", "sample_size"))
    assert cli_message(e, "influence") == ("TRAIN (data/train.npz) has 6 features; --sample-size = 5 and train_size "
                                           "stay")
    # model commands take --train, not TRAIN
    assert cli_message(ValidationError("train: bad", parameters=("train",)), "model-influence") == "--train: bad"
    # a parameter that the command has no flag for stays as it is
    assert cli_message(ValidationError("keep must be a fraction", parameters=("keep",)), "influence") == \
        "keep must be a fraction"
    # an error that lists no parameters is taken to name the one its message starts with
    assert cli_message(ValidationError("damping must be >= 0"), "lep") == "--damping must be >= 0"
    assert cli_message(ValidationError("the damping is too small"), "lep") == "the damping is too small"


def test_a_test_set_with_the_wrong_dimension_gets_one_message_in_every_command(files, tmp_path, capsys):
    """The head fits TRAIN but the test (or validation) set has one feature too few: every command that
    reads one says so in the same words, naming its own flag."""
    rng = np.random.default_rng(0)
    bad = tmp_path / "test5.npz"
    np.savez(bad, X=rng.random((30, 5)), y=rng.integers(0, 2, 30))
    common = [files["train"], "--head", files["head"]]
    commands = {
        "influence": ["--test", bad, "--out", tmp_path / "s.parquet"],
        "validate-loo": ["--test", bad, "--points", "3"],
        "lep": ["--test", bad],
        "check-theorems": ["--test", bad],
        "evaluate-lds": ["--test", bad, "--subsets", "3"],
        "subsample": ["--valid", bad, "--keep", "0.5", "--out", tmp_path / "sub.parquet"],
    }
    seen = set()
    for command, opts in commands.items():
        flag = opts[0]
        msg = check_one_line_error([command, *common, *opts, "-q"], capsys, tmp_path / "s.parquet")
        expected = (f"error: {flag} ({bad}) has 5 features per row but the head expects D = 6 (feature dimension "
                    "mismatch between head and data)")
        assert msg == expected, (command, msg)
        seen.add(msg.replace(flag, "FLAG"))
    assert len(seen) == 1
