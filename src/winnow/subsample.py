"""Moved to :mod:`winnow.analyses.subsample`; this import path keeps working for one release."""

import sys

from .analyses import subsample as _moved

sys.modules[__name__] = _moved
