"""NPO-MG's training objective: NPO's losses (seed 000, eqs. 9-10) on the two-grid cycle.

The network's weights ``W`` define ``P = (I - omega D^-1 A) W`` (dense in
training: training levels have at most a few thousand rows) and the
two-grid cycle ``M`` the PC will apply: ``nu`` damped-Jacobi sweeps, the
exact Galerkin coarse solve ``P (P^T A P)^-1 P^T``, ``nu`` sweeps.  The
losses are NPO's own, :func:`petsc_neural.npo.loss.npo_loss`: the
condition loss ``||(I - A M) r||^2 / ||r||^2`` over sampled residuals and
the residual loss ``||A M b - b||^2 / ||b||^2`` on right-hand sides.
Everything is differentiable in ``W``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..npo.loss import LossWeights, npo_loss

__all__ = ["dense_prolongator", "two_grid", "transfer_loss"]


def dense_prolongator(W: Tensor, cand: Tensor, n_tokens: int, A: Tensor, dinv: Tensor,
                      omega: float) -> Tensor:
    """``P = (I - omega D^-1 A) T`` with ``T[i, cand[i, k]] = W[i, k]`` (dense, (n, n_tokens))."""
    n, K = cand.shape
    mask = cand >= 0
    rows = torch.arange(n, device=W.device).unsqueeze(1).expand(n, K)[mask]
    T = torch.zeros(n, n_tokens, dtype=W.dtype, device=W.device)
    T = T.index_put((rows, cand[mask]), W[mask], accumulate=True)
    return T - omega * dinv.unsqueeze(1) * torch.sparse.mm(A, T)


def two_grid(A: Tensor, dinv: Tensor, P: Tensor, R: Tensor, nu: int, omega: float) -> Tensor:
    """``M R`` for the two-grid cycle (damped Jacobi ``nu`` sweeps, exact coarse solve)."""
    jac = omega * dinv.unsqueeze(1)
    Z = jac * R
    for _ in range(nu - 1):
        Z = Z + jac * (R - torch.sparse.mm(A, Z))
    Ac = P.T @ torch.sparse.mm(A, P)
    Ac = 0.5 * (Ac + Ac.T)
    # Unused tokens would give zero rows: a tiny shift keeps Ac invertible.
    Ac = Ac + 1e-10 * torch.eye(Ac.shape[0], dtype=Ac.dtype, device=Ac.device) \
        * torch.clamp(Ac.diagonal().max(), min=1.0)
    Z = Z + P @ torch.linalg.solve(Ac, P.T @ (R - torch.sparse.mm(A, Z)))
    for _ in range(nu):
        Z = Z + jac * (R - torch.sparse.mm(A, Z))
    return Z


def transfer_loss(A: Tensor, dinv: Tensor, P: Tensor, R: Tensor, b: Tensor | None, nu: int,
                  omega: float, weights: LossWeights) -> tuple[Tensor, dict[str, float]]:
    """NPO's condition loss on ``R`` and residual loss on ``b`` for the two-grid cycle."""
    cols = R if b is None else torch.cat([R, b.reshape(-1, 1)], dim=1)
    Z = two_grid(A, dinv, P, cols, nu, omega)
    k = R.shape[1]
    return npo_loss(A, weights, R_cond=R, Z_cond=Z[:, :k],
                    b=None if b is None else b.reshape(-1, 1),
                    z_b=None if b is None else Z[:, k:])
