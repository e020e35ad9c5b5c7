"""Shared pieces of the NeuraLSP tests (imported by name: pytest's prepend mode)."""

from __future__ import annotations

import numpy as np
from petsc4py import PETSc

NEURALSP = {
    "ksp_type": "cg",
    "ksp_rtol": 1e-6,
    "ksp_norm_type": "unpreconditioned",
    "ksp_max_it": 1000,
    "pc_type": "python",
    "pc_python_type": "petsc_neural.NeuraLSP",
}


def problem(family: str = "diffusion", size: int = 8, seed: int = 1, comm=None):
    from firedrake_problems import make_problem

    return make_problem(family, size, seed=seed, comm=comm)


def solve(p, **opts):
    """Solve with NeuraLSP (``opts`` added to/overriding :data:`NEURALSP`); (x, ksp)."""
    return p.solve({**NEURALSP, **opts})


def pc_matrix(pc: PETSc.PC, n: int) -> np.ndarray:
    """The preconditioner as a dense matrix (serial), column by column."""
    x = PETSc.Vec().createSeq(n)
    y = x.duplicate()
    M = np.empty((n, n))
    for i in range(n):
        x.set(0.0)
        x.setValue(i, 1.0)
        x.assemble()
        pc.apply(x, y)
        M[:, i] = y.getArray()
    return M


def scipy_matrix(A: PETSc.Mat) -> np.ndarray:
    indptr, indices, data = A.getValuesCSR()
    n = A.getSize()[0]
    M = np.zeros((n, n))
    for i in range(n):
        M[i, indices[indptr[i] : indptr[i + 1]]] = data[indptr[i] : indptr[i + 1]]
    return M


def two_level_cycle(
    A: np.ndarray, P: np.ndarray, r: np.ndarray, omega: float = 0.66, nu: int = 5
) -> np.ndarray:
    """Algorithm 1 of seed 001, one cycle from a zero guess, written out in numpy.

    nu damped-Jacobi sweeps, Galerkin coarse correction with R = P^T, nu sweeps.
    """
    d = np.diag(A)
    x = np.zeros_like(r)
    for _ in range(nu):
        x = x + omega * (r - A @ x) / d
    res = r - A @ x
    Ac = P.T @ A @ P
    x = x + P @ np.linalg.solve(Ac, P.T @ res)
    for _ in range(nu):
        x = x + omega * (r - A @ x) / d
    return x


def grid_matrix(n: int, local_rows: int | None = None, comm=PETSc.COMM_WORLD) -> PETSc.Mat:
    """5-point Laplacian on an n x n grid with a constant diagonal, ``local_rows`` per rank."""
    from grid_matrices import laplacian

    return laplacian(n, comm, local_rows, varying=False)
