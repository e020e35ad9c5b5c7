"""PETSc ``PCMG`` around given prolongators (two levels, or a whole hierarchy)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from petsc4py import PETSc

from pcshell import NeuralPCError, pushed_options

__all__ = ["two_level_mg", "mg_hierarchy", "aij_operator", "coarse_solve_options",
           "AIJ_TYPES", "COARSE_SOLVES"]

AIJ_TYPES = ("seqaij", "mpiaij", "seqaijcusparse", "mpiaijcusparse", "seqaijkokkos",
             "mpiaijkokkos")


def aij_operator(Pmat: PETSc.Mat) -> tuple[PETSc.Mat, str]:
    """``Pmat`` itself if it is AIJ, else an AIJ copy (the caller destroys it) and a note.

    PETSc's ``MatMatMult`` and ``MatPtAP`` of BAIJ/SBAIJ/dense with the
    prolongators here need AIJ; the user's matrix is never changed.
    """
    if Pmat.getType() in AIJ_TYPES:
        return Pmat, ""
    return Pmat.convert("aij", out=PETSc.Mat()), f"{Pmat.getType()} -> aij"


COARSE_SOLVES = ("auto", "lu", "mumps", "gamg")


def coarse_solve_options(kind: str, comm: PETSc.Comm, rows: int,
                         direct_max: int = 20000, cycles: int = 4,
                         sparse: bool = True, has_mumps: bool | None = None) -> dict[str, Any]:
    """PCMG options (``mg_coarse_*``) for the coarse solve of a ``rows``-row coarse operator.

    ``lu``: PETSc's own LU (redundant LU on several ranks); ``mumps``: MUMPS's
    parallel multifrontal LU (no redundant copies); ``gamg``: ``cycles`` GAMG
    V-cycles (a fixed number of Richardson steps from zero, no norm test, so the
    two-level method stays linear, symmetric, and valid under CG);
    ``auto``: MUMPS where PETSc has it and the coarse operator is sparse,
    whatever its size; otherwise PETSc's LU up to ``direct_max`` rows and GAMG
    above (a dense prolongator gives a dense coarse operator, which only
    PETSc's LU takes).  Why not PETSc's LU throughout: a two-level coarse space
    on a 3D mesh is large and its Galerkin operator dense-ish (r columns per
    aggregate, 27 neighbouring aggregates), and PETSc's sparse LU of it took
    490 s on 65^3 Poisson (60,010 coarse rows) where MUMPS takes 27 s.  Why
    not GAMG by size: on 2D coarse operators a few GAMG cycles cost most of
    the coarse space's effect (257^2 Poisson: 29 outer iterations against 6;
    513^2: 50 against 7), while 3D keeps most of it (65^3: 10 against 7, setup
    5.6 s against 27 s).
    """
    if kind not in COARSE_SOLVES:
        raise NeuralPCError(f"coarse solve must be one of {', '.join(COARSE_SOLVES)}, "
                            f"got {kind!r}")
    if has_mumps is None:  # given only by tests of the choice
        has_mumps = bool(PETSc.Sys.hasExternalPackage("mumps"))
    if kind == "auto":
        if has_mumps and sparse:
            kind = "mumps"
        else:
            kind = "gamg" if rows > direct_max and sparse else "lu"
    if kind in ("mumps", "gamg") and not sparse:
        raise NeuralPCError(f"coarse solve {kind} needs a sparse coarse operator; this one "
                            "is dense (a dense prolongator): use lu or auto")
    if kind == "mumps":
        if not has_mumps:
            raise NeuralPCError("coarse solve mumps: this PETSc was built without MUMPS "
                                "(use lu, gamg or auto)")
        return {"mg_coarse_ksp_type": "preonly", "mg_coarse_pc_type": "lu",
                "mg_coarse_pc_factor_mat_solver_type": "mumps"}
    if kind == "gamg":
        if cycles <= 1:
            return {"mg_coarse_ksp_type": "preonly", "mg_coarse_pc_type": "gamg"}
        return {"mg_coarse_ksp_type": "richardson", "mg_coarse_ksp_max_it": int(cycles),
                "mg_coarse_ksp_norm_type": "none", "mg_coarse_pc_type": "gamg"}
    return {"mg_coarse_ksp_type": "preonly",
            "mg_coarse_pc_type": "lu" if comm.getSize() == 1 else "redundant"}


def mg_hierarchy(
    A: PETSc.Mat,
    Pmat: PETSc.Mat,
    interpolations: Sequence[PETSc.Mat],
    prefix: str,
    *,
    operators: Sequence[PETSc.Mat] | None = None,
    smoother: str = "jacobi",
    smooth_its: int = 5,
    omega: float = 0.66,
    coarse: str = "lu",
    coarse_direct_max: int = 20000,
    coarse_cycles: int = 4,
    defaults: dict[str, Any] | None = None,
) -> PETSc.PC:
    """PETSc's PCMG (V-cycle) with the given interpolations, set up.

    ``interpolations[0]`` maps the first coarse level to the fine one,
    ``interpolations[-1]`` the coarsest to the next.  ``operators``: the
    coarse operators in the same order (e.g. from ``MatPtAP``), or ``None``
    for PETSc's Galerkin products (``-pc_mg_galerkin both``).  With no
    interpolation at all, the coarse solver alone (prefix ``mg_coarse_``).  Smoother:
    ``smooth_its`` sweeps of damped Jacobi (Richardson with scale ``omega``)
    or of Chebyshev/Jacobi, before and after the coarse correction; coarse
    solve: ``coarse`` (see :func:`coarse_solve_options`; default LU, redundant
    LU on several ranks).  ``defaults`` and then the options under ``prefix``
    override every default.
    """
    if operators is not None and len(operators) != len(interpolations):
        raise ValueError(f"{len(operators)} coarse operators for {len(interpolations)} "
                         "interpolations")
    comm = A.getComm()
    n_levels = len(interpolations) + 1
    if n_levels == 1:  # nothing to coarsen: the coarse solver on the operator itself
        return _direct(A, Pmat, prefix + "mg_coarse_", defaults)
    mg = PETSc.PC().create(comm=comm)
    mg.setOptionsPrefix(prefix)
    mg.setOperators(A, Pmat)
    mg.setType(PETSc.PC.Type.MG)
    mg.setMGLevels(n_levels)
    mg.setMGType(PETSc.PC.MGType.MULTIPLICATIVE)
    for k, P in enumerate(interpolations):
        mg.setMGInterpolation(n_levels - 1 - k, P)
    opts: dict[str, Any] = {
        "pc_mg_galerkin": "both" if operators is None else "none",
        "mg_levels_ksp_max_it": int(smooth_its),
        "mg_levels_ksp_norm_type": "none",
        "mg_levels_pc_type": "jacobi",
    }
    coarse_rows = interpolations[-1].getSize()[1]
    sparse = interpolations[-1].getType() in AIJ_TYPES
    opts.update(coarse_solve_options(coarse, comm, coarse_rows, coarse_direct_max,
                                     coarse_cycles, sparse=sparse))
    if smoother == "jacobi":
        opts["mg_levels_ksp_type"] = "richardson"
        opts["mg_levels_ksp_richardson_scale"] = float(omega)
    elif smoother == "chebyshev":
        opts["mg_levels_ksp_type"] = "chebyshev"
    else:
        raise NeuralPCError(f"smoother must be jacobi or chebyshev, got {smoother!r}")
    opts.update(defaults or {})
    if operators is not None:
        for k, Ac in enumerate(operators):
            level = n_levels - 2 - k
            ksp = mg.getMGCoarseSolve() if level == 0 else mg.getMGSmoother(level)
            ksp.setOperators(Ac, Ac)
    with pushed_options(prefix, opts):
        mg.setFromOptions()
        mg.setUp()
    return mg


def _direct(A: PETSc.Mat, Pmat: PETSc.Mat, prefix: str,
            defaults: dict[str, Any] | None) -> PETSc.PC:
    """LU (redundant LU on several ranks) under ``prefix``, as PCMG's coarse solve would be."""
    pc = PETSc.PC().create(comm=A.getComm())
    pc.setOptionsPrefix(prefix)
    pc.setOperators(A, Pmat)
    opts = {"pc_type": "lu" if A.getComm().getSize() == 1 else "redundant"}
    opts.update({k[len("mg_coarse_"):]: v for k, v in (defaults or {}).items()
                 if k.startswith("mg_coarse_pc_")})
    with pushed_options(prefix, opts):
        pc.setFromOptions()
        pc.setUp()
    return pc


def two_level_mg(
    A: PETSc.Mat,
    Pmat: PETSc.Mat,
    P: PETSc.Mat,
    prefix: str,
    *,
    smoother: str = "jacobi",
    smooth_its: int = 5,
    omega: float = 0.66,
    coarse: str = "lu",
    coarse_direct_max: int = 20000,
    coarse_cycles: int = 4,
) -> PETSc.PC:
    """PETSc's PCMG with two levels, interpolation ``P``, Galerkin coarse operator.

    See :func:`mg_hierarchy` (smoothers, coarse solve, options under ``prefix``).
    """
    return mg_hierarchy(A, Pmat, [P], prefix, smoother=smoother, smooth_its=smooth_its,
                        omega=omega, coarse=coarse, coarse_direct_max=coarse_direct_max,
                        coarse_cycles=coarse_cycles)
