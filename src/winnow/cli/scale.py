"""Command-line glue for out-of-core / Dask runs: the options `winnow influence` takes to write a directory
of part files (``--parts``, ``--workers``, ``--scheduler``, ``--resume``, ``--partition-rows``,
``--cluster-timeout``) and the function the command calls then (:func:`influence_parts_command`).

No command of its own: `winnow influence` switches to partitioned output when any of these options is
given or when ``--out`` is an existing directory.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import ValidationError
from .options import say

Parts = Annotated[bool, typer.Option(
    "--parts", help="Write --out as a directory of Parquet part files (one per input file or run of row groups, "
                    "each published atomically, resumable with --resume). Implied by --workers, --scheduler, "
                    "--resume and --partition-rows.")]
Workers = Annotated[int | None, typer.Option(
    "--workers", min=1, help="Run the passes on a local Dask cluster of N single-threaded worker processes "
                             "(--out is a directory of part files).")]
Scheduler = Annotated[str | None, typer.Option(
    "--scheduler", help="Run the passes on an existing Dask cluster at ADDRESS (e.g. tcp://host:8786); its "
                        "workers must see TRAIN and --out at the same paths.")]
Resume = Annotated[bool, typer.Option(
    "--resume", help="Finish an interrupted run in the same --out directory: finished parts are kept, the "
                     "Hessian is not recomputed; refused if the head, data or options differ.")]
PartitionRows = Annotated[int | None, typer.Option(
    "--partition-rows", min=1, help="Most rows per part file; larger Parquet files are split at row-group "
                                    "boundaries (default 1048576).")]
ClusterTimeout = Annotated[float, typer.Option(
    "--cluster-timeout", min=0.1, help="Seconds to wait for the Dask scheduler and a first worker before "
                                       "failing.")]


def wants_parts(out: Path, *, parts: bool = False, workers: int | None = None, scheduler: str | None = None,
                resume: bool = False, partition_rows: int | None = None) -> bool:
    """Whether `winnow influence` writes a directory of part files rather than one Parquet file."""
    return bool(parts or workers is not None or scheduler is not None or resume or partition_rows is not None
                or Path(out).is_dir())


def influence_parts_command(head: Any, train: Any, test: Any, out: Path, *, damping: float = 0.0,
                            chunk_size: int = 65536, hessian: str = "full", sample_size: int | None = None,
                            sampler: str = "uniform", seed: int = 0, extra: Sequence[Any] = (),
                            pairs: Path | None = None, workers: int | None = None, scheduler: str | None = None,
                            resume: bool = False, overwrite: bool = False, partition_rows: int | None = None,
                            cluster_timeout: float = 30.0, quiet: bool = False,
                            allow_nonstationary: bool = False) -> Any:
    """`winnow influence` with partitioned output: same columns as the one-file output (``extra`` are the
    command's ScoreColumns, e.g. MemorizationColumns / NewtonColumns), same Hessian choices
    (``hessian='relative'`` draws the seeded sample of ``winnow.analyses.relative`` and builds H⁽ᵐ⁾ per partition).
    Returns the PartsResult."""
    from ..analyses.influence import write_influence_parts

    if pairs is not None:
        raise ValidationError("--pairs writes one long-format file and cannot be combined with partitioned "
                              "output (--parts, --workers, --scheduler, --resume, --partition-rows or a directory "
                              "--out); run the pairs separately")
    from ..analyses.relative import check_hessian_options
    from ..validation import check_chunk_size, check_damping, check_head_data

    hessian = check_hessian_options(hessian, sample_size)
    damping, chunk_size = check_damping(damping), check_chunk_size(chunk_size)
    (train,) = check_head_data(head, train=train)
    rows = weights = normalizer = None
    if hessian == "relative":
        from ..analyses.relative import RelativeHessian

        sample, _ = RelativeHessian(sample_size, sampler=sampler, seed=seed, damping=damping,
                                    chunk_size=chunk_size, progress=not quiet).draw(head, train)
        rows, weights, normalizer = sample.rows, sample.weights, sample.normalizer
    res = write_influence_parts(
        head, train, out, test=test, columns=list(extra), damping=damping,
        hessian_rows=rows, hessian_weights=weights, normalizer=normalizer, workers=workers, scheduler=scheduler,
        resume=resume, overwrite=overwrite, chunk_size=chunk_size, partition_rows=partition_rows,
        progress=not quiet, timeout=cluster_timeout, allow_nonstationary=allow_nonstationary)
    done = f"{res.written} written now, {res.skipped} already finished" if res.resumed else f"{res.written} written"
    say(quiet, f"wrote {res.n_parts} part files ({done}; {res.n_rows} rows, columns {', '.join(res.columns)}) "
               f"to {res.path}/")
    return res
