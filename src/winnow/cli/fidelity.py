"""Fidelity commands: validate-group, evaluate-mislabel, evaluate-lds."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ..errors import ValidationError
from . import app
from .options import (
    AllowNonstationary,
    ClassesOpt,
    Damping,
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
    RetrainSeeds,
    RetrainWorkers,
    TrainFnOpt,
    data_columns,
    polish_head,
    retrain_settings,
    say,
    source_from,
)

TrainArg = Annotated[Path, typer.Argument(help="Training data: .npz (arrays X, y, optional id) or Parquet "
                                               "file/directory with a `label` column.")]
HeadOpt = Annotated[Path, typer.Option("--head", help="Head weights written by `winnow fit-head` (.npz).")]
TestOpt = Annotated[Path, typer.Option("--test", help="Test/validation data, same formats as TRAIN.")]
JsonOpt = Annotated[Path | None, typer.Option("--json", help="Write the numbers to this JSON file.")]
ReportOpt = Annotated[Path | None, typer.Option("--report", help="Write an HTML report section to this file.")]


class HeadKind(str, Enum):
    auto = "auto"
    logistic = "logistic"
    softmax = "softmax"


def _check_outputs(overwrite: bool, **paths: Path | None) -> None:
    from ..io.outputs import check_output_path

    for arg, p in paths.items():
        if p is not None:
            check_output_path(p, overwrite, argument=arg)


def _print_table(header: list[str], rows: list[list]) -> None:
    def fmt(v: object) -> str:
        return f"{v:.6g}" if isinstance(v, float) else str(v)

    cells = [header] + [[fmt(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for r in cells:
        typer.echo("  ".join(c.rjust(w) for c, w in zip(r, widths)))


@app.command("validate-group")
def validate_group(
    train: TrainArg, head: HeadOpt, test: TestOpt,
    subset: Annotated[Path | None, typer.Option("--subset", help="Training ids to remove together: .npy array, "
                                                ".csv (column --subset-column, or one headerless column) or "
                                                "Parquet (column --subset-column).")] = None,
    subset_column: Annotated[str, typer.Option("--subset-column", help="Id column in a CSV/Parquet subset.")]
    = "id",
    sweep: Annotated[bool, typer.Option("--sweep", help="Instead of one subset: random and highest-influence "
                                        "groups of each size in --fractions, all retrained.")] = False,
    fractions: Annotated[str, typer.Option("--fractions", help="Group sizes for --sweep, as fractions of n.")]
    = "0.01,0.1,0.5",
    random_groups: Annotated[int, typer.Option("--random-groups", min=1, help="Random groups per size in "
                                               "--sweep.")] = 5,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the random groups.")] = 0,
    retrain: Annotated[bool, typer.Option("--retrain/--no-retrain", help="Also retrain without the subset for "
                                          "the actual change (default) or only predict.")] = True,
    renormalize: Annotated[bool, typer.Option("--renormalize", help="Removal means refitting on the kept rows "
                                              "with normaliser n − |S| (as a user retrains on a subset); "
                                              "default: the ε = −1/n objective, normaliser n.")] = False,
    json_out: JsonOpt = None, report: ReportOpt = None, damping: Damping = 0.0,
    label_column: LabelColumn = None, id_column: IdColumn = None,
    features_column: FeaturesColumn = None, feature_columns: FeatureColumns = None, exclude: Exclude = None,
    classes: ClassesOpt = None, positive_label: PositiveLabel = None,
    refit: Refit = False, allow_nonstationary: AllowNonstationary = False,
    train_fn: TrainFnOpt = None, loss_fn: LossFnOpt = None, seeds: RetrainSeeds = None,
    retrain_dir: RetrainDir = None, resume: RetrainResume = False, workers: RetrainWorkers = None,
    scheduler: RetrainScheduler = None,
    overwrite: Overwrite = False, quiet: Quiet = False,
) -> None:
    """Change of the mean TEST loss when a whole set of training points is removed: first order (the sum of
    loss_change_if_removed) and Newton (one solve with the Hessian without the set; test loss to second order
    and exact), against retraining the head — or, with --train-fn, your whole model (--subset only). Data are
    held in memory."""
    from ..analyses.fidelity import (
        GROUP_HEADER,
        SUMMARY_HEADER,
        group_divergence,
        group_effect,
        read_subset_ids,
    )
    from ..core.heads import load_head
    from ..io.outputs import write_json
    from ..report import group_section
    from ..report.html import Report

    if (subset is None) == (not sweep):
        raise ValidationError("give exactly one of --subset FILE (one group) or --sweep (groups of several sizes)")
    _check_outputs(overwrite, json_out=json_out, report=report)
    retrain_model = retrain_settings(train_fn, loss_fn, seeds, retrain_dir, resume, workers, scheduler,
                                     default_seeds=3, quiet=quiet)
    if retrain_model is not None and (sweep or not retrain):
        from ..validation import fail

        raise fail("train_fn retrains your whole model without one group: give subset (not --sweep) and keep "
                   "--retrain", "train_fn", "subset")
    h = load_head(head)
    cols = data_columns(label_column, id_column, features_column, feature_columns, exclude, classes,
                        positive_label)
    tr = source_from(train, cols, head=h)
    te = source_from(test, cols, parameter="test", head=h)
    h = polish_head(h, tr, refit, quiet)
    if subset is not None and retrain_model is not None:
        from ..evaluation.retrain import group_by_retraining

        ids = read_subset_ids(subset, subset_column)
        g = group_by_retraining(train=tr, test=te, subset=ids, head=h, renormalize=renormalize, damping=damping,
                                allow_nonstationary=allow_nonstationary, **retrain_model)
        _print_table(GROUP_HEADER, [g.as_row()])
        typer.echo(f"whole model retrained by {train_fn} with {retrain_model['seeds']} seed(s); std of the "
                   f"actual change across seeds {g.actual_std:.3g}")
        if json_out is not None:
            write_json(json_out, vars(g), overwrite=overwrite)
        if report is not None:
            Report("winnow: group removal").section("Group removal (whole model)").table(
                GROUP_HEADER, [g.as_row()]).write(report, overwrite=overwrite)
    elif subset is not None:
        ids = read_subset_ids(subset, subset_column)
        g = group_effect(h, tr, te, ids, retrain=retrain, renormalize=renormalize, damping=damping,
                         allow_nonstationary=allow_nonstationary)
        _print_table(GROUP_HEADER, [g.as_row()])
        if json_out is not None:
            write_json(json_out, vars(g), overwrite=overwrite)
        if report is not None:
            Report("winnow: group removal").section("Group removal").table(GROUP_HEADER, [g.as_row()]) \
                .write(report, overwrite=overwrite)
    else:
        try:
            fr = [float(v) for v in fractions.split(",") if v.strip()]
        except ValueError:
            raise ValidationError(f"--fractions must be comma-separated numbers, got {fractions!r}") from None
        res = group_divergence(h, tr, te, fractions=fr, random_groups=random_groups, renormalize=renormalize,
                               seed=seed, damping=damping, progress=not quiet,
                               allow_nonstationary=allow_nonstationary)
        _print_table(SUMMARY_HEADER, res.summary_rows())
        if json_out is not None:
            write_json(json_out, {"n_train": res.n_train, "renormalize": renormalize,
                                  "stationarity": res.stationarity,
                                  "groups": [vars(g) for g in res.groups]}, overwrite=overwrite)
        if report is not None:
            group_section(Report("winnow: group removal"), res).write(report, overwrite=overwrite)
    for p in (json_out, report):
        if p is not None:
            say(quiet, f"wrote {p}")


@app.command("evaluate-mislabel")
def evaluate_mislabel_cmd(
    train: TrainArg,
    flip: Annotated[float, typer.Option("--flip", help="Fraction of training labels to flip, in (0, 0.5) "
                                        "(binary: 1 − y; K classes: a random other class).")] = 0.1,
    head_kind: Annotated[HeadKind, typer.Option("--head-kind", help="logistic (labels 0/1), softmax (0..K-1) "
                                                "or auto.")] = HeadKind.auto,
    l2: Annotated[float, typer.Option("--l2", min=0.0, help="L2 strength λ of the refitted head.")] = 1e-3,
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Repetitions with different flips.")] = 5,
    valid: Annotated[Path | None, typer.Option("--valid", help="Clean validation data for the 'influence on "
                                               "validation' ranking. Default: hold out --valid-fraction of "
                                               "TRAIN before flipping.")] = None,
    valid_fraction: Annotated[float, typer.Option("--valid-fraction", help="Held-out share of TRAIN used as the "
                                                  "clean validation set when --valid is not given.")] = 0.2,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the split and the flips.")] = 0,
    json_out: JsonOpt = None, report: ReportOpt = None, damping: Damping = 0.0,
    label_column: LabelColumn = None, id_column: IdColumn = None,
    features_column: FeaturesColumn = None, feature_columns: FeatureColumns = None, exclude: Exclude = None,
    classes: ClassesOpt = None, positive_label: PositiveLabel = None,
    overwrite: Overwrite = False, quiet: Quiet = False,
) -> None:
    """Koh & Liang's mislabel experiment: flip labels, refit, check training points in the order of
    self-influence, training loss, influence on clean validation data, or at random; print the fraction of
    flips found at 5/10/20/30 % checked. Data are held in memory."""
    from ..evaluation.mislabel import evaluate_mislabel
    from ..io.outputs import write_json
    from ..report import mislabel_section
    from ..report.html import Report

    _check_outputs(overwrite, json_out=json_out, report=report)
    cols = data_columns(label_column, id_column, features_column, feature_columns, exclude, classes,
                        positive_label)
    tr = source_from(train, cols)
    va = source_from(valid, cols, parameter="valid", like=tr) if valid else None
    res = evaluate_mislabel(tr, head_kind=head_kind.value, l2=l2, flip=flip, seeds=seeds, valid=va,
                            valid_fraction=valid_fraction, seed=seed, damping=damping, progress=not quiet)
    typer.echo(f"{res.n_flipped} of {res.n_train} labels flipped, {res.head_kind} head, {seeds} seed(s); "
               f"validation: {res.valid}")
    _print_table(res.header(), res.table())
    if json_out is not None:
        write_json(json_out, res.summary(), overwrite=overwrite)
        say(quiet, f"wrote {json_out}")
    if report is not None:
        mislabel_section(Report("winnow: mislabel detection"), res).write(report, overwrite=overwrite)
        say(quiet, f"wrote {report}")


@app.command("evaluate-lds")
def evaluate_lds(
    train: TrainArg, head: HeadOpt, test: TestOpt,
    subsets: Annotated[int, typer.Option("--subsets", help="M random subsets, each retrained (M >= 10).")] = 100,
    fraction: Annotated[float, typer.Option("--fraction", help="Share of training rows each subset keeps.")]
    = 0.5,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the subsets.")] = 0,
    renormalize: Annotated[bool, typer.Option("--renormalize/--removal-objective", help="Retrain each subset "
                                              "as usual (normaliser |S|, default) or on the ε = −1/n "
                                              "objective (normaliser n).")] = True,
    json_out: JsonOpt = None, report: ReportOpt = None, damping: Damping = 0.0,
    label_column: LabelColumn = None, id_column: IdColumn = None,
    features_column: FeaturesColumn = None, feature_columns: FeatureColumns = None, exclude: Exclude = None,
    classes: ClassesOpt = None, positive_label: PositiveLabel = None,
    refit: Refit = False, allow_nonstationary: AllowNonstationary = False,
    train_fn: TrainFnOpt = None, loss_fn: LossFnOpt = None, seeds: RetrainSeeds = None,
    retrain_dir: RetrainDir = None, resume: RetrainResume = False, workers: RetrainWorkers = None,
    scheduler: RetrainScheduler = None,
    overwrite: Overwrite = False, quiet: Quiet = False,
) -> None:
    """Linear datamodeling score: per test point, Spearman over M random subsets between the retrained test
    loss and (1/n) Σ_(p kept) I_loss(t, p), averaged over test points. The head is retrained on each subset,
    or with --train-fn your whole model (--seeds per subset, as TRAK and dattri average). Holds the (T, n)
    influence matrix."""
    from ..core.heads import load_head
    from ..evaluation.lds import linear_datamodeling_score
    from ..io.outputs import write_json
    from ..report import lds_section
    from ..report.html import Report

    _check_outputs(overwrite, json_out=json_out, report=report)
    retrain_model = retrain_settings(train_fn, loss_fn, seeds, retrain_dir, resume, workers, scheduler,
                                     default_seeds=1, quiet=quiet)
    h = load_head(head)
    cols = data_columns(label_column, id_column, features_column, feature_columns, exclude, classes,
                        positive_label)
    tr = source_from(train, cols, head=h)
    te = source_from(test, cols, parameter="test", head=h)
    h = polish_head(h, tr, refit, quiet)
    if retrain_model is not None:
        from ..evaluation.retrain import lds_retrained

        res = lds_retrained(h, train=tr, test=te, subsets=subsets, fraction=fraction, seed=seed, damping=damping,
                            allow_nonstationary=allow_nonstationary, **retrain_model)
        typer.echo(f"LDS of the head's influence over {subsets} subsets ({fraction:g} of n = {res.n_train}), "
                   f"whole model retrained by {train_fn} with {retrain_model['seeds']} seed(s) each: "
                   f"{res.score:.4f}")
    else:
        res = linear_datamodeling_score(h, tr, te, subsets=subsets, fraction=fraction, seed=seed,
                                        renormalize=renormalize, damping=damping, progress=not quiet,
                                        allow_nonstationary=allow_nonstationary)
        typer.echo(f"LDS over {subsets} subsets ({fraction:g} of n = {res.n_train}): {res.score:.4f} "
                   f"(Newton group step: {res.score_newton:.4f})")
    if json_out is not None:
        write_json(json_out, res.summary(), overwrite=overwrite)
        say(quiet, f"wrote {json_out}")
    if report is not None:
        lds_section(Report("winnow: linear datamodeling score"), res).write(report, overwrite=overwrite)
        say(quiet, f"wrote {report}")
