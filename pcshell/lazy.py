"""Lazy package exports (PEP 562): a package's names imported on first use.

``pcshell``, ``firedrake_problems`` and ``petsc_neural`` export names whose
modules pull in torch or Firedrake; importing the package itself stays cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, where: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``where`` maps a name to its module.

    Module names are relative to ``package`` (``".core"``); a loaded name is
    cached in ``namespace`` (the package's ``globals()``).
    """

    def getattr_(name: str) -> Any:
        if name in where:
            value = getattr(importlib.import_module(where[name], package), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def dir_() -> list[str]:
        return sorted(set(namespace) | set(namespace.get("__all__", ())))

    return getattr_, dir_
