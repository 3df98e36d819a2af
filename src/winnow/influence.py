"""Moved to :mod:`winnow.core.influence`; this import path keeps working for one release."""

import sys

from .core import influence as _moved

sys.modules[__name__] = _moved
