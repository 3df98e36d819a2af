"""Moved to :mod:`winnow.core.heads`; this import path keeps working for one release."""

import sys

from .core import heads as _moved

sys.modules[__name__] = _moved
