"""The bad inputs of docs/errors.md, kept honest: a representative case of every kind and every command, run
in-process through ``winnow.cli.main`` on the page's own inputs (benchmarks/bad_inputs.py builds them and
runs the command lines; the judgement here is written out independently of it and of the library).

For each case: exit status 2, exactly one line on stderr starting with ``error: ``, that line naming the flag
or argument as the command line spells it (``--damping``, ``TRAIN``...) and no Python spelling of a parameter,
no traceback, and no file created or changed in the working folder (no output, no temporary file left behind).
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bad_inputs.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("winnow_bad_inputs_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


table = _load_script()

#: (command, the bad input as the page words it): a case of every kind, in every command
CHOSEN: list[tuple[str, str]] = [
    ("fit-head", "TRAIN does not exist"),
    ("fit-head", "TRAIN has an extension winnow does not read (.txt)"),
    ("fit-head", "labels 1/2 (a logistic head needs 0/1)"),
    ("fit-head", "a NaN feature"),
    ("fit-head", "string labels (yes/no) without --classes or --positive-label"),
    ("fit-head", "--feature-columns names no column (spaced names)"),
    ("fit-head", "--out has the wrong extension (.txt)"),
    ("fit-head", "--out exists (no --overwrite)"),
    ("fit-head", "negative --l2"),
    ("fit-head", "--weights ids not in TRAIN"),
    ("fit-head", "--weights does not exist"),
    ("influence", "a NaN feature"),
    ("influence", "duplicate ids"),
    ("influence", "--head is a pickled scikit-learn model"),
    ("influence", "--head is an .npz that is not a head"),
    ("influence", "--head has 5 features, TRAIN has 6"),
    ("influence", "--head is not at the optimum of its objective (not stationary)"),
    ("influence", "--test holds a label the head does not know (maybe)"),
    ("influence", "--pairs has the wrong extension (.txt)"),
    ("influence", "--report exists (no --overwrite)"),
    ("influence", "--damping nan"),
    ("influence", "--chunk-size 0"),
    ("influence", "--sample-size above the number of rows"),
    ("validate-loo", "--points 1"),
    ("validate-loo", "--json exists (no --overwrite)"),
    ("validate-loo", "--head is not at the optimum of its objective (not stationary)"),
    ("lep", "a NaN feature"),
    ("lep", "--threshold 1.5"),
    ("lep", "--plot has the wrong extension (.txt)"),
    ("check-theorems", "--l2-grid not numbers"),
    ("check-theorems", "--points-out has the wrong extension (.txt)"),
    ("validate-group", "a NaN feature"),
    ("validate-group", "--subset-column names no column"),
    ("validate-group", "--fractions out of (0, 1)"),
    ("evaluate-mislabel", "labels 1/2 (a logistic head needs 0/1)"),
    ("evaluate-mislabel", "one class only"),
    ("influence", "one class only"),
    ("evaluate-subset", "one class only"),
    ("evaluate-subset", "a NaN feature"),
    ("evaluate-mislabel", "--valid has 5 features, TRAIN 6"),
    ("evaluate-mislabel", "--flip 1.5"),
    ("evaluate-lds", "--fraction 0"),
    ("evaluate-lds", "--test holds a label the head does not know (maybe)"),
    ("subsample", "--keep 1.5"),
    ("subsample", "--out exists (no --overwrite)"),
    ("subsample", "--policy influence without --valid"),
    ("evaluate-subset", "--subset ids not in TRAIN"),
    ("evaluate-subset", "--seeds 0"),
    ("extract-features", "--factory builds another architecture"),
    ("extract-features", "inputs with 5 features, the model takes 4"),
    ("extract-features", "--device not a device"),
    ("extract-features", "MODEL is a whole pickled model, no --trust-model-file"),
    ("extract-features", "--head names no module"),
    ("model-influence", "inputs with 5 features, the model takes 4"),
    ("model-influence", "--test has 5 features, the model 4"),
    ("model-influence", "--factory raises"),
    ("model-influence", "--factory without module:function"),
    ("model-influence", "--factory builds another architecture"),
    ("model-influence", "--curvature kfac with --solver cg"),
    ("model-influence", "--curvature kfac with --damping 0 and no --l2"),
    ("check-head", "inputs with 5 features, the model takes 4"),
    ("check-head", "--pairs-train 1"),
    ("report", "SCORES is not a scores file (training data)"),
    ("report", "--top 0"),
    ("report", "--out has the wrong extension (.txt)"),
    ("demo", "--out is a folder holding files (no --overwrite)"),
    ("example-data", "DIRECTORY holds the tables already (no --overwrite)"),
]

#: answers that still break the rules, each with what is wrong (a fix shows as XPASS)
KNOWN: dict[tuple[str, str], str] = {
}

#: Python spellings that must never reach the command line
PYTHON_SPELLINGS = [
    r"\b[a-z_]+=(?:True|False|None|[\d.-])",  # damping=0.2, refit=True
    r"\b(?:chunk_size|sample_size|json_out|pairs_out|head_out|points_out|label_column|id_column|"
    r"features_column|feature_columns|positive_label|trust_model_file|allow_nonstationary|memorize_quantile|"
    r"memorize_threshold|batch_size|subset_column|valid_fraction|score_fraction|removal_fraction|l2_grid|"
    r"test_points|pairs_train|pairs_test|max_dense|head_kind|tune_draws|pilot_size|max_size)\b",
    r"(?<![\w.-])train_(?!\w*\.)",  # train_ as a prefix of a Python name, not of a file name
    r"\bargument\b(?! ')",  # "argument" as Python speaks of parameters (click's "Missing argument 'X'" is fine)
    r"^error: (?:train|test|valid|data|model|scores|directory)(?::| \()",  # a lower-case parameter leading
    r"allow_pickle",
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad-input-table")
    table.build_inputs(d)
    return d


def _case(command: str, what: str):
    found = [c for c in table.cases() if c.command == command and c.what == what]
    assert len(found) == 1, f"no case {what!r} for {command} in {SCRIPT.name}"
    return found[0]


def _params() -> list:
    params = []
    for command, what in CHOSEN + [k for k in KNOWN if k not in CHOSEN]:
        marks = [pytest.mark.xfail(reason=KNOWN[(command, what)], strict=False)] if (command, what) in KNOWN else []
        params.append(pytest.param(command, what, id=f"{command}: {what}", marks=marks))
    return params


def _files(d: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``d`` (hidden temporary files too) with its size and modification time."""
    out = {}
    for p in d.rglob("*"):
        if "__pycache__" in p.parts:
            continue
        st = p.stat()
        out[str(p.relative_to(d))] = (st.st_size, st.st_mtime_ns) if p.is_file() else (-1, 0)
    return out


