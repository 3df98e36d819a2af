"""Names that moved to another module stay importable from their old one, imported on first use."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def moved_names(module: str, package: str | None, targets: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for ``module``: ``targets`` maps an old name to ``"new.module:name"``
    (relative to ``package``); the new module is imported only when the name is first used, which also
    keeps modules that import each other free of import cycles."""

    def __getattr__(name: str) -> Any:
        target = targets.get(name)
        if target is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        where, _, attr = target.partition(":")
        return getattr(importlib.import_module(where, package), attr or name)

    return __getattr__
