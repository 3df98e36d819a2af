"""Options shared by several commands, the glue that turns them into data sources, and the one table that
writes the Python API's parameter names as this command line's flags."""

from __future__ import annotations

import re
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
    "head": "--head", "subset": "--subset", "label_column": "--label-column", "id_column": "--id-column",
    "features_column": "--features-column", "feature_columns": "--feature-columns",
    # outputs
    "out": "--out", "json_out": "--json", "pairs_out": "--pairs", "plot": "--plot", "report": "--report",
    "points_out": "--points-out", "head_out": "--head-out", "overwrite=True": "--overwrite",
    # numerics shared by many commands
    "damping": "--damping", "chunk_size": "--chunk-size", "seed": "--seed", "seeds": "--seeds", "l2": "--l2",
    "kind": "--kind", "batch_size": "--batch-size",
    # relative Hessians and LEP
    "hessian": "--hessian", "sample_size": "--sample-size", "sampler": "--sampler", "pilot_size": "--pilot-size",
    "threshold": "--threshold", "start": "--start", "max_size": "--max-size", "growth": "--growth",
    # subsampling
    "keep": "--keep", "policy": "--policy", "weighted": "--weighted", "memorize_threshold": "--memorize-threshold",
    "memorize_quantile": "--memorize-quantile", "sharpness": "--sharpness", "tune_ratio": "--tune-ratio",
    "tune_draws": "--tune-draws", "score_fraction": "--score-fraction", "curve": "--curve",
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
    "factory": "--factory", "trust_model_file=True": "--trust-model-file",
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
LabelColumn = Annotated[str, typer.Option("--label-column", help="Parquet label column.")]
IdColumn = Annotated[str, typer.Option("--id-column", help="Parquet id column (int64; default row number).")]
FeaturesColumn = Annotated[str, typer.Option("--features-column",
                                             help="Parquet list column holding the feature vector.")]
FeatureColumns = Annotated[str | None, typer.Option(
    "--feature-columns", help="Comma-separated numeric Parquet columns to use as features instead.")]


def source_from(path: Path, label_column: str = "label", id_column: str = "id",
                features_column: str = "features", feature_columns: str | None = None, *,
                parameter: str = "train") -> Any:
    """A data source for a .npz file or a Parquet file/directory given on the command line; errors name the
    API parameter it is passed as (``train``, ``test``, ``valid``)."""
    from ..validation import open_data

    kwargs: dict[str, Any] = {}
    if path.suffix != ".npz":
        kwargs = dict(label_column=label_column, id_column=id_column, features_column=features_column,
                      feature_columns=[c.strip() for c in feature_columns.split(",")] if feature_columns
                      else None)
    return open_data(path, parameter, **kwargs)


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
