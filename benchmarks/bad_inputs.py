"""What every ``winnow`` command says when an input is wrong: run each command on a set of bad inputs and write
the answers as a table (the message, the exit status, whether any file was written).

Small valid inputs are built once in a temporary folder (the breast-cancer CSV that ``winnow example-data``
writes, with string ids, string labels and column names with spaces; NumPy ``.npz`` and Parquet tables; a fitted
head; a scores file; a SUBSET; a small PyTorch model's weights with the module whose function builds it). Each
case is one of those command lines with one thing made wrong. The commands run in this process through
``winnow.cli.main`` (stderr and stdout captured, an escaping exception written as the traceback Python would
print, exit status 1), or with ``--subprocess`` each in its own ``python -m winnow``, as a user runs them. The
working directory is the temporary folder, so the paths in the messages are the short relative ones a user
types.

A case's answer is *right* when the command exits with status 2, prints exactly one line on stderr, starting
with ``error: ``, that names the flag or argument (as the command line spells it) and no Python spelling of a
parameter, and leaves no new or changed file behind. Every other answer is listed at the end (on stderr) as a
violation.

Usage::

    python benchmarks/bad_inputs.py                      # the table on stdout, violations on stderr (~1 min)
    python benchmarks/bad_inputs.py --out docs/errors.md # write the page
    python benchmarks/bad_inputs.py --subprocess         # each case in its own process (~5 min)
    python benchmarks/bad_inputs.py --check-valid        # first check that every unaltered command line runs

Set ``OMP_NUM_THREADS=1`` to keep it on one core.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import pickle
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"

#: What each command is for, one line (the page's intro to its table).
INTRO: dict[str, str] = {
    "fit-head": "fits a linear head on TRAIN's features and writes it to --out (.npz).",
    "influence": "scores every training point's influence on the mean loss of --test, written to --out.",
    "validate-loo": "retrains without each of --points training points and compares with the prediction.",
    "lep": "finds the smallest Hessian sample that keeps the influence ranking.",
    "check-theorems": "checks the paper's memorization and sign theorems on a head and its data.",
    "validate-group": "removes a whole group of training points and compares the predicted and actual change.",
    "evaluate-mislabel": "flips labels, refits, and measures how fast each ordering finds the flips.",
    "evaluate-lds": "the linear datamodeling score: influence against retraining on random subsets.",
    "subsample": "keeps a fraction of TRAIN chosen by influence or memorization and writes the SUBSET.",
    "evaluate-subset": "retrains on a SUBSET and on random subsets of the same size and compares them.",
    "extract-features": "runs a PyTorch MODEL over DATA and saves the input of its head module.",
    "model-influence": "influence of every training point on all the parameters of a PyTorch MODEL.",
    "check-head": "checks whether influence on the head's parameters stands in for influence on all of them.",
    "report": "writes the HTML report of a SCORES file.",
    "demo": "runs the whole pipeline on a bundled data set into the folder --out.",
    "example-data": "writes the breast-cancer example tables into DIRECTORY.",
}


# ----------------------------------------------------------------------------------------- the inputs
def _relu_embeddings(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Nonnegative features from a random ReLU layer, labels 0/1 from a logistic model of the inputs."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, 8))
    X = np.maximum(Z @ rng.standard_normal((8, d)) / np.sqrt(8), 0.0)
    y = (rng.random(n) < 1 / (1 + np.exp(-(Z @ rng.standard_normal(8))))).astype(np.int64)
    return X, y


FACTORY_MODULE = '''"""Builds the small model whose weights model.pt holds."""
import torch


def small_mlp():
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))


def wider_mlp():
    return torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))


def not_a_model():
    return 3


def broken():
    raise RuntimeError("no GPU here")
'''


def build_inputs(d: Path) -> None:
    """Every file the cases read, in the folder ``d`` (the working directory of the runs)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from winnow.core.heads import LogisticHead

    def cli(*argv: str) -> None:
        with _in(d), contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            _main([*argv, "--quiet"])

    # the breast-cancer tables: string ids, yes/no labels, column names with spaces
    cli("example-data", ".")
    # arrays: 120 training rows and 40 test rows of 6 features
    X, y = _relu_embeddings(160, d=6, seed=3)
    Xtr, ytr, Xte, yte = X[:120], y[:120], X[120:], y[120:]
    np.savez(d / "train.npz", X=Xtr, y=ytr)
    np.savez(d / "test.npz", X=Xte, y=yte)
    head = LogisticHead(l2=1e-2).fit(Xtr, ytr)
    head.save(d / "head.npz")
    LogisticHead(l2=1e-2).fit(Xtr[:, :5], ytr).save(d / "head_d5.npz")
    LogisticHead.from_weights(head.weight_ * 1.5, head.bias_, l2=1e-2).save(d / "head_nonstationary.npz")
    np.savez(d / "not_a_head.npz", weights=np.ones(3))
    from sklearn.linear_model import LogisticRegression

    with open(d / "sklearn_head.pkl", "wb") as f:
        pickle.dump(LogisticRegression().fit(Xtr, ytr), f)
    np.savez(d / "labels_1_2.npz", X=Xtr, y=ytr + 1)
    np.savez(d / "one_class.npz", X=Xtr, y=np.zeros_like(ytr))
    np.savez(d / "labels_0_1_2.npz", X=Xtr, y=np.where(np.arange(120) == 7, 2, ytr))
    Xn = Xtr.copy()
    Xn[3, 2] = np.nan
    np.savez(d / "nan_features.npz", X=Xn, y=ytr)
    ids = np.arange(120)
    ids[5] = ids[4]
    np.savez(d / "duplicate_ids.npz", X=Xtr, y=ytr, id=ids)
    np.savez(d / "five_features.npz", X=Xte[:, :5], y=yte)
    (d / "train.txt").write_text("not data\n")
    # the same arrays as tables with yes/no labels, and a head that maps them (no -> 0, yes -> 1)
    for name, (Xs, ys) in {"train": (Xtr, ytr), "test": (Xte, yte)}.items():
        rows = ["id," + ",".join(f"f{j}" for j in range(6)) + ",label"]
        rows += [f"{i}," + ",".join(f"{v:.17g}" for v in x) + ("," + ("yes" if t else "no"))
                 for i, (x, t) in enumerate(zip(Xs, ys))]
        (d / f"{name}_yes_no.csv").write_text("\n".join(rows) + "\n")
        if name == "test":
            rows[1] = rows[1].rsplit(",", 1)[0] + ",maybe"  # a label the head does not know
            (d / "test_unknown_label.csv").write_text("\n".join(rows) + "\n")
    cli("fit-head", "train_yes_no.csv", "--positive-label", "yes", "--out", "head_yes_no.npz")
    cols = {f"f{j}": pa.array(Xtr[:, j]) for j in range(6)}
    pq.write_table(pa.table({"id": pa.array(np.arange(120)), **cols, "label": pa.array(ytr)}), d / "train.parquet")

    # a SUBSET (id, weight), a group of ids, a scores file
    pq.write_table(pa.table({"id": pa.array(np.arange(0, 120, 2)), "weight": pa.array(np.full(60, 2.0))}),
                   d / "subset.parquet")
    pq.write_table(pa.table({"id": pa.array([1000, 1001]), "weight": pa.array([1.0, 1.0])}),
                   d / "subset_unknown_ids.parquet")
    np.save(d / "group.npy", np.arange(5))
    np.save(d / "group_unknown_ids.npy", np.array([1000, 1001]))
    cli("influence", "train.npz", "--head", "head.npz", "--test", "test.npz", "--out", "scores.parquet")

    # a small PyTorch model: its weights, the module that builds it, its inputs
    torch.manual_seed(0)
    ns: dict = {}
    exec(FACTORY_MODULE, ns)
    model = ns["small_mlp"]()
    (d / "nets_example.py").write_text(FACTORY_MODULE)
    torch.save(model.state_dict(), d / "model.pt")
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 1)), d / "whole_model.pt")
    rng = np.random.default_rng(0)
    Xm = rng.standard_normal((30, 4)).astype(np.float32)
    ym = (rng.random(30) < 0.5).astype(np.int64)
    np.savez(d / "inputs.npz", X=Xm, y=ym)
    np.savez(d / "inputs_test.npz", X=Xm[:10], y=ym[:10])
    np.savez(d / "inputs_label_2.npz", X=Xm, y=np.where(np.arange(30) == 0, 2, ym))
    np.savez(d / "inputs_five_features.npz", X=rng.standard_normal((30, 5)).astype(np.float32), y=ym)

    # outputs that are already there
    for name in ("existing.npz", "existing.parquet", "existing.json", "existing.html", "existing.png"):
        (d / name).write_bytes(b"keep me")
    (d / "existing_folder").mkdir()
    (d / "existing_folder" / "keep.txt").write_text("keep me")
    (d / "out").mkdir()


