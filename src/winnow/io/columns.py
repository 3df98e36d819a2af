"""How to read a table: which columns hold the label, the id and the features, and how labels map to classes.

:class:`DataColumns` is the one description of it. Every field defaults to None, "unset": an unset field
falls back to the settings stored in a head by ``winnow fit-head`` (see :meth:`DataColumns.merged`), then to
the defaults (label column ``label``, id column ``id`` when present, features from a ``features`` list column
when present, else every numeric column except the label and id columns).

Labels are integers 0..K-1 as stored, or any values (strings, integers) mapped to 0..K-1 by ``classes``
(``classes[i]`` is encoded as label i, scikit-learn's meaning of ``classes_``) or, for two classes, by
``positive_label`` (that value -> 1, the one other value -> 0).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

__all__ = ["DataColumns", "parse_names", "join_names", "format_id", "plain_id", "format_value", "DEFAULT_LABEL",
           "DEFAULT_ID", "DEFAULT_FEATURES"]

DEFAULT_LABEL = "label"
DEFAULT_ID = "id"
DEFAULT_FEATURES = "features"

_FEATURE_FIELDS = ("features_column", "feature_columns", "exclude")
_LABEL_FIELDS = ("classes", "positive_label")


def _names(value: Any, field: str) -> tuple[str, ...] | None:
    from ..validation import fail

    if value is None:
        return None
    if isinstance(value, str):
        value = parse_names(value)
    try:
        out = tuple(str(v) for v in value)
    except TypeError:
        raise fail(f"{field} must be a list of column names, got {type(value).__name__}", field) from None
    return out


def _label_value(v: Any) -> Any:
    """A label value as a plain Python str / int / float / bool (numpy scalars unwrapped)."""
    if isinstance(v, np.generic):
        v = v.item()
    return v


@dataclass(frozen=True)
class DataColumns:
    """Which columns of a table to read, and how to encode its labels; None means unset (see the module).

    ``label_column``: the label column; ``id_column``: the id column (int64 or string ids; without one the
    id of a row is its row number); ``features_column``: a list<float> column holding the feature vector;
    ``feature_columns``: the numeric columns to use as features, in this order; ``exclude``: columns left out
    of the automatic feature choice; ``classes``: the label values, ``classes[i]`` encoded as label i;
    ``positive_label``: for two classes, the value encoded as 1.
    """

    label_column: str | None = None
    id_column: str | None = None
    features_column: str | None = None
    feature_columns: tuple[str, ...] | None = None
    exclude: tuple[str, ...] | None = None
    classes: tuple[Any, ...] | None = None
    positive_label: Any = None

    def __post_init__(self) -> None:
        from ..validation import fail

        for name in ("label_column", "id_column", "features_column"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, str) or not v):
                raise fail(f"{name} must be a non-empty column name, got {v!r}", name)
        object.__setattr__(self, "feature_columns", _names(self.feature_columns, "feature_columns"))
        object.__setattr__(self, "exclude", _names(self.exclude, "exclude"))
        if self.feature_columns is not None and not self.feature_columns:
            raise fail("feature_columns is empty; name at least one numeric column", "feature_columns")
        if self.feature_columns is not None and self.features_column is not None:
            raise fail("give at most one of features_column and feature_columns", "features_column",
                       "feature_columns")
        if self.classes is not None:
            cls = self.classes
            if isinstance(cls, str):
                cls = parse_names(cls)
            cls = tuple(_label_value(c) for c in cls)
            if len(cls) < 2:
                raise fail(f"classes must list at least two label values, got {list(cls)}", "classes")
            if len(set(cls)) != len(cls):
                dup = next(c for c in cls if cls.count(c) > 1)
                raise fail(f"classes lists {dup!r} more than once; each label value must appear once", "classes")
            object.__setattr__(self, "classes", cls)
        if self.positive_label is not None:
            object.__setattr__(self, "positive_label", _label_value(self.positive_label))
        if self.classes is not None and self.positive_label is not None:
            raise fail("give at most one of classes and positive_label", "classes", "positive_label")

    # ------------------------------------------------------------------ effective values
    @property
    def label(self) -> str:
        """The label column to read (``label`` unless set)."""
        return self.label_column or DEFAULT_LABEL

    @property
    def id(self) -> str:
        """The id column looked for (``id`` unless set; optional unless set)."""
        return self.id_column or DEFAULT_ID

    @property
    def maps_labels(self) -> bool:
        return self.classes is not None or self.positive_label is not None

    def is_set(self, name: str) -> bool:
        return getattr(self, name) is not None

    # ------------------------------------------------------------------ merging
    def merged(self, override: DataColumns | None) -> DataColumns:
        """These settings with every field that ``override`` sets replacing ours. The feature choice
        (``features_column`` / ``feature_columns`` / ``exclude``) and the label mapping (``classes`` /
        ``positive_label``) are each replaced as a whole when ``override`` sets any part of them."""
        if override is None:
            return self
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        given = {f.name for f in fields(override) if getattr(override, f.name) is not None}
        for group in (_FEATURE_FIELDS, _LABEL_FIELDS):
            if given & set(group):
                for name in group:
                    out[name] = None
        for name in given:
            out[name] = getattr(override, name)
        return DataColumns(**out)

    def with_resolved(self, *, feature_columns: Sequence[str] | None = None,
                      classes: Sequence[Any] | None = None) -> DataColumns:
        """A copy that names the resolved feature columns and classes explicitly (what a head stores)."""
        out = self
        if feature_columns is not None:
            out = replace(out, features_column=None, feature_columns=tuple(feature_columns), exclude=None)
        if classes is not None:
            out = replace(out, classes=tuple(classes), positive_label=None)
        return out

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """The set fields as JSON-ready values (tuples as lists)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None:
                out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataColumns:
        known = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known})

    @classmethod
    def from_json(cls, text: str) -> DataColumns:
        return cls.from_dict(json.loads(text))

    @classmethod
    def coerce(cls, value: Any) -> DataColumns | None:
        """None, a DataColumns, a dict of its fields or its JSON."""
        from ..validation import fail

        if value is None or isinstance(value, DataColumns):
            return value
        if isinstance(value, dict):
            return cls.from_dict(value)
        if isinstance(value, str):
            return cls.from_json(value)
        raise fail(f"columns must be a DataColumns, got {type(value).__name__}", "columns")

    def cli_flags(self) -> list[str]:
        """The command-line flags that give these settings (for printing a command to copy)."""
        out: list[str] = []
        for name, flag in (("label_column", "--label-column"), ("id_column", "--id-column"),
                           ("features_column", "--features-column")):
            v = getattr(self, name)
            if v is not None:
                out += [flag, v]
        for name, flag in (("feature_columns", "--feature-columns"), ("exclude", "--exclude"),
                           ("classes", "--classes")):
            v = getattr(self, name)
            if v is not None:
                out += [flag, join_names(v)]
        if self.positive_label is not None:
            out += ["--positive-label", str(self.positive_label)]
        return out


