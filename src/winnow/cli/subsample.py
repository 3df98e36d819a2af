"""Subsampling commands: ``subsample`` (choose a subset) and ``evaluate-subset`` (prove it by retraining)."""

from __future__ import annotations

import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from . import app
from .options import (
    AllowNonstationary,
    ChunkSize,
    ClassesOpt,
    Damping,
    EngineScheduler,
    EngineWorkers,
    Exclude,
    FeatureColumns,
    FeaturesColumn,
    IdColumn,
    LabelColumn,
    LossFnOpt,
    Overwrite,
    PositiveLabel,
    Quiet,
    Refit,
    RetrainDir,
    RetrainResume,
    RetrainScheduler,
    RetrainWorkers,
    TrainFnOpt,
    data_columns,
    engine_for,
    polish_head,
    retrain_settings,
    say,
    source_from,
)

TrainArg = Annotated[Path, typer.Argument(help="Training data: .npz (arrays X, y, optional id) or Parquet "
                                               "file/directory with a `label` column.")]


class Policy(str, Enum):
    paper = "paper"
    influence = "influence"
    wang = "wang"
    random = "random"


class TuneMetric(str, Enum):
    auc = "auc"
    logloss = "logloss"


@app.command("subsample")
def subsample(
    train: TrainArg,
    head: Annotated[Path, typer.Option("--head", help="Head fitted on TRAIN (`winnow fit-head`, .npz).")],
    keep: Annotated[float, typer.Option("--keep", help="Fraction of TRAIN to keep, in (0, 1]: exactly "
                                        "round(keep·n) rows are kept.")],
    out: Annotated[Path, typer.Option("--out", help="SUBSET (.parquet, or .csv with the choices in <out>.json): "
                                      "one row per kept point: id, label, weight, "
                                      "inclusion_probability and the scores used.")],
    valid: Annotated[Path | None, typer.Option("--valid", help="Validation data: the influence policy scores "
                                               "points on it; every choice (sharpness, D, ratio) is made on it."
                                               )] = None,
    policy: Annotated[Policy, typer.Option("--policy", help="paper: keep D-memorizable points that do not harm "
                                           "VALID, sample the rest uniformly; influence: Wang et al.'s sigmoid of "
                                           "the validation influence, sharpness chosen on VALID; wang: the same "
                                           "sigmoid with a fixed sharpness --alpha; random: uniform baseline."
                                           )] = Policy.influence,
    weighted: Annotated[bool, typer.Option("--weighted", help="Weight kept points by 1/π so that a weighted fit "
                                           "(normaliser n) estimates the full-data fit without bias.")] = False,
    memorize_threshold: Annotated[float | None, typer.Option(
        "--memorize-threshold", min=0.0, help="paper: D; points with memorization score > D are kept.")] = None,
    memorize_quantile: Annotated[float | None, typer.Option(
        "--memorize-quantile", min=0.0, max=1.0, help="paper: D = this quantile of the scores (0.9: the top "
        "10% memorize). Neither given: chosen on VALID.")] = None,
    sharpness: Annotated[float | None, typer.Option(
        "--sharpness", min=0.0, help="influence: k in π = σ((τ − φ)·k / range(φ)); 0 = uniform. Default: "
        "chosen on VALID from --sharpness-grid.")] = None,
    sharpness_grid: Annotated[str | None, typer.Option(
        "--sharpness-grid", help="influence: the k tried on VALID, comma-separated (default "
        "0,1,2,5,10,20,50,100,200,500,1000,2000,5000).")] = None,
    alpha: Annotated[float | None, typer.Option(
        "--alpha", help="wang: the fixed sharpness α in π = σ((τ − φ)·α / sd(φ)), > 0 (default 0.5).")] = None,
    crossfit: Annotated[bool, typer.Option(
        "--crossfit/--no-crossfit", help="Judge every choice by cross-fitting on the two halves of VALID "
        "(influence on one half, judged on the other, both ways, averaged). --no-crossfit: split VALID once "
        "by --score-fraction.")] = True,
    split_memorize: Annotated[bool, typer.Option(
        "--split-memorize/--no-split-memorize", help="paper: keep by the memorize rule only the memorizable "
        "points that do not harm VALID (--no-split-memorize: every memorizable point, the paper's rule).")] = True,
    tune_ratio: Annotated[TuneMetric | None, typer.Option(
        "--tune-ratio", help="Choose per-class keep rates on VALID by retraining, for auc or logloss.")] = None,
    tune_draws: Annotated[int, typer.Option("--tune-draws", min=1, help="Subsets drawn per candidate when "
                                            "tuning.")] = 3,
    score_fraction: Annotated[float, typer.Option(
        "--score-fraction", min=0.0, max=0.99, help="With --no-crossfit: share of VALID that scores the "
        "influence; the rest judges the choices (0: all of VALID for both).")] = 0.5,
    seed: Annotated[int, typer.Option("--seed", help="Seed for every random draw.")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the summary (policy, budget, ratio, "
                                                  "each candidate's validation metrics) as JSON.")] = None,
    damping: Damping = 0.0, chunk_size: ChunkSize = 65536,
    label_column: LabelColumn = None, id_column: IdColumn = None,
    features_column: FeaturesColumn = None, feature_columns: FeatureColumns = None, exclude: Exclude = None,
    classes: ClassesOpt = None, positive_label: PositiveLabel = None,
    workers: EngineWorkers = None, scheduler: EngineScheduler = None,
    refit: Refit = False, allow_nonstationary: AllowNonstationary = False,
    overwrite: Overwrite = False, quiet: Quiet = False,
) -> None:
    """Keep exactly round(keep·n) training points chosen by influence (or memorization), with the class
    ratio fixed or tuned on VALID; write their ids and weights."""
    from ..analyses.subsample import Subsampler
    from ..core.heads import load_head
    from ..io.outputs import check_output_path

    check_output_path(out, overwrite, argument="out", formats="table")
    if json_out is not None:
        check_output_path(json_out, overwrite, argument="json_out")
    h = load_head(head)
    cols = data_columns(label_column, id_column, features_column, feature_columns, exclude, classes,
                        positive_label)
    tr = source_from(train, cols, head=h)
    va = source_from(valid, cols, parameter="valid", head=h) if valid else None
    grid = None
    if sharpness_grid is not None:
        from ..validation import fail

        try:
            grid = [float(t) for t in sharpness_grid.split(",") if t.strip()]
        except ValueError:
            raise fail(f"sharpness_grid must be comma-separated numbers, got {sharpness_grid!r}",
                       "sharpness_grid") from None
    sampler = Subsampler(keep, policy=policy.value, weighted=weighted, memorize_threshold=memorize_threshold,
                         memorize_quantile=memorize_quantile, sharpness=sharpness, sharpness_grid=grid,
                         alpha=alpha, crossfit=crossfit, split_memorize=split_memorize,
                         tune_ratio=tune_ratio.value if tune_ratio else None, tune_draws=tune_draws, seed=seed,
                         score_fraction=score_fraction, damping=damping, chunk_size=chunk_size, progress=not quiet,
                         allow_nonstationary=allow_nonstationary)
    with warnings.catch_warnings(), engine_for(workers, scheduler, chunk_size=chunk_size, quiet=quiet):
        warnings.simplefilter("ignore", UserWarning)  # reported below, once, as plain lines
        h = polish_head(h, tr, refit, quiet)
        sampler.fit(tr, h, va)
    for note in sampler.warnings_:
        typer.secho(f"warning: {note}", fg="yellow", err=True)
    sampler.write(out, json_out=json_out, overwrite=overwrite)
    s = sampler.summary()
    chosen = []
    if "sharpness" in s:
        chosen.append(f"sharpness k = {s['sharpness']:g}")
    if "alpha" in s:
        chosen.append(f"sharpness α = {s['alpha']:g}")
    if "memorize_threshold" in s:
        harmful = sum(s.get("memorize_harmful_by_class", []))
        chosen.append(f"D = {s['memorize_threshold']:.4g} ({sum(s['memorize_by_class'])} to memorize"
                      + (f"; {harmful} more memorizable but harmful to VALID, sampled with the rest)" if harmful
                         else ")"))
    say(quiet, f"kept {s['budget']} of {s['n_train']} rows ({policy.value}, "
               f"{'weighted' if weighted else 'unweighted'}); per class {s['kept_by_class']} of "
               f"{s['class_sizes']}, ratio {s['ratio']}" + (f"; {', '.join(chosen)}" if chosen else ""))
    say(quiet, f"wrote {out}" + (f" and {json_out}" if json_out else ""))


