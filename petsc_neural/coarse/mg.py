"""A two-level PETSc ``PCMG`` around a given prolongator."""

from __future__ import annotations

from typing import Any

from petsc4py import PETSc

from pcshell import NeuralPCError, pushed_options

__all__ = ["two_level_mg"]

def two_level_mg(
    A: PETSc.Mat,
    Pmat: PETSc.Mat,
    P: PETSc.Mat,
    prefix: str,
    *,
    smoother: str = "jacobi",
    smooth_its: int = 5,
    omega: float = 0.66,
) -> PETSc.PC:
    """PETSc's PCMG with two levels, interpolation ``P``, Galerkin coarse operator.

    Smoother: ``smooth_its`` sweeps of damped Jacobi (Richardson with scale
    ``omega``) or of Chebyshev/Jacobi, before and after the coarse correction;
    coarse solve: LU (redundant LU on several ranks).  Options under ``prefix``
    override every default.
    """
    comm = A.getComm()
    mg = PETSc.PC().create(comm=comm)
    mg.setOptionsPrefix(prefix)
    mg.setOperators(A, Pmat)
    mg.setType(PETSc.PC.Type.MG)
    mg.setMGLevels(2)
    mg.setMGType(PETSc.PC.MGType.MULTIPLICATIVE)
    mg.setMGInterpolation(1, P)
    defaults: dict[str, Any] = {
        "pc_mg_galerkin": "both",
        "mg_levels_ksp_max_it": int(smooth_its),
        "mg_levels_ksp_norm_type": "none",
        "mg_levels_pc_type": "jacobi",
        "mg_coarse_ksp_type": "preonly",
        "mg_coarse_pc_type": "lu" if comm.getSize() == 1 else "redundant",
    }
    if smoother == "jacobi":
        defaults["mg_levels_ksp_type"] = "richardson"
        defaults["mg_levels_ksp_richardson_scale"] = float(omega)
    elif smoother == "chebyshev":
        defaults["mg_levels_ksp_type"] = "chebyshev"
    else:
        raise NeuralPCError(f"smoother must be jacobi or chebyshev, got {smoother!r}")
    with pushed_options(prefix, defaults):
        mg.setFromOptions()
        mg.setUp()
    return mg
