"""Differentiable Krylov methods in torch (shared by the methods that train through a solver).

- :func:`fgmres`: batched flexible GMRES (modified Gram-Schmidt Arnoldi, Givens
  rotations), differentiable through every step; its Givens sines are the
  residual/Krylov-subspace angle sines of seed 002.
"""

from .fgmres import FGMRESResult, fgmres, givens_sines

__all__ = ["FGMRESResult", "fgmres", "givens_sines"]
