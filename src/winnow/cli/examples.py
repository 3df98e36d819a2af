"""``winnow example-data``: a small real table in the shape users bring (CSV, named columns, string labels)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import app
from .options import Overwrite, Quiet, say


@app.command("example-data")
def example_data(
    directory: Annotated[Path, typer.Argument(help="Folder to write train.csv and test.csv into.")],
    seed: Annotated[int, typer.Option("--seed", help="Seed of the train/test split.")] = 0,
    overwrite: Overwrite = False, quiet: Quiet = False,
) -> None:
    """Write scikit-learn's breast-cancer set as DIRECTORY/train.csv and test.csv: an `id` column of strings,
    30 measurement columns named as in the original study (with spaces), and the label `malignant` (yes/no)."""
    from ..datasets import write_example_csv

    paths = write_example_csv(directory, overwrite=overwrite, seed=seed)
    for p in paths.values():
        say(quiet, f"wrote {p}")
