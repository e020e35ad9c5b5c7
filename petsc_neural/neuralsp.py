"""``petsc_neural.NeuraLSP``: a learned two-level coarse space served as PETSc's own PCMG.

Seed 001 (Benanti, Han, Qin, *NeuraLSP*).  At setup, and only then:

1. ``K`` random vectors (keyed by the node coordinates when the PC has
   them, else by the global row) are smoothed with damped Jacobi,
   ``S = (I - omega D^-1 A)^s1 S0`` (§3.3), with PETSc (``MatMatMult`` of the
   operator with a dense ``n x K`` matrix), and each column scaled to unit norm;
2. a network maps ``S`` to an orthonormal basis ``Q`` (QR inside the network)
   whose first ``r`` columns are the prolongation ``P`` (rank-agnostic
   truncation: models are trained with the nested NLSS loss);
3. ``P`` becomes a PETSc ``Mat`` and the preconditioner is a two-level
   ``PCMG``: Galerkin coarse operator ``P^T A P`` (``-pc_mg_galerkin both``),
   damped Jacobi smoothing (``omega = 0.66``, ``nu1 = nu2 = 5``, Algorithm 1)
   or Chebyshev/Jacobi, and a direct coarse solve.  Every apply is PETSc's
   V-cycle, so the preconditioner is linear, symmetric, and valid for CG.

Two kinds of model (``pcshell`` model files with method ``"neuralsp"``):

``variant = "global"`` (the paper)
    :class:`~petsc_neural.networks.neuralsp.NeuraLSPMLP`: flattens all of
    ``S`` into an MLP, so the model is tied to one mesh size (metadata ``n``)
    and to one process; ``P`` is dense ``n x r``.
``variant = "local"`` (ours: distributable and mesh-size independent)
    :class:`~petsc_neural.networks.neuralsp.LocalSubspaceNet`: the nodes each
    rank owns are grouped into aggregates (greedy graph aggregation of the
    local diagonal block, as smoothed aggregation does; nodes visited in
    coordinate order when the PC has coordinates, so the aggregates do not
    depend on the dof numbering), each aggregate keeps
    its constant vector (smoothed aggregation's tentative prolongator; without
    it the two-level iteration counts grow with N, because 10 Jacobi sweeps do
    not make ``S`` smooth at the aggregate scale), one shared-weight network
    maps each aggregate's rows of ``S`` (mean removed) to an orthonormal local
    basis whose first ``r - 1`` columns complement the constant, and the
    block-diagonal tentative prolongator is smoothed once,
    ``P = (I - omega D^-1 A) T``.  This is Chow (2006)'s local-SVD coarse
    space with the SVD replaced by a learned map trained with the NLSS loss
    per aggregate.  How it differs from the paper: the paper learns one
    global, dense ``n x r`` basis of the leading left singular subspace of all
    of ``S`` with a fixed coarse size ``n_c = r``; this variant learns local
    bases, its coarse space grows with the mesh (``r`` per aggregate, a
    block-sparse ``P``), the network never sees global indices (any mesh size,
    any number of ranks, no communication but PETSc's own in ``MatMatMult``
    and ``PtAP``), and it needs one extra Jacobi smoothing of ``P``.

Baselines served by the same class (no model needed): ``-pc_neuralsp_basis
svd`` (the exact leading left singular vectors of ``S``, computed by the
method of snapshots: eigen-decomposition of the ``K x K`` Gram matrix
``S^T S`` summed over ranks) and ``-pc_neuralsp_basis local_svd`` (Chow's
local SVD per aggregate, smoothed like the local variant).

Options (prefix ``-[pc prefix]pc_neuralsp_``), besides the common
``-pc_neural_*`` options of :class:`pcshell.NeuralPCBase` (``model``,
``device``, ``dtype``, ...):

``-pc_neuralsp_basis model|svd|local_svd``
    Where ``P`` comes from (default ``model``; the others need no model).
``-pc_neuralsp_rank R``
    Columns kept: the coarse size ``n_c`` for a global basis, the columns per
    aggregate for a local one, the constant included (default: the model's
    trained rank; 48 for ``svd``, 2 for ``local_svd``).  At most the model's
    rank.
``-pc_neuralsp_vectors K`` / ``-pc_neuralsp_sweeps s1``
    Number of smoothed vectors and Jacobi sweeps (default: the model's
    training values; otherwise 72 / 10 for ``svd``, 12 / 10 for ``local_svd``).
``-pc_neuralsp_omega w``
    Jacobi damping for the vectors, the smoother and the prolongator smoothing
    (default 0.66).
``-pc_neuralsp_smoother jacobi|chebyshev`` / ``-pc_neuralsp_smooth_its nu``
    The PCMG level smoother (default damped Jacobi) and its sweeps (default 5).
``-pc_neuralsp_smooth_p true|false``
    Smooth the prolongator once with damped Jacobi (default: true for local
    bases, false for global ones).
``-pc_neuralsp_constant true|false``
    Keep each aggregate's constant in a local basis (default: true for
    ``local_svd``; a model's own training setting).
``-pc_neuralsp_threshold t``
    Strength-of-connection threshold of the aggregation (default 0).
``-pc_neuralsp_seed s``
    Seed of the random start vectors ``S0`` (default 0).  When the PC has
    node coordinates (``PCSetCoordinates``, which ``firedrake_problems`` and
    GAMG users already call), ``S0`` is keyed by the coordinates, so a mesh
    gets the same ``S0`` whatever its numbering and number of ranks;
    otherwise by the global row.

The inner PCMG has the options prefix ``-[pc prefix]neuralsp_`` (e.g.
``-neuralsp_mg_levels_ksp_max_it 3``, ``-neuralsp_mg_coarse_pc_type cholesky``)
and is shown by ``-ksp_view``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from petsc4py import PETSc

from pcshell import (
    LoadedModel,
    ModelFileError,
    ModelMismatchError,
    NeuralPCBase,
    NeuralPCError,
    log_event,
    read_option_table,
)

__all__ = ["NeuraLSP"]

logger = logging.getLogger("petsc_neural.neuralsp")

GLOBAL_INPUTS = ["smoothed_vectors"]
LOCAL_INPUTS = ["aggregate_vectors", "aggregate_mask"]

# Loaded models by (path, mtime, size, device): a process that sets up many
# solvers with the same file (a time loop, a benchmark) reads it once.  The
# network only runs under inference_mode, so sharing it is safe.
_MODEL_CACHE: dict[tuple[str, int, int, str], LoadedModel] = {}
_MODEL_CACHE_SIZE = 4


# ----------------------------------------------------------------------------- PETSc helpers
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
    with np.errstate(over="ignore"):
        X = np.ascontiguousarray(coordinates, dtype=np.float64)
        X = np.where(X == 0.0, 0.0, X)  # -0.0 and 0.0: the same point
        key = np.full(X.shape[0], np.uint64(int(seed) & 0xFFFFFFFFFFFFFFFF), dtype=np.uint64)
        for d in range(X.shape[1]):
            key = _splitmix64(key ^ X[:, d].view(np.uint64))
        key = np.repeat(key, block_size) ^ np.tile(
            np.arange(block_size, dtype=np.uint64) * np.uint64(0xD6E8FEB86659FD93), X.shape[0]
        )
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


def local_block_csr(A: PETSc.Mat) -> sp.csr_matrix:
    """The rank's diagonal block of ``A`` as a scipy CSR matrix."""
    block = A.getDiagonalBlock() if A.getComm().getSize() > 1 else A
    indptr, indices, data = block.getValuesCSR()
    n = block.getSize()[0]
    return sp.csr_matrix((data, indices, indptr), shape=(n, block.getSize()[1]))


