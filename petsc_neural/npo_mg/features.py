"""What the NPO-MG network sees at one level: operator features, candidate tokens, coordinates.

Pure numpy/scipy (no PETSc, no torch), shared by the PC and the trainer, so
a model sees at setup exactly what it saw in training.  Everything is
invariant to the operator's scale (the operator is read as ``Â = D^-1/2 A
D^-1/2``) and to the mesh size (coordinates enter only as offsets to the
candidate root divided by the row's own edge length), so a model trained on
32x32 meshes reads a 512x512 mesh, or a Galerkin coarse operator, the same way.

``FEATURES`` names the layout; a model file records it, and the PC refuses
a model trained on another layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..coarse.aggregation import has_neighbours, strength_graph
from ..coarse.roots import Candidates, candidate_tokens, hashed_priority, mis2_roots, token_graph
from ..coarse.smoothed import node_keys, row_keys

__all__ = ["FEATURES", "N_NODE", "N_EDGE", "LevelGraph", "coarsen", "level_graph",
           "scaled_operator", "row_statistics", "csr_row_statistics"]

#: Version of the feature layout below (stored in model files).
FEATURES = "npo_mg-features/1"
NODE_FEATURES = ("abs_offdiag_sum", "row_sum", "max_offdiag", "log_degree", "is_root",
                 "n_candidates", "nearest_strength", "has_coordinates")
EDGE_FEATURES = ("hop0", "hop1", "hop2", "strength1", "strength2", "relative_strength",
                 "dx", "dy", "dz", "distance", "has_coordinates")
N_NODE = len(NODE_FEATURES)
N_EDGE = len(EDGE_FEATURES)


@dataclass
class LevelGraph:
    """One level's graph data: candidates, token graph, features, the scaled operator."""

    candidates: Candidates
    tokens: np.ndarray  # (n_tokens, Kc) token graph, -1 padding
    node: np.ndarray  # (n, N_NODE), float32
    edge: np.ndarray  # (n, K, N_EDGE), float32
    Ahat: sp.csr_matrix  # D^-1/2 A D^-1/2 of the local block

    @property
    def n_tokens(self) -> int:
        return self.candidates.n_tokens


def scaled_operator(A: sp.csr_matrix) -> sp.csr_matrix:
    """``D^-1/2 A D^-1/2`` (rows with a non-positive diagonal are left unscaled)."""
    A = sp.csr_matrix(A)
    d = A.diagonal()
    s = 1.0 / np.sqrt(np.where(d > 0, d, 1.0))
    rows = np.repeat(np.arange(A.shape[0]), np.diff(A.indptr))
    out = sp.csr_matrix((A.data * s[rows] * s[A.indices], A.indices.copy(), A.indptr.copy()),
                        shape=A.shape)
    out.sort_indices()
    return out


