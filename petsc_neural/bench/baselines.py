"""The classical baselines, defined once: PETSc PC options, tuned GAMG, and PyAMG.

- :data:`CLASSICAL`: name -> PETSc options for ``nprocs`` ranks (``none``,
  ``jacobi``, ``sor``, ``ilu``/``icc``/``iluk`` (ILU(2); block Jacobi in
  parallel), ``asm``, ``gamg0`` (PETSc's defaults), ``mg`` (geometric, on a
  DMDA), ``lu`` (MUMPS in parallel), ``pyamg``);
- :data:`GAMG_TUNING_GRID` and :func:`best_gamg`: GAMG tuned per problem in the
  same run (the fastest of a grid of settings by a caller's timing);
- :class:`PyAMGPC`: PyAMG smoothed aggregation as a PETSc python PC.

``PyAMGPC``: PyAMG smoothed aggregation as an outside reference.

PETSc has GAMG; PyAMG is here only so benchmark tables can show a well-known
non-PETSc AMG (smoothed aggregation with evolution strength, as the NeuraLSP
paper compares against) driven by the *same* PETSc Krylov method.  One V-cycle
per apply (``ml.aspreconditioner()``), a fixed linear operator (valid for CG).

Options (prefix ``-pc_pyamg_``): ``strength`` (``evolution`` | ``symmetric`` |
``classical``, default ``evolution``), ``max_coarse`` (default 10),
``smooth`` (prolongator smoother, default ``jacobi``).  Serial only: PyAMG is a
scipy library; in parallel the PC refuses with a clear error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from petsc4py import PETSc

from pcshell import NeuralPCError, PCBase, gather_scipy

__all__ = ["PyAMGPC", "CLASSICAL", "GAMG_TUNING_GRID", "gamg_options", "best_gamg"]


def gamg_options(threshold: float = 0.0, nsmooths: int = 1, smoother: str = "chebyshev",
                 sweeps: int = 2) -> dict[str, Any]:
    """GAMG with a threshold, prolongator smoothing steps and a Jacobi-preconditioned smoother."""
    opts: dict[str, Any] = {
        "pc_type": "gamg",
        "pc_gamg_threshold": threshold,
        "pc_gamg_agg_nsmooths": nsmooths,
        "mg_levels_ksp_type": smoother,
        "mg_levels_pc_type": "jacobi",
        "mg_levels_ksp_max_it": sweeps,
    }
    if smoother == "richardson":
        opts["mg_levels_ksp_richardson_scale"] = 0.66
    return opts


#: The settings GAMG is tuned over, by name.
GAMG_TUNING_GRID: dict[str, dict[str, Any]] = {
    **{f"threshold {t}, {s} smoothing step(s)": gamg_options(t, s)
       for t in (-1.0, 0.0, 0.01, 0.02, 0.05) for s in (0, 1)},
    "threshold 0.02, 1 Chebyshev sweep": gamg_options(0.02, 1, sweeps=1),
    "threshold 0.02, Jacobi-Richardson": gamg_options(0.02, 1, "richardson", 2),
}


def best_gamg(
    evaluate: Callable[[dict[str, Any]], float | None],
    grid: dict[str, dict[str, Any]] | None = None,
) -> tuple[str, dict[str, Any], float]:
    """The GAMG setting with the smallest ``evaluate(options)`` (seconds; ``None``: failed).

    ``evaluate`` runs the caller's problem(s) with the options and returns a
    time (the benchmark: total time of one problem; a reproduction script: a
    median over several matrices).  Raises if no setting succeeds.
    """
    best: tuple[str, dict[str, Any], float] | None = None
    for name, opts in (grid or GAMG_TUNING_GRID).items():
        t = evaluate(dict(opts))
        if t is not None and (best is None or t < best[2]):
            best = (name, dict(opts), t)
    if best is None:
        raise RuntimeError("no GAMG setting of the tuning grid converged")
    return best


def _local(parallel_type: str, serial_type: str) -> Callable[[int], dict[str, Any]]:
    def spec(nprocs: int) -> dict[str, Any]:
        if nprocs > 1:
            return {"pc_type": "bjacobi", "sub_pc_type": parallel_type}
        return {"pc_type": serial_type}

    return spec


#: name -> PETSc options for the number of ranks (``gamg`` is tuned by :func:`best_gamg`).
CLASSICAL: dict[str, Callable[[int], dict[str, Any]]] = {
    "none": lambda n: {"pc_type": "none"},
    "jacobi": lambda n: {"pc_type": "jacobi"},
    "sor": lambda n: {"pc_type": "sor"},
    "ilu": _local("ilu", "ilu"),
    # ILU(2): two levels of fill
    "iluk": lambda n: ({"pc_type": "bjacobi", "sub_pc_type": "ilu", "sub_pc_factor_levels": 2}
                       if n > 1 else {"pc_type": "ilu", "pc_factor_levels": 2}),
    "icc": _local("icc", "icc"),
    "asm": lambda n: {"pc_type": "asm", "sub_pc_type": "ilu"},
    "gamg0": lambda n: {"pc_type": "gamg"},
    "gamg": lambda n: gamg_options(0.0, 1),  # replaced by the tuned setting per problem
    "lu": lambda n: {"pc_type": "lu", "pc_factor_mat_solver_type": "mumps" if n > 1 else "petsc"},
    # PETSc's geometric multigrid on the problem's DMDA (the KSP needs the DM, see
    # firedrake_problems.fd; the caller adds -pc_mg_levels), Galerkin coarse operators,
    # SOR smoothing (robust for upwinded convection, unlike Jacobi)
    "mg": lambda n: {"pc_type": "mg", "pc_mg_galerkin": "pmat",
                     "mg_levels_ksp_type": "richardson", "mg_levels_pc_type": "sor",
                     "mg_coarse_pc_type": "lu" if n == 1 else "redundant"},
    "pyamg": lambda n: {"pc_type": "python",
                        "pc_python_type": "petsc_neural.bench.baselines.PyAMGPC"},
}


class PyAMGPC(PCBase):
    """PyAMG smoothed-aggregation V-cycle served as a PETSc python PC (serial)."""

    _prefix = "pc_pyamg_"

    def _options(self, pc: PETSc.PC) -> dict[str, Any]:
        opts = PETSc.Options(self.options_prefix(pc))
        return {
            "strength": opts.getString("strength", "evolution"),
            "max_coarse": opts.getInt("max_coarse", 10),
            "smooth": opts.getString("smooth", "jacobi"),
        }

    def initialize(self, pc: PETSc.PC) -> None:
        import pyamg

        if pc.getComm().getSize() > 1:
            raise NeuralPCError("PyAMGPC is serial only (PyAMG is a scipy library)")
        self.opts = self._options(pc)
        _, P = pc.getOperators()
        A = gather_scipy(P)
        bs = P.getBlockSize()
        nsp = P.getNearNullSpace()
        B = None
        if nsp is not None and nsp.handle != 0 and nsp.getVecs():
            B = np.stack([v.getArray(readonly=True) for v in nsp.getVecs()], axis=1)
        elif bs > 1:
            B = np.kron(np.ones((A.shape[0] // bs, 1)), np.eye(bs))
        self.ml = pyamg.smoothed_aggregation_solver(
            A, B=B, strength=self.opts["strength"], smooth=self.opts["smooth"],
            max_coarse=self.opts["max_coarse"],
        )
        self.M = self.ml.aspreconditioner(cycle="V")

    def update(self, pc: PETSc.PC) -> None:
        self.initialize(pc)

    def apply(self, pc: PETSc.PC, x: PETSc.Vec, y: PETSc.Vec) -> None:
        y.setArray(self.M @ x.getArray(readonly=True))

    def view_details(self, pc: PETSc.PC) -> list[str]:
        if not self.initialized:
            return ["(not set up)"]
        return [f"PyAMG smoothed aggregation: {len(self.ml.levels)} levels, "
                f"operator complexity {self.ml.operator_complexity():.2f}, options {self.opts}"]
