"""The ``winnow`` command line. Each command parses its arguments and calls the Python API; errors that a
user can cause are printed as one clear line, ``error: ...``, with the API's parameter names written as this
command line's flags (``winnow.cli.options.FLAGS``), and exit with status 2."""

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



def _version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"winnow {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print winnow's version and exit.")) -> None:
    """Exact influence functions for classifier heads, streaming over training sets of any size."""


from . import core, examples, fidelity, models, relative, report, subsample, theorems  # noqa: E402,F401  (each module registers its commands)


def _command(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word that is not an option)."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning winnow's own errors and usage errors into one line and status 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    import warnings

    def one_line(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
        typer.secho(f"warning: {' '.join(str(message).split())}", fg="yellow", err=True)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = one_line  # a warning is one line too, without the source line
            rv = app(args=args, standalone_mode=False)
    except WinnowError as exc:
        from .options import cli_message

        typer.secho(f"error: {cli_message(exc, _command(args))}", fg="red", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted", fg="red", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:
        # click usage errors; typer vendors click (typer._click), so match by shape, not by class
        show, code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        names = {c.__name__ for c in type(exc).__mro__}
        if "UsageError" in names and "NoArgsIsHelpError" not in names and callable(getattr(exc, "format_message",
                                                                                        None)):
            cmd = _command(args)
            hint = f"winnow {cmd} --help" if cmd else "winnow --help"
            text = " ".join(str(exc.format_message()).split())
            typer.secho(f"error: {text} (see `{hint}`)", fg="red", err=True)
            sys.exit(code if isinstance(code, int) else 2)
        if callable(show) and isinstance(code, int):
            show()
            sys.exit(code)
        if type(exc).__name__ == "Abort":
            sys.exit(1)
        raise
    if isinstance(rv, int) and rv != 0:  # non-standalone typer returns exit codes, e.g. 130 after Ctrl-C
        sys.exit(rv)
