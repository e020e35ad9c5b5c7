"""PDE problem families assembled with Firedrake and delivered as PETSc objects.

Every family builder returns a :class:`Problem` (operator, right-hand side,
node coordinates, block size, near-nullspace, mesh/space, metadata) that is
deterministic for a given seed and the same on any number of MPI ranks.
This package depends on Firedrake, petsc4py, numpy/scipy/h5py/matplotlib/gmsh
only (never on torch or ``petsc_neural``).  The finite-difference families
(:mod:`firedrake_problems.fd`: ``fd_cdr``, ``fd_rotated``) are assembled with
a PETSc DMDA and never import Firedrake.

>>> from firedrake_problems import make_problem
>>> p = make_problem("poisson", 32, seed=0, dim=2)
>>> x, ksp = p.solve({"ksp_type": "cg", "pc_type": "gamg", "ksp_rtol": 1e-10})

The names below are loaded on first use (PEP 562), so that importing
``firedrake_problems.cli`` (done by ``petsc-neural --help``) does not import
Firedrake.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pcshell.lazy import lazy_exports  # no torch: a plain module

__all__ = [
    "Problem",
    "FAMILIES",
    "DEFAULT_SIZES",
    "make_problem",
    "poisson",
    "diffusion",
    "anisotropic",
    "screened_poisson",
    "elasticity",
    "cdr",
    "mixed_3d1d",
    "fd_cdr",
    "fd_rotated",
    "FDProblem",
]

_WHERE = {
    "Problem": ".core",
    "FAMILIES": ".registry",
    "DEFAULT_SIZES": ".registry",
    "make_problem": ".registry",
    "poisson": ".scalar",
    "diffusion": ".scalar",
    "anisotropic": ".scalar",
    "screened_poisson": ".scalar",
    "cdr": ".scalar",
    "elasticity": ".elasticity",
    "mixed_3d1d": ".mixed_3d1d",
    "fd_cdr": ".fd",
    "fd_rotated": ".fd",
    "FDProblem": ".fd",
}

if TYPE_CHECKING:  # pragma: no cover - static imports for type checkers and IDEs
    from .core import Problem
    from .elasticity import elasticity
    from .fd import FDProblem, fd_cdr, fd_rotated
    from .mixed_3d1d import mixed_3d1d
    from .registry import DEFAULT_SIZES, FAMILIES, make_problem
    from .scalar import anisotropic, cdr, diffusion, poisson, screened_poisson


__getattr__, __dir__ = lazy_exports(__name__, _WHERE, globals())
