"""Moved to :mod:`winnow.evaluation.loo`; this import path keeps working for one release."""

import sys

from .evaluation import loo as _moved

sys.modules[__name__] = _moved
