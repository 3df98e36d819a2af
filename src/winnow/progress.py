"""Progress for every long loop (passes over the data, retrains, seeds, candidates...), silenced with
``progress=False``.

One helper, :func:`track`, wraps a loop and counts the unit it iterates: rows for a pass over the data
(``count=len`` of each chunk), one per item otherwise (retrains, seeds, candidates, partitions...). On a
terminal it draws a rich bar; written to a file or a pipe (stderr is not a terminal) it prints plain lines
instead, one every :data:`PLAIN_INTERVAL` seconds, and always the final state when the loop ends
(``scoring pass: 4000/4000 rows in 0:06:28``), also when it ends early.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, TypeVar

T = TypeVar("T")

__all__ = ["track", "track_rows", "Tracker", "PLAIN_INTERVAL"]

#: Seconds between two plain progress lines when the output is not a terminal.
PLAIN_INTERVAL = 10.0

_LIVE: Any = None  # the rich display on the terminal, shared by nested loops
_LIVE_USERS = 0


def _duration(seconds: float) -> str:
    s = int(round(max(seconds, 0.0)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _count(n: int) -> str:
    return f"{n:,}".replace(",", " ") if n >= 10_000 else str(n)


class Tracker:
    """Count progress through a loop of ``total`` ``unit``s (``total`` 0 or None: unknown).

    ``advance(n)`` adds ``n`` units; ``close()`` ends the display (on a non-terminal stream: prints the
    final state). Use as a context manager. ``file`` defaults to ``sys.stderr`` at the time of creation;
    ``tty`` overrides the terminal detection.
    """

    def __init__(self, total: int | None, description: str, unit: str = "items", *, enabled: bool = True,
                 file: IO[str] | None = None, tty: bool | None = None) -> None:
        self.total = int(total) if total else 0
        self.description = description
        self.unit = unit
        self.enabled = bool(enabled)
        self.completed = 0
        self._file = file if file is not None else sys.stderr
        self._closed = False
        self._start = time.monotonic()
        self._last_line = self._start
        self._bar: Any = None
        if not self.enabled:
            return
        if tty is None:
            isatty = getattr(self._file, "isatty", None)
            tty = bool(isatty()) if callable(isatty) else False
        self.tty = tty
        if tty:
            self._start_bar()

    # -- the terminal bar (one rich display at a time: a loop inside another adds a row to it)
    def _start_bar(self) -> None:
        global _LIVE, _LIVE_USERS
        if _LIVE is None:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            console = Console(file=self._file, force_terminal=True)
            columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[unit]}"), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                       TimeRemainingColumn())
            _LIVE = Progress(*columns, console=console, transient=False, refresh_per_second=4)
            _LIVE.start()
        _LIVE_USERS += 1
        self._bar = _LIVE
        self._nested = _LIVE_USERS > 1
        self._task = _LIVE.add_task(self.description, total=self.total or None, rate="",
                                    unit=self.unit.replace("[", r"\["))

    def _stop_bar(self) -> None:
        global _LIVE, _LIVE_USERS
        _LIVE_USERS -= 1
        if self._nested:
            self._bar.remove_task(self._task)  # an inner loop's row goes when it ends
        if _LIVE_USERS <= 0:
            self._bar.stop()
            _LIVE, _LIVE_USERS = None, 0

    def _rate(self, elapsed: float) -> str:
        if elapsed <= 0 or self.unit != "rows":  # a rate helps for rows; a retrain's pace shows in the times
            return ""
        return f"{self.completed / elapsed:,.0f} rows/s"

    # -- plain lines
    def _line(self, final: bool) -> str:
        elapsed = time.monotonic() - self._start
        done = f"{_count(self.completed)}/{_count(self.total)}" if self.total else _count(self.completed)
        if final:
            return f"{self.description}: {done} {self.unit} in {_duration(elapsed)}"
        text = f"{self.description}: {done} {self.unit}"
        if self.total:
            frac = self.completed / self.total
            text += f" ({100 * frac:.0f}%)"
        text += f", {_duration(elapsed)}"
        if self.total and 0 < self.completed < self.total:
            text += f", about {_duration(elapsed * (self.total - self.completed) / self.completed)} left"
        return text

    def _print(self, text: str) -> None:
        try:
            print(text, file=self._file, flush=True)
        except (ValueError, OSError):  # the stream was closed under us: progress is not worth an error
            pass

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more units done."""
        if not self.enabled or self._closed:
            return
        self.completed += int(n)
        if self._bar is not None:
            elapsed = time.monotonic() - self._start
            self._bar.update(self._task, completed=self.completed, rate=self._rate(elapsed))
            return
        now = time.monotonic()
        if now - self._last_line >= PLAIN_INTERVAL and not (self.total and self.completed >= self.total):
            self._last_line = now
            self._print(self._line(final=False))

    def close(self) -> None:
        """End the display; a non-terminal stream gets the final state as one line."""
        if not self.enabled or self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._stop_bar()
        else:
            self._print(self._line(final=True))

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def track(items: Iterable[T], total: int | None, description: str, unit: str = "items", *,
          count: Callable[[T], int] | None = None, enabled: bool = True, file: IO[str] | None = None,
          tty: bool | None = None) -> Iterator[T]:
    """Yield ``items`` unchanged while counting them against ``total`` ``unit``s.

    Each item counts ``count(item)`` units (default 1: one retrain, one seed, one candidate...); a pass over
    the data passes ``count=len`` and ``unit="rows"``. The final state is shown when the loop ends, breaks
    or raises.
    """
    if not enabled:
        yield from items
        return
    with Tracker(total, description, unit, file=file, tty=tty) as t:
        for item in items:
            yield item
            t.advance(1 if count is None else count(item))


def track_rows(chunks: Iterable[T], total_rows: int, description: str, enabled: bool = True) -> Iterator[T]:
    """Yield ``chunks`` unchanged while counting rows (``len(chunk)``) against ``total_rows``."""
    return track(chunks, total_rows, description, "rows", count=len, enabled=enabled)  # type: ignore[arg-type]
