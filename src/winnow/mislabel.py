"""Moved to :mod:`winnow.evaluation.mislabel`; this import path keeps working for one release."""

import sys

from .evaluation import mislabel as _moved

sys.modules[__name__] = _moved
