"""Moved to :mod:`winnow.analyses.theorems`; this import path keeps working for one release."""

import sys

from .analyses import theorems as _moved

sys.modules[__name__] = _moved
