"""Options shared by several commands, the glue that turns them into data sources, and the one table that
writes the Python API's parameter names as this command line's flags."""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

#: Python parameter name -> the flag (or argument) that sets it on the command line. Where commands spell one
#: parameter differently, the alternatives are tried in order and the first one the running command has is
#: used (TRAIN is an argument of most commands, ``--train`` an option of the model commands); a name whose
#: flags the running command does not have is left in the Python spelling.
FLAGS: dict[str, str | tuple[str, ...]] = {
    # data and head
    "train": ("TRAIN", "--train"), "test": "--test", "valid": "--valid", "data": "DATA", "model": "MODEL",
    "directory": "DIRECTORY",
    "head": "--head", "subset": ("--subset", "--weights"), "label_column": "--label-column", "id_column": "--id-column",
    "features_column": "--features-column", "feature_columns": "--feature-columns",
    "exclude": "--exclude", "classes": "--classes", "positive_label": "--positive-label",
    # outputs
    "out": "--out", "json_out": "--json", "pairs_out": "--pairs", "plot": "--plot", "report": "--report",
    "points_out": "--points-out", "head_out": "--head-out", "overwrite=True": "--overwrite",
    # numerics shared by many commands
    "precision": "--precision",
    "damping": "--damping", "chunk_size": "--chunk-size", "seed": "--seed", "seeds": "--seeds", "l2": "--l2",
    "kind": "--kind", "batch_size": "--batch-size",
    # relative Hessians and LEP
    "hessian": "--hessian", "sample_size": "--sample-size", "sampler": "--sampler", "pilot_size": "--pilot-size",
    "threshold": ("--threshold", "--memorize-threshold"), "quantile": "--memorize-quantile",
    "start": "--start", "max_size": "--max-size", "growth": "--growth",
    # subsampling
    "keep": "--keep", "policy": "--policy", "weighted": "--weighted", "memorize_threshold": "--memorize-threshold",
    "memorize_quantile": "--memorize-quantile", "sharpness": "--sharpness", "tune_ratio": "--tune-ratio",
    "tune_draws": "--tune-draws", "score_fraction": "--score-fraction", "curve": "--curve",
    "alpha": "--alpha", "sharpness_grid": "--sharpness-grid", "crossfit=False": "--no-crossfit",
    "split_memorize=False": "--no-split-memorize",
    # evaluation against retraining
    "points": "--points", "subsets": "--subsets", "fraction": "--fraction", "fractions": "--fractions",
    "random_groups": "--random-groups", "flip": "--flip", "head_kind": "--head-kind",
    "valid_fraction": "--valid-fraction",
    # theorems
    "pairs": "--pairs", "test_points": "--test-points", "removal_fraction": "--removal-fraction",
    "l2_grid": "--l2-grid",
    # the engine (partitioned output, Dask)
    "workers": "--workers", "scheduler": "--scheduler", "resume=True": "--resume",
    "partition_rows": "--partition-rows", "timeout": "--cluster-timeout",
    # models
    "params": "--params", "solver": "--solver", "max_dense": "--max-dense", "rank": "--rank",
    "n_train": "--pairs-train", "n_test": "--pairs-test", "regularize": "--regularize", "device": "--device",
    "curvature": "--curvature", "max_dense_seconds": "--max-dense-seconds",
    # stationarity of the head
    "refit=True": "--refit", "allow_nonstationary=True": "--allow-nonstationary",
    # the report of a run
    "scores": "SCORES", "top": "--top", "show": "--show",
    # model files
    "factory": "--factory", "trust_model_file=True": "--trust-model-file",
    # ground truth by retraining the whole model
    "train_fn": "--train-fn", "loss_fn": "--loss-fn", "retrain_dir": "--retrain-dir",
}


def command_flags(command: str | None) -> set[str]:
    """Every flag and argument name (``--damping``, ``TRAIN``) of the command ``command`` (empty if unknown)."""
    from . import app

    group = typer.main.get_command(app)
    cmd = getattr(group, "commands", {}).get(command) if command else None
    out: set[str] = set()
    for p in getattr(cmd, "params", []):
        out.update(o for o in getattr(p, "opts", []) if o.startswith("-"))
        out.update(getattr(p, "secondary_opts", []))
        if getattr(p, "param_type_name", "") == "argument":
            out.add(str(getattr(p, "metavar", None) or p.name).upper())  # as the usage line writes it
    return out


def _flag_for(name: str, flags: set[str]) -> str | None:
    alts = FLAGS.get(name)
    if alts is None:
        return None
    for flag in (alts,) if isinstance(alts, str) else alts:
        if flag in flags:
            return flag
    return None