def coordinate_order(coordinates: np.ndarray, n_rows: int) -> np.ndarray | None:
    """Rows in lexicographic order of their node coordinates (last axis first), or ``None``.

    ``None`` when the coordinates do not match ``n_rows`` (``n_rows / bs``
    nodes).  Visiting the rows in this order makes :func:`aggregate` a
    function of the mesh, not of the dof numbering: a rank's interior gets
    the aggregates a serial run gets.
    """
    n_nodes = coordinates.shape[0]
    if n_nodes == 0 or n_rows % n_nodes:
        return None
    bs = n_rows // n_nodes
    nodes = np.lexsort(np.asarray(coordinates, dtype=np.float64).T)
    return (nodes[:, None] * bs + np.arange(bs)).ravel()


def aggregate(
    A_local: sp.csr_matrix, threshold: float = 0.0, order: np.ndarray | None = None
) -> tuple[np.ndarray, int]:
    """Greedy aggregation of the graph of ``A_local`` (Vaněk-Mandel-Brezina phases 1-3).

    Returns ``(agg, n_agg)``: the aggregate of each row, ``-1`` for rows with
    no off-diagonal entry at all (Dirichlet rows, which the smoother solves
    exactly enough and which get no coarse dof).  Rows are visited in
    ``order`` (default: their local numbering; :func:`coordinate_order` makes
    the result independent of the numbering).  Hand-written because PETSc's
    own aggregation (inside PCGAMG) is not exposed through petsc4py; it runs
    once per setup in O(nnz).
    """
    A = sp.csr_matrix(A_local)
    n = A.shape[0]
    C = A.tocoo()
    off = (C.row != C.col) & (C.data != 0)
    has_nbr = np.zeros(n, dtype=bool)
    has_nbr[C.row[off]] = True
    d = np.abs(A.diagonal())
    strong = off & (np.abs(C.data) > threshold * np.sqrt(d[C.row] * d[C.col]))
    # Strength |a_ij| / sqrt(a_ii a_jj) on the symmetrised strong graph.
    w = np.abs(C.data[strong]) / np.sqrt(d[C.row[strong]] * d[C.col[strong]])
    Gs = sp.csr_matrix((w, (C.row[strong], C.col[strong])), shape=(n, n))
    Gs = Gs.maximum(Gs.T).tocsr()
    Gs.sort_indices()
    ptr, idx, wts = Gs.indptr, Gs.indices, Gs.data
    agg = np.full(n, -2, dtype=np.int64)  # -2: not yet aggregated
    agg[~has_nbr] = -1
    visit = np.arange(n) if order is None else np.asarray(order, dtype=np.int64)
    if visit.shape != (n,):
        raise ValueError(f"order has {visit.size} entries for {n} rows")
    k = 0
    for i in visit:  # phase 1: a node and all its neighbours, if all are free
        if agg[i] != -2:
            continue
        nb = idx[ptr[i] : ptr[i + 1]]
        if np.all(agg[nb] == -2):
            agg[i] = k
            agg[nb] = k
            k += 1
    for i in visit[agg[visit] == -2]:  # phase 2: join the most strongly connected aggregate
        nb = idx[ptr[i] : ptr[i + 1]]
        a = agg[nb]
        ok = a >= 0
        if ok.any():
            # Ties (equal strengths) go to the oldest aggregate: no dependence on the
            # column numbering.
            a, wa = a[ok], wts[ptr[i] : ptr[i + 1]][ok]
            best = wa >= wa.max() * (1.0 - 1e-12)
            agg[i] = a[best].min()
    for i in visit[agg[visit] == -2]:  # phase 3: new aggregates from what is left
        if agg[i] != -2:
            continue
        nb = idx[ptr[i] : ptr[i + 1]]
        agg[i] = k
        agg[nb[agg[nb] == -2]] = k
        k += 1
    return agg, k


