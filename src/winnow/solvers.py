"""Moved to :mod:`winnow.core.solvers`; this import path keeps working for one release."""

import sys

from .core import solvers as _moved

sys.modules[__name__] = _moved