def _token(name: str) -> re.Pattern[str]:
    """``name`` as a whole word: not part of an identifier, a flag, a path or a file name."""
    return re.compile(rf"(?<![\w.\-/]){re.escape(name)}(?![\w\-/]|\.\w)")


def cli_message(exc: BaseException, command: str | None) -> str:
    """The message of a winnow error with the Python parameter names it names written as ``command``'s flags.

    The names are those the error lists in ``parameters``; an error that lists none (older messages) is
    taken to name the parameter its message starts with (``damping must be ...``)."""
    msg = str(exc)
    names = list(getattr(exc, "parameters", ()) or ())
    if not names:
        m = re.match(r"[A-Za-z_]\w*(?=[ :])", msg)
        if m and m.group() in FLAGS:
            names = [m.group()]
    if not names:
        return msg
    flags = command_flags(command)
    for name in sorted(set(names), key=len, reverse=True):
        flag = _flag_for(name, flags)
        if flag is not None:
            msg = _token(name).sub(flag, msg, count=1)
    return msg

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or chatter; only errors.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace output files that already exist.")]
# --chunk-size and --damping are checked by the API (winnow.validation), which every command calls, so that
# a bad value gives the same message as in Python
ChunkSize = Annotated[int, typer.Option("--chunk-size", help="Rows per chunk (>= 1; bounds memory).")]
Damping = Annotated[float, typer.Option("--damping",
                                        help="Added to the Hessian's diagonal (>= 0); use it when H is singular.")]
LabelColumn = Annotated[str | None, typer.Option(
    "--label-column", help="Label column of a table (default `label`, or the one stored in --head).")]
IdColumn = Annotated[str | None, typer.Option(
    "--id-column", help="Id column of a table: integer or string ids, unique (default `id` when present, else "
                        "row numbers).")]
FeaturesColumn = Annotated[str | None, typer.Option(
    "--features-column", help="A list column holding the feature vector (default `features` when present).")]
FeatureColumns = Annotated[list[str] | None, typer.Option(
    "--feature-columns", help="Numeric columns to use as features, comma-separated (repeat the flag to add "
                              "more; quote a name holding a comma as \"a,b\"). Default: every numeric column "
                              "except the label and id columns.")]


def source_from(path: Path, cols: Any, *, parameter: str = "train", head: Any = None, like: Any = None) -> Any:
    """A data source for a path given on the command line (.csv, .tsv, .parquet, a Parquet directory, .npz);
    errors name the API parameter it is passed as (``train``, ``test``, ``valid``).

    ``cols``: the column flags as a DataColumns (:func:`data_columns`). Settings the flags leave unset come
    from ``head`` (what `winnow fit-head` stored) or from the source ``like`` (data read the way TRAIN was),
    then the defaults."""
    from ..io.columns import DataColumns
    from ..validation import head_columns, open_data

    if path.suffix.lower() == ".npz":  # arrays are read by name: the column flags are for the tables
        cols = DataColumns(classes=cols.classes, positive_label=cols.positive_label)
    defaults = head_columns(head) if head is not None else getattr(like, "data_columns", None)
    if defaults is None and like is not None and like.classes is not None:
        defaults = DataColumns(classes=like.classes)
    return open_data(path, parameter, columns=cols, defaults=defaults)


def data_columns(label_column: str | None = None, id_column: str | None = None,
                 features_column: str | None = None, feature_columns: str | list[str] | None = None,
                 exclude: str | list[str] | None = None, classes: str | list[str] | None = None,
                 positive_label: str | None = None) -> Any:
    """The column flags as a DataColumns (unset flags stay None); list flags are comma lists, repeatable."""
    from ..io.columns import DataColumns, parse_names

    def names(v: str | list[str] | None) -> tuple[str, ...] | None:
        if v is None:
            return None
        return tuple(n for item in ([v] if isinstance(v, str) else v) for n in parse_names(item))

    return DataColumns(label_column=label_column, id_column=id_column, features_column=features_column,
                       feature_columns=names(feature_columns), exclude=names(exclude), classes=names(classes),
                       positive_label=positive_label)


def say(quiet: bool, message: str) -> None:
    if not quiet:
        typer.echo(message, err=True)


EngineWorkers = Annotated[int | None, typer.Option(
    "--workers", help="Run every pass over the data on a local Dask cluster of N single-threaded worker "
                      "processes (the same numbers as in this process).")]
EngineScheduler = Annotated[str | None, typer.Option(
    "--scheduler", help="Run every pass over the data on an existing Dask cluster at ADDRESS (e.g. "
                        "tcp://host:8786); its workers must see the input files at the same paths.")]


