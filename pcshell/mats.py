"""PETSc ``Mat`` checks and the one conversion to CSR (scipy or raw arrays).

Every petsc-neural module that needs a matrix's entries goes through here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from petsc4py import PETSc

from .errors import NeuralPCError

if TYPE_CHECKING:  # pragma: no cover
    import scipy.sparse as sp

__all__ = ["check_operator", "local_block", "local_csr", "to_scipy", "gather_scipy",
           "CSR_TYPES", "UNASSEMBLED_TYPES"]

CSR_TYPES = ("seqaij", "seqaijcusparse", "seqaijkokkos")
UNASSEMBLED_TYPES = ("python", "shell", "nest", "mffd", "lrc")


def check_operator(P: PETSc.Mat, who: str) -> None:
    """A clear error unless ``P`` is an assembled square matrix."""
    mtype = P.getType()
    if mtype in UNASSEMBLED_TYPES:
        raise NeuralPCError(
            f"{who} needs an assembled preconditioning matrix, got type {mtype!r} "
            "(use -mat_type aij, or in Firedrake 'mat_type': 'aij'; for a matrix-free "
            "operator pass an assembled Pmat to KSPSetOperators)"
        )
    (m, M), (n, N) = P.getSizes()
    if M != N or m != n:
        raise NeuralPCError(
            f"{who} needs a square operator with matching row and column layouts, got "
            f"{M} x {N} (local {m} x {n})"
        )


def local_block(P: PETSc.Mat) -> PETSc.Mat:
    """The rank's diagonal block (the whole matrix on one rank), as sequential AIJ.

    BAIJ, SBAIJ and dense blocks are converted once (a new Mat the caller owns
    only in that case; compare with ``P``'s block to tell).
    """
    if P.getType() in UNASSEMBLED_TYPES:
        raise NeuralPCError(f"matrix of type {P.getType()!r} has no entries to read")
    block = P.getDiagonalBlock() if P.getComm().getSize() > 1 else P
    if block.getType() not in CSR_TYPES:
        block = block.convert("seqaij", out=PETSc.Mat())  # a copy: never the caller's Mat
    return block


def local_csr(P: PETSc.Mat) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(indptr, indices, values)`` of the rank's diagonal block (copies)."""
    indptr, indices, values = local_block(P).getValuesCSR()
    return np.array(indptr), np.array(indices), np.array(values)


def to_scipy(P: PETSc.Mat) -> sp.csr_matrix:
    """The rank's diagonal block of ``P`` (all of it on one rank) as a scipy CSR matrix."""
    import scipy.sparse as sp

    indptr, indices, values = local_csr(P)
    n = len(indptr) - 1
    return sp.csr_matrix((values, indices, indptr), shape=(n, n))


def gather_scipy(P: PETSc.Mat) -> sp.csr_matrix | None:
    """The whole of a distributed ``P`` as scipy CSR on rank 0 (``None`` elsewhere)."""
    import scipy.sparse as sp

    comm = P.getComm().tompi4py()
    indptr, indices, values = P.getValuesCSR()  # local rows, global columns
    parts = comm.gather((np.asarray(indptr, np.int64), np.asarray(indices, np.int64),
                         np.array(values, np.float64)), root=0)
    if comm.rank != 0:
        return None
    ptr, idx, val, offset = [np.zeros(1, np.int64)], [], [], 0
    for p, i, v in parts:
        ptr.append(p[1:] + offset)
        offset += int(p[-1])
        idx.append(i)
        val.append(v)
    M, N = P.getSize()
    return sp.csr_matrix((np.concatenate(val), np.concatenate(idx), np.concatenate(ptr)),
                         shape=(M, N))
