"""Moved to :mod:`winnow.analyses.memorization`; this import path keeps working for one release."""

import sys

from .analyses import memorization as _moved

sys.modules[__name__] = _moved
