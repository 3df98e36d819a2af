"""Moved to :mod:`winnow.engine.backends`; this import path keeps working for one release."""

import sys

from .engine import backends as _moved

sys.modules[__name__] = _moved