# ----------------------------------------------------------------------------------------- the cases
@dataclass
class Case:
    command: str
    what: str  # the bad input, in the user's words
    argv: list[str]
    names: str  # the flag or argument the message must name
    outcome: Outcome | None = None


@dataclass
class Outcome:
    code: int
    stderr: str
    written: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def lines(self) -> list[str]:
        return [ln for ln in self.stderr.strip().splitlines() if ln.strip()]

    @property
    def error_line(self) -> str:
        errors = [ln for ln in self.lines if ln.startswith("error: ")]
        if errors:
            return errors[0]
        return self.lines[-1] if self.lines else ""


def opt(argv: list[str], flag: str, value: str | None = None) -> list[str]:
    """``argv`` with ``flag`` set to ``value`` (replaced where present, appended otherwise); ``value`` None: a
    switch."""
    out = list(argv)
    if flag in out:
        i = out.index(flag)
        if value is None:
            return out
        out[i + 1] = value
        return out
    return out + ([flag] if value is None else [flag, value])


def drop(argv: list[str], flag: str) -> list[str]:
    out = list(argv)
    i = out.index(flag)
    del out[i:i + 2]
    return out


def pos(argv: list[str], i: int, value: str) -> list[str]:
    """``argv`` with its ``i``-th positional argument (0: the first after the command) replaced."""
    out = list(argv)
    out[1 + i] = value
    return out


