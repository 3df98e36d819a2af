"""`winnow report`: an HTML report of a scores file written by `winnow influence` (also `influence --report`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import app
from .options import Overwrite, Quiet, ReportTop, say

ScoresArg = Annotated[Path, typer.Argument(
    metavar="SCORES", help="Scores written by `winnow influence --out`: a Parquet file, a directory of part files "
                           "(--parts) or a .csv file.")]


def write_run_report(scores: Path, report: Path, *, overwrite: bool, quiet: bool, top: int = 20,
                     argument: str = "report", show: int = 0) -> Path:
    """Write the report of ``scores`` to ``report`` and say so (the shared last step of both commands); with
    ``show`` > 0 also print that many of the most harmful and most helpful points."""
    from ..report.run import top_points_text, write_scores_report

    path, summary = write_scores_report(scores, report, top=top, overwrite=overwrite, argument=argument)
    if show > 0:
        typer.echo(top_points_text(summary, show))
    say(quiet, f"wrote {path}")
    return path


@app.command("report")
def report_cmd(
    scores: ScoresArg,
    out: Annotated[Path | None, typer.Option("--out", help="Where to write the HTML report (default: SCORES with "
                                             "the suffix .html).")] = None,
    top: ReportTop = 20,
    show: Annotated[int, typer.Option("--show", min=0, help="Also print this many of the most harmful and most "
                                      "helpful points on the terminal (0: none).")] = 5,
    overwrite: Overwrite = False, quiet: Quiet = False,
) -> None:
    """An HTML report of your influence scores: the most harmful and most helpful training points, influence
    and self-influence by label, memorization verdicts, stationarity and the run's settings, each with a plain
    reading. One pass over SCORES with bounded memory, whatever its size."""
    from ..report.run import default_report_path

    write_run_report(scores, out if out is not None else default_report_path(scores), overwrite=overwrite,
                     quiet=quiet, top=top, argument="out", show=min(show, top))
