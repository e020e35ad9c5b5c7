"""The Dirichlet condition of a learned Green's function, enforced at discretisation.

A learned kernel ``G(x, y)`` meets ``G(x, y) = 0`` for ``x`` on the boundary of
the unit cube only to within its training error ``delta``.  At the nodes next to
the boundary the true kernel is ``O(h)``, so the relative error there grows like
``delta / h``, and the difference operator turns it into a residual ``O(delta /
h^2)``: on the shipped 2D reaction kernel, 96-99% of ``||A M v - v||`` for a
smooth ``v`` sat on the boundary-adjacent rows, the largest singular value of
``A M - I`` grew like ``N`` (4.0 / 7.7 / 12.1 at N = 32 / 48 / 64) and with it
the FGMRES iterations (16 / 18 / 20 / 25 / 33 up to N = 128).

:class:`BoundaryBlend` removes it exactly: ``G~ = G - P_x G``, where ``P_x`` is
the transfinite (Coons) interpolation in ``x`` of the kernel's values on the
faces of the cube, the Boolean sum ``I - prod_k (I - P_k)`` of the linear
interpolations ``P_k f = (1 - x_k) f|_{x_k = 0} + x_k f|_{x_k = 1}``.  ``G~``
vanishes for ``x`` on the boundary, equals ``G`` where ``G`` already does, and
costs the face values only: on a tensor grid the faces see ``N`` distinct points
each, so the values are tabulated (``2 d N`` rows of ``n`` columns, ``2 d / N``
of a dense evaluation, split over the ranks); elsewhere (unstructured nodes)
they are evaluated per pair.  Only ``x`` is blended: the kernels are trained
with boundary points in ``x`` and interior ``y``, and evaluating ``G`` with ``y``
on the boundary puts the source at ``O(h)`` from the interior nodes, where the
near-field branches are singular (measured: blending in ``y`` as well raised the
iterations from 16 to 37 at N = 32).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import torch
from petsc4py import PETSc

__all__ = ["BoundaryBlend", "Pairs"]

#: ``pairs(lo, hi) -> (xa, ya)``: the point tensors of pairs ``lo..hi`` of a kernel call.
Pairs = Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]

#: pairs blended per step of :meth:`BoundaryBlend.__call__` (bounds its temporaries)
_CHUNK = 1 << 20


class BoundaryBlend:
    """``(rows, cols) -> (P_x G)(X[rows], X[cols])``: the boundary interpolation in ``x``.

    ``evaluate(pairs, n)`` is the collective kernel on ``n`` pairs whose point tensors
    ``pairs(lo, hi)`` gives batch by batch; every rank calls this object with the same
    sequence of calls (possibly different pair counts).  ``nbytes``: the tables' memory.
    """

    def __init__(self, X: np.ndarray, Xt: torch.Tensor,
                 evaluate: Callable[[Pairs, int], np.ndarray],
                 comm: PETSc.Comm, max_table: float = 0.25) -> None:
        n, d = X.shape
        self.Xt, self.evaluate, self.comm = Xt, evaluate, comm
        self.faces: list[dict] = []
        for size in range(1, d + 1):
            for S in itertools.combinations(range(d), size):
                free = [k for k in range(d) if k not in S]
                if free:
                    uniq, inv = np.unique(np.round(X[:, free], 12), axis=0, return_inverse=True)
                else:
                    uniq, inv = np.zeros((1, 0)), np.zeros(n, dtype=np.int64)
                for a in itertools.product((0.0, 1.0), repeat=size):
                    w = np.ones(n)
                    for k, ak in zip(S, a, strict=True):
                        w *= X[:, k] if ak else 1.0 - X[:, k]
                    pts = np.empty((len(uniq), d))
                    pts[:, free] = uniq
                    pts[:, list(S)] = a
                    self.faces.append(dict(sign=(-1.0) ** (size + 1), w=w,
                                           inv=np.asarray(inv).reshape(-1),
                                           pts=torch.from_numpy(pts).to(Xt), table=None))
        entries = sum(len(f["pts"]) for f in self.faces) * n
        self.tabulated = entries <= max_table * float(n) ** 2
        self.entries = entries
        self.nbytes = 8 * entries if self.tabulated else 0
        if self.tabulated:
            for f in self.faces:
                f["table"] = self._table(f["pts"], n)

    def _table(self, pts: torch.Tensor, n: int) -> np.ndarray:
        """``G(pts_i, X_j)`` for all ``i, j``, the pairs split evenly over the ranks."""
        m = len(pts)
        total = m * n
        size, rank = self.comm.getSize(), self.comm.getRank()
        bounds = [r * total // size for r in range(size + 1)]
        first = bounds[rank]

        def pairs(lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
            flat = torch.arange(first + lo, first + hi)
            return pts[flat // n], self.Xt[flat % n]

        mine = self.evaluate(pairs, bounds[rank + 1] - first)
        if size == 1:
            return mine.reshape(m, n)
        out = np.empty(total)
        counts = [bounds[r + 1] - bounds[r] for r in range(size)]
        self.comm.tompi4py().Allgatherv(mine, [out, counts])
        return out.reshape(m, n)

    def __call__(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        out = np.zeros(len(rows))
        for f in self.faces:
            if f["table"] is None:  # collective: one call per face on every rank
                k = torch.from_numpy(f["inv"][rows])
                c = torch.from_numpy(cols)
                vals = self.evaluate(lambda lo, hi, k=k, c=c, p=f["pts"]:
                                     (p[k[lo:hi]], self.Xt[c[lo:hi]]), len(rows))
                out += f["sign"] * f["w"][rows] * vals
                continue
            for lo in range(0, len(rows), _CHUNK):  # local: bounded temporaries
                r, c = rows[lo:lo + _CHUNK], cols[lo:lo + _CHUNK]
                out[lo:lo + _CHUNK] += f["sign"] * f["w"][r] * f["table"][f["inv"][r], c]
        return out

    def describe(self) -> str:
        how = (f"face values tabulated ({self.entries:.3g} entries)" if self.tabulated
               else f"face values evaluated per pair (tables of {self.entries:.3g} entries "
               "above -pc_green_boundary_table)")
        return (f"boundary blend in x: G - P_x G over {len(self.faces)} faces of the unit "
                f"cube (Dirichlet condition exact); {how}")
