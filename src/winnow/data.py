"""Moved to :mod:`winnow.io.sources`; this import path keeps working for one release."""

import sys

from .io import sources as _moved

sys.modules[__name__] = _moved
