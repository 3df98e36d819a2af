"""Moved to :mod:`winnow.core.curvature`; this import path keeps working for one release."""

import sys

from .core import curvature as _moved

sys.modules[__name__] = _moved