FACTORY = ["--factory", "nets_example:small_mlp"]

#: Each command's valid command line (fast settings), its outputs and, where it has them, the flags taking
#: TRAIN-like data and the head.
BASE: dict[str, list[str]] = {
    "fit-head": ["fit-head", "train.npz", "--out", "out/head.npz"],
    "influence": ["influence", "train.npz", "--head", "head.npz", "--test", "test.npz", "--out",
                  "out/scores.parquet"],
    "validate-loo": ["validate-loo", "train.npz", "--head", "head.npz", "--test", "test.npz", "--points", "3"],
    "lep": ["lep", "train.npz", "--head", "head.npz", "--test", "test.npz", "--start", "40", "--max-size", "80"],
    "check-theorems": ["check-theorems", "train.npz", "--head", "head.npz", "--test", "test.npz", "--l2-grid", "",
                       "--pairs", "50"],
    "validate-group": ["validate-group", "train.npz", "--head", "head.npz", "--test", "test.npz", "--subset",
                       "group.npy"],
    "evaluate-mislabel": ["evaluate-mislabel", "train.npz", "--seeds", "1"],
    "evaluate-lds": ["evaluate-lds", "train.npz", "--head", "head.npz", "--test", "test.npz", "--subsets", "10"],
    "subsample": ["subsample", "train.npz", "--head", "head.npz", "--keep", "0.5", "--policy", "paper",
                  "--memorize-quantile", "0.9", "--no-split-memorize", "--out", "out/subset.parquet"],
    "evaluate-subset": ["evaluate-subset", "train.npz", "--subset", "subset.parquet", "--test", "test.npz",
                        "--head", "head.npz", "--seeds", "1"],
    "extract-features": ["extract-features", "model.pt", "inputs.npz", "--head", "2", "--out", "out/features.npz",
                         *FACTORY],
    "model-influence": ["model-influence", "model.pt", "--train", "inputs.npz", "--test", "inputs_test.npz", "--out",
                        "out/scores.parquet", "--damping", "1", *FACTORY],
    "check-head": ["check-head", "model.pt", "--head", "2", "--train", "inputs.npz", "--test", "inputs_test.npz",
                   "--pairs-train", "10", "--pairs-test", "5", *FACTORY],
    "report": ["report", "scores.parquet", "--out", "out/report.html"],
    "demo": ["demo", "--out", "out/demo"],
    "example-data": ["example-data", "out/example"],
}

#: Output flags of each command with a valid path (in out/) for them.
OUTPUTS: dict[str, dict[str, str]] = {
    "fit-head": {"--out": "out/head.npz"},
    "influence": {"--out": "out/scores.parquet", "--pairs": "out/pairs.parquet", "--report": "out/report.html"},
    "validate-loo": {"--json": "out/loo.json"},
    "lep": {"--json": "out/lep.json", "--plot": "out/lep.png"},
    "check-theorems": {"--points-out": "out/points.parquet", "--json": "out/theorems.json",
                       "--report": "out/theorems.html"},
    "validate-group": {"--json": "out/group.json", "--report": "out/group.html"},
    "evaluate-mislabel": {"--json": "out/mislabel.json", "--report": "out/mislabel.html"},
    "evaluate-lds": {"--json": "out/lds.json", "--report": "out/lds.html"},
    "subsample": {"--out": "out/subset.parquet", "--json": "out/subsample.json"},
    "evaluate-subset": {"--json": "out/subset.json", "--report": "out/subset.html"},
    "extract-features": {"--out": "out/features.npz", "--head-out": "out/head.npz"},
    "model-influence": {"--out": "out/scores.parquet", "--pairs": "out/pairs.parquet"},
    "check-head": {"--json": "out/check.json", "--report": "out/check.html"},
    "report": {"--out": "out/report.html"},
}
EXISTING = {".npz": "existing.npz", ".parquet": "existing.parquet", ".json": "existing.json",
            ".html": "existing.html", ".png": "existing.png"}

FEATURE_COMMANDS = ("fit-head", "influence", "validate-loo", "lep", "check-theorems", "validate-group",
                    "evaluate-mislabel", "evaluate-lds", "subsample", "evaluate-subset")
HEAD_COMMANDS = ("influence", "validate-loo", "lep", "check-theorems", "validate-group", "evaluate-lds",
                 "subsample", "evaluate-subset")
TEST_COMMANDS = ("influence", "validate-loo", "lep", "check-theorems", "validate-group", "evaluate-lds",
                 "evaluate-subset")
