"""winnow's exception types. Every error a user can cause is one of these, with a message that names the
argument and what was expected.

Messages speak the Python API's words: they name parameters (``damping``, ``sample_size``, ``train``). An
error lists the parameters its message names in ``parameters``, so that a front end can write them in its
own words: the command line shows ``--damping``, ``--sample-size``, ``TRAIN`` (``winnow.cli.options.FLAGS``).
"""

from __future__ import annotations

from collections.abc import Iterable


class WinnowError(Exception):
    """Base class of all errors raised by winnow.

    ``parameters``: the Python parameter names that the message names (each as a whole word), in the order
    they appear; empty when the message names none or was written before this convention.
    """

    def __init__(self, *args: object, parameters: Iterable[str] = ()) -> None:
        super().__init__(*args)
        self.parameters: tuple[str, ...] = tuple(parameters)


class ValidationError(WinnowError, ValueError):
    """An argument or input data does not meet winnow's expectations (shape, dtype, NaN, labels...)."""


class NotStationaryError(ValidationError):
    """The head is not at an optimum of its training objective (every influence formula assumes ∇R(θ̂) = 0)."""


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
