"""The one boundary: every check of user input, in the Python API's own words.

Each function checks one kind of input and returns it normalised (an ``int``, a ``float``, a sorted row
array, an opened :class:`~winnow.io.sources.DataSource`) or raises :class:`~winnow.errors.ValidationError`
(:class:`~winnow.errors.NotFittedError` for missing fitted state). Messages name the Python parameter
(``damping``, ``chunk_size``, ``sample_size``, ``train``...) and list it in the error's ``parameters``, so that
the command line can write it as its flag (``--damping``, ``TRAIN``; see ``winnow.cli.options.FLAGS``).
The same bad input gives the same message wherever it enters: write a new check here, not inline.

Conventions of the messages: ``<parameter> must be <what>, got <value>``; data errors start with the
parameter and the data's name: ``train (train.npz) has 6 features per row but the head expects D = 5``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import NotFittedError, ValidationError

if TYPE_CHECKING:
    from .core.heads import Head
    from .io.sources import DataSource

__all__ = [
    "fail", "check_integer", "check_number", "check_fraction", "check_probability", "check_damping",
    "check_chunk_size", "check_seed", "check_size", "check_choice", "check_exclusive", "check_fitted",
    "check_head", "open_data", "data_error", "read_labels", "check_features", "check_labels", "check_head_data",
    "check_rows", "check_ids", "head_columns", "check_classes",
]

LABEL_BLOCK = 1 << 20  # labels are checked in blocks of this many rows (bounded memory on any n)


def fail(message: str, *parameters: str) -> ValidationError:
    """A ValidationError whose message names ``parameters`` (each as a whole word)."""
    return ValidationError(message, parameters=parameters)


def _show(value: Any) -> str:
    """repr of a user value, numpy scalars written as plain Python numbers."""
    if isinstance(value, np.generic):
        value = value.item()
    return repr(value)


def _is_integer(value: Any) -> bool:
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    return isinstance(value, (numbers.Real, np.floating, np.integer)) and not isinstance(value, (bool, np.bool_))


def _bounds(minimum: float | None, maximum: float | None, min_open: bool, max_open: bool) -> str:
    if minimum is not None and maximum is not None:
        return f" in {'(' if min_open else '['}{minimum:g}, {maximum:g}{')' if max_open else ']'}"
    if minimum is not None:
        return f" {'>' if min_open else '>='} {minimum:g}"
    if maximum is not None:
        return f" {'<' if max_open else '<='} {maximum:g}"
    return ""


def _within(v: float, minimum: float | None, maximum: float | None, min_open: bool, max_open: bool) -> bool:
    if minimum is not None and (v <= minimum if min_open else v < minimum):
        return False
    return not (maximum is not None and (v >= maximum if max_open else v > maximum))


# ------------------------------------------------------------------------------------------ scalars
def check_integer(value: Any, parameter: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int in [minimum, maximum] (bools are not integers)."""
    if not _is_integer(value) or not _within(int(value), minimum, maximum, False, False):
        raise fail(f"{parameter} must be an integer{_bounds(minimum, maximum, False, False)}, got {_show(value)}",
                   parameter)
    return int(value)


def check_number(value: Any, parameter: str, *, minimum: float | None = None, maximum: float | None = None,
                 min_open: bool = False, max_open: bool = False) -> float:
    """``value`` as a finite float within the bounds (``*_open``: the bound itself is excluded)."""
    ok = _is_real(value) and math.isfinite(float(value))
    if not ok or not _within(float(value), minimum, maximum, min_open, max_open):
        raise fail(f"{parameter} must be a finite number{_bounds(minimum, maximum, min_open, max_open)}, "
                   f"got {_show(value)}", parameter)
    return float(value)


