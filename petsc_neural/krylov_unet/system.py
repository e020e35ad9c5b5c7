"""A coupled 3D-1D system as torch tensors on the 3D grid, reduced to the tissue unknowns.

The preconditioner eliminates the 1D (vessel) unknowns exactly (seed 002 §2:
the dominant cost is the 3D subproblem on the Schur complement
``S = A_33 - A_31 A_11^{-1} A_13`` with right-hand sides
``f_3 - A_31 A_11^{-1} f_1``), so the network is trained on ``S``.
:class:`CoupledSystem` applies ``S`` (sparse, differentiable in its argument)
for the losses and the differentiable FGMRES.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch

from .grid import geometry_field
from .network import grid_size

__all__ = ["CoupledSystem", "torch_csr", "batch_matvec"]


def torch_csr(A: sp.spmatrix, dtype: torch.dtype) -> torch.Tensor:
    """A scipy matrix as a torch sparse CSR tensor."""
    A = sp.csr_matrix(A)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            torch.from_numpy(A.indptr.astype(np.int64)),
            torch.from_numpy(A.indices.astype(np.int64)),
            torch.from_numpy(A.data.astype(np.float64)).to(dtype),
            size=A.shape,
            check_invariants=False,  # scipy CSR (sorted, in range) is valid by construction
        )


class CoupledSystem:
    """``S x = A_33 x - A_31 A_11^{-1} A_13 x`` on the ``G^3`` grid (rows in lattice order).

    ``A33`` ``(n3, n3)``, ``A31`` ``(n3, n1)``, ``A13`` ``(n1, n3)`` (scipy, grid
    order for the 3D side) and ``A11`` ``(n1, n1)``; ``n1 = 0`` gives ``S = A_33``.
    Attributes ``geometry`` and ``diagonal`` are the network's static inputs.
    """

    def __init__(self, A33: sp.spmatrix, A31: sp.spmatrix | None = None,
                 A13: sp.spmatrix | None = None, A11: sp.spmatrix | np.ndarray | None = None,
                 dtype: torch.dtype = torch.float64) -> None:
        self.dtype = dtype
        self.n3 = A33.shape[0]
        self.A33 = torch_csr(A33, dtype)
        self.geometry = torch.from_numpy(geometry_field(A33, grid_size(self.n3))).to(dtype)
        self.diagonal = torch.from_numpy(np.asarray(A33.diagonal(), np.float64)).to(dtype)
        self.n1 = 0 if A31 is None else A31.shape[1]
        if self.n1:
            A11d = A11.toarray() if sp.issparse(A11) else np.asarray(A11)
            self._A11inv64 = np.linalg.inv(A11d)
            self.A31 = torch_csr(A31, dtype)
            self.A13 = torch_csr(A13 if A13 is not None else A31.T, dtype)
            self.A11inv = torch.from_numpy(self._A11inv64).to(dtype)
            self._A31s, self._A13s = sp.csr_matrix(A31), sp.csr_matrix(A13 if A13 is not None
                                                                         else A31.T)

    def schur(self, X: torch.Tensor) -> torch.Tensor:
        """``S`` applied to the rows of ``X`` ``(k, n3)`` (differentiable in ``X``)."""
        Y = torch.sparse.mm(self.A33, X.t())
        if self.n1:
            T = self.A11inv @ torch.sparse.mm(self.A13, X.t())
            Y = Y - torch.sparse.mm(self.A31, T)
        return Y.t()

    def reduce_rhs(self, f3: np.ndarray, f1: np.ndarray | None) -> np.ndarray:
        """``f_3 - A_31 A_11^{-1} f_1`` (float64 numpy, grid order)."""
        if not self.n1 or f1 is None:
            return np.asarray(f3, np.float64)
        return np.asarray(f3, np.float64) - self._A31s @ (self._A11inv64 @ f1)


def batch_matvec(systems: list[CoupledSystem]):
    """``X (B, n) -> (B, n)`` applying system ``i``'s Schur complement to row ``i``."""

    def mv(X: torch.Tensor) -> torch.Tensor:
        return torch.cat([s.schur(X[i : i + 1]) for i, s in enumerate(systems)], dim=0)

    return mv
