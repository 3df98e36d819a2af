"""Moved to :mod:`winnow.core.models`; this import path keeps working for one release."""

import sys

from .core import models as _moved

sys.modules[__name__] = _moved
