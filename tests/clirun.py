"""Run the ``winnow`` command line in-process, as the tests do."""

from __future__ import annotations

from winnow.cli import main


def run(argv: list) -> int:
    """Run the CLI with ``argv`` (paths and numbers are turned into strings); return its exit status (0 when it
    returns normally)."""
    try:
        main([str(a) for a in argv])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
