"""Moved to :mod:`winnow.io.outputs`; this import path keeps working for one release."""

import sys

from .io import outputs as _moved

sys.modules[__name__] = _moved
