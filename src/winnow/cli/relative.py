"""``winnow lep``: relative influence (paper section 5) — how small a Hessian sample keeps the influence.

Also exports the options that ``winnow influence`` uses for ``--hessian full|relative --sample-size M
--sampler S --seed S`` (``HessianOpt``, ``SampleSizeOpt``, ``SamplerOpt``, ``SeedOpt``).
"""

from __future__ import annotations

import sys
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
    Overwrite,
    PositiveLabel,
    Quiet,
    Refit,
    data_columns,
    engine_for,
    polish_head,
    say,
    source_from,
)


class HessianChoice(str, Enum):
    full = "full"
    relative = "relative"


class SamplerChoice(str, Enum):
    uniform = "uniform"
    stratified = "stratified"
    leverage = "leverage"


HessianOpt = Annotated[HessianChoice, typer.Option(
    "--hessian", help="full: H from every training row; relative: H⁽ᵐ⁾ from --sample-size sampled rows "
                      "(paper eq. 52, same λ). `winnow lep` recommends the sample size.")]
SampleSizeOpt = Annotated[int | None, typer.Option(
    "--sample-size", min=1, help="m, the number of rows for --hessian relative (e.g. recommended_sample_size "
                                 "from `winnow lep --json`).")]
SamplerOpt = Annotated[SamplerChoice, typer.Option(
    "--sampler", help="uniform (eq. 52), stratified (by label, proportional) or leverage (importance "
                      "sampling ∝ ridge leverage from a pilot Hessian; costs one extra pass over TRAIN).")]
SeedOpt = Annotated[int, typer.Option("--seed", min=0, help="Seed of the sample (same seed, same rows).")]

TrainArg = Annotated[Path, typer.Argument(help="Training data: .csv / .tsv (optionally .gz), .parquet or a "
                                               "directory of Parquet files (a `label` column, or "
                                               "--label-column), or .npz (arrays X, y, optional id).")]
HeadOpt = Annotated[Path, typer.Option("--head", help="Head weights written by `winnow fit-head` (.npz).")]
TestOpt = Annotated[Path, typer.Option("--test", help="Test/validation data, same formats as TRAIN.")]


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:  # NaN
            return "nan"
        return f"{v:,.0f}" if abs(v) >= 1e4 or (v.is_integer() and abs(v) >= 1000) else f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


