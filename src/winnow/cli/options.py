"""Options shared by several commands and the glue that turns them into data sources."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..io.sources import open_source

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or chatter; only errors.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace output files that already exist.")]
ChunkSize = Annotated[int, typer.Option("--chunk-size", min=1, help="Rows per chunk (bounds memory).")]
Damping = Annotated[float, typer.Option("--damping", min=0.0,
                                        help="Added to the Hessian's diagonal; use it when H is singular.")]
LabelColumn = Annotated[str, typer.Option("--label-column", help="Parquet label column.")]
IdColumn = Annotated[str, typer.Option("--id-column", help="Parquet id column (int64; default row number).")]
FeaturesColumn = Annotated[str, typer.Option("--features-column",
                                             help="Parquet list column holding the feature vector.")]
FeatureColumns = Annotated[str | None, typer.Option(
    "--feature-columns", help="Comma-separated numeric Parquet columns to use as features instead.")]


def source_from(path: Path, label_column: str = "label", id_column: str = "id",
                features_column: str = "features", feature_columns: str | None = None) -> Any:
    """A data source for a .npz file or a Parquet file/directory given on the command line."""
    kwargs: dict[str, Any] = {}
    if path.suffix != ".npz":
        kwargs = dict(label_column=label_column, id_column=id_column, features_column=features_column,
                      feature_columns=[c.strip() for c in feature_columns.split(",")] if feature_columns
                      else None)
    return open_source(path, **kwargs)


def say(quiet: bool, message: str) -> None:
    if not quiet:
        typer.echo(message, err=True)
