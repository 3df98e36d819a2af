"""test_theorem1 imports its networks from tests/core/test_models.py. pytest puts only the folders of the files it
collects on sys.path, so make tests/core importable here too: the evaluation tests then also run on their own
(`pytest tests/evaluation/test_theorem1.py`, or mutmut running single test ids)."""

import sys
from pathlib import Path

_CORE = str(Path(__file__).resolve().parents[1] / "core")
if _CORE not in sys.path:
    sys.path.append(_CORE)
