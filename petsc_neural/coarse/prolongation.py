"""Prolongators as PETSc matrices: dense, block-diagonal per aggregate, smoothed."""

from __future__ import annotations

import numpy as np
from petsc4py import PETSc

__all__ = ["dense_prolongator", "block_prolongator", "smooth_prolongator"]

def dense_prolongator(U_local: np.ndarray, comm: PETSc.Comm) -> PETSc.Mat:
    """``P`` (rows distributed like ``A``, ``r`` columns) from its local rows.

    Dense on one process (``MatPtAP`` of AIJ with dense is PETSc-native);
    AIJ with full rows on several (the coarse space is tiny).
    """
    n_local, r = U_local.shape
    n = comm.tompi4py().allreduce(n_local)
    if comm.getSize() == 1:
        P = PETSc.Mat().createDense((n, r), array=np.asfortranarray(U_local).copy(), comm=comm)
        P.assemble()
        return P
    c_local = r if comm.getRank() == 0 else 0
    indptr = np.arange(0, (n_local + 1) * r, r, dtype=PETSc.IntType)
    indices = np.tile(np.arange(r, dtype=PETSc.IntType), n_local)
    P = PETSc.Mat().createAIJ(
        ((n_local, n), (c_local, r)), csr=(indptr, indices, U_local.ravel().copy()), comm=comm
    )
    P.assemble()
    return P


def block_prolongator(
    Q_pad: np.ndarray, mask: np.ndarray, rows: np.ndarray, rank: int, n_local: int,
    comm: PETSc.Comm,
) -> PETSc.Mat:
    """Block-diagonal tentative prolongator: aggregate ``a`` gets ``min(rank, m_a)`` columns."""
    sizes = mask.sum(axis=1).astype(np.int64)
    ncols = np.minimum(sizes, min(rank, Q_pad.shape[2]))
    mpi = comm.tompi4py()
    nc_local = int(ncols.sum())
    offset = mpi.exscan(nc_local) or 0
    nc = mpi.allreduce(nc_local)
    n = mpi.allreduce(n_local)
    col0 = offset + np.concatenate([[0], np.cumsum(ncols)[:-1]])
    row_nnz = np.zeros(n_local, dtype=np.int64)
    b_idx, p_idx = np.nonzero(rows >= 0)
    r_idx = rows[b_idx, p_idx]
    row_nnz[r_idx] = ncols[b_idx]
    indptr = np.concatenate([[0], np.cumsum(row_nnz)]).astype(PETSc.IntType)
    indices = np.empty(indptr[-1], dtype=PETSc.IntType)
    data = np.empty(indptr[-1], dtype=np.float64)
    # Entry e = (aggregate b, slot p, row i) owns k_e = ncols[b] consecutive CSR slots.
    k = ncols[b_idx]
    ent = np.repeat(np.arange(b_idx.size), k)
    j = np.arange(int(k.sum())) - np.repeat(np.cumsum(k) - k, k)
    pos = indptr[r_idx[ent]] + j
    indices[pos] = col0[b_idx[ent]] + j
    data[pos] = Q_pad[b_idx[ent], p_idx[ent], j]
    T = PETSc.Mat().createAIJ(
        ((n_local, n), (nc_local, nc)), csr=(indptr, indices, data), comm=comm
    )
    T.assemble()
    return T


def smooth_prolongator(A: PETSc.Mat, T: PETSc.Mat, omega: float) -> PETSc.Mat:
    """``P = (I - omega D^-1 A) T`` (smoothed aggregation's prolongator smoothing), with PETSc."""
    AT = A.matMult(T)
    dinv = A.getDiagonal()
    dinv.reciprocal()
    AT.diagonalScale(L=dinv)
    AT.scale(-omega)
    AT.axpy(1.0, T, structure=PETSc.Mat.Structure.SUBSET_NONZERO_PATTERN)
    dinv.destroy()
    return AT
