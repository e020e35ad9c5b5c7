"""Aggregation of a matrix graph, and per-aggregate bases (smoothed aggregation's stages).

One function per stage, as in PyAMG's ``pyamg/aggregation``: the visit order
(:func:`coordinate_order`), the aggregates (:func:`aggregate`), the rows of a
block of vectors per aggregate (:func:`pad_aggregates`), and local bases
(:func:`local_svd_bases`, :func:`project_out_constant`, :func:`prepend_constant`).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["strength_graph", "has_neighbours", "coordinate_order", "aggregate",
           "pad_aggregates", "project_out_constant", "prepend_constant", "local_svd_bases",
           "MAX_AGGREGATE"]

def strength_graph(A_local: sp.csr_matrix, threshold: float = 0.0) -> sp.csr_matrix:
    """Symmetric strength graph: ``|a_ij| / sqrt(|a_ii a_jj|)`` where that is ``> threshold``.

    Off-diagonal entries only, symmetrised by the maximum, sorted indices.

    >>> import scipy.sparse as sp
    >>> A = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(3, 3)).tocsr()
    >>> strength_graph(A).toarray()
    array([[0. , 0.5, 0. ],
           [0.5, 0. , 0.5],
           [0. , 0.5, 0. ]])
    """
    A = sp.csr_matrix(A_local)
    n = A.shape[0]
    C = A.tocoo()
    off = (C.row != C.col) & (C.data != 0)
    d = np.abs(A.diagonal())
    d = np.where(d > 0, d, 1.0)
    w = np.abs(C.data) / np.sqrt(d[C.row] * d[C.col])
    strong = off & (w > threshold)
    Gs = sp.csr_matrix((w[strong], (C.row[strong], C.col[strong])), shape=(n, n))
    Gs = Gs.maximum(Gs.T).tocsr()
    Gs.sort_indices()
    return Gs


def has_neighbours(A_local: sp.csr_matrix) -> np.ndarray:
    """Rows with a nonzero off-diagonal entry (Dirichlet rows have none)."""
    C = sp.coo_matrix(A_local)
    off = (C.row != C.col) & (C.data != 0)
    out = np.zeros(A_local.shape[0], dtype=bool)
    out[C.row[off]] = True
    return out


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


MAX_AGGREGATE = 64


def aggregate(
    A_local: sp.csr_matrix,
    threshold: float = 0.0,
    order: np.ndarray | None = None,
    max_size: int = MAX_AGGREGATE,
) -> tuple[np.ndarray, int]:
    """Greedy aggregation of the graph of ``A_local`` (Vaněk-Mandel-Brezina phases 1-3).

    Returns ``(agg, n_agg)``: the aggregate of each row, ``-1`` for rows with
    no off-diagonal entry at all (Dirichlet rows, which the smoother solves
    exactly enough and which get no coarse dof).  Rows are visited in
    ``order`` (default: their local numbering; :func:`coordinate_order` makes
    the result independent of the numbering).

    Phase 1 takes a node with all its neighbours when all are free; phase 2
    attaches each left-over node to the most strongly connected *phase-1*
    aggregate (a snapshot: a node never joins through another left-over node,
    which on 3D meshes chained thousands of nodes into one aggregate); phase
    3 makes new aggregates of what is left.  No aggregate grows beyond
    ``max_size`` rows (phase 2 tries the next strongest aggregate, then
    leaves the node to phase 3).  Hand-written because PETSc's own
    aggregation (inside PCGAMG) is not exposed through petsc4py; O(nnz).

    >>> import scipy.sparse as sp
    >>> A = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(7, 7)).tocsr()
    >>> aggregate(A)
    (array([0, 0, 1, 1, 1, 2, 2]), 3)
    """
    if max_size < 2:
        raise ValueError(f"max_size must be >= 2, got {max_size}")
    Gs = strength_graph(A_local, threshold)
    n = Gs.shape[0]
    has_nbr = has_neighbours(A_local)
    ptr, idx, wts = Gs.indptr, Gs.indices, Gs.data
    agg = np.full(n, -2, dtype=np.int64)  # -2: not yet aggregated
    agg[~has_nbr] = -1
    visit = np.arange(n) if order is None else np.asarray(order, dtype=np.int64)
    if visit.shape != (n,):
        raise ValueError(f"order has {visit.size} entries for {n} rows")
    sizes: list[int] = []
    for i in visit:  # phase 1: a node and all its neighbours, if all are free
        if agg[i] != -2:
            continue
        nb = idx[ptr[i] : ptr[i + 1]]
        if np.all(agg[nb] == -2) and nb.size + 1 <= max_size:
            agg[i] = len(sizes)
            agg[nb] = len(sizes)
            sizes.append(nb.size + 1)
    phase1 = agg.copy()
    for i in visit[agg[visit] == -2]:  # phase 2: join the most strongly connected aggregate
        nb = idx[ptr[i] : ptr[i + 1]]
        a = phase1[nb]
        ok = a >= 0
        if not ok.any():
            continue
        a, wa = a[ok], wts[ptr[i] : ptr[i + 1]][ok]
        # Strongest first; ties go to the oldest aggregate (no dependence on the
        # column numbering).
        for j in np.lexsort((a, -wa)):
            if sizes[a[j]] < max_size:
                agg[i] = a[j]
                sizes[a[j]] += 1
                break
    for i in visit[agg[visit] == -2]:  # phase 3: new aggregates from what is left
        if agg[i] != -2:
            continue
        nb = idx[ptr[i] : ptr[i + 1]]
        free = nb[agg[nb] == -2][: max_size - 1]
        agg[i] = len(sizes)
        agg[free] = len(sizes)
        sizes.append(free.size + 1)
    return agg, len(sizes)


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