def engine_for(workers: int | None, scheduler: str | None, *, chunk_size: int = 65536, quiet: bool = False) -> Any:
    """The engine a command's passes run on (``with engine_for(...):``): in-process, or Dask for
    ``--workers`` / ``--scheduler``."""
    from ..engine.engine import Engine

    return Engine(workers=workers, scheduler=scheduler, chunk_size=chunk_size, progress=not quiet)


# stationarity of the head (every command that computes influence from a head)
Refit = Annotated[bool, typer.Option(
    "--refit", help="First polish the head to the optimum of its training objective (Newton from its weights, "
                    "same λ) and compute everything from the polished head.")]
AllowNonstationary = Annotated[bool, typer.Option(
    "--allow-nonstationary", help="Score a head that is not at an optimum of its training objective "
                                  "(‖∇R(θ̂)‖∞ above the threshold) as it is; influence assumes ∇R(θ̂) = 0.")]


def polish_head(head: Any, train: Any, refit: bool, quiet: bool) -> Any:
    """The head itself, or with ``refit`` its copy polished to the optimum on ``train``, said on stderr."""
    if not refit:
        return head
    from ..engine.passes import refit_head

    polished = refit_head(head, train)
    say(quiet, f"refit the head: ‖∇R‖∞ {polished.refit_from_:.1e} -> {polished.grad_norm_:.1e} in "
               f"{polished.refit_steps_} Newton steps")
    return polished


# the report of a run (`winnow report`, `winnow influence --report`)
ReportOut = Annotated[Path | None, typer.Option(
    "--report", help="Also write an HTML report of the scores (the most harmful and helpful points, influence "
                     "and self-influence by label, memorization, the run's settings), as `winnow report` does, "
                     "and print the five most harmful and most helpful points.")]
ReportTop = Annotated[int, typer.Option("--top", help="How many of the most harmful and of the most helpful "
                                                      "training points the report lists (>= 1).")]


# data in: tables, column choice and label mapping (the column flags above are shared by every command)
Exclude = Annotated[list[str] | None, typer.Option(
    "--exclude", help="Columns to leave out of the automatic feature choice, comma-separated (repeatable).")]
ClassesOpt = Annotated[str | None, typer.Option(
    "--classes", help="The label values in class order, comma-separated (`--classes no,yes`: no -> 0, yes -> "
                      "1); needed when labels are not 0..K-1. Stored in the head.")]
PositiveLabel = Annotated[str | None, typer.Option(
    "--positive-label", help="For two classes: the label value that means 1 (the other one means 0), e.g. "
                             "`--positive-label yes`. Stored in the head.")]


# model files: the safe route (weights + the code that builds the model) and the explicit trust of a pickle
ModelFactory = Annotated[str | None, typer.Option(
    "--factory", metavar="MODULE:FUNCTION",
    help="The function (or class) that builds the model, as module:name (e.g. mypkg.nets:make_cnn), called "
         "with no arguments; MODEL then holds its weights (torch.save(model.state_dict(), path)), read "
         "without running any code from the file. The module must be importable (installed, on PYTHONPATH "
         "or in the current directory).")]
TrustModelFile = Annotated[bool, typer.Option(
    "--trust-model-file", help="Read MODEL as a whole pickled model (torch.save(model, path)). Unpickling "
                               "runs whatever code the file holds: only for files you trust.")]


# mixed precision of the closed-form heads' Hessian and scoring passes (`winnow influence --precision`)
class PrecisionChoice(str, Enum):
    auto = "auto"
    float64 = "float64"
    mixed = "mixed"


PrecisionOpt = Annotated[PrecisionChoice, typer.Option(
    "--precision", help="Arithmetic of the Hessian and scoring passes: auto (mixed for float32 features, float64 "
                        "otherwise), float64 (every product in float64), or mixed (products of feature blocks in "
                        "float32, summed in float64; H, its factorisation and the solves in float64; scores "
                        "within about 1e-6 relative of float64 on well-conditioned features, faster and "
                        "reading float32 features without a float64 copy).")]


# ground truth by retraining the user's whole model (validate-loo, evaluate-lds, validate-group, evaluate-subset)
TrainFnOpt = Annotated[str | None, typer.Option(
    "--train-fn", metavar="MODULE:FUNCTION",
    help="Ground truth by retraining your whole model instead of the head: the function "
         "train_fn(rows, weights, seed) -> model that trains it on the given rows of TRAIN (positions, in "
         "TRAIN's order; weights None or one per row; seed for its random choices). The model it returns is "
         "evaluated on --test: a torch.nn.Module giving logits, an object with predict_proba, or see --loss-fn. "
         "The module must be importable (installed, on PYTHONPATH or in the current directory).")]