MODEL_COMMANDS = ("extract-features", "model-influence", "check-head")
DAMPING = ("influence", "validate-loo", "lep", "check-theorems", "validate-group", "evaluate-mislabel",
           "evaluate-lds", "subsample", "model-influence", "check-head")
CHUNK_SIZE = ("influence", "lep", "check-theorems", "subsample", "evaluate-subset")


def cases() -> list[Case]:
    """Every bad input of every command, in the order of the page."""
    out: list[Case] = []

    def add(command: str, what: str, argv: list[str], names: str) -> None:
        out.append(Case(command, what, [str(a) for a in argv] + ["--quiet"], names))

    for cmd in BASE:
        b = BASE[cmd]
        # ------------------------------------------------------------ the data
        if cmd in FEATURE_COMMANDS:
            add(cmd, "TRAIN does not exist", pos(b, 0, "missing.npz"), "TRAIN")
            add(cmd, "TRAIN has an extension winnow does not read (.txt)", pos(b, 0, "train.txt"), "TRAIN")
            add(cmd, "labels 1/2 (a logistic head needs 0/1)", pos(b, 0, "labels_1_2.npz"), "TRAIN")
            # no head has an optimum on one class: the message names that cause, in TRAIN
            add(cmd, "one class only", pos(b, 0, "one_class.npz"), "TRAIN")
            add(cmd, "a NaN feature", pos(b, 0, "nan_features.npz"), "TRAIN")
            add(cmd, "duplicate ids", pos(b, 0, "duplicate_ids.npz"), "TRAIN")
            add(cmd, "string labels (yes/no) without --classes or --positive-label",
                pos(b, 0, "train_yes_no.csv"), "--classes")
            add(cmd, "--label-column names no column", opt(pos(b, 0, "train_yes_no.csv"), "--label-column",
                                                           "outcome"), "--label-column")
            add(cmd, "--feature-columns names no column", opt(pos(b, 0, "train.parquet"), "--feature-columns",
                                                              "f0,nope"), "--feature-columns")
        if cmd in HEAD_COMMANDS:
            add(cmd, "--head does not exist", opt(b, "--head", "missing_head.npz"), "--head")
            add(cmd, "--head is a pickled scikit-learn model", opt(b, "--head", "sklearn_head.pkl"), "--head")
            add(cmd, "--head is an .npz that is not a head", opt(b, "--head", "not_a_head.npz"), "--head")
            add(cmd, "--head has 5 features, TRAIN has 6", opt(b, "--head", "head_d5.npz"), "TRAIN")
            if cmd != "evaluate-subset":  # there the head gives only its kind and λ (without --curve)
                add(cmd, "--head is not at the optimum of its objective (not stationary)",
                    opt(b, "--head", "head_nonstationary.npz"), "--refit")
        if cmd in TEST_COMMANDS:
            add(cmd, "--test does not exist", opt(b, "--test", "missing_test.npz"), "--test")
            add(cmd, "--test has 5 features, the head 6", opt(b, "--test", "five_features.npz"), "--test")
            strings = opt(opt(pos(b, 0, "train_yes_no.csv"), "--head", "head_yes_no.npz"), "--test",
                          "test_unknown_label.csv")
            add(cmd, "--test holds a label the head does not know (maybe)", strings, "--test")
        # ------------------------------------------------------------ the outputs
        for flag, path in OUTPUTS.get(cmd, {}).items():
            argv = opt(b, flag, path)
            add(cmd, f"{flag} has the wrong extension (.txt)", opt(argv, flag, str(Path(path).with_suffix(".txt"))),
                flag)
            add(cmd, f"{flag} exists (no --overwrite)", opt(argv, flag, EXISTING[Path(path).suffix]), flag)
        # ------------------------------------------------------------ the numbers
        if cmd in DAMPING:
            add(cmd, "negative --damping", opt(b, "--damping", "-1"), "--damping")
            add(cmd, "--damping nan", opt(b, "--damping", "nan"), "--damping")
        if cmd in CHUNK_SIZE:
            add(cmd, "--chunk-size 0", opt(b, "--chunk-size", "0"), "--chunk-size")
        out.extend(_specific(cmd, b))
    return out


