"""The ``winnow`` command line. Each command parses its arguments and calls the Python API; errors that a
user can cause are printed as one clear line and exit with status 2."""

from __future__ import annotations

import sys

import typer

from ..errors import WinnowError

app = typer.Typer(
    name="winnow",
    help=("Exact influence functions for classifier heads, streaming over training sets of any size.\n\n"
          "Typical use: `winnow fit-head train.parquet --out head.npz`, then "
          "`winnow influence train.parquet --head head.npz --test valid.parquet --out scores.parquet`. "
          "Try `winnow demo` first."),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

from . import core, fidelity, models, relative, subsample, theorems  # noqa: E402,F401  (each module registers its commands)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning winnow's own errors into a message and exit status 2."""
    try:
        rv = app(args=argv, standalone_mode=False)
    except WinnowError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted", fg="red", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:
        # click usage errors; typer vendors click (typer._click), so match by shape, not by class
        show, code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()
            sys.exit(code)
        if type(exc).__name__ == "Abort":
            sys.exit(1)
        raise
    if isinstance(rv, int) and rv != 0:  # non-standalone typer returns exit codes, e.g. 130 after Ctrl-C
        sys.exit(rv)