LossFnOpt = Annotated[str | None, typer.Option(
    "--loss-fn", metavar="MODULE:FUNCTION",
    help="With --train-fn: loss_fn(model, (X, y)) -> the per-point test losses, for a model that is neither a "
         "torch.nn.Module giving logits nor has predict_proba.")]
RetrainSeeds = Annotated[int | None, typer.Option(
    "--seeds", help="With --train-fn: seeds per retrain (each removal or subset is trained with seeds 0..S-1 "
                    "and its test losses averaged). Default: 3 for leave-one-out and group removal, 1 for LDS.")]
RetrainDir = Annotated[Path | None, typer.Option(
    "--retrain-dir", help="With --train-fn: save each retrain's test losses to this folder as it finishes, so "
                          "that an interrupted run can be continued with --resume.")]
RetrainResume = Annotated[bool, typer.Option(
    "--resume", help="Continue the retrains in --retrain-dir (the same run: checked); finished ones are skipped.")]
RetrainWorkers = Annotated[int | None, typer.Option(
    "--workers", help="With --train-fn: run the retrains on a local Dask cluster of N worker processes.")]
RetrainScheduler = Annotated[str | None, typer.Option(
    "--scheduler", help="With --train-fn: run the retrains on an existing Dask cluster at ADDRESS (e.g. "
                        "tcp://host:8786); its workers must be able to import --train-fn.")]


def import_function(spec: str, parameter: str, *, example: str = "mypkg.train:fit", classes: bool = False) -> Any:
    """The callable named by ``module:name`` (``name`` may be dotted: ``module:Class.method``), imported as a
    user's own code is (installed, on PYTHONPATH or in the current directory); errors name ``parameter`` and show
    ``example``. ``classes``: a class is expected as well as a function (the messages say so)."""
    import importlib
    import os
    import sys

    from ..validation import fail

    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        form = "module:function (or module:Class)" if classes else "module:function"
        raise fail(f"{parameter} must be written {form}, e.g. {example}; got {spec!r}", parameter)
    if os.getcwd() not in sys.path:  # a module next to the user's files, as `python -m` would find it
        sys.path.append(os.getcwd())
    try:
        obj: Any = importlib.import_module(module)
    except ImportError as e:
        raise fail(f"{parameter} {spec}: cannot import module {module!r} ({e}); install it or put it on "
                   "PYTHONPATH", parameter) from None
    except Exception as e:  # the module itself fails while importing
        raise fail(f"{parameter} {spec}: importing module {module!r} raised {type(e).__name__}: {e}",
                   parameter) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise fail(f"{parameter} {spec}: {module} has no attribute {attr!r}", parameter)
        obj = getattr(obj, part)
    if not callable(obj):
        what = (f"is a {type(obj).__name__}, not a function or class" if classes
                else f"is not a function (type {type(obj).__name__})")
        raise fail(f"{parameter} {spec}: {attr} {what}", parameter)
    return obj


def retrain_settings(train_fn: str | None, loss_fn: str | None, seeds: int | None, retrain_dir: Path | None,
                     resume: bool, workers: int | None, scheduler: str | None, *, default_seeds: int,
                     quiet: bool) -> dict[str, Any] | None:
    """The keyword arguments of the retraining API for the --train-fn flags (the functions imported and
    checked), or None without --train-fn (then every other retraining flag is refused)."""
    from ..validation import fail

    if train_fn is None:
        given = [name for name, v in (("seeds", seeds), ("loss_fn", loss_fn), ("retrain_dir", retrain_dir),
                                      ("resume=True", resume or None), ("workers", workers),
                                      ("scheduler", scheduler)) if v is not None]
        if given:
            raise fail(f"{given[0]} applies only with train_fn (retraining your whole model); without it the head "
                       "is retrained", given[0], "train_fn")
        return None
    from ..evaluation.retrain import check_train_fn

    fn = check_train_fn(import_function(train_fn, "train_fn"))
    lf = import_function(loss_fn, "loss_fn") if loss_fn is not None else None
    if resume and retrain_dir is None:
        raise fail("resume=True needs retrain_dir, the folder that holds the retrains to continue", "resume=True",
                   "retrain_dir")
    return {"train_fn": fn, "loss_fn": lf, "seeds": default_seeds if seeds is None else seeds,
            "retrain_dir": retrain_dir, "resume": resume, "workers": workers, "scheduler": scheduler,
            "progress": not quiet}