def check_fraction(value: Any, parameter: str, *, low: float = 0.0, high: float = 1.0, low_open: bool = True,
                   high_open: bool = False) -> float:
    """A fraction, by default in (0, 1]."""
    ok = _is_real(value) and math.isfinite(float(value))
    if not ok or not _within(float(value), low, high, low_open, high_open):
        raise fail(f"{parameter} must be a fraction{_bounds(low, high, low_open, high_open)}, got {_show(value)}",
                   parameter)
    return float(value)


def check_probability(value: Any, parameter: str) -> float:
    """A probability or quantile in [0, 1]."""
    return check_fraction(value, parameter, low_open=False, high_open=False)


def check_damping(damping: Any, parameter: str = "damping") -> float:
    """Damping added to the Hessian's diagonal: a finite number >= 0."""
    return check_number(damping, parameter, minimum=0.0)


def check_chunk_size(chunk_size: Any, parameter: str = "chunk_size") -> int:
    """Rows per chunk: an integer >= 1."""
    return check_integer(chunk_size, parameter, minimum=1)


def check_seed(seed: Any, parameter: str = "seed") -> int:
    """A seed for numpy's Generator: an integer >= 0."""
    return check_integer(seed, parameter, minimum=0)


def check_size(size: Any, n: int, parameter: str = "sample_size", *, what: str = "training rows",
               hint: str = "") -> int:
    """A number of rows m with 1 <= m <= n (n: the number of ``what``)."""
    m = check_integer(size, parameter, minimum=1)
    if m > n:
        raise fail(f"{parameter} = {m} exceeds the number of {what} n = {n}" + (f"; {hint}" if hint else ""),
                   parameter)
    return m


def check_choice(value: Any, parameter: str, choices: Iterable[str]) -> str:
    """One of ``choices``."""
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise fail(f"{parameter} must be one of {', '.join(choices)}; got {_show(value)}", parameter)
    return value


def check_exclusive(**given: Any) -> None:
    """At most one of the keyword arguments may be other than None."""
    named = [k for k, v in given.items() if v is not None]
    if len(named) > 1:
        raise fail(f"give at most one of {' and '.join(given)}", *given)


# ------------------------------------------------------------------------------------------ fitted state
def check_fitted(estimator: Any, attributes: str | Sequence[str], *, call: str = "fit()") -> None:
    """Raise NotFittedError unless ``estimator`` has every fitted attribute (names ending in ``_``)."""
    names = (attributes,) if isinstance(attributes, str) else tuple(attributes)
    if not all(hasattr(estimator, a) for a in names):
        raise NotFittedError(f"this {type(estimator).__name__} is not fitted yet: call {call} first")


def check_head(head: Any, parameter: str = "head") -> Head:
    """A fitted winnow Head (NotFittedError when it is not fitted)."""
    from .core.heads import Head

    if not isinstance(head, Head):
        raise fail(f"{parameter} must be a winnow Head (LogisticHead, SoftmaxHead, AutodiffHead...), got "
                   f"{type(head).__name__}", parameter)
    if not head.is_fitted:
        raise NotFittedError(f"{parameter} is not fitted: call its fit() or from_weights() first",
                             parameters=(parameter,))
    return head


# ------------------------------------------------------------------------------------------ data
def _where(source: DataSource, parameter: str) -> str:
    """`` (name)`` after the parameter, unless the data's name is the parameter itself."""
    return "" if source.name == parameter else f" ({source.name})"


def open_data(data: Any, parameter: str, *, head: Any = None, defaults: Any = None, **kwargs: Any) -> DataSource:
    """``data`` (arrays, a path, a data frame, a DataSource...) opened as a DataSource; errors name
    ``parameter``. ``head``: a head whose stored data settings (``data_columns_``, ``classes_``) are used for
    every column setting the keywords (``columns=``, ``label_column=``...) leave unset (``defaults``: such
    settings given directly)."""
    from .io.sources import open_source

    if defaults is None and head is not None:
        defaults = head_columns(head)
    try:
        source = open_source(data, argument=parameter, defaults=defaults, **kwargs)
    except ValidationError as e:
        raise data_error(e, parameter) from None
    if source is not data:  # opened here: errors found while reading its rows name the parameter too
        source.argument = parameter
    return source


