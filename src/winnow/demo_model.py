"""Moved to :mod:`winnow.demo.model`; this import path keeps working for one release."""

import sys

from .demo import model as _moved

sys.modules[__name__] = _moved
