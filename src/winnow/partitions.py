"""Moved to :mod:`winnow.io.parts`; this import path keeps working for one release."""

import sys

from .io import parts as _moved

sys.modules[__name__] = _moved