def head_columns(head: Any) -> Any:
    """The data settings stored in ``head`` (a DataColumns, or None): its ``data_columns_`` with its
    ``classes_``."""
    from .io.columns import DataColumns

    cols = getattr(head, "data_columns_", None)
    classes = getattr(head, "classes_", None)
    if cols is None and classes is None:
        return None
    cols = cols or DataColumns()
    if classes is not None:
        cols = cols.with_resolved(classes=classes)
    return cols


def data_error(e: ValidationError, parameter: str) -> ValidationError:
    """A data error raised while reading ``parameter``'s data (bad labels, NaN features...), its message led
    by the parameter (``train: train.npz: ...``); the parameters the error names are kept."""
    msg = str(e)
    led = msg.startswith((f"{parameter}:", f"{parameter} ("))
    extra = [p for p in (getattr(e, "parameters", ()) or ()) if p != parameter]
    return fail(msg if led else f"{parameter}: {msg}", parameter, *extra)


def read_labels(source: DataSource, parameter: str) -> np.ndarray:
    """All labels of ``source`` (n,) int64; read errors (non-integer labels...) name ``parameter``."""
    try:
        return source.labels()
    except ValidationError as e:
        raise data_error(e, parameter) from None


def check_features(head: Head, data: Any, parameter: str) -> None:
    """The data's feature dimension equals the head's D (``data``: a DataSource or an (n, D) array)."""
    from .io.sources import DataSource

    D = int(head.n_features_)
    if isinstance(data, DataSource):
        d, where = int(data.n_features), _where(data, parameter)
    else:
        shape = np.shape(data)
        d, where = (int(shape[1]) if len(shape) == 2 else -1), ""
        if d < 0:
            raise fail(f"{parameter} must be a 2-D array (n, D) of features, got shape {shape}", parameter)
    if d != D:
        raise fail(f"{parameter}{where} has {d} features per row but the head expects D = {D} (feature "
                   "dimension mismatch between head and data)", parameter)


def check_labels(head: Head, data: Any, parameter: str) -> None:
    """Every label of ``data`` (a DataSource, streamed in blocks, or an array) is in the head's label set."""
    from .io.sources import DataSource

    if isinstance(data, DataSource):
        where, blocks = _where(data, parameter), data.label_blocks(LABEL_BLOCK)
    else:
        y = np.asarray(data)
        if y.ndim != 1 or (y.size and y.dtype.kind not in "iub"):
            raise fail(f"{parameter} must hold integer labels (a 1-D array), got dtype {y.dtype} and shape "
                       f"{y.shape}", parameter)
        where, blocks = "", iter([y])
    while True:
        try:
            y = next(blocks, None)
        except ValidationError as e:  # the labels could not be read (not integers, nulls...)
            raise data_error(e, parameter) from None
        if y is None:
            return
        try:
            head.check_labels(y, argument=f"{parameter}{where}")
        except ValidationError as e:
            raise fail(str(e), parameter) from None


def check_head_data(head: Any, /, *, labels: bool = True, **data: Any) -> tuple[DataSource, ...]:
    """Check a fitted ``head`` against each data set given by keyword (``train=..., test=...``): open it,
    compare its feature dimension with the head's D and (``labels``) its labels with the head's label set.
    Returns the opened sources in the order given. Cheap: reads only the label columns."""
    head = check_head(head)
    out = []
    for parameter, d in data.items():
        src = open_data(d, parameter, head=head)
        check_features(head, src, parameter)
        if labels:
            check_labels(head, src, parameter)
        out.append(src)
    return tuple(out)


