"""The one column protocol: per-training-point columns computed in a scoring pass, in-process or on Dask.

A column set is a :class:`ScoreColumns`: ``prepare(analyzer, test)`` runs once, in this process, with the
fitted analyzer (its ``head``, ``curvature_``, ``train_``, ``n_train_``, ``engine``) and the test source
(solves, eigenbases, thresholds); ``chunk(X, y)`` then maps one chunk of training points to its columns and
must be pure given the prepared state, so that the prepared object can be shipped to Dask workers. The
influence columns themselves, memorization, Newton columns and any user function all plug in this way;
:class:`ScoreKernel` runs a list of them as one engine kernel.

:class:`ColumnFunction` makes a column set of a plain function ``func(head, X, y, **kwargs)``.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import ValidationError

if TYPE_CHECKING:
    from ..core.heads import Head
    from ..io.sources import Chunk

__all__ = ["ScoreColumns", "ColumnFunction", "ScoreKernel"]


class ScoreColumns(ABC):
    """Extra per-training-point columns computed in the same scoring pass as the influence.

    ``fields`` (optional) names the columns with their Arrow types; ``metadata`` is stored in the output's
    footer; ``identity`` names the column set in a resumable job's manifest.
    """

    fields: list[tuple[str, Any]] = []
    metadata: dict[str, str] = {}
    #: names of columns that are non-finite for every row with a NaN or Inf feature (for a 2-D column its
    #: first column is enough): with a closed-form head the scoring pass then reads each chunk once,
    #: checking these instead of scanning the features first
    witness: tuple[str, ...] = ()

    @abstractmethod
    def prepare(self, analyzer: Any, test: Any) -> None:
        """Compute whatever the per-chunk function needs from the fitted analyzer and the test set."""

    @abstractmethod
    def chunk(self, X: np.ndarray, y: np.ndarray) -> Mapping[str, np.ndarray]:
        """Columns (each (c,) or (c, k)) for one chunk of training points."""

    @property
    def identity(self) -> str:
        simple = sorted((k, v) for k, v in vars(self).items()
                        if not k.endswith("_") and isinstance(v, (int, float, str, bool, type(None))))
        return f"{type(self).__module__}.{type(self).__qualname__}{simple}"


@dataclass(frozen=True, eq=False)
class ColumnFunction(ScoreColumns):
    """A column set from a pure function ``func(head, X, y, **kwargs)`` with X (c, D) numpy and y (c,)
    int64, returning a mapping of name -> (c,) or (c, k) arrays (numpy or torch), or one array (then named
    ``label``). ``keep`` selects columns; ``metadata`` is stored with the output; ``label`` identifies the
    function in a job's manifest (default: its qualified name). The head is the analyzer's (set by
    ``prepare``) or the one given as ``head``."""

    func: Callable[..., Any]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    keep: tuple[str, ...] | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)  # type: ignore[assignment]
    label: str | None = None
    head: Any = None
    witness: tuple[str, ...] = ()  # type: ignore[misc]

    @property
    def identity(self) -> str:
        name = self.label or f"{getattr(self.func, '__module__', '?')}.{getattr(self.func, '__qualname__', '?')}"
        return name + (f"[{','.join(self.keep)}]" if self.keep is not None else "")

    def bound(self, head: Head) -> ColumnFunction:
        """The same function with ``head`` as its head."""
        return dataclasses.replace(self, head=head)

    def prepare(self, analyzer: Any, test: Any) -> None:
        if self.head is None:
            object.__setattr__(self, "head", analyzer.head)

    def chunk(self, X: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        if self.head is None:
            raise ValidationError(f"column function {self.identity} has no head: call prepare(analyzer, test) "
                                  "or bound(head) first")
        return self(self.head, X, y)

    def __call__(self, head: Head, X: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        out = self.func(head, X, y, **dict(self.kwargs))
        if not isinstance(out, Mapping):
            out = {self.label or getattr(self.func, "__name__", "value"): out}
        keys = self.keep if self.keep is not None else tuple(out)
        missing = [k for k in keys if k not in out]
        if missing:
            raise ValidationError(f"column function {self.identity} did not return columns {missing}; "
                                  f"it returned {sorted(out)}")
        res = {}
        for k in keys:
            v = out[k]
            res[k] = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
            if res[k].shape[:1] != (len(y),):
                raise ValidationError(f"column function {self.identity}: column {k!r} has shape "
                                      f"{res[k].shape}, expected ({len(y)}, ...) (one value per row)")
        return res


@dataclass(frozen=True, eq=False)
class ScoreKernel:
    """The engine kernel of a scoring pass: ``id`` and ``label`` (when ``ids``), then each column set's
    columns for the chunk. ``head`` is checked against every chunk's labels by the engine."""

    head: Any
    columns: Sequence[ScoreColumns]
    ids: bool = True

    @property
    def checks_features(self) -> bool:
        """Whether a column of a closed-form head witnesses every feature (see ``ScoreColumns.witness``)."""
        return bool(getattr(self.head, "closed_form", False)) and any(c.witness for c in self.columns)

    def finite_witness(self, result: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        out = []
        for c in self.columns:
            for name in c.witness:
                v = result[name]
                out.append(v[:, 0] if v.ndim == 2 else v)
        return out

    def __call__(self, chunk: Chunk, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
        cols: dict[str, np.ndarray] = {"id": chunk.ids, "label": chunk.y} if self.ids else {}
        for c in self.columns:
            cols.update(c.chunk(chunk.X, chunk.y))
        return cols
