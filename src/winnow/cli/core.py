"""Foundation commands: fit-head, influence, validate-loo, demo."""

from __future__ import annotations

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
    PrecisionChoice,
    PrecisionOpt,
    Quiet,
    Refit,
    ReportOut,
    RetrainDir,
    RetrainResume,
    RetrainScheduler,
    RetrainSeeds,
    RetrainWorkers,
    TrainFnOpt,
    data_columns,
    engine_for,
    polish_head,
    retrain_settings,
    say,
    source_from,
)
from .relative import HessianChoice, HessianOpt, SamplerChoice, SamplerOpt, SampleSizeOpt, SeedOpt
from .report import write_run_report
from .scale import ClusterTimeout, PartitionRows, Parts, Resume, Scheduler, Workers

TrainArg = Annotated[Path, typer.Argument(help="Training data: .csv / .tsv (optionally .gz), .parquet or a "
                                               "directory of Parquet files (a `label` column, or "
                                               "--label-column), or .npz (arrays X, y, optional id).")]
HeadOpt = Annotated[Path, typer.Option("--head", help="Head weights written by `winnow fit-head` (.npz).")]
TestOpt = Annotated[Path, typer.Option("--test", help="Test/validation data, same formats as TRAIN.")]


class Kind(str, Enum):
    auto = "auto"
    logistic = "logistic"
    softmax = "softmax"


@app.command("fit-head")
def fit_head(
    train: TrainArg,
    out: Annotated[Path, typer.Option("--out", help="Where to write the head (.npz).")],
    kind: Annotated[Kind, typer.Option("--kind", help="logistic (labels 0/1), softmax (0..K-1) or auto.")]
    = Kind.auto,
    l2: Annotated[float, typer.Option("--l2", min=0.0, help="L2 strength λ on the weights in "
                                      "(1/n)Σℓ + (λ/2)‖W‖².")] = 1e-3,
    weights: Annotated[Path | None, typer.Option("--weights", help="A SUBSET.parquet from `winnow subsample`: "
                                                 "fit on its rows with its `weight` column (1/π weights "
                                                 "divide by n, so the fit estimates the full-data one).")]
    = None,
    label_column: LabelColumn = None, id_column: IdColumn = None,
    features_column: FeaturesColumn = None, feature_columns: FeatureColumns = None, exclude: Exclude = None,
    classes: ClassesOpt = None, positive_label: PositiveLabel = None,
    workers: EngineWorkers = None, scheduler: EngineScheduler = None,
    overwrite: Overwrite = False, quiet: Quiet = False,
) -> None:
    """Fit a linear head on TRAIN's features to a tight optimum (damped Newton, float64)."""
    from ..api import fit_head as api_fit_head
    from ..io.outputs import check_output_path

    check_output_path(out, overwrite, argument="out", formats="npz")
    cols = data_columns(label_column, id_column, features_column, feature_columns, exclude, classes,
                        positive_label)
    src = source_from(train, cols)
    sample_weight = normalizer = None
    if weights is not None:
        from ..io.subsets import load_subset_weights

        sample_weight, normalizer = load_subset_weights(weights, src, return_normalizer=True)
    with engine_for(workers, scheduler, quiet=True):
        head = api_fit_head(src, kind=kind.value, l2=l2, sample_weight=sample_weight, normalizer=normalizer)
    head.save(out, overwrite=overwrite)
    say(quiet, f"fitted {head!r} in {head.n_iter_} Newton iterations, final ‖∇R‖∞ = {head.grad_norm_:.2e}")
    if head.classes_ is not None:
        from ..io.columns import format_value

        say(quiet, "labels: " + ", ".join(f"{format_value(c)} -> {i}" for i, c in enumerate(head.classes_)))
    say(quiet, f"wrote {out}")


