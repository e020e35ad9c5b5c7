"""Smoothed test vectors: random start vectors and damped-Jacobi sweeps with PETSc.

``S = (I - omega D^-1 A)^s S0`` approximates the near-nullspace of ``A``
(the slow-to-converge error of the smoother): NeuraLSP (seed 001, §3.3)
learns a coarse space from it.  ``S0`` is keyed by the node coordinates or
by the global row so that it does not depend on the partition.
"""

from __future__ import annotations

import numpy as np
from petsc4py import PETSc

from pcshell import NeuralPCError

__all__ = ["start_vectors", "coordinate_start_vectors", "node_keys", "row_keys",
           "smoothed_vectors", "svd_basis"]

_CHUNK = 1024


def start_vectors(rstart: int, rend: int, n_cols: int, seed: int) -> np.ndarray:
    """Standard normal rows ``rstart..rend-1`` of an ``n x n_cols`` matrix fixed by ``seed``.

    Rows come in global chunks of 1024, each drawn from its own generator
    (seeded by ``(seed, chunk)``), so a global row gets the same values
    whichever rank owns it, and no rank draws more than two extra chunks.
    (A discretisation that numbers its dofs differently on different numbers
    of ranks, as Firedrake does, still gets different start vectors.)
    """
    out = np.empty((rend - rstart, n_cols))
    for c in range(rstart // _CHUNK, (rend - 1) // _CHUNK + 1 if rend > rstart else 0):
        block = np.random.default_rng([int(seed), c]).standard_normal((_CHUNK, n_cols))
        lo, hi = max(rstart, c * _CHUNK), min(rend, (c + 1) * _CHUNK)
        out[lo - rstart : hi - rstart] = block[lo - c * _CHUNK : hi - c * _CHUNK]
    return out


_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a ``uint64`` array (wrapping arithmetic), a well-mixed hash.

    Hand-written because numpy's generators take one seed per generator and a
    generator per node would cost microseconds per row.
    """
    x = (x + np.uint64(0x9E3779B97F4A7C15)) & _M64
    x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _M64
    x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _M64
    return x ^ (x >> np.uint64(31))


def node_keys(coordinates: np.ndarray, block_size: int, seed: int) -> np.ndarray:
    """One well-mixed ``uint64`` per dof, a function of ``seed``, its node's coordinates
    (their bits) and its component only: the same whatever the numbering and partition."""
    with np.errstate(over="ignore"):
        X = np.ascontiguousarray(coordinates, dtype=np.float64)
        X = np.where(X == 0.0, 0.0, X)  # -0.0 and 0.0: the same point
        key = np.full(X.shape[0], np.uint64(int(seed) & 0xFFFFFFFFFFFFFFFF), dtype=np.uint64)
        for d in range(X.shape[1]):
            key = _splitmix64(key ^ X[:, d].view(np.uint64))
        return np.repeat(key, block_size) ^ np.tile(
            np.arange(block_size, dtype=np.uint64) * np.uint64(0xD6E8FEB86659FD93), X.shape[0]
        )


def row_keys(rstart: int, n_rows: int, seed: int) -> np.ndarray:
    """One well-mixed ``uint64`` per global row ``rstart .. rstart + n_rows - 1`` and ``seed``."""
    rows = np.arange(rstart, rstart + n_rows, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return _splitmix64(rows ^ _splitmix64(np.full(1, int(seed) & 0xFFFFFFFFFFFFFFFF,
                                                      dtype=np.uint64)))


def coordinate_start_vectors(
    coordinates: np.ndarray, block_size: int, n_cols: int, seed: int
) -> np.ndarray:
    """Standard normal ``(n_nodes * block_size, n_cols)`` keyed by node coordinates.

    Row ``node * block_size + c`` is a function of ``seed``, the bits of the
    node's coordinates and the component ``c`` only, so a mesh gets the same
    start vectors whatever its dof numbering and partition (Firedrake numbers
    dofs differently on different numbers of ranks).  Box-Muller: one
    SplitMix64 hash per entry pair gives two 24-bit uniforms, hence two normals.
    """
    n_pairs = (int(n_cols) + 1) // 2
    key = node_keys(coordinates, block_size, seed)
    with np.errstate(over="ignore"):
        col = np.arange(1, n_pairs + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        col = _splitmix64(col)
        h = _splitmix64(key[:, None] ^ col[None, :])
    # float32 transcendentals (SIMD in numpy, 4x faster): start vectors need no more.
    u1 = ((h >> np.uint64(40)).astype(np.float32) + np.float32(0.5)) * np.float32(2.0**-24)
    theta = (h & np.uint64(0xFFFFFF)).astype(np.float32) * np.float32(2.0 * np.pi * 2.0**-24)
    r = np.sqrt(np.float32(-2.0) * np.log(u1))
    out = np.empty((h.shape[0], 2 * n_pairs))
    out[:, 0::2] = r * np.cos(theta)
    out[:, 1::2] = r * np.sin(theta)
    return out[:, : int(n_cols)]


def smoothed_vectors(
    A: PETSc.Mat, n_vectors: int, sweeps: int = 10, omega: float = 0.66, seed: int = 0,
    coordinates: np.ndarray | None = None,
) -> np.ndarray:
    """``S = (I - omega D^-1 A)^sweeps S0``, unit-norm columns; local rows ``(n_local, K)``.

    ``S0`` is standard normal, a function of ``seed`` and of the node
    coordinates when they are given (``(n_local / bs, dim)``, e.g. from
    ``PCSetCoordinates``: :func:`coordinate_start_vectors`, the same whatever
    the numbering) or else of the global row (:func:`start_vectors`, the same
    on any number of ranks for one numbering).  Each sweep is one PETSc
    ``MatMatMult`` of ``A`` with the dense ``n x K`` block.
    """
    comm = A.getComm()
    n_local, n = A.getLocalSize()[0], A.getSize()[0]
    rstart = A.getOwnershipRange()[0]
    S = PETSc.Mat().createDense(((n_local, n), (None, n_vectors)), comm=comm)
    S.setUp()
    if coordinates is not None:
        n_nodes = coordinates.shape[0]
        bs = n_local // n_nodes if n_nodes else 1
        if n_nodes * bs != n_local:
            raise NeuralPCError(
                f"{coordinates.shape[0]} coordinates do not match {n_local} local rows"
            )
        S.getDenseArray()[:] = coordinate_start_vectors(coordinates, bs, n_vectors, seed)
    else:
        S.getDenseArray()[:] = start_vectors(rstart, rstart + n_local, n_vectors, seed)
    S.assemble()
    dinv = A.getDiagonal()
    dinv.reciprocal()
    AS = None
    for _ in range(int(sweeps)):
        AS = A.matMult(S, result=AS)
        AS.diagonalScale(L=dinv)
        S.axpy(-omega, AS)
    out = np.array(S.getDenseArray(), copy=True)
    norms = np.sqrt(comm.tompi4py().allreduce((out * out).sum(axis=0)))
    out /= np.where(norms > 0, norms, 1.0)
    S.destroy()
    if AS is not None:
        AS.destroy()
    dinv.destroy()
    return out


def svd_basis(S_local: np.ndarray, rank: int, comm: PETSc.Comm) -> np.ndarray:
    """Leading ``rank`` left singular vectors of the row-distributed ``S`` (local rows).

    Method of snapshots: ``S^T S = V Sigma^2 V^T`` (``K x K``, summed over
    ranks), ``U = S V Sigma^-1``; then one Cholesky-QR pass re-orthonormalises
    ``U`` so that its orthonormality does not suffer from the squared
    condition number of the Gram matrix.
    """
    mpi = comm.tompi4py()
    G = mpi.allreduce(S_local.T @ S_local)
    w, V = np.linalg.eigh(G)
    order = np.argsort(w)[::-1][:rank]
    w, V = w[order], V[:, order]
    keep = w > w[0] * 1e-28
    U = S_local @ (V[:, keep] / np.sqrt(w[keep]))
    R = np.linalg.cholesky(mpi.allreduce(U.T @ U)).T
    return np.linalg.solve(R.T, U.T).T
