"""Moved to :mod:`winnow.core.autodiff`; this import path keeps working for one release."""

import sys

from .core import autodiff as _moved

sys.modules[__name__] = _moved