@app.command("influence")
def influence(
    train: TrainArg, head: HeadOpt, test: TestOpt,
    out: Annotated[Path, typer.Option("--out", help="Scores, one row per training point (.parquet, or .csv "
                                      "with the metadata in <out>.json): id, "
                                      "label, influence (>0 harmful to the test loss, <0 helpful), "
                                      "loss_change_if_removed (= -influence/n), self_influence.")],
    pairs: Annotated[Path | None, typer.Option("--pairs", help="Also write the pairwise I_loss in long format "
                                               "(test_id, train_id, influence): T·n rows (.parquet or .csv).")] = None,
    newton: Annotated[bool, typer.Option("--newton", help="Also write `leverage` and "
                                         "`loss_change_if_removed_newton`: the Newton-step (leverage-corrected) "
                                         "removal (1/n)·H₋ₚ⁻¹g_p evaluated in the mean test loss to second order "
                                         "(mean test gradient and Hessian). No extra pass over "
                                         "TRAIN; roughly doubles the scoring time (more for softmax heads).")]
    = False,
    newton_exact: Annotated[bool, typer.Option("--newton-exact", help="Also write "
                                               "`loss_change_if_removed_newton_exact`: the mean test loss "
                                               "evaluated at the moved parameters (implies --newton). O(T·P) per "
                                               "training point, with the test features held in memory.")] = False,
    memorization: Annotated[bool, typer.Option("--memorization", help="Add columns memorization "
                                               "(‖Λ⁻¹Qᵀg_p‖₁, paper Definition 6) and memorize (score > D); "
                                               "D is the 0.9 quantile unless given.")] = False,
    memorize_threshold: Annotated[float | None, typer.Option("--memorize-threshold", help="D (>= 0): a point "
                                                             "memorizes when its score exceeds D.")] = None,
    memorize_quantile: Annotated[float | None, typer.Option("--memorize-quantile", help="D as this quantile "
                                                            "(0..1) of the scores (one extra pass).")] = None,
    damping: Damping = 0.0, chunk_size: ChunkSize = 65536,
    hessian: HessianOpt = HessianChoice.full, sample_size: SampleSizeOpt = None,
    sampler: SamplerOpt = SamplerChoice.uniform, seed: SeedOpt = 0,
    label_column: LabelColumn = None, id_column: IdColumn = None,
    features_column: FeaturesColumn = None, feature_columns: FeatureColumns = None, exclude: Exclude = None,
    classes: ClassesOpt = None, positive_label: PositiveLabel = None,
    parts: Parts = False, workers: Workers = None, scheduler: Scheduler = None, resume: Resume = False,
    partition_rows: PartitionRows = None, cluster_timeout: ClusterTimeout = 30.0,
    refit: Refit = False, allow_nonstationary: AllowNonstationary = False,
    overwrite: Overwrite = False, quiet: Quiet = False, report: ReportOut = None,
    precision: PrecisionOpt = PrecisionChoice.auto,
) -> None:
    """Influence of every training point on the mean loss of TEST (one Hessian pass, one scoring pass).
    With --parts/--workers/--scheduler/--resume (or a directory --out) the scores go to a directory of part
    files, resumable after a crash, computed in this process or on a Dask cluster."""
    from ..analyses.influence import InfluenceAnalyzer
    from ..core.heads import load_head
    from ..io.outputs import check_output_path
    from .scale import influence_parts_command, wants_parts

    partitioned = wants_parts(out, parts=parts, workers=workers, scheduler=scheduler, resume=resume,
                              partition_rows=partition_rows)
    if not partitioned:
        check_output_path(out, overwrite, argument="out", formats="table")
        if pairs is not None:
            check_output_path(pairs, overwrite, argument="pairs_out")
    if report is not None:
        check_output_path(report, overwrite, argument="report")
    h = load_head(head)
    h.precision = precision.value  # the Hessian and scoring passes below read it from the head
    cols = data_columns(label_column, id_column, features_column, feature_columns, exclude, classes,
                        positive_label)
    tr = source_from(train, cols, head=h)
    te = source_from(test, cols, parameter="test", head=h)
    h = polish_head(h, tr, refit, quiet)
    extra = []
    if newton or newton_exact:
        from ..analyses.fidelity import NewtonColumns

        extra.append(NewtonColumns(exact=newton_exact))
    if memorization or memorize_threshold is not None or memorize_quantile is not None:
        from ..analyses.memorization import MemorizationColumns

        if memorize_threshold is None and memorize_quantile is None:
            memorize_quantile = 0.9
        extra.append(MemorizationColumns(threshold=memorize_threshold, quantile=memorize_quantile))
    if partitioned:
        influence_parts_command(h, tr, te, out, damping=damping, chunk_size=chunk_size, hessian=hessian.value,
                                sample_size=sample_size, sampler=sampler.value, seed=seed, extra=extra,
                                pairs=pairs, workers=workers, scheduler=scheduler, resume=resume,
                                overwrite=overwrite, partition_rows=partition_rows,
                                cluster_timeout=cluster_timeout, quiet=quiet,
                                allow_nonstationary=allow_nonstationary)
        if report is not None:
            write_run_report(out, report, overwrite=overwrite, quiet=quiet, show=5)
        return
    from ..analyses.relative import make_curvature

    curv = make_curvature(h, tr, hessian=hessian.value, sample_size=sample_size, sampler=sampler.value,
                          seed=seed, damping=damping, chunk_size=chunk_size, progress=not quiet,
                          allow_nonstationary=allow_nonstationary)
    an = InfluenceAnalyzer(h, damping=damping, chunk_size=chunk_size, progress=not quiet,
                           allow_nonstationary=allow_nonstationary).fit(tr, curvature=curv)
    an.write_scores(te, out, pairs_out=pairs, overwrite=overwrite, extra=extra)
    say(quiet, f"wrote {out}" + (f" and {pairs}" if pairs else ""))
    if report is not None:
        write_run_report(out, report, overwrite=overwrite, quiet=quiet, show=5)


