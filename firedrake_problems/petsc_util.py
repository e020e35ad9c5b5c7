"""PETSc helpers shared by every family, Firedrake or not (petsc4py and numpy only)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import numpy as np
from petsc4py import PETSc

__all__ = ["flatten_options", "global_nnz", "configured_ksp", "SolveMixin"]

_prefix_counter = itertools.count()


def flatten_options(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten a (possibly nested, Firedrake-style) solver-parameter dict.

    ``{"fieldsplit_0": {"ksp_type": "cg"}}`` becomes ``{"fieldsplit_0_ksp_type": "cg"}``.
    """
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_options(value, prefix=f"{name}_"))
        else:
            out[name] = value
    return out


def global_nnz(A: PETSc.Mat) -> int:
    """Number of stored nonzeros of ``A`` summed over all ranks."""
    return int(A.getInfo(PETSc.Mat.InfoType.GLOBAL_SUM)["nz_used"])


def configured_ksp(
    A: PETSc.Mat,
    solver_parameters: Mapping[str, Any],
    *,
    coordinates: np.ndarray | None = None,
    fields: Mapping[str, PETSc.IS] | None = None,
    dm: PETSc.DM | None = None,
) -> PETSc.KSP:
    """A set-up PETSc KSP on ``A`` configured by ``solver_parameters``.

    The options go into the PETSc options database under a unique prefix and
    are removed again once the KSP (and its sub-solvers) are set up, so
    concurrent problems do not interfere.  ``coordinates`` go to the PC
    (``PCSetCoordinates``: GAMG and coordinate-aware PCs use them); ``fields``
    are set on a ``fieldsplit`` PC; a ``dm`` (a DMDA) is attached to the KSP
    without computing operators from it (``KSPSetDMActive(false)``), so PCMG can
    build its grid hierarchy from it and python PCs can read its coordinates.
    """
    prefix = f"fdp{next(_prefix_counter)}_"
    opts = PETSc.Options()
    flat = flatten_options(solver_parameters)
    for key, value in flat.items():
        opts[prefix + key] = value
    try:
        ksp = PETSc.KSP().create(comm=A.getComm())
        ksp.setOptionsPrefix(prefix)
        if dm is not None:
            ksp.setDM(dm)
            ksp.setDMActive(PETSc.KSP.DMActive.ALL, False)
        ksp.setOperators(A)
        ksp.setFromOptions()
        pc = ksp.getPC()
        if pc.getType() == PETSc.PC.Type.FIELDSPLIT and fields:
            pc.setFieldSplitIS(*fields.items())
        if coordinates is not None:
            pc.setCoordinates(coordinates)
        ksp.setUp()
    finally:
        for key in flat:
            opts.delValue(prefix + key)
    return ksp


class SolveMixin:
    """``make_ksp`` and ``solve`` of a problem object with ``A``, ``b``, ``coordinates``
    and, optionally, ``fields`` and ``dm`` attributes (Firedrake and DMDA families)."""

    def make_ksp(self, solver_parameters: Mapping[str, Any]) -> PETSc.KSP:
        """A set-up PETSc KSP on ``A`` configured by ``solver_parameters``.

        The options go into the PETSc options database under a unique prefix
        and are removed again once the KSP (and its sub-solvers) are set up,
        so concurrent problems do not interfere.  Coordinates are passed to
        the PC (GAMG and coordinate-aware PCs use them); for a ``fieldsplit``
        PC the problem's ``fields`` are set; a DMDA family attaches its DM
        (see :func:`configured_ksp`).
        """
        return configured_ksp(self.A, solver_parameters, coordinates=self.coordinates,
                              fields=getattr(self, "fields", None), dm=getattr(self, "dm", None))

    def solve(
        self, solver_parameters: Mapping[str, Any], x: PETSc.Vec | None = None
    ) -> tuple[PETSc.Vec, PETSc.KSP]:
        """Solve ``A x = b`` with a plain PETSc KSP (see :meth:`make_ksp`).

        ``x`` is the initial guess (zero if omitted; then a new Vec is made).
        Returns the solution and the KSP (for iteration counts, reasons).
        """
        ksp = self.make_ksp(solver_parameters)
        if x is None:
            x = self.A.createVecRight()
            x.set(0.0)
        else:
            ksp.setInitialGuessNonzero(True)
        ksp.solve(self.b, x)
        return x, ksp
