"""Losses of NeuraLSP (seed 001, §4.1): the nested NLSS loss and the plain subspace loss.

Both take an orthonormal basis ``Q`` (``(..., n, r)``, e.g. the QR output of
the network) and the smoothed near-nullspace vectors ``S`` (``(..., n, K)``)
and are pure torch (scriptable, differentiable).

NLSS, eq. (4)::

    L^(r)(S, Q) = 1/r * sum_{l=1..r} (1 - ||Q_l^T S||_F^2 / ||S||_F^2)

with ``Q_l`` the first ``l`` columns: every leading block of ``Q`` must
capture as much of ``S`` as possible, so the global minimisers are the
leading left singular vectors of ``S`` in order, up to signs (Theorem 4.1,
Corollary 4.2), and truncating ``Q`` to any rank ``l <= r`` keeps the best
rank-``l`` subspace (rank-agnostic).

Subspace loss, eq. (3) written as a loss: ``1 - ||Q^T S||_F^2 / ||S||_F^2``;
invariant to rotations inside ``span(Q)``, so it fixes the subspace but not
the order of its columns.

An optional ``mask`` (``(..., n)``, 1 on real rows, 0 on padding) lets a
batch of padded aggregates be scored together (the distributable variant).
"""

from __future__ import annotations

import torch

__all__ = ["nlss_loss", "subspace_loss", "captured_energy", "column_energies"]


def column_energies(Q: torch.Tensor, S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(||q_j^T S||^2 for each column j, ||S||_F^2)``, batched over leading dims."""
    proj = Q.transpose(-1, -2) @ S  # (..., r, K)
    per_col = (proj * proj).sum(-1)  # (..., r)
    total = (S * S).sum((-1, -2))  # (...)
    return per_col, total


def nlss_loss(Q: torch.Tensor, S: torch.Tensor, eps: float = 1e-30) -> torch.Tensor:
    """The nested NLSS loss, eq. (4), averaged over any batch dimensions."""
    per_col, total = column_energies(Q, S)
    cum = torch.cumsum(per_col, dim=-1)  # ||Q_l^T S||_F^2 for l = 1..r
    frac = cum / (total.unsqueeze(-1) + eps)
    return (1.0 - frac).mean()


def subspace_loss(Q: torch.Tensor, S: torch.Tensor, eps: float = 1e-30) -> torch.Tensor:
    """``1 - ||Q^T S||_F^2 / ||S||_F^2`` (eq. 3 as a loss), averaged over the batch."""
    per_col, total = column_energies(Q, S)
    return (1.0 - per_col.sum(-1) / (total + eps)).mean()


def captured_energy(Q: torch.Tensor, S: torch.Tensor, eps: float = 1e-30) -> torch.Tensor:
    """Eq. (8) for every truncation rank: ``||Q_l^T S||_F^2 / ||S||_F^2``, l = 1..r.

    Returns ``(..., r)``; the last entry is the energy of the whole basis.
    """
    per_col, total = column_energies(Q, S)
    return torch.cumsum(per_col, dim=-1) / (total.unsqueeze(-1) + eps)
