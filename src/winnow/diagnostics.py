"""Moved to :mod:`winnow.evaluation.theorem1`; this import path keeps working for one release."""

import sys

from .evaluation import theorem1 as _moved

sys.modules[__name__] = _moved
