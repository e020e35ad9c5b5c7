"""Prolongators as PETSc matrices: dense, block-diagonal per aggregate, smoothed."""

from __future__ import annotations

import numpy as np
from petsc4py import PETSc

__all__ = ["dense_prolongator", "block_prolongator", "token_prolongator", "smooth_prolongator",
           "jacobi_omega"]

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


def token_prolongator(
    index: np.ndarray, weights: np.ndarray, n_tokens: int, comm: PETSc.Comm
) -> PETSc.Mat:
    """Tentative prolongator from padded per-row weights over local tokens.

    Row ``i`` has ``weights[i, k]`` in column ``offset + index[i, k]`` for
    every slot with ``index >= 0`` (``offset``: the tokens of lower ranks);
    rows with no slot are zero.  AIJ, columns sorted, distributed like the rows.
    """
    import scipy.sparse as sp

    n_local = index.shape[0]
    mpi = comm.tompi4py()
    offset = mpi.exscan(n_tokens) or 0
    nc, n = mpi.allreduce(n_tokens), mpi.allreduce(n_local)
    r, k = np.nonzero(index >= 0)
    T = sp.csr_matrix((weights[r, k], (r, index[r, k])), shape=(n_local, max(n_tokens, 0)))
    T.sum_duplicates()
    T.sort_indices()
    P = PETSc.Mat().createAIJ(
        ((n_local, n), (n_tokens, nc)),
        csr=(T.indptr.astype(PETSc.IntType), (T.indices + offset).astype(PETSc.IntType),
             T.data.astype(np.float64)),
        comm=comm,
    )
    P.assemble()
    return P


def jacobi_omega(A: PETSc.Mat) -> float:
    """``4 / (3 rho)`` with ``rho`` Gershgorin's bound on ``D^-1 A`` (whole rows, all ranks).

    Smoothed aggregation's prolongator damping with a bound that needs no
    eigenvalue solve and is the same on any number of ranks.
    """
    indptr, _, values = A.getValuesCSR()
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    absrow = np.bincount(rows, weights=np.abs(values), minlength=len(indptr) - 1)
    d = np.abs(A.getDiagonal().getArray(readonly=True))
    ratio = np.where(d > 0, absrow / np.where(d > 0, d, 1.0), 0.0)
    rho = A.getComm().tompi4py().allreduce(float(ratio.max()) if ratio.size else 0.0,
                                           op=_mpi_max())
    return 4.0 / (3.0 * rho) if rho > 0 else 2.0 / 3.0


def _mpi_max():
    from mpi4py import MPI

    return MPI.MAX


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