def _specific(cmd: str, b: list[str]) -> list[Case]:
    """The bad inputs of one command's own options."""
    c: list[tuple[str, list[str], str]] = []
    if cmd == "fit-head":
        c += [("negative --l2", opt(b, "--l2", "-1"), "--l2"),
              ("--kind not a kind", opt(b, "--kind", "linear"), "--kind"),
              ("--kind logistic for labels 0/1/2", opt(pos(b, 0, "labels_0_1_2.npz"), "--kind", "logistic"), "TRAIN"),
              ("--classes lists one value only", opt(opt(pos(b, 0, "train.csv"), "--label-column", "malignant"),
                                                       "--classes", "no"), "--classes"),
              ("train.csv: string labels (yes/no) without --classes or --positive-label", opt(pos(b, 0, "train.csv"),
                                                                                   "--label-column", "malignant"),
               "--classes"),
              ("--feature-columns names no column (spaced names)",
               opt(opt(pos(b, 0, "train.csv"), "--label-column", "malignant"), "--feature-columns",
                   '"mean radius","mean nothing"'), "--feature-columns"),
              ("--positive-label is not a label of TRAIN",
               opt(opt(pos(b, 0, "train.csv"), "--label-column", "malignant"), "--positive-label", "maybe"),
               "--positive-label"),
              ("--weights ids not in TRAIN", opt(b, "--weights", "subset_unknown_ids.parquet"), "--weights"),
              ("--weights does not exist", opt(b, "--weights", "missing.parquet"), "--weights"),
              ("--workers 0", opt(b, "--workers", "0"), "--workers")]
    elif cmd == "influence":
        c += [("--memorize-quantile 1.5", opt(b, "--memorize-quantile", "1.5"), "--memorize-quantile"),
              ("negative --memorize-threshold", opt(b, "--memorize-threshold", "-1"), "--memorize-threshold"),
              ("--hessian relative without --sample-size", opt(b, "--hessian", "relative"), "--sample-size"),
              ("--sample-size 0", opt(opt(b, "--hessian", "relative"), "--sample-size", "0"), "--sample-size"),
              ("--sample-size above the number of rows", opt(opt(b, "--hessian", "relative"), "--sample-size",
                                                             "1000"), "--sample-size"),
              ("--sampler not a sampler", opt(b, "--sampler", "random"), "--sampler"),
              ("--workers 0", opt(b, "--workers", "0"), "--workers"),
              ("--partition-rows 0", opt(b, "--partition-rows", "0"), "--partition-rows"),
              ]
    elif cmd == "validate-loo":
        c += [("--points 1", opt(b, "--points", "1"), "--points"),
              ("--points above the number of rows", opt(b, "--points", "1000"), "--points")]
    elif cmd == "lep":
        c += [("--threshold 1.5", opt(b, "--threshold", "1.5"), "--threshold"),
              ("--growth 1", opt(b, "--growth", "1"), "--growth"),
              ("--start 0", opt(b, "--start", "0"), "--start"),
              ("--max-size below --start", opt(b, "--max-size", "20"), "--max-size"),
              ("--pilot-size 0", opt(b, "--pilot-size", "0"), "--pilot-size")]
    elif cmd == "check-theorems":
        c += [("--pairs 0", opt(b, "--pairs", "0"), "--pairs"),
              ("--test-points 0", opt(b, "--test-points", "0"), "--test-points"),
              ("--removal-fraction 1", opt(b, "--removal-fraction", "1"), "--removal-fraction"),
              ("--memorize-quantile 2", opt(b, "--memorize-quantile", "2"), "--memorize-quantile"),
              ("--l2-grid not numbers", opt(b, "--l2-grid", "a,b"), "--l2-grid"),
              ("--l2-grid with a negative λ", opt(b, "--l2-grid", "0.1,-1"), "--l2-grid")]
    elif cmd == "validate-group":
        c += [("--subset ids not in TRAIN", opt(b, "--subset", "group_unknown_ids.npy"), "--subset"),
              ("--subset does not exist", opt(b, "--subset", "missing.npy"), "--subset"),
              ("--subset-column names no column", opt(opt(b, "--subset", "subset.parquet"), "--subset-column",
                                                      "nope"), "--subset-column"),
              ("--fractions out of (0, 1)", opt(opt(drop(b, "--subset"), "--sweep"), "--fractions", "0.1,1.5"),
               "--fractions"),
              ("--random-groups 0", opt(opt(drop(b, "--subset"), "--sweep"), "--random-groups", "0"),
               "--random-groups")]
    elif cmd == "evaluate-mislabel":
        c += [("--flip 1.5", opt(b, "--flip", "1.5"), "--flip"),
              ("--flip 0", opt(b, "--flip", "0"), "--flip"),
              ("--seeds 0", opt(b, "--seeds", "0"), "--seeds"),
              ("--valid-fraction 1", opt(b, "--valid-fraction", "1"), "--valid-fraction"),
              ("negative --l2", opt(b, "--l2", "-1"), "--l2"),
              ("--head-kind not a kind", opt(b, "--head-kind", "linear"), "--head-kind"),
              ("--valid has 5 features, TRAIN 6", opt(b, "--valid", "five_features.npz"), "--valid")]
    elif cmd == "evaluate-lds":
        c += [("--subsets 1", opt(b, "--subsets", "1"), "--subsets"),
              ("--fraction 0", opt(b, "--fraction", "0"), "--fraction"),
              ("--fraction 1.5", opt(b, "--fraction", "1.5"), "--fraction")]
    elif cmd == "subsample":
        inf = opt(drop(b, "--memorize-quantile"), "--policy", "influence")
        c += [("--keep 0", opt(b, "--keep", "0"), "--keep"),
              ("--keep 1.5", opt(b, "--keep", "1.5"), "--keep"),
              ("--keep nan", opt(b, "--keep", "nan"), "--keep"),
              ("--policy not a policy", opt(b, "--policy", "best"), "--policy"),
              ("--memorize-quantile 1.5", opt(opt(b, "--policy", "paper"), "--memorize-quantile", "1.5"),
               "--memorize-quantile"),
              ("negative --sharpness", opt(inf, "--sharpness", "-1"), "--sharpness"),
              ("--score-fraction 1", opt(opt(inf, "--valid", "test.npz"), "--score-fraction", "1"),
               "--score-fraction"),
              ("--tune-draws 0", opt(b, "--tune-draws", "0"), "--tune-draws"),
              ("--policy influence without --valid", inf, "--valid"),
              ("--valid has 5 features, the head 6", opt(inf, "--valid", "five_features.npz"), "--valid")]
    elif cmd == "evaluate-subset":
        c += [("--subset does not exist", opt(b, "--subset", "missing.parquet"), "--subset"),
              ("--subset has the wrong extension (.txt)", opt(b, "--subset", "train.txt"), "--subset"),
              ("--subset ids not in TRAIN", opt(b, "--subset", "subset_unknown_ids.parquet"), "--subset"),
              ("--seeds 0", opt(b, "--seeds", "0"), "--seeds"),
              ("negative --l2", opt(drop(b, "--head"), "--l2", "-1"), "--l2"),
              ("--curve without --valid", opt(b, "--curve"), "--valid")]
    elif cmd in MODEL_COMMANDS:
        model_data = "DATA" if cmd == "extract-features" else "--train"
        c += [("MODEL does not exist", pos(b, 0, "missing.pt"), "MODEL"),
              ("MODEL is a whole pickled model, no --trust-model-file", drop(pos(b, 0, "whole_model.pt"),
                                                                             "--factory"), "--trust-model-file"),
              ("MODEL holds weights, no --factory", drop(b, "--factory"), "--factory"),
              ("--factory without module:function", opt(b, "--factory", "small_mlp"), "--factory"),
              ("--factory module cannot be imported", opt(b, "--factory", "no_such_module:small_mlp"), "--factory"),
              ("--factory function does not exist", opt(b, "--factory", "nets_example:nope"), "--factory"),
              ("--factory returns no model", opt(b, "--factory", "nets_example:not_a_model"), "--factory"),
              ("--factory raises", opt(b, "--factory", "nets_example:broken"), "--factory"),
              ("--factory builds another architecture", opt(b, "--factory", "nets_example:wider_mlp"),
               "--factory"),
              ("--trust-model-file with --factory", opt(pos(b, 0, "whole_model.pt"), "--trust-model-file"),
               "--factory"),
              ("labels 0/1/2 for a one-output model",
               opt(pos(b, 1, "inputs_label_2.npz"), "--head-out", "out/head.npz") if cmd == "extract-features"
               else opt(b, "--train", "inputs_label_2.npz"), model_data),
              ("inputs with 5 features, the model takes 4",
               pos(b, 1, "inputs_five_features.npz") if cmd == "extract-features"
               else opt(b, "--train", "inputs_five_features.npz"), model_data),
              ("inputs do not exist", pos(b, 1, "missing.npz") if cmd == "extract-features"
               else opt(b, "--train", "missing.npz"), model_data),
              ("--batch-size 0", opt(b, "--batch-size", "0"), "--batch-size"),
              ("--device not a device", opt(b, "--device", "gpu7"), "--device")]
        if cmd != "model-influence":
            c += [("--head names no module", opt(b, "--head", "classifier"), "--head")]
        if cmd == "extract-features":
            c += [("--head-out for a module that is not nn.Linear", opt(opt(b, "--head", "1"), "--head-out",
                                                                          "out/head.npz"), "--head-out"),
                  ("negative --l2", opt(b, "--l2", "-1"), "--l2")]
        if cmd == "model-influence":
            c += [("--params names no parameter", opt(b, "--params", "nope"), "--params"),
                  ("--solver not a solver", opt(b, "--solver", "exact"), "--solver"),
                  ("--max-dense 0", opt(b, "--max-dense", "0"), "--max-dense"),
                  ("--curvature kfac with --solver cg", opt(opt(b, "--curvature", "kfac"), "--solver", "cg"),
                   "--solver"),
                  ("--curvature kfac with --damping 0 and no --l2", opt(opt(b, "--curvature", "kfac"), "--damping",
                                                                       "0"), "--damping"),
                  ("--test has 5 features, the model 4", opt(b, "--test", "inputs_five_features.npz"), "--test")]
        if cmd == "check-head":
            c += [("--pairs-train 1", opt(b, "--pairs-train", "1"), "--pairs-train"),
                  ("--pairs-test 0", opt(b, "--pairs-test", "0"), "--pairs-test"),
                  ("--rank 0", opt(b, "--rank", "0"), "--rank")]
    elif cmd == "report":
        c += [("SCORES does not exist", pos(b, 0, "missing.parquet"), "SCORES"),
              ("SCORES is not a scores file (training data)", pos(b, 0, "train.parquet"), "SCORES"),
              ("SCORES has the wrong extension (.npz)", pos(b, 0, "train.npz"), "SCORES"),
              ("--top 0", opt(b, "--top", "0"), "--top"),
              ("--show -1", opt(b, "--show", "-1"), "--show")]
    elif cmd == "demo":
        c += [("--out is a file", opt(b, "--out", "train.npz"), "--out"),
              ("--out is a folder holding files (no --overwrite)", opt(b, "--out", "existing_folder"), "--out")]
    elif cmd == "example-data":
        c += [("DIRECTORY is a file", pos(b, 0, "train.npz"), "DIRECTORY"),
              ("DIRECTORY holds the tables already (no --overwrite)", pos(b, 0, "."), "DIRECTORY")]
    return [Case(cmd, what, [str(a) for a in argv] + ["--quiet"], names) for what, argv, names in c]