def csr_row_statistics(
    indptr: np.ndarray, values: np.ndarray, is_diag: np.ndarray, d_row: np.ndarray,
    d_col: np.ndarray, threshold: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row of ``Â = D^-1/2 A D^-1/2``: sum of off-diagonal ``|â|``, sum of ``â``, largest
    off-diagonal ``|â|``, number of off-diagonal ``|â| > threshold``.

    CSR rows given by ``indptr`` and ``values``; ``is_diag`` marks diagonal
    entries; ``d_row`` is the diagonal of each row, ``d_col`` that of each
    entry's column (non-positive diagonals count as 1).
    """
    n = len(indptr) - 1
    rows = np.repeat(np.arange(n), np.diff(indptr))
    dr = np.where(d_row > 0, d_row, 1.0)
    dc = np.where(d_col > 0, d_col, 1.0)
    ahat = values / np.sqrt(dr[rows] * dc)
    absval = np.where(is_diag, 0.0, np.abs(ahat))
    absoff = np.bincount(rows, weights=absval, minlength=n)
    rowsum = np.bincount(rows, weights=ahat, minlength=n)
    degree = np.bincount(rows, weights=absval > threshold, minlength=n)
    maxoff = np.zeros(n)
    nonempty = np.diff(indptr) > 0
    if absval.size:
        maxoff[nonempty] = np.maximum.reduceat(absval, indptr[:-1][nonempty])
    return absoff, rowsum, maxoff, degree


def row_statistics(A: sp.csr_matrix, threshold: float = 0.0) -> tuple[np.ndarray, ...]:
    """:func:`csr_row_statistics` of a whole (serial) matrix."""
    A = sp.csr_matrix(A)
    d = A.diagonal()
    rows = np.repeat(np.arange(A.shape[0]), np.diff(A.indptr))
    return csr_row_statistics(A.indptr, A.data, A.indices == rows, d, d[A.indices], threshold)


def _edge_lengths(G: sp.csr_matrix, X: np.ndarray) -> np.ndarray:
    """RMS length of each row's graph edges (1 where it has none)."""
    n = G.shape[0]
    rows = np.repeat(np.arange(n), np.diff(G.indptr))
    d2 = ((X[rows] - X[G.indices]) ** 2).sum(axis=1)
    cnt = np.diff(G.indptr)
    h = np.sqrt(np.bincount(rows, weights=d2, minlength=n) / np.maximum(cnt, 1))
    return np.where((cnt > 0) & (h > 0), h, 1.0)


def coarsen(
    A: sp.csr_matrix,
    coordinates: np.ndarray | None,
    *,
    distance: int = 2,
    threshold: float = 0.0,
    max_candidates: int = 8,
    seed: int = 0,
    rstart: int = 0,
    demote: np.ndarray | None = None,
) -> tuple[sp.csr_matrix, Candidates]:
    """The strength graph of ``A`` (scipy CSR), its roots and every row's candidate tokens.

    ``coordinates``: ``(n, dim)`` node coordinates of the rows, or ``None``;
    they (else the global rows ``rstart ..``) key the root priorities, so the
    roots do not depend on the numbering.  ``distance``: 2 for an aggressive
    first coarsening (smoothed aggregation's aggregates), 1 below.
    ``demote``: rows that become roots only where no other row can (under MPI:
    rows coupled to other ranks, so that no two roots face each other across
    a rank interface).
    """
    A = sp.csr_matrix(A)
    n = A.shape[0]
    G = strength_graph(A, threshold)
    if coordinates is not None and coordinates.shape[0] == n:
        keys = node_keys(coordinates, 1, seed)
    else:
        keys = row_keys(rstart, n, seed)
    priority = hashed_priority(keys)
    if demote is not None and demote.any():
        priority = np.where(demote, priority, priority + n)
    root = mis2_roots(G, priority, has_neighbours(A), distance)
    return G, candidate_tokens(G, root, max_candidates)


def level_graph(
    A: sp.csr_matrix,
    coordinates: np.ndarray | None,
    G: sp.csr_matrix,
    c: Candidates,
    *,
    max_neighbours: int = 24,
    threshold: float = 0.0,
    stats: tuple[np.ndarray, ...] | None = None,
) -> LevelGraph:
    """The network's view of one level: features of ``A``'s rows and of their candidates.

    ``stats``: the rows' :func:`csr_row_statistics` when ``A`` is only the
    diagonal block of a distributed matrix (else computed from ``A``).
    """
    n = A.shape[0]
    if coordinates is not None and coordinates.shape[0] != n:
        coordinates = None
    tokens = token_graph(c, max_neighbours)
    Ahat = scaled_operator(A)
    K = c.index.shape[1]
    mask = c.mask

    # Node features: whole-row statistics of Â (under MPI the PC passes them,
    # computed from the rank's whole rows, not only its diagonal block).
    if stats is None:
        stats = row_statistics(A, threshold)
    absoff, rowsum, maxoff, degree = stats
    has_x = 0.0 if coordinates is None else 1.0
    is_root = np.zeros(n, dtype=bool)
    is_root[c.roots] = True
    node = np.stack([
        absoff, rowsum, maxoff, np.log1p(degree) / 3.0, is_root,
        mask.sum(axis=1) / K, np.where(mask[:, 0], c.strength[:, 0], 0.0),
        np.full(n, has_x),
    ], axis=1).astype(np.float32)

    # Edge features, one (n, K) array each, stacked once.
    f = np.float32
    strength = np.where(mask, c.strength, 0.0)
    smax = strength.max(axis=1, keepdims=True)
    cols = [(c.hop == h) & mask for h in range(3)]
    cols += [np.where(c.hop == 1, strength, 0.0), np.where(c.hop == 2, strength, 0.0),
             strength / np.where(smax > 0, smax, 1.0)]
    zero = np.zeros((n, K), dtype=f)
    if coordinates is not None and c.n_tokens:
        X = np.asarray(coordinates, dtype=np.float64)
        hlen = _edge_lengths(G, X)
        rel = (X[:, None, :] - X[c.roots[np.where(mask, c.index, 0)]]) / hlen[:, None, None]
        rel = np.where(mask[..., None], rel, 0.0)
        dxyz = [rel[..., d] if d < rel.shape[-1] else zero for d in range(3)]
        cols += dxyz + [np.sqrt((rel**2).sum(axis=-1)), mask]
    else:
        cols += [zero] * 5
    edge = np.stack([np.asarray(col, dtype=f) for col in cols], axis=-1)
    return LevelGraph(candidates=c, tokens=tokens, node=node, edge=edge, Ahat=Ahat)