@app.command("evaluate-subset")
def evaluate_subset(
    train: TrainArg,
    subset: Annotated[Path, typer.Option("--subset", help="SUBSET (.parquet or .csv) from `winnow subsample` "
                                         "(id, weight).")],
    test: Annotated[Path, typer.Option("--test", help="Test data: touched only to report the metrics.")],
    valid: Annotated[Path | None, typer.Option("--valid", help="Validation data (needed by --curve).")] = None,
    head: Annotated[Path | None, typer.Option("--head", help="Head fitted on TRAIN (its λ and kind; scores the "
                                              "points for --curve). Default: fit one with the subset's λ.")] = None,
    l2: Annotated[float | None, typer.Option("--l2", min=0.0, help="λ when no --head is given (default: the "
                                             "subset's).")] = None,
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Random subsets (and curve draws) per entry.")] = 5,
    curve: Annotated[bool, typer.Option("--curve", help="Sweep keep fractions 0.05..0.7 for every policy.")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON.")] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Write an HTML report with the table and "
                                                "the curve.")] = None,
    chunk_size: ChunkSize = 65536,
    label_column: LabelColumn = None, id_column: IdColumn = None,
    features_column: FeaturesColumn = None, feature_columns: FeatureColumns = None, exclude: Exclude = None,
    classes: ClassesOpt = None, positive_label: PositiveLabel = None,
    refit: Refit = False, allow_nonstationary: AllowNonstationary = False,
    train_fn: TrainFnOpt = None, loss_fn: LossFnOpt = None, retrain_dir: RetrainDir = None,
    resume: RetrainResume = False, workers: RetrainWorkers = None, scheduler: RetrainScheduler = None,
    overwrite: Overwrite = False, quiet: Quiet = False,
) -> None:
    """Retrain the head (or, with --train-fn, your whole model) on SUBSET (weighted if it has weights), on all
    of TRAIN and on random subsets of the same size and class counts; print test log-loss, AUC and accuracy
    as mean ± std."""
    from ..core.heads import load_head
    from ..evaluation.subset import evaluate_subset as api_evaluate
    from ..io.outputs import check_output_path, write_json
    from ..report import subsample_section as report_section
    from ..report.html import Report

    for path, arg in ((json_out, "json_out"), (report, "report")):
        if path is not None:
            check_output_path(path, overwrite, argument=arg)
    h = load_head(head) if head else None
    cols = data_columns(label_column, id_column, features_column, feature_columns, exclude, classes, positive_label)
    if train_fn is not None:
        from ..validation import fail

        for name, value in (("curve", curve or None), ("head", head), ("l2", l2), ("valid", valid)):
            if value is not None:
                raise fail(f"{name} applies to retraining the head; with train_fn your whole model is retrained "
                           "on the subset, the full data and random subsets", name, "train_fn")
    retrain_model = retrain_settings(train_fn, loss_fn, None, retrain_dir, resume, workers, scheduler,
                                     default_seeds=seeds, quiet=quiet)
    tr = source_from(train, cols, head=h)
    te = source_from(test, cols, parameter="test", head=h)
    va = source_from(valid, cols, parameter="valid", head=h) if valid else None
    if retrain_model is not None:
        from ..evaluation.retrain import evaluate_subset_by_retraining

        ev = evaluate_subset_by_retraining(train=tr, subset=subset, test=te, **retrain_model)
        say(quiet, f"whole model retrained by {train_fn}, {seeds} seed(s) per entry")
    elif h is not None:
        h = polish_head(h, tr, refit, quiet)
    elif refit or allow_nonstationary:
        from ..validation import fail

        name = "refit=True" if refit else "allow_nonstationary=True"
        raise fail(f"{name} applies only with head (a head of yours, to polish or to score as it is); without "
                   "it the head is fitted on train, at its optimum", name, "head", "train")
    if retrain_model is None:
        ev = api_evaluate(tr, subset, te, valid=va, head=h, l2=l2, seeds=seeds, curve=curve, chunk_size=chunk_size,
                          progress=not quiet, allow_nonstationary=allow_nonstationary)
    lines = [f"{'training set':<40} {'weighted':>8} {'rows':>8}  {'log-loss':>17}  {'AUC':>17}  {'accuracy':>17}"]
    entries = [(r["method"], r) for r in ev.rows]
    entries += [(f"  {p['policy']}{' (weighted)' if p['weighted'] else ''} @ {p['keep']:g}", p)
                for p in ev.curve if p["policy"] != "full"]
    for name, r in entries:
        lines.append(f"{name:<40} {str(r['weighted']):>8} {r['n_kept']:>8}  "
                     + "  ".join(f"{r[f'{k}_mean']:.4f} ± {r[f'{k}_std']:.4f}" for k in ("logloss", "auc",
                                                                                        "accuracy")))
    typer.echo("\n".join(lines))
    if json_out is not None:
        write_json(json_out, ev.summary(), overwrite=overwrite, argument="json_out")
        say(quiet, f"wrote {json_out}")
    if report is not None:
        rep = report_section(Report("winnow: subset evaluation"), ev)
        rep.write(report, overwrite=overwrite)
        say(quiet, f"wrote {report}")