@app.command("lep")
def lep(
    train: TrainArg, head: HeadOpt, test: TestOpt,
    full: Annotated[bool, typer.Option("--full", help="Compare each sample with the full Hessian (one full "
                                       "Hessian pass) instead of with a second independent sample.")] = False,
    sampler: SamplerOpt = SamplerChoice.uniform,
    seed: SeedOpt = 0,
    threshold: Annotated[float, typer.Option("--threshold",
                                             help="Stop at the first m whose Spearman correlation of the "
                                                  "two influence vectors reaches this. Two samples differ "
                                                  "about twice as much as one sample from the full Hessian: "
                                                  "0.98 here targets ~0.99 vs full. In (0, 1].")] = 0.99,
    start: Annotated[int | None, typer.Option("--start", min=1, help="First m (default max(2P, 256)).")] = None,
    max_size: Annotated[int | None, typer.Option("--max-size", min=1, help="Largest m tried (default n).")]
    = None,
    growth: Annotated[float, typer.Option("--growth", min=1.01, help="m grows by this factor per step.")] = 2.0,
    pilot_size: Annotated[int | None, typer.Option("--pilot-size", min=1, help="Rows of the leverage pilot "
                                                   "Hessian (default min(n, max(5P, 500))).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the summary (recommended_sample_size, "
                                                  "the curve, costs) to this JSON file.")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write the agreement-vs-m plot (PNG) here.")]
    = None,
    damping: Damping = 0.0, chunk_size: ChunkSize = 65536,
    label_column: LabelColumn = None, id_column: IdColumn = None,
    features_column: FeaturesColumn = None, feature_columns: FeatureColumns = None, exclude: Exclude = None,
    classes: ClassesOpt = None, positive_label: PositiveLabel = None,
    workers: EngineWorkers = None, scheduler: EngineScheduler = None,
    refit: Refit = False, allow_nonstationary: AllowNonstationary = False,
    overwrite: Overwrite = False, quiet: Quiet = False,
) -> None:
    """Find the smallest Hessian sample m that preserves the influence ranking (LEP, paper Theorem 2).

    Doubles m from --start and, for each m, compares the influence on the mean TEST loss of every training
    point computed with two independent m-row samples (the paper's procedure; no full Hessian needed), or
    with one sample against the full Hessian (--full). Prints the curve, stops when Spearman ≥ --threshold.
    Use the result as `winnow influence ... --hessian relative --sample-size M --sampler S --seed S`.
    """
    from rich.console import Console
    from rich.table import Table

    from ..analyses.lep import SearchResult, two_sample_search
    from ..core.heads import load_head
    from ..io.outputs import atomic_path, check_output_path, write_json

    if json_out is not None:
        check_output_path(json_out, overwrite, argument="json_out")
    if plot is not None:
        check_output_path(plot, overwrite, argument="plot", formats=(".png",))
    h = load_head(head)
    cols = data_columns(label_column, id_column, features_column, feature_columns, exclude, classes,
                        positive_label)
    tr = source_from(train, cols, head=h)
    te = source_from(test, cols, parameter="test", head=h)
    with engine_for(workers, scheduler, chunk_size=chunk_size, quiet=quiet):
        h = polish_head(h, tr, refit, quiet)
        res = two_sample_search(h, tr, te, sampler=sampler.value, start=start, threshold=threshold, seed=seed,
                                max_size=max_size, full=full, growth=growth, damping=damping,
                                pilot_size=pilot_size, chunk_size=chunk_size, progress=not quiet,
                                allow_nonstationary=allow_nonstationary)

    console = Console(width=max(140, Console().width)) if not sys.stdout.isatty() else Console()
    vs = "vs the full Hessian" if full else "two independent samples"
    table = Table(title=f"LEP search ({res.sampler} sampler, seed {res.seed}, {vs}; n = {res.n_train:,}, "
                        f"P = {res.n_params})")
    for i, col in enumerate(SearchResult.TABLE_HEADER):
        table.add_column(col, justify="right", style="bold" if i == 2 else None)
    for row in res.table_rows():
        table.add_row(*(_fmt(v) for v in row))
    console.print(table)
    m = res.recommended_sample_size
    if m is None:
        top = res.steps[-1].size if res.steps else None
        typer.echo(f"no sample size up to {top} reached Spearman >= {threshold:g}; use the full Hessian "
                   f"(--hessian full), raise --max-size or lower --threshold")
    else:
        extra = ""
        sp = res.speedup()
        if sp is not None:
            extra = f"; curvature pass {sp:.1f}x faster than the full Hessian pass ({res.full_seconds:.3g} s)"
        if res.sampler == "leverage":
            extra += (f"; choosing the sample read {res.selection['rows_read']:,.0f} rows "
                      f"({res.selection['seconds']:.3g} s, the pilot plus one full leverage pass)")
        typer.echo(f"recommended sample size: {m:,}{extra}")
        import shlex

        words = ["winnow", "influence", str(train), "--head", str(head), "--test", str(test), *cols.cli_flags(),
                 "--hessian", "relative", "--sample-size", str(m), "--sampler", res.sampler, "--seed",
                 str(res.seed), "--out", "scores.parquet"]
        words += ["--refit"] if refit else ["--allow-nonstationary"] if allow_nonstationary else []
        typer.echo("use: " + " ".join(shlex.quote(w) for w in words))
    if json_out is not None:
        summary = res.summary()
        summary["train"], summary["test"], summary["head"] = str(train), str(test), str(head)
        write_json(json_out, summary, overwrite=overwrite)
        say(quiet, f"wrote {json_out}")
    if plot is not None:
        fig = res.figure()
        import matplotlib.pyplot as plt

        with atomic_path(plot, overwrite=overwrite, argument="plot") as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)
        say(quiet, f"wrote {plot}")
