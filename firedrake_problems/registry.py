"""Registry of the problem families: ``FAMILIES`` and :func:`make_problem`."""

from __future__ import annotations

import logging
from collections.abc import Callable

from .core import Problem
from .elasticity import elasticity
from .mixed_3d1d import mixed_3d1d
from .scalar import anisotropic, cdr, diffusion, poisson, screened_poisson

__all__ = ["FAMILIES", "make_problem", "DEFAULT_SIZES"]

log = logging.getLogger("petsc_neural.problems")

FAMILIES: dict[str, Callable[..., Problem]] = {
    "poisson": poisson,
    "diffusion": diffusion,
    "anisotropic": anisotropic,
    "screened_poisson": screened_poisson,
    "elasticity": elasticity,
    "cdr": cdr,
    "mixed_3d1d": mixed_3d1d,
}

# Small / medium / large sizes per family (cells per direction), used by
# ``petsc-neural problems table`` and as CLI defaults.
DEFAULT_SIZES: dict[str, tuple[int, int, int]] = {
    "poisson": (32, 64, 128),
    "diffusion": (32, 64, 128),
    "anisotropic": (32, 64, 128),
    "screened_poisson": (32, 64, 128),
    "elasticity": (16, 32, 64),
    "cdr": (32, 64, 128),
    "mixed_3d1d": (8, 12, 16),
}


def make_problem(family: str, size: int, seed: int = 0, comm=None, **params) -> Problem:
    """Build problem ``family`` of the given size and seed (``params`` go to the builder)."""
    try:
        builder = FAMILIES[family]
    except KeyError:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}") from None
    return builder(size, seed, comm, **params)
