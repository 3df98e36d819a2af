"""The ``winnow`` command line. Each command parses its arguments and calls the Python API; errors that a
user can cause are printed as one clear line, ``error: ...``, with the API's parameter names written as this
command line's flags (``winnow.cli.options.FLAGS``), and exit with status 2."""

from __future__ import annotations

import logging
import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from ..errors import WinnowError


def _tidy_help() -> None:
    """Typer's rich help writes a type for on/off flags (``--quiet  <bool>``), which take no value; show none,
    as its plain help does."""
    from typer.core import TyperOption

    show = TyperOption.display_type_rich
    if getattr(show, "_winnow", False):
        return

    def display_type_rich(self: TyperOption, ctx: object) -> str | None:
        if getattr(self, "is_flag", False) and self.metavar is None:
            return None
        return show(self, ctx)  # type: ignore[arg-type]

    display_type_rich._winnow = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_tidy_help()

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


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _show_warning(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
    """``warnings.showwarning`` for the command line: ``warning: <message>`` on one line, no source line."""
    typer.secho(f"warning: {_one_line(str(message))}", fg="yellow", err=True)


class _OneLineLog(logging.Handler):
    """Log records of WARNING and above (a library's ``logger.warning``, warnings routed through
    ``logging.captureWarnings``) as ``warning: <message>`` / ``error: <message>`` on one line."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            if record.name == "py.warnings":  # "file.py:12: UserWarning: text\n  source line"
                m = re.match(r"^.*?:\d+: (?:[\w.]+): (.*)$", msg.strip().splitlines()[0] if msg.strip() else "")
                msg = m.group(1) if m else msg
            level = "warning" if record.levelno < logging.ERROR else "error"
            typer.secho(f"{level}: {_one_line(msg)}", fg="yellow" if level == "warning" else "red", err=True)
        except Exception:  # a broken record must not end the command
            self.handleError(record)


@contextmanager
def _one_line_warnings() -> Iterator[None]:
    """While a command runs, every warning prints as one line: Python warnings (winnow's own, torch's,
    scikit-learn's...) and records logged at WARNING or above by any library."""
    root = logging.getLogger()
    handler = _OneLineLog()
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning  # a warning is one line too, without the source line
        root.addHandler(handler)
        try:
            yield
        finally:
            root.removeHandler(handler)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning winnow's own errors and usage errors into one line and status 2;
    warnings print as one line each (``warning: ...``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        with _one_line_warnings():
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
