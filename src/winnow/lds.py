"""Moved to :mod:`winnow.evaluation.lds`; this import path keeps working for one release."""

import sys

from .evaluation import lds as _moved

sys.modules[__name__] = _moved
