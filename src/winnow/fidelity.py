"""Moved to :mod:`winnow.analyses.fidelity`; this import path keeps working for one release."""

import sys

from .analyses import fidelity as _moved

sys.modules[__name__] = _moved
