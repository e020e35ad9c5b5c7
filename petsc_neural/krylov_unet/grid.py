"""The tensor grid of the 3D P1 nodes, the 3D/1D split and the network's static fields.

Pure numpy/scipy (no PETSc, no torch): used by the preconditioner at setup and
by the data generation, so both build exactly the same inputs.

The ``mixed_3d1d`` family's tissue mesh is a uniform tetrahedral cube mesh:
its P1 nodes are the points of a ``G x G x G`` lattice (``G = size + 1``).
:func:`lattice_order` finds, once, the row of every lattice point from the
node coordinates; the network works on the lattice in lexicographic order
(``x`` fastest).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["lattice_order", "geometry_field", "dirichlet_faces", "check_dirichlet_faces",
           "FIELD_3D_KEY"]

#: Name under which a coupled operator carries the index set of its 3D rows
#: (``PetscObjectCompose``; ``firedrake_problems``' ``mixed_3d1d`` composes it).
FIELD_3D_KEY = "petsc_neural_field_3d"


def lattice_order(coords: np.ndarray, tol: float = 1e-6) -> tuple[np.ndarray, int]:
    """``(order, G)``: ``order[k]`` is the row of lattice point ``k`` (x fastest).

    ``coords`` ``(n, 3)`` must be exactly the ``G^3`` points of a uniform lattice
    (any box, any order): a clear ``ValueError`` says what is wrong otherwise.
    ``tol`` is relative to the lattice spacing.
    """
    coords = np.asarray(coords, dtype=float)
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise ValueError(f"3D node coordinates must be (n, 3), got shape {coords.shape}")
    n = coords.shape[0]
    G = int(round(n ** (1.0 / 3.0)))
    if G**3 != n or G < 3:
        raise ValueError(f"{n} 3D nodes are not the G^3 nodes of a uniform cube grid (G >= 3)")
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    h = (hi - lo) / (G - 1)
    if np.any(h <= 0):
        raise ValueError("the 3D nodes are flat in some direction")
    t = (coords - lo) / h
    idx = np.rint(t)
    off = float(np.abs(t - idx).max())
    if off > tol:
        raise ValueError(f"the 3D nodes are not on a uniform {G}^3 lattice "
                         f"(a node is {off:.2g} spacings off it)")
    idx = idx.astype(np.int64)
    key = idx[:, 0] + G * (idx[:, 1] + G * idx[:, 2])
    order = np.full(n, -1, dtype=np.int64)
    order[key] = np.arange(n)
    if np.any(order < 0):
        raise ValueError(f"the 3D nodes do not cover the {G}^3 lattice (repeated points)")
    return order, G


def dirichlet_faces(G: int) -> np.ndarray:
    """Boolean mask (lexicographic, ``G^3``) of the grid's faces."""
    face = np.zeros((G, G, G), dtype=bool)
    face[0], face[-1], face[:, 0], face[:, -1], face[:, :, 0], face[:, :, -1] = (True,) * 6
    return face.ravel()


def check_dirichlet_faces(A33: sp.csr_matrix, G: int) -> str | None:
    """``None`` if every face row of ``A33`` (grid order) is a decoupled diagonal row.

    The network solves the faces exactly as ``r / diag`` (Firedrake's Dirichlet
    rows: unit diagonal, row and column eliminated); anything else is reported.
    """
    A = sp.csr_matrix(A33)
    A.eliminate_zeros()
    face = dirichlet_faces(G)
    rows = np.nonzero(face)[0]
    counts = np.diff(A.indptr)[rows]
    d = A.diagonal()[rows]
    if np.any(counts != 1) or np.any(d == 0):
        bad = int(np.sum((counts != 1) | (d == 0)))
        return (f"{bad} of the {len(rows)} boundary nodes of the {G}^3 grid are not "
                "Dirichlet rows (a lone nonzero diagonal)")
    cols = A.T.tocsr()
    ccount = np.diff(cols.indptr)[rows]
    if np.any(ccount != 1):
        return "some boundary columns of the 3D block are not eliminated"
    return None


def geometry_field(A33: sp.spmatrix, G: int) -> np.ndarray:
    """The discrete vessel-geometry field: row sums of the 3D block ``A_33`` (grid order).

    On interior nodes the P1 stiffness rows sum to zero, so what is left is
    the coupling ``2 pi R beta (Pi^T M 1)_i``: how much vessel couples to node
    ``i``.  On the faces and on the layer next to them the eliminated
    Dirichlet columns make the stiffness rows sum to O(h) (30-300 times the
    coupling); that fixed pattern says nothing about the vessels, so the field
    is zero there (``mixed_3d1d`` keeps its trees in [0.1, 0.9]^3, more than
    one cell away from the boundary for 16 or more cells per edge).
    """
    g = np.asarray(A33 @ np.ones(A33.shape[1])).ravel().reshape(G, G, G)
    out = np.zeros_like(g)
    out[2:-2, 2:-2, 2:-2] = g[2:-2, 2:-2, 2:-2]
    return out.ravel()