def pad_aggregates(
    S_local: np.ndarray, agg: np.ndarray, n_agg: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of ``S`` per aggregate, zero-padded: ``(S_pad (B, m, K), mask (B, m), rows (B, m))``.

    ``rows`` holds the local row of each entry, ``-1`` on padding.
    """
    members = np.flatnonzero(agg >= 0)
    a = agg[members]
    order = np.argsort(a, kind="stable")
    members, a = members[order], a[order]
    sizes = np.bincount(a, minlength=n_agg)
    m = int(sizes.max()) if n_agg else 1
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    pos = np.arange(members.size) - starts[a]
    rows = np.full((n_agg, m), -1, dtype=np.int64)
    rows[a, pos] = members
    mask = rows >= 0
    S_pad = np.zeros((n_agg, m, S_local.shape[1]), dtype=S_local.dtype)
    S_pad[mask] = S_local[rows[mask]]
    return S_pad, mask.astype(S_local.dtype), rows


def project_out_constant(S_pad: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Remove each aggregate's mean from its rows of ``S`` (padding stays zero)."""
    size = np.maximum(mask.sum(axis=1, keepdims=True), 1.0)
    mean = S_pad.sum(axis=1, keepdims=True) / size[..., None]
    return (S_pad - mean) * mask[..., None]


def prepend_constant(Q: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``[1_a / sqrt(m_a), Q_a]`` re-orthonormalised per aggregate (QR), padding zero.

    Smoothed aggregation's tentative prolongator (the constant on each
    aggregate) stays exactly in the coarse space and the learned (or local-SVD)
    columns complement it.
    """
    size = np.maximum(mask.sum(axis=1, keepdims=True), 1.0)
    ones = (mask / np.sqrt(size))[..., None]
    Q = Q - ones @ (ones.transpose(0, 2, 1) @ Q)
    Q, _ = np.linalg.qr(np.concatenate([ones, Q], axis=2))
    return Q * mask[..., None]


def local_svd_bases(S_pad: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Chow (2006): each aggregate's left singular vectors, ``(B, m, min(m, K))``."""
    U, _, _ = np.linalg.svd(S_pad * mask[..., None], full_matrices=False)
    return U * mask[..., None]


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


@contextlib.contextmanager
def default_options(prefix: str, defaults: dict[str, Any]) -> Iterator[None]:
    """Put ``defaults`` into the options database under ``prefix`` unless the user set them.

    Removed again on exit, so that only the user's options stay behind.
    """
    opts = PETSc.Options()
    added = []
    for key, value in defaults.items():
        if not opts.hasName(prefix + key):
            opts[prefix + key] = value
            added.append(prefix + key)
    try:
        yield
    finally:
        for key in added:
            opts.delValue(key)


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
    with default_options(prefix, defaults):
        mg.setFromOptions()
        mg.setUp()
    return mg


# ----------------------------------------------------------------------------- the PC
class NeuraLSP(NeuralPCBase):
    """NeuraLSP two-level preconditioner: learned coarse space, PETSc PCMG apply.

    Use::

        -ksp_type cg -pc_type python -pc_python_type petsc_neural.NeuraLSP
        -pc_neural_model model.pt -pc_neuralsp_rank 48

    Options ``-pc_neuralsp_``: ``basis`` (model|svd|local_svd), ``rank``,
    ``vectors``, ``sweeps``, ``omega``, ``smoother`` (jacobi|chebyshev),
    ``smooth_its``, ``smooth_p``, ``constant``, ``threshold``, ``seed``; see
    :mod:`petsc_neural.neuralsp`.  The inner PCMG has the prefix ``neuralsp_``.
    """

    method = "neuralsp"
    nonlinear = False

    def __init__(self) -> None:
        super().__init__()
        self.mg: PETSc.PC | None = None
        self.P: PETSc.Mat | None = None
        self.timings: dict[str, float] = {}
        self.coarse_size = 0
        self.variant = ""
        self.start_keyed_by = "global rows"

    # -- options ---------------------------------------------------------------------
    def method_option_table(self) -> list[tuple[str, Any, str]]:
        return [
            ("basis", "model", "where P comes from: model, svd or local_svd"),
            ("rank", 0, "coarse columns (global) or columns per aggregate (local); 0: default"),
            ("vectors", 0, "number K of smoothed vectors; 0: the model's"),
            ("sweeps", -1, "Jacobi sweeps s1 on the vectors; -1: the model's"),
            ("omega", 0.66, "Jacobi damping (vectors, smoother, prolongator smoothing)"),
            ("smoother", "jacobi", "PCMG level smoother: jacobi or chebyshev"),
            ("smooth_its", 5, "smoother sweeps before and after the coarse correction"),
            ("smooth_p", "auto", "smooth the prolongator: true, false or auto (local only)"),
            ("constant", "auto", "keep the constant on each aggregate (local; auto: the model's)"),
            ("threshold", 0.0, "strength-of-connection threshold of the aggregation"),
            ("seed", 0, "seed of the random start vectors"),
        ]

    def read_options(self, pc: PETSc.PC) -> dict[str, Any]:
        out = super().read_options(pc)
        prefix = (pc.getOptionsPrefix() or "") + "pc_neuralsp_"
        out.update(read_option_table(prefix, self.method_option_table()))
        if out["basis"] not in ("model", "svd", "local_svd"):
            raise NeuralPCError(
                f"-{prefix}basis must be model, svd or local_svd, got {out['basis']!r}"
            )
        if out["smoother"] not in ("jacobi", "chebyshev"):
            raise NeuralPCError(f"-{prefix}smoother must be jacobi or chebyshev")
        for name in ("smooth_p", "constant"):
            if str(out[name]).lower() not in ("auto", "true", "false", "1", "0"):
                raise NeuralPCError(f"-{prefix}{name} must be true, false or auto")
        if out["rank"] < 0 or out["vectors"] < 0:
            raise NeuralPCError(f"-{prefix}rank and -{prefix}vectors must be >= 0")
        return out

    def setFromOptions(self, pc: PETSc.PC) -> None:  # noqa: N802
        super().setFromOptions(pc)
        if PETSc.Options().hasName("help"):
            prefix = (pc.getOptionsPrefix() or "") + "pc_neuralsp_"
            lines = [f"NeuraLSP options ({prefix}):"]
            lines += [f"  -{prefix}{n} <{v}>: {t}" for n, v, t in self.method_option_table()]
            PETSc.Sys.Print("\n".join(lines), comm=pc.getComm())

    # -- setup -----------------------------------------------------------------------
    def load_model(self, path: str, device: torch.device) -> LoadedModel:
        """The model file, read once per process while it is unchanged (see ``_MODEL_CACHE``)."""
        st = os.stat(path)
        key = (os.path.abspath(path), st.st_mtime_ns, st.st_size, str(device))
        model = _MODEL_CACHE.get(key)
        if model is None:
            model = super().load_model(path, device)
            while len(_MODEL_CACHE) >= _MODEL_CACHE_SIZE:
                _MODEL_CACHE.pop(next(iter(_MODEL_CACHE)))
            _MODEL_CACHE[key] = model
        return model

    def initialize(self, pc: PETSc.PC) -> None:
        self.opts = self.read_options(pc)
        if self.opts["basis"] == "model":
            super().initialize(pc)  # loads and checks the model, then calls build()
            return
        self.model, self.op = None, None
        self.dtype, self.device = torch.float64, torch.device("cpu")
        self.build(pc)

    def update(self, pc: PETSc.PC) -> None:
        if self.model is None:
            self.initialize(pc)
        else:
            super().update(pc)

    def check_inputs(self, path: str, inputs: list[str]) -> None:
        variant = self.model.metadata.training.get("variant")
        expected = {"global": GLOBAL_INPUTS, "local": LOCAL_INPUTS}.get(variant)
        if expected is None:
            raise ModelFileError(
                f"model {path!r}: training.variant must be 'global' or 'local', got {variant!r}"
            )
        if inputs != expected:
            raise ModelFileError(
                f"model {path!r}: a {variant} NeuraLSP model takes {expected}, got {inputs}"
            )
        if not self.model.metadata.linear:
            raise ModelFileError(f"model {path!r}: NeuraLSP models are declared linear=true")

    def static_inputs(self) -> tuple[torch.Tensor, ...]:
        return ()

    def probe(self, path: str, n_local: int, rank: int) -> None:
        """Nothing to probe: the network already ran in :meth:`build` (errors raised there)."""

    def _settings(self, pc: PETSc.PC) -> dict[str, Any]:
        """Rank, K, s1 and variant from the options and, where not given, the model."""
        o = self.opts
        train = self.model.metadata.training if self.model is not None else {}
        basis = o["basis"]
        variant = train.get("variant") if basis == "model" else (
            "global" if basis == "svd" else "local")
        model_rank = int(train.get("rank", 0)) if basis == "model" else None
        rank = o["rank"] or model_rank or (48 if variant == "global" else 2)
        # A model trained with the constant kept learns the columns after it.
        extra = 1 if basis == "model" and train.get("constant", False) else 0
        if model_rank is not None and rank > model_rank + extra:
            raise NeuralPCError(
                f"-pc_neuralsp_rank {rank} exceeds the rank the model was trained to "
                f"({model_rank + extra})"
            )
        K = o["vectors"] or int(train.get("n_vectors", 72 if variant == "global" else 12))
        sweeps = o["sweeps"] if o["sweeps"] >= 0 else int(train.get("sweeps", 10))
        if basis == "model" and variant == "global" and K != int(train["n_vectors"]):
            raise ModelMismatchError(
                f"model {self.model.path!r} takes K = {train['n_vectors']} vectors, "
                f"-pc_neuralsp_vectors {K} was given"
            )
        c_opt = str(o["constant"]).lower()
        constant = (
            bool(train.get("constant", False)) if basis == "model" else variant == "local"
        ) if c_opt == "auto" else c_opt in ("true", "1")
        if variant == "global" and constant:
            raise NeuralPCError("-pc_neuralsp_constant applies to local bases only")
        if basis == "model" and constant != bool(train.get("constant", False)):
            raise ModelMismatchError(
                f"model {self.model.path!r} was trained with constant={train.get('constant')}, "
                f"-pc_neuralsp_constant {c_opt} was given"
            )
        sp_opt = str(o["smooth_p"]).lower()
        smooth_p = variant == "local" if sp_opt == "auto" else sp_opt in ("true", "1")
        return dict(
            variant=variant, rank=int(rank), K=int(K), sweeps=int(sweeps), smooth_p=smooth_p,
            constant=constant,
        )

    def build(self, pc: PETSc.PC) -> None:
        A, Pmat = pc.getOperators()
        comm = Pmat.getComm()
        s = self._settings(pc)
        self.settings = s
        self.variant = s["variant"]
        if self.variant == "global" and s["rank"] > s["K"] and self.opts["basis"] == "svd":
            raise NeuralPCError(f"rank {s['rank']} exceeds the number of vectors K = {s['K']}")
        t = {}
        t0 = time.perf_counter()
        coords = self.node_coordinates(pc, Pmat)
        self.start_keyed_by = "global rows" if coords is None else "node coordinates"
        with log_event("NeuraLSPVectors"):
            S = smoothed_vectors(Pmat, s["K"], s["sweeps"], self.opts["omega"], self.opts["seed"],
                                 coordinates=coords)
        t1 = time.perf_counter()
        t["vectors"] = t1 - t0
        with log_event("NeuraLSPInfer"):
            if self.variant == "global":
                U = self._global_basis(S, s["rank"], comm)
                t2 = time.perf_counter()
                T = dense_prolongator(U, comm)
            else:
                A_local = local_block_csr(Pmat)
                order = None if coords is None else coordinate_order(coords, A_local.shape[0])
                agg, n_agg = aggregate(A_local, self.opts["threshold"], order)
                S_pad, mask, rows = pad_aggregates(S, agg, n_agg)
                if s["constant"]:
                    S_pad = project_out_constant(S_pad, mask)
                Q = self._local_bases(S_pad, mask)
                if s["constant"]:
                    Q = prepend_constant(Q, mask)
                t2 = time.perf_counter()
                T = block_prolongator(Q, mask, rows, s["rank"], S.shape[0], comm)
        t["inference"] = t2 - t1
        with log_event("NeuraLSPProlongator"):
            if s["smooth_p"]:
                P = smooth_prolongator(Pmat, T, self.opts["omega"])
                T.destroy()
            else:
                P = T
        t3 = time.perf_counter()
        t["prolongator"] = t3 - t2
        if self.mg is not None:
            self.mg.destroy()
        if self.P is not None:
            self.P.destroy()
        self.P = P
        self.coarse_size = P.getSize()[1]
        self.mg = two_level_mg(
            A, Pmat, P, (pc.getOptionsPrefix() or "") + "neuralsp_",
            smoother=self.opts["smoother"], smooth_its=self.opts["smooth_its"],
            omega=self.opts["omega"],
        )
        t["mg_setup"] = time.perf_counter() - t3
        self.timings = t
        logger.debug("NeuraLSP setup: %s", t)

    def _run(self, *args: torch.Tensor) -> torch.Tensor:
        return self.call_model(*args)

    def _global_basis(self, S: np.ndarray, rank: int, comm: PETSc.Comm) -> np.ndarray:
        if self.opts["basis"] == "svd":
            return svd_basis(S, rank, comm)
        if comm.getSize() > 1:
            raise NeuralPCError(
                "a global (paper) NeuraLSP model flattens all of S and runs on one process; "
                "on several ranks use a local model (variant 'local') or -pc_neuralsp_basis svd"
            )
        x = torch.from_numpy(S).to(device=self.device, dtype=self.dtype)
        Q = self._run(x)
        if tuple(Q.shape) != (S.shape[0], int(self.model.metadata.training["rank"])):
            raise ModelMismatchError(
                f"model {self.model.path!r} returned shape {tuple(Q.shape)} "
                f"for S of shape {S.shape}"
            )
        return Q[:, :rank].to(torch.float64).cpu().numpy()

    def _local_bases(self, S_pad: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self.opts["basis"] == "local_svd" or S_pad.shape[0] == 0:
            return local_svd_bases(S_pad, mask)
        x = torch.from_numpy(S_pad).to(device=self.device, dtype=self.dtype)
        m = torch.from_numpy(mask).to(device=self.device, dtype=self.dtype)
        Q = self._run(x, m)
        if Q.dim() != 3 or Q.shape[0] != S_pad.shape[0] or Q.shape[1] != S_pad.shape[1]:
            raise ModelMismatchError(
                f"model {self.model.path!r} returned shape {tuple(Q.shape)} for aggregates "
                f"of shape {S_pad.shape}"
            )
        return Q.to(torch.float64).cpu().numpy()

    # -- apply: PETSc's V-cycle ----------------------------------------------------------
    def apply(self, pc: PETSc.PC, x: PETSc.Vec, y: PETSc.Vec) -> None:
        with log_event("PCNeuralApply"):
            self._applies += 1
            self.mg.apply(x, y)

    def applyTranspose(self, pc: PETSc.PC, x: PETSc.Vec, y: PETSc.Vec) -> None:  # noqa: N802
        self.mg.applyTranspose(x, y)

    def reset(self, pc: PETSc.PC) -> None:
        super().reset(pc)
        if self.mg is not None:
            self.mg.destroy()
            self.mg = None
        if self.P is not None:
            self.P.destroy()
            self.P = None

    # -- view ------------------------------------------------------------------------
    def view_details(self, pc: PETSc.PC) -> list[str]:
        if self.mg is None:
            return ["(not set up)"]
        lines = super().view_details(pc) if self.model is not None else []
        s = self.settings
        lines.append(
            f"NeuraLSP basis {self.opts['basis']} ({s['variant']}): rank {s['rank']}, "
            f"K = {s['K']} vectors, s1 = {s['sweeps']} Jacobi sweeps (omega "
            f"{self.opts['omega']}), smoothed P: {s['smooth_p']}, coarse size {self.coarse_size}"
        )
        lines.append(f"random start vectors keyed by {self.start_keyed_by} (seed "
                     f"{self.opts['seed']})")
        lines.append("setup seconds: " + ", ".join(f"{k} {v:.4f}" for k, v in self.timings.items()))
        lines.append("inner two-level PCMG:")
        return lines

    def view_inner(self, pc: PETSc.PC, viewer: PETSc.Viewer) -> None:
        if self.mg is not None:
            self.mg.view(viewer)