# ---------------------------------------------------------------------------------------------- helpers
def parse_names(text: str) -> tuple[str, ...]:
    """A comma-separated list of names, read as one CSV row: ``a,b`` -> (a, b); a name holding a comma or
    a quote is written in double quotes (``"a,b",c``), surrounding spaces are dropped."""
    rows = list(csv.reader([text], skipinitialspace=True))
    return tuple(v.strip() for v in (rows[0] if rows else []) if v.strip())


def join_names(names: Iterable[Any]) -> str:
    """The inverse of :func:`parse_names`: names joined by commas, quoted where needed."""
    out = []
    for n in names:
        s = str(n)
        out.append('"' + s.replace('"', '""') + '"' if any(c in s for c in ',"') or s != s.strip() else s)
    return ",".join(out)


def format_id(v: Any) -> str:
    """A row id as messages write it: ``17`` for integer ids, ``'p-17'`` for string ids."""
    v = _label_value(v)
    return repr(v) if isinstance(v, str) else str(int(v)) if isinstance(v, (int, float)) else repr(v)


def plain_id(v: Any) -> int | str:
    """A row id as a plain Python int, or str for string ids (for JSON and tables)."""
    v = _label_value(v)
    return v if isinstance(v, str) else int(v)


def format_value(v: Any) -> str:
    """A label value as messages write it: ``1``, ``'yes'``."""
    return repr(_label_value(v))
