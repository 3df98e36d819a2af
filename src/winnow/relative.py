"""Moved to :mod:`winnow.analyses.relative`; this import path keeps working for one release."""

import sys

from .analyses import relative as _moved

sys.modules[__name__] = _moved
