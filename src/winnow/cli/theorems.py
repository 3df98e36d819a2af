"""``winnow check-theorems``: Theorem 3 thresholds, memorization verdicts, the Theorem 4 sign rule, its λ
sweep and the section-8 removal experiment, printed as tables and optionally written as JSON / HTML."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

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


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def _parse_grid(text: str) -> tuple[float, ...]:
    from ..errors import ValidationError

    try:
        vals = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ValidationError(f"--l2-grid must be comma-separated numbers, got {text!r}") from None
    if not vals or any(not (v >= 0) for v in vals):
        raise ValidationError(f"--l2-grid must hold at least one number >= 0, got {text!r}")
    return vals


def print_check(check: Any) -> None:
    """Print a ``TheoremCheck`` as rich tables on stdout."""
    from rich.console import Console
    from rich.table import Table

    con = Console()
    if not con.is_terminal:  # a file or a pipe: wide enough that the tables keep their numbers whole
        con = Console(width=120)
    con.print(f"[bold]{check.head}[/bold]  n_train = {check.n_train}, n_test = {check.n_test}")

    lam = check.theorem3[0].lambda_min if check.theorem3 else float("nan")
    t = Table(title=f"Theorem 3: I_loss > 0 (< 0) ⇒ score > D⁺ (> D⁻); λ_min(H⁻¹) = {lam:.4g}")
    for c in ("test id", "y_t", "D⁺", "I>0: > D⁺", "D⁻", "I<0: > D⁻", "min score/D"):
        t.add_column(c, justify="right", overflow="fold")  # a narrow screen wraps numbers, never cuts them
    t.add_column("holds", justify="right", no_wrap=True)  # the verdict in words, never cut
    for r in check.theorem3:
        ratios = [x for x in (r.min_ratio_positive, r.min_ratio_negative) if x is not None]
        t.add_row(*map(_fmt, (r.test_id, r.test_label, r.D_plus, f"{r.n_positive_exceeding}/{r.n_positive}",
                              r.D_minus, f"{r.n_negative_exceeding}/{r.n_negative}",
                              min(ratios) if ratios else None, r.verdict)))
    con.print(t)
    if check.theorem3 and all(r.vacuous for r in check.theorem3):
        con.print("Theorem 3 holds only vacuously here: its thresholds are 0 (or no point has that sign of "
                  "I_loss), so it says nothing about memorization on this head.", highlight=False)
    elif any(r.vacuous_plus or r.vacuous_minus for r in check.theorem3):
        con.print("vacuous: a threshold of 0 is exceeded by every point with I_loss ≠ 0 (and a sign no point "
                  "has asks nothing), so that part of Theorem 3 says nothing.", highlight=False)

    m = check.memorization
    if m is not None:
        t = Table(title=f"Memorization verdicts at D = {m.threshold:.4g} (quantile {_fmt(m.quantile)})")
        for c in ("label", "points", "memorize", "generalize"):
            t.add_column(c, justify="right")
        for row in m.counts_by_label():
            t.add_row(*map(_fmt, (row["label"], row["n"], row["memorize"], row["generalize"])))
        con.print(t)
        if m.helps_fraction is not None and m.hurts_fraction is not None:
            t = Table(title="Sign statistics: mean fraction of test points a training point helps / hurts")
            for c in ("verdict", "label", "points", "helps", "hurts"):
                t.add_column(c, justify="right")
            for name, v in (("memorize", m.memorize), ("generalize", ~m.memorize)):
                for lab in sorted(set(m.labels.tolist())):
                    sel = v & (m.labels == lab)
                    if sel.any():
                        t.add_row(name, str(lab), str(int(sel.sum())), _fmt(float(m.helps_fraction[sel].mean())),
                                  _fmt(float(m.hurts_fraction[sel].mean())))
            con.print(t)

    sr = check.sign_rule
    if sr is not None:
        t = Table(title=f"Theorem 4 (eq. 91) on {sr.pairs_text}: I_loss > 0 iff y_t ≠ y_p")
        for c in ("y_t", "y_p", "pairs", "rule holds", "hold rate", "kernel > 0"):
            t.add_column(c, justify="right")
        for a in (0, 1):
            for b in (0, 1):
                t.add_row(*map(_fmt, (a, b, sr.table["pairs"][a][b], sr.table["hold"][a][b],
                                      sr.table["hold_rate"][a][b], sr.table["kernel_positive"][a][b])))
        con.print(t)
        t = Table(title="Sign rule conditions")
        t.add_column("quantity")
        t.add_column("value", justify="right")
        for k, v in (("hold rate", sr.hold_rate), ("kernel ũ_tᵀH⁻¹ũ_p > 0 rate", sr.kernel_positive_rate),
                     ("pairs where hold ≠ (kernel > 0)", sr.hold_kernel_mismatches),
                     ("eqs. 92–95 hold rate (predicted removal change)", sr.removal_hold_rate),
                     ("nonnegative feature entries, train", sr.features_nonnegative_fraction["train"]),
                     ("nonnegative feature entries, test", sr.features_nonnegative_fraction["test"]),
                     ("rows with all features ≥ 0, train", sr.rows_all_nonnegative_fraction["train"]),
                     ("positive entries of H⁻¹", sr.hinv_positive_fraction),
                     ("smallest entry of H⁻¹", sr.hinv_min_entry),
                     ("sufficient condition (features ≥ 0 and H⁻¹ ≥ 0)", sr.sufficient_condition)):
            t.add_row(k, _fmt(v))
        con.print(t)
    if check.l2_sweep:
        t = Table(title="Sign rule vs λ (head refitted for each λ, same pairs)")
        for c in ("λ", "hold rate", "kernel > 0", "H⁻¹ > 0", "test loss", "test acc"):
            t.add_column(c, justify="right")
        for r in check.l2_sweep:
            t.add_row(*map(_fmt, (r["l2"], r["hold_rate"], r["kernel_positive_rate"], r["hinv_positive_fraction"],
                                  r["test_loss"], r["test_accuracy"])))
        con.print(t)
    if check.removal:
        t = Table(title="Section 8: Δ mean test loss after retraining without a random fraction of one class")
        for c in ("removed", "on positives", "on negatives", "1st-order pos", "1st-order neg", "as §8 says"):
            t.add_column(c, justify="right")
        for r in check.removal:
            t.add_row(*map(_fmt, (f"{r.n_removed} × y={r.removed_label}", r.delta_pos, r.delta_neg,
                                  r.predicted_delta_pos, r.predicted_delta_neg, r.consistent)))
        con.print(t)


@app.command("check-theorems")
def check_theorems_cmd(
    train: Annotated[Path, typer.Argument(help="Training data: .npz (arrays X, y, optional id) or Parquet "
                                               "file/directory with a `label` column.")],
    head: Annotated[Path, typer.Option("--head", help="Head weights written by `winnow fit-head` (.npz).")],
    test: Annotated[Path, typer.Option("--test", help="Test/validation data, same formats as TRAIN.")],
    pairs: Annotated[int, typer.Option("--pairs", min=1, help="Distinct (test, train) pairs sampled for the "
                                       "sign rule (Theorem 4); all of them when there are no more.")] = 100_000,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the pairs, the Theorem 3 test points and the "
                                      "removed rows.")] = 0,
    test_points: Annotated[int, typer.Option("--test-points", min=1, help="Test points for Theorem 3.")] = 5,
    l2_grid: Annotated[str, typer.Option("--l2-grid", help="λ values for the sign-rule sweep (comma-"
                                         "separated); empty string skips the sweep.")] = "1e-4,1e-3,1e-2,1e-1,1",
    removal_fraction: Annotated[float, typer.Option(
        "--removal-fraction", min=0.0, max=0.99, help="Section 8: fraction of one class's training rows to "
        "remove before retraining (0 skips).")] = 0.1,
    memorize_quantile: Annotated[float, typer.Option(
        "--memorize-quantile", min=0.0, max=1.0, help="Memorization threshold D as this quantile of the "
        "scores.")] = 0.9,
    sign_rule: Annotated[bool, typer.Option("--sign-rule/--no-sign-rule", help="Run the sigmoid-only checks "
                                            "(Theorem 4, λ sweep, removal).")] = True,
    sign_statistics: Annotated[bool, typer.Option("--sign-statistics", help="For every training point, the "
                                                  "fraction of test points it helps / hurts (cost n·T·P).")] = False,
    points_out: Annotated[Path | None, typer.Option("--points-out", help="Write id, label, memorization, "
                                                    "memorize (and helps/hurts fractions) per training point "
                                                    "to this Parquet file.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write every number to this JSON file.")] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Write an HTML report here.")] = None,
    damping: Damping = 0.0, chunk_size: ChunkSize = 65536,
    label_column: LabelColumn = None, id_column: IdColumn = None,
    features_column: FeaturesColumn = None, feature_columns: FeatureColumns = None, exclude: Exclude = None,
    classes: ClassesOpt = None, positive_label: PositiveLabel = None,
    workers: EngineWorkers = None, scheduler: EngineScheduler = None,
    refit: Refit = False, allow_nonstationary: AllowNonstationary = False,
    overwrite: Overwrite = False, quiet: Quiet = False,
) -> None:
    """Check the paper's Theorem 3 (memorization thresholds) and Theorem 4 (sign of influence vs labels)
    on this head and data; section 8's removal consequence is measured by retraining."""
    from ..analyses.theorems import check_theorems
    from ..core.heads import load_head
    from ..io.outputs import check_output_path, write_json

    for p, arg in ((json_out, "json_out"), (report, "report"), (points_out, "points_out")):
        if p is not None:
            check_output_path(p, overwrite, argument=arg)
    h = load_head(head)
    cols = data_columns(label_column, id_column, features_column, feature_columns, exclude, classes,
                        positive_label)
    tr = source_from(train, cols, head=h)
    te = source_from(test, cols, parameter="test", head=h)
    grid = _parse_grid(l2_grid) if l2_grid.strip() else None
    with engine_for(workers, scheduler, chunk_size=chunk_size, quiet=quiet) as eng:
        h = polish_head(h, tr, refit, quiet)
        check = check_theorems(h, tr, te, allow_nonstationary=allow_nonstationary, pairs=pairs, seed=seed,
                               test_points=test_points,
                               sign_rule_check=sign_rule, l2_grid=grid, removal_fraction=removal_fraction or None,
                               memorize_quantile=memorize_quantile, sign_statistics=sign_statistics,
                               damping=damping, chunk_size=chunk_size, progress=not quiet, engine=eng)
    print_check(check)
    if json_out is not None:
        write_json(json_out, check.summary(), overwrite=overwrite)
        say(quiet, f"wrote {json_out}")
    if points_out is not None and check.memorization is not None:
        from ..analyses.memorization import write_points

        write_points(check.memorization, points_out, overwrite=overwrite)
        say(quiet, f"wrote {points_out}")
    if report is not None:
        from ..report import theorems_section as report_section
        from ..report.html import Report

        rep = Report("winnow: the paper's theorems on this head")
        report_section(rep, check)
        rep.write(report, overwrite=overwrite)
        say(quiet, f"wrote {report}")
