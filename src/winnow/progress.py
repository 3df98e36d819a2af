"""Progress bars for passes over the data (rich), silenced with ``progress=False``."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")


def track_rows(chunks: Iterable[T], total_rows: int, description: str, enabled: bool = True) -> Iterator[T]:
    """Yield ``chunks`` unchanged while a bar counts rows (``len(chunk)``) against ``total_rows``."""
    if not enabled:
        yield from chunks
        return
    console = Console(file=sys.stderr)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("rows"), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False, refresh_per_second=4) as bar:
        task = bar.add_task(description, total=total_rows, rate="")
        for chunk in chunks:
            bar.advance(task, len(chunk))  # type: ignore[arg-type]
            t = bar.tasks[0]
            if t.elapsed:
                bar.update(task, rate=f"{t.completed / t.elapsed:,.0f} rows/s")
            yield chunk
