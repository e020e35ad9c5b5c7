"""Registry of the problem families: ``FAMILIES`` and :func:`make_problem`.

Builders are named by module and loaded on first use, so building a
finite-difference family (:mod:`firedrake_problems.fd`, PETSc DMDA) never
imports Firedrake, and reading the registry imports nothing.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = ["FAMILIES", "make_problem", "DEFAULT_SIZES", "FIREDRAKE_FREE"]

log = logging.getLogger("petsc_neural.problems")

# name -> "module:function" (relative to this package)
_BUILDERS: dict[str, str] = {
    "poisson": ".scalar:poisson",
    "diffusion": ".scalar:diffusion",
    "anisotropic": ".scalar:anisotropic",
    "screened_poisson": ".scalar:screened_poisson",
    "elasticity": ".elasticity:elasticity",
    "cdr": ".scalar:cdr",
    "mixed_3d1d": ".mixed_3d1d:mixed_3d1d",
    "fd_cdr": ".fd:fd_cdr",
    "fd_rotated": ".fd:fd_rotated",
}

#: Families built without Firedrake (PETSc DMDA finite differences).
FIREDRAKE_FREE: frozenset[str] = frozenset({"fd_cdr", "fd_rotated"})


class _LazyFamilies(Mapping[str, Callable[..., Any]]):
    """``name -> builder``, each builder imported when first looked up."""

    def __init__(self, where: Mapping[str, str]) -> None:
        self._where = dict(where)
        self._loaded: dict[str, Callable[..., Any]] = {}

    def __getitem__(self, name: str) -> Callable[..., Any]:
        if name not in self._loaded:
            module, func = self._where[name].split(":")
            self._loaded[name] = getattr(importlib.import_module(module, __package__), func)
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


FAMILIES: Mapping[str, Callable[..., Any]] = _LazyFamilies(_BUILDERS)

# Small / medium / large sizes per family (cells per direction; interior points per
# direction for the finite-difference families), used by ``petsc-neural problems
# table`` and as CLI defaults.
DEFAULT_SIZES: dict[str, tuple[int, int, int]] = {
    "poisson": (32, 64, 128),
    "diffusion": (32, 64, 128),
    "anisotropic": (32, 64, 128),
    "screened_poisson": (32, 64, 128),
    "elasticity": (16, 32, 64),
    "cdr": (32, 64, 128),
    "mixed_3d1d": (8, 12, 16),
    "fd_cdr": (32, 64, 128),
    "fd_rotated": (32, 64, 98),
}


def make_problem(family: str, size: int, seed: int = 0, comm=None, **params):
    """Build problem ``family`` of the given size and seed (``params`` go to the builder)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[family](size, seed, comm, **params)
