"""Root nodes and candidate tokens: the graph part of an attention-weighted prolongator.

Stages (one function each, as in PyAMG's ``pyamg/aggregation``):

1. :func:`mis2_roots`: a distance-2 maximal independent set of the strength
   graph (:func:`~petsc_neural.coarse.aggregation.strength_graph`), Luby's
   algorithm with hashed priorities, vectorised (numpy ``maximum.reduceat``
   over CSR rows: O(nnz) per round, a few rounds).  Roots are the coarse
   dofs ("tokens"); no two are closer than three edges, so each has a ball
   of radius one to itself, as smoothed aggregation's aggregates do.
2. :func:`candidate_tokens`: every row's roots within two edges, as padded
   ``(n, K)`` arrays with the hop count and the path strength: the set a
   row's attention weights range over (a root's only candidate is itself).
3. :func:`token_graph`: tokens that share a row among their candidates,
   padded ``(n_tokens, Kc)``: the neighbourhood of the coarse attention.
4. :func:`nearest_weights`: the one-hot weights of the nearest candidate
   (fewest hops, then strongest path): plain aggregation around the roots,
   the no-network baseline.

Hand-written because PETSc's MIS coarsening (``MatCoarsen``, inside
PCGAMG) is not exposed through petsc4py.  All of it is rank-local: under
MPI each rank works on its diagonal block, as PCGAMG's local aggregation does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

__all__ = ["Candidates", "hashed_priority", "mis2_roots", "candidate_tokens", "token_graph",
           "nearest_weights"]


def hashed_priority(keys: np.ndarray) -> np.ndarray:
    """Distinct int64 priorities ordered by ``keys`` (ties by position)."""
    order = np.lexsort((np.arange(keys.size), keys))
    prio = np.empty(keys.size, dtype=np.int64)
    prio[order] = np.arange(keys.size, dtype=np.int64)
    return prio


def _row_max(indptr: np.ndarray, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per row of a CSR pattern with no empty row: the maximum of ``values`` over its columns."""
    return np.maximum.reduceat(values[indices], indptr[:-1])


def mis2_roots(
    G: sp.csr_matrix, priority: np.ndarray, eligible: np.ndarray, distance: int = 2
) -> np.ndarray:
    """Distance-``distance`` maximal independent set of ``G`` among ``eligible`` rows.

    A row becomes a root when its priority is the largest among the
    undecided rows within ``distance`` edges (1 or 2); the rows within
    ``distance`` edges of a new root are then decided.  Every eligible row
    ends within ``distance`` edges of a root.

    >>> import scipy.sparse as sp
    >>> G = sp.diags([1.0, 1.0], [-1, 1], shape=(7, 7)).tocsr()
    >>> mis2_roots(G, np.array([6, 0, 1, 2, 3, 4, 5]), np.ones(7, bool)).nonzero()[0]
    array([0, 3, 6])
    """
    if distance not in (1, 2):
        raise ValueError(f"distance must be 1 or 2, got {distance}")
    n = G.shape[0]
    B = (sp.csr_matrix(G, copy=True) + sp.identity(n, format="csr")).tocsr()
    B.data[:] = 1.0
    indptr, indices = B.indptr, B.indices
    undecided = np.asarray(eligible, dtype=bool).copy()
    root = np.zeros(n, dtype=bool)
    prio = np.asarray(priority, dtype=np.int64)
    while undecided.any():
        p = np.where(undecided, prio, -1)
        m = p
        for _ in range(distance):
            m = _row_max(indptr, indices, m)
        new = undecided & (p == m)
        root |= new
        covered = new.astype(np.float64)
        for _ in range(distance):
            covered = B @ covered
        undecided &= ~(covered > 0)
    return root


@dataclass
class Candidates:
    """Each row's candidate tokens, padded to ``K`` columns (``index -1``: padding).

    ``index``: token of each slot (the token of a root is its position in
    ``roots``); ``hop``: 0 (the root itself), 1 or 2 edges; ``strength``:
    ``|â_ij|`` for one hop, the sum over two-edge paths of the products for
    two; ``roots``: the rows that are tokens, in token order.
    """

    index: np.ndarray
    hop: np.ndarray
    strength: np.ndarray
    roots: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        return self.index >= 0

    @property
    def n_tokens(self) -> int:
        return int(self.roots.size)


def candidate_tokens(G: sp.csr_matrix, root: np.ndarray, max_candidates: int = 8) -> Candidates:
    """The roots within two edges of every row, nearest first (fewest hops, strongest path).

    At most ``max_candidates`` per row; rows with none (no neighbours) get
    only padding.
    """
    n = G.shape[0]
    roots = np.flatnonzero(root)
    nc = roots.size
    G = sp.csr_matrix(G)
    H = G[:, roots]
    # One product for both kinds: the imaginary part holds the one-hop strength,
    # the real part the two-hop path strength (no set operations on index pairs).
    M = (G @ H + 1j * H).tocoo()
    keep = ~root[M.row]
    r0, c0 = M.row[keep].astype(np.int64), M.col[keep].astype(np.int64)
    s1, s2 = M.data.imag[keep], M.data.real[keep]
    one = s1 != 0
    s01 = np.where(one, s1, s2)
    rows = np.concatenate([roots.astype(np.int64), r0])
    cols = np.concatenate([np.arange(nc, dtype=np.int64), c0])
    hop = np.concatenate([np.zeros(nc, np.int64), np.where(one, 1, 2)])
    strength = np.concatenate([np.ones(nc), s01])
    order = np.lexsort((cols, -strength, hop, rows))
    index, hops, strg = _padded_rows(rows[order], n, max_candidates, (cols[order], -1),
                                     (hop[order], 0), (strength[order], 0.0))
    return Candidates(index=index, hop=hops, strength=strg, roots=roots)


def _padded_rows(rows: np.ndarray, n: int, width: int,
                 *columns: tuple[np.ndarray, float]) -> list[np.ndarray]:
    """Entries sorted by row (in the order wanted within a row) as ``(n, K)`` arrays.

    At most ``width`` entries per row are kept; ``columns`` are ``(values,
    padding)`` pairs, one array out per pair.
    """
    counts = np.bincount(rows, minlength=n)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.arange(rows.size) - start[rows]
    keep = slot < width
    K = int(min(width, counts.max() if n and rows.size else 1)) or 1
    out = []
    for values, pad in columns:
        a = np.full((n, K), pad, dtype=values.dtype)
        a[rows[keep], slot[keep]] = values[keep]
        out.append(a)
    return out


def token_graph(c: Candidates, max_neighbours: int = 24) -> np.ndarray:
    """``(n_tokens, Kc)`` tokens sharing a row among their candidates (itself first; -1 pads).

    Neighbours are ordered by the number of rows they share, most first.
    """
    nc = c.n_tokens
    r, s = np.nonzero(c.mask)
    T = sp.csr_matrix((np.ones(r.size), (r, c.index[r, s])), shape=(c.index.shape[0], nc))
    C = (T.T @ T).tocoo()
    # itself first (largest key), then by shared rows
    weight = C.data + np.where(C.row == C.col, np.inf, 0.0)
    order = np.lexsort((C.col, -weight, C.row))
    return _padded_rows(C.row[order], nc, max_neighbours,
                        (C.col[order].astype(np.int64), -1))[0]


def nearest_weights(c: Candidates) -> np.ndarray:
    """One-hot ``(n, K)`` weights of each row's first (nearest) candidate; zero rows stay zero."""
    w = np.zeros(c.index.shape, dtype=np.float64)
    w[:, 0] = c.index[:, 0] >= 0
    return w