@app.command("validate-loo")
def validate_loo(
    train: TrainArg, head: HeadOpt, test: TestOpt,
    points: Annotated[int, typer.Option("--points", min=2, help="How many training points to remove, one "
                                        "at a time, retraining each time.")] = 50,
    seed: Annotated[int, typer.Option("--seed", help="Seed for choosing the points.")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write predicted/actual per point and the "
                                                  "correlations to this JSON file.")] = None,
    damping: Damping = 0.0,
    label_column: LabelColumn = None, id_column: IdColumn = None,
    features_column: FeaturesColumn = None, feature_columns: FeatureColumns = None, exclude: Exclude = None,
    classes: ClassesOpt = None, positive_label: PositiveLabel = None,
    refit: Refit = False, allow_nonstationary: AllowNonstationary = False,
    train_fn: TrainFnOpt = None, loss_fn: LossFnOpt = None, seeds: RetrainSeeds = None,
    retrain_dir: RetrainDir = None, resume: RetrainResume = False, workers: RetrainWorkers = None,
    scheduler: RetrainScheduler = None,
    overwrite: Overwrite = False, quiet: Quiet = False,
) -> None:
    """Ground truth: retrain the head without each of K points (ε = −1/n objective, warm start, tight
    tolerance) — or, with --train-fn, your whole model with several seeds — and correlate the actual change
    of test loss with the one the head predicts."""
    from ..core.heads import load_head
    from ..evaluation.loo import leave_one_out
    from ..io.outputs import check_output_path, write_json

    if json_out is not None:
        check_output_path(json_out, overwrite, argument="json_out")
    h = load_head(head)
    cols = data_columns(label_column, id_column, features_column, feature_columns, exclude, classes,
                        positive_label)
    tr = source_from(train, cols, head=h)
    te = source_from(test, cols, parameter="test", head=h)
    retrain = retrain_settings(train_fn, loss_fn, seeds, retrain_dir, resume, workers, scheduler, default_seeds=3,
                               quiet=quiet)
    h = polish_head(h, tr, refit, quiet)
    if retrain is not None:
        import numpy as np

        from ..evaluation.retrain import leave_one_out_retrained

        res = leave_one_out_retrained(h, train=tr, test=te, points=points, seed=seed, damping=damping,
                                      allow_nonstationary=allow_nonstationary, **retrain)
        typer.echo(f"leave-one-out over {len(res.ids)} points (n = {res.n_train}), whole model retrained by "
                   f"{train_fn} with {res.extra['seeds']} seed(s): Pearson {res.pearson:.4f}, Spearman "
                   f"{res.spearman:.4f}; median |actual change| {np.median(np.abs(res.actual)):.3g}, seed noise "
                   f"(std of the full-data test loss across seeds) "
                   + (f"{res.extra['seed_noise']:.3g}" if res.extra["seeds"] > 1 else "not measured (one seed)"))
    else:
        res = leave_one_out(h, tr, te, points=points, seed=seed, damping=damping, progress=not quiet,
                            allow_nonstationary=allow_nonstationary)
        typer.echo(f"leave-one-out over {len(res.ids)} points (n = {res.n_train}): "
                   f"Pearson {res.pearson:.4f}, Spearman {res.spearman:.4f}")
    if json_out is not None:
        write_json(json_out, res.summary(), overwrite=overwrite)
        say(quiet, f"wrote {json_out}")


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option("--out", help="Output folder (refused if it holds files, unless "
                                      "--overwrite).")] = Path("winnow-demo"),
    overwrite: Overwrite = False, quiet: Quiet = False,
) -> None:
    """Run the whole pipeline on a bundled real data set and write scores + report.html to --out."""
    from ..demo.pipeline import run_demo

    paths = run_demo(out, overwrite=overwrite, progress=not quiet)
    for name, p in paths.items():
        typer.echo(f"{name}: {p}")
