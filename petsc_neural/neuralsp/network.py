"""Networks of NeuraLSP (seed 001): smoothed vectors ``S`` -> orthonormal coarse basis.

Pure torch and scriptable (``torch.jit.script``); no petsc4py, no Firedrake.

:class:`NeuraLSPMLP` is the paper's network (Fig. 2, §5.1): the whole
``n x K`` matrix of smoothed near-nullspace vectors is flattened into one
MLP (widths 128-256-256-128, LayerNorm and GELU between the hidden layers)
whose ``n * r`` outputs are reshaped to ``n x r`` and orthonormalised by QR.
Its first and last layers have ``n*K*128`` and ``128*n*r`` weights, so the
model is tied to one mesh size ``n`` and needs all of ``S`` in one place
(one process).  With ``widths=(128,)`` and no LayerNorm it is the one-hidden-
layer network of the paper's captured-energy experiment (§5.1, N = 9).

:class:`LocalSubspaceNet` is the distributable variant (our addition, see
:mod:`petsc_neural.neuralsp` for how it is served): one small network with
shared weights applied to every aggregate (a patch of ~7-20 neighbouring
nodes) of ``S``, in the spirit of Chow (2006)'s local SVD, returning an
orthonormal local basis per aggregate.  It sees the aggregate only through
the Gram matrix ``G = S_a S_a^T / tr`` (so it is exactly invariant to the
order, sign pattern and number of the columns of ``S``, and to the scale of
``S``) and works for any number of aggregates and any aggregate size, i.e.
for any mesh size and any partition.  Architecture: per-node features from
``G`` (its diagonal, its row sums, the aggregate size) -> an MLP embedding ->
message-passing layers ``h <- h + GELU(W [h, m G h])`` on the aggregate's
complete graph weighted by ``G`` -> a linear read-out to ``r`` columns ->
``power_steps`` multiplications by ``G`` (pulling the columns into the
dominant subspace of ``S_a``) -> QR.  Trained with the same nested NLSS loss,
per aggregate, so its columns are ordered and can be truncated.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["NeuraLSPMLP", "LocalSubspaceNet", "count_parameters"]


def count_parameters(module: nn.Module) -> int:
    return sum(int(p.numel()) for p in module.parameters())


class NeuraLSPMLP(nn.Module):
    """``f_theta(S) -> Q``: ``S`` ``(n, K)`` or ``(B, n, K)``, ``Q`` orthonormal ``(.., n, r)``."""

    def __init__(
        self,
        n: int,
        n_vectors: int,
        rank: int,
        widths: tuple[int, ...] = (128, 256, 256, 128),
        layer_norm: bool = True,
    ) -> None:
        super().__init__()
        if rank > n:
            raise ValueError(f"rank {rank} exceeds the number of rows {n}")
        self.n = int(n)
        self.n_vectors = int(n_vectors)
        self.rank = int(rank)
        layers: list[nn.Module] = []
        width_in = self.n * self.n_vectors
        for w in widths:
            layers.append(nn.Linear(width_in, int(w)))
            if layer_norm:
                layers.append(nn.LayerNorm(int(w)))
            layers.append(nn.GELU())
            width_in = int(w)
        layers.append(nn.Linear(width_in, self.n * self.rank))
        self.net = nn.Sequential(*layers)

    def forward(self, S: torch.Tensor) -> torch.Tensor:
        batched = S.dim() == 3
        if not batched:
            S = S.unsqueeze(0)
        if S.shape[1] != self.n or S.shape[2] != self.n_vectors:
            raise ValueError(
                "NeuraLSPMLP was built for S of shape (" + str(self.n) + ", "
                + str(self.n_vectors) + "), got (" + str(S.shape[1]) + ", "
                + str(S.shape[2]) + ")"
            )
        y = self.net(S.reshape(S.shape[0], -1)).reshape(S.shape[0], self.n, self.rank)
        Q, _ = torch.linalg.qr(y)
        if not batched:
            Q = Q.squeeze(0)
        return Q


class LocalSubspaceNet(nn.Module):
    """Shared-weight network on padded aggregates: ``(S (B, m, K), mask (B, m)) -> Q (B, m, r)``.

    Padded rows (``mask == 0``) are zero in ``Q``.  Columns ``j >= m_a`` of an
    aggregate with ``m_a`` real rows are meaningless (its space has dimension
    ``m_a``) and are dropped by the preconditioner.
    """

    def __init__(self, rank: int, hidden: int = 32, layers: int = 3, power_steps: int = 2) -> None:
        super().__init__()
        self.rank = int(rank)
        self.power_steps = int(power_steps)
        self.embed = nn.Sequential(nn.Linear(4, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.mix = nn.ModuleList([nn.Linear(2 * hidden, hidden) for _ in range(layers)])
        self.readout = nn.Linear(hidden, self.rank)

    def forward(self, S: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.to(S.dtype)
        S = S * m.unsqueeze(-1)
        G = S @ S.transpose(1, 2)  # (B, m, m), invariant to the columns of S
        tr = torch.diagonal(G, dim1=1, dim2=2).sum(-1).clamp_min(1e-30)
        G = G / tr.reshape(-1, 1, 1)
        size = m.sum(-1, keepdim=True).clamp_min(1.0)  # (B, 1)
        diag = torch.diagonal(G, dim1=1, dim2=2) * size
        rows = G.sum(-1) * size
        feats = torch.stack(
            [m, diag, rows, (size / 10.0).expand_as(m)], dim=-1
        )  # (B, m, 4), O(1) entries
        h = self.embed(feats) * m.unsqueeze(-1)
        for layer in self.mix:
            msg = (G @ h) * size.unsqueeze(-1)
            h = h + nn.functional.gelu(layer(torch.cat([h, msg], dim=-1)))
            h = h * m.unsqueeze(-1)
        U = self.readout(h) * m.unsqueeze(-1)
        for _ in range(self.power_steps):
            U = U + (G @ U) * size.unsqueeze(-1)
        Q, _ = torch.linalg.qr(U)
        return Q * m.unsqueeze(-1)
