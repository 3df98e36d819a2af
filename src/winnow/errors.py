"""winnow's exception types. Every error a user can cause is one of these, with a message that names the
argument and what was expected."""

from __future__ import annotations


class WinnowError(Exception):
    """Base class of all errors raised by winnow."""


class ValidationError(WinnowError, ValueError):
    """An argument or input data does not meet winnow's expectations (shape, dtype, NaN, labels...)."""


class NotFittedError(ValidationError, AttributeError):
    """A method that needs fitted state was called before ``fit`` (as scikit-learn's NotFittedError)."""


class NotPositiveDefiniteError(WinnowError, ValueError):
    """The Hessian is not positive definite, so it cannot be inverted (add damping)."""


class ConvergenceError(WinnowError, RuntimeError):
    """An iterative procedure (head fit, retrain, solver) did not reach its tolerance."""


class OutputExistsError(WinnowError, FileExistsError):
    """An output path exists and overwriting was not asked for."""


class ClusterError(WinnowError, RuntimeError):
    """The Dask backend failed: unreachable scheduler, a worker that keeps dying, a failed partition."""
