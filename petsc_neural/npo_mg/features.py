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
           "scaled_operator"]

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
    node: np.ndarray  # (n, N_NODE)
    edge: np.ndarray  # (n, K, N_EDGE)
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
) -> tuple[sp.csr_matrix, Candidates]:
    """The strength graph of ``A`` (scipy CSR), its roots and every row's candidate tokens.

    ``coordinates``: ``(n, dim)`` node coordinates of the rows, or ``None``;
    they (else the global rows ``rstart ..``) key the root priorities, so the
    roots do not depend on the numbering.  ``distance``: 2 for an aggressive
    first coarsening (smoothed aggregation's aggregates), 1 below.
    """
    A = sp.csr_matrix(A)
    n = A.shape[0]
    G = strength_graph(A, threshold)
    if coordinates is not None and coordinates.shape[0] == n:
        keys = node_keys(coordinates, 1, seed)
    else:
        keys = row_keys(rstart, n, seed)
    root = mis2_roots(G, hashed_priority(keys), has_neighbours(A), distance)
    return G, candidate_tokens(G, root, max_candidates)


def level_graph(
    A: sp.csr_matrix,
    coordinates: np.ndarray | None,
    G: sp.csr_matrix,
    c: Candidates,
    *,
    max_neighbours: int = 24,
) -> LevelGraph:
    """The network's view of one level: features of ``A``'s rows and of their candidates."""
    n = A.shape[0]
    if coordinates is not None and coordinates.shape[0] != n:
        coordinates = None
    tokens = token_graph(c, max_neighbours)
    Ahat = scaled_operator(A)
    K = c.index.shape[1]
    mask = c.mask

    # Node features, from the CSR arrays of Â.
    rows = np.repeat(np.arange(n), np.diff(Ahat.indptr))
    off = Ahat.indices != rows
    absval = np.where(off, np.abs(Ahat.data), 0.0)
    absoff = np.bincount(rows, weights=absval, minlength=n)
    rowsum = np.bincount(rows, weights=Ahat.data, minlength=n)
    maxoff = np.zeros(n)
    nonempty = np.diff(Ahat.indptr) > 0
    if absval.size:
        maxoff[nonempty] = np.maximum.reduceat(absval, Ahat.indptr[:-1][nonempty])
    degree = np.diff(G.indptr)
    has_x = 0.0 if coordinates is None else 1.0
    node = np.stack([
        absoff, rowsum, maxoff, np.log1p(degree) / 3.0, np.isin(np.arange(n), c.roots),
        mask.sum(axis=1) / K, np.where(mask[:, 0], c.strength[:, 0], 0.0),
        np.full(n, has_x),
    ], axis=1).astype(np.float64)

    # Edge features.
    edge = np.zeros((n, K, N_EDGE))
    for h in range(3):
        edge[..., h] = (c.hop == h) & mask
    edge[..., 3] = np.where(c.hop == 1, c.strength, 0.0)
    edge[..., 4] = np.where(c.hop == 2, c.strength, 0.0)
    smax = np.max(np.where(mask, c.strength, 0.0), axis=1, keepdims=True)
    edge[..., 5] = np.where(mask, c.strength / np.where(smax > 0, smax, 1.0), 0.0)
    if coordinates is not None and c.n_tokens:
        X = np.asarray(coordinates, dtype=np.float64)
        hlen = _edge_lengths(G, X)
        rel = (X[:, None, :] - X[c.roots[np.where(mask, c.index, 0)]]) / hlen[:, None, None]
        rel = np.where(mask[..., None], rel, 0.0)
        dim = min(X.shape[1], 3)
        edge[..., 6 : 6 + dim] = rel[..., :dim]
        edge[..., 9] = np.sqrt((rel**2).sum(axis=-1))
        edge[..., 10] = mask
    return LevelGraph(candidates=c, tokens=tokens, node=node, edge=edge, Ahat=Ahat)