# ----------------------------------------------------------------------------------------- running
def _main(argv: list[str]) -> int:
    from winnow.cli import main

    try:
        main(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


@contextlib.contextmanager
def _in(d: Path) -> Iterator[None]:
    old = os.getcwd()
    os.chdir(d)
    try:
        yield
    finally:
        os.chdir(old)


def _snapshot(d: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for root, dirs, files in os.walk(d):
        dirs[:] = [x for x in dirs if x != "__pycache__"]
        for name in files + dirs:
            p = Path(root) / name
            st = p.stat()
            out[str(p.relative_to(d))] = (st.st_size if p.is_file() else -1, st.st_mtime_ns if p.is_file() else 0)
    return out


def _restore(d: Path, before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> None:
    """Remove what a case wrote (files first, then emptied folders), so that the next case starts alike."""
    import shutil

    new = sorted((p for p in after if p not in before), key=len, reverse=True)
    for p in new:
        q = d / p
        if q.is_dir():
            shutil.rmtree(q, ignore_errors=True)
        elif q.exists():
            q.unlink()


def run_case(case: Case, d: Path, subprocess_mode: bool = False) -> Outcome:
    """Run one case in ``d`` and return what it answered and wrote (then undo what it wrote)."""
    before = _snapshot(d)
    t0 = time.perf_counter()
    if subprocess_mode:
        env = dict(os.environ, PYTHONPATH=str(SRC), NO_COLOR="1", COLUMNS="200")
        r = subprocess.run([sys.executable, "-m", "winnow", *case.argv], cwd=d, env=env, capture_output=True,
                           text=True, timeout=600)
        code, err = r.returncode, r.stderr
    else:
        err_buf, out_buf = io.StringIO(), io.StringIO()
        with _in(d), contextlib.redirect_stderr(err_buf), contextlib.redirect_stdout(out_buf):
            try:
                code = _main(case.argv)
            except BaseException:  # what Python would print for an exception that escapes the command
                code = 1
                err_buf.write(traceback.format_exc())
        err = err_buf.getvalue()
    seconds = time.perf_counter() - t0
    after = _snapshot(d)
    written = sorted(p for p in after if p not in before or after[p] != before[p])
    written = [p for p in written if not (d / p).is_dir() or p not in before]
    _restore(d, before, after)
    return Outcome(code, err, written, seconds)


# ----------------------------------------------------------------------------------------- judging
def python_spellings(line: str, command: str) -> list[str]:
    """The Python spellings of parameters in an error line: ``name=value``, a parameter name with an
    underscore, a parameter named as a Python argument (``argument 'x'``), or a lower-case positional name
    opening the message (``train:``)."""
    from winnow.cli.options import FLAGS

    found = re.findall(r"\b[a-z_]+=(?:True|False|None|\S)", line)
    names = {k.split("=")[0] for k in FLAGS} | _param_names(command)
    for name in names:
        if "_" in name and re.search(rf"(?<![\w\-./]){re.escape(name)}(?![\w\-/])", line):
            found.append(name)
    m = re.match(r"error: (train|test|valid|data|model|scores|directory|head|subset|out)(?=:| \()", line)
    if m:
        found.append(m.group(1))
    if re.search(r"\bargument '?[a-z_]+'?", line) and not re.search(r"argument '?[A-Z]", line):
        found.append("argument")
    return found


def _param_names(command: str) -> set[str]:
    import typer

    from winnow.cli import app

    cmd = typer.main.get_command(app).commands.get(command)  # type: ignore[attr-defined]
    return {p.name for p in getattr(cmd, "params", []) if p.name}


def violations(case: Case) -> list[str]:
    """What is wrong with a case's answer (empty: the command refused the input as it should)."""
    o = case.outcome
    assert o is not None
    bad = []
    if o.code != 2:
        bad.append(f"exit status {o.code}")
    if "Traceback" in o.stderr:
        bad.append("a traceback")
    if len(o.lines) != 1 or not o.lines[0].startswith("error: "):
        bad.append(f"{len(o.lines)} lines on stderr" if o.lines else "nothing on stderr")
    line = o.error_line
    if line.startswith("error: ") and not re.search(rf"(?<![\w-]){re.escape(case.names)}(?![\w-])", line):
        bad.append(f"does not name {case.names}")
    spelled = python_spellings(line, case.command)
    if spelled:
        bad.append("Python spelling " + ", ".join(repr(s) for s in spelled))
    if o.written:
        bad.append("wrote " + ", ".join(o.written))
    return bad


# ----------------------------------------------------------------------------------------- the page
def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _argv_text(argv: list[str]) -> str:
    import shlex

    return "winnow " + " ".join(shlex.quote(a) for a in argv)


def markdown(all_cases: list[Case]) -> str:
    lines = [
        "# What winnow says when an input is wrong",
        "",
        "Every `winnow` command checks its inputs before it computes or writes anything. A wrong input gets one",
        "line on stderr, `error: ...`, that names the flag or argument at fault and says how to fix it; the",
        "command exits with status 2 and leaves no file behind (an existing output is replaced only with",
        "`--overwrite`). The tables below are what each command prints for a set of wrong inputs: the command",
        "line is a valid one (`winnow <command> --help` lists the flags) with the one thing in the first column",
        "made wrong.",
        "",
        "The files are small examples: `train.csv`/`test.csv` are the breast-cancer tables `winnow example-data`",
        "writes (string ids, column names with spaces, label column `malignant`, yes/no); `train.npz`/`test.npz`",
        "hold arrays `X` (6 features) and `y` (0/1), `train.parquet` and `train_yes_no.csv` the same rows as",
        "tables (the latter with yes/no labels); `head.npz` and `head_yes_no.npz` are heads fitted on them by",
        "`winnow fit-head`; `scores.parquet` comes from `winnow influence`, `subset.parquet` is a SUBSET (id,",
        "weight); `model.pt` holds the weights of a small PyTorch model (4 inputs, one output) built by",
        "`nets_example:small_mlp`, and `inputs.npz` its inputs. Every command ran with `--quiet`, which leaves",
        "only errors on stderr (without it, progress lines may come before the error).",
        "",
        "This page is generated by `python benchmarks/bad_inputs.py --out docs/errors.md`, which runs every case.",
        "",
    ]
    by_cmd: dict[str, list[Case]] = {}
    for c in all_cases:
        by_cmd.setdefault(c.command, []).append(c)
    for cmd, cs in by_cmd.items():
        lines += [f"## `winnow {cmd}`", "", f"`winnow {cmd}` {INTRO.get(cmd, '')}", "",
                  f"Valid command line: `{_argv_text(BASE[cmd])}`", "",
                  "| wrong input | message | exit status | file written? |", "|---|---|---|---|"]
        for c in cs:
            o = c.outcome
            assert o is not None
            msg = o.error_line or "(nothing)"
            extra = len(o.lines) - 1
            if "Traceback" in o.stderr:
                msg = "a Python traceback: " + msg
            elif extra > 0:
                msg += f" (and {extra} more line{'s' if extra > 1 else ''})"
            written = ", ".join(f"`{w}`" for w in o.written) if o.written else "no"
            lines.append(f"| {_cell(c.what)} | {_cell(msg)} | {o.code} | {written} |")
        lines.append("")
    return "\n".join(lines)


def run_all(d: Path, selected: list[Case], subprocess_mode: bool = False, progress: bool = True) -> None:
    for i, c in enumerate(selected, 1):
        c.outcome = run_case(c, d, subprocess_mode)
        if progress:
            print(f"[{i}/{len(selected)}] {c.outcome.seconds:5.2f}s {c.command}: {c.what}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="write the page here (default: stdout)")
    ap.add_argument("--subprocess", action="store_true", help="run each case in its own `python -m winnow`")
    ap.add_argument("--check-valid", action="store_true", help="first run every valid command line (must pass)")
    ap.add_argument("--command", action="append", help="only these commands (repeatable)")
    args = ap.parse_args(argv)
    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="winnow-bad-inputs-") as tmp:
        d = Path(tmp)
        build_inputs(d)
        selected = [c for c in cases() if not args.command or c.command in args.command]
        if args.check_valid:
            for cmd in dict.fromkeys(c.command for c in selected):
                o = run_case(Case(cmd, "valid", BASE[cmd], ""), d, args.subprocess)
                print(f"valid {cmd}: exit {o.code} in {o.seconds:.1f}s", file=sys.stderr)
                if o.code != 0:
                    print(o.stderr, file=sys.stderr)
                    return 1
        run_all(d, selected, args.subprocess)
    page = markdown(selected)
    if args.out:
        args.out.write_text(page + "\n")
    else:
        print(page)
    wrong = [(c, v) for c in selected if (v := violations(c))]
    print(f"\n{len(selected)} cases in {time.perf_counter() - t0:.0f} s; {len(wrong)} answered wrongly:",
          file=sys.stderr)
    for c, v in wrong:
        print(f"  {_argv_text(c.argv)}\n      {'; '.join(v)}\n      {c.outcome.error_line if c.outcome else ''}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