def check_rows(rows: Any, n: int, parameter: str, *, sort: bool = True) -> np.ndarray:
    """Row positions in [0, n): a non-empty 1-D integer array, returned sorted and without duplicates
    (``sort=False``: returned as given, duplicates refused)."""
    r = np.atleast_1d(np.asarray(rows))
    if r.ndim != 1 or r.size == 0 or (r.dtype.kind not in "iu") or r.min() < 0 or r.max() >= n:
        raise fail(f"{parameter} must be row positions in 0..{n - 1} (a non-empty 1-D integer array), got "
                   f"{_preview(r)}", parameter)
    r = r.astype(np.int64)
    if sort:
        return np.unique(r)
    if np.unique(r).size != r.size:
        raise fail(f"{parameter} must not repeat a row position", parameter)
    return r


def check_ids(ids: Any, parameter: str, *, unique: bool = True) -> np.ndarray:
    """Integer ids as a 1-D int64 array (``unique``: each id at most once)."""
    a = np.atleast_1d(np.asarray(ids))
    if a.ndim != 1 or a.size == 0 or a.dtype.kind not in "iu":
        raise fail(f"{parameter} must be a non-empty 1-D array of integer ids, got {_preview(a)}", parameter)
    a = a.astype(np.int64)
    if unique:
        u, counts = np.unique(a, return_counts=True)
        if u.size != a.size:
            raise fail(f"{parameter} must hold each id once; id {int(u[np.argmax(counts > 1)])} appears more "
                       "than once", parameter)
    return a


def _preview(a: np.ndarray) -> str:
    if a.ndim != 1:
        return f"an array of shape {a.shape}"
    head = a[:5].tolist()
    return f"{head}{' ...' if a.size > 5 else ''} (dtype {a.dtype})"


def head_from(estimator: Any, head: Any = None) -> Head:
    """The head an estimator works on: the one given to ``fit`` (the older form ``fit(head, train)``), or
    the one given to the constructor (``head=``), checked."""
    if head is None:
        head = getattr(estimator, "head", None)
        if head is None:
            raise fail(f"{type(estimator).__name__} has no head: pass head= to the constructor", "head")
    return check_head(head)


def check_classes(labels: np.ndarray, classes: Sequence[Any] | None, kind: str = "auto",
                  parameter: str = "train") -> int:
    """The number of classes K of encoded ``labels`` (n,) int64, checked: at least two classes, and the
    labels are 0..K-1 with every class present (K = len(classes) when the labels were mapped). The messages
    show the labels found and name the settings that map them (``positive_label``, ``classes``)."""
    from .io.columns import format_value

    values, counts = np.unique(labels, return_counts=True)
    name = (lambda v: format_value(classes[int(v)])) if classes is not None else format_value
    found = ", ".join(f"{name(v)} ×{int(c)}" for v, c in zip(values[:6], counts[:6], strict=True)) + (
        f" and {values.size - 6} more" if values.size > 6 else "")
    if values.size == 0:
        raise fail(f"{parameter} has no rows; a classifier needs at least two classes", parameter)
    if values.size == 1:
        raise fail(f"only one class (label {name(values[0])}) in {parameter}; a classifier needs at least two",
                   parameter)
    K = len(classes) if classes is not None else int(values.max()) + 1
    if values[0] == 0 and values[-1] == K - 1 and values.size == K:
        return K
    if classes is not None:
        missing = [format_value(classes[k]) for k in range(K) if k not in set(values.tolist())]
        raise fail(f"{parameter} has no rows of the label values {', '.join(missing)} (found {found}); list "
                   "only the values present in classes", parameter, "classes")
    what = "0 and 1" if kind == "logistic" else "0..K-1"
    hint = ",".join(str(int(v)) for v in values[:6])
    raise fail(f"{parameter}: labels must be {what} with every class present; found {found}. Map them "
               f"with positive_label (binary: the value that means 1) or classes (every value in class order, "
               f"e.g. {hint})", parameter, "positive_label", "classes")
