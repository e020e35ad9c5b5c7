"""``petsc_neural.baselines.PyAMGPC``: PyAMG smoothed aggregation as an outside reference.

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

from typing import Any

import numpy as np
from petsc4py import PETSc

from pcshell import NeuralPCError, PCBase

__all__ = ["PyAMGPC"]


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
        import scipy.sparse as sp

        if pc.getComm().getSize() > 1:
            raise NeuralPCError("PyAMGPC is serial only (PyAMG is a scipy library)")
        self.opts = self._options(pc)
        _, P = pc.getOperators()
        indptr, indices, values = P.getValuesCSR()
        A = sp.csr_matrix((values, indices, indptr), shape=P.getSize())
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