@pytest.mark.parametrize("command, what", _params())
def test_a_bad_input_gets_one_line_naming_the_flag_and_leaves_no_file(workdir, command, what):
    case = _case(command, what)
    before = _files(workdir)
    outcome = table.run_case(case, workdir)
    after = _files(workdir)
    changed = sorted(p for p in after if before.get(p) != after[p])
    assert changed == [] and outcome.written == [], f"{case.argv}: wrote {changed}"
    assert "Traceback" not in outcome.stderr, outcome.stderr
    assert outcome.code == 2, f"exit {outcome.code} for {case.argv}:\n{outcome.stderr}"
    lines = outcome.stderr.strip().splitlines()
    assert len(lines) == 1, f"{len(lines)} lines on stderr:\n{outcome.stderr}"
    line = lines[0]
    assert line.startswith("error: "), line
    assert re.search(rf"(?<![\w-]){re.escape(case.names)}(?![\w-])", line), f"{case.names} not named: {line}"
    for pattern in PYTHON_SPELLINGS:
        assert re.search(pattern, line) is None, f"Python spelling /{pattern}/ in: {line}"


def test_every_command_has_bad_inputs_in_the_table():
    """The page covers every command the command line has (a new command must get its cases)."""
    import typer

    from winnow.cli import app

    commands = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    covered = {c.command for c in table.cases()}
    assert commands <= covered, f"commands without bad inputs: {sorted(commands - covered)}"
    assert {c for c, _ in CHOSEN} == covered


def test_the_judge_catches_what_it_must(workdir):
    """The checks above are not vacuous: a valid command line exits 0 and writes its output (which the
    snapshot sees), and a case whose line names another flag is caught."""
    valid = table.Case("influence", "valid", table.BASE["influence"] + ["--quiet"], "--out")
    outcome = table.run_case(valid, workdir)
    assert outcome.code == 0 and outcome.stderr.strip() == ""
    assert "out/scores.parquet" in outcome.written
    assert not (workdir / "out" / "scores.parquet").exists()  # undone for the next case
    case = _case("influence", "--chunk-size 0")
    line = table.run_case(case, workdir).error_line
    assert re.search(r"(?<![\w-])--damping(?![\w-])", line) is None
