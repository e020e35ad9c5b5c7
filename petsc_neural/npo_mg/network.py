"""The NPO-MG network: NAMG's attention (seed 000, §3.4) computing transfer weights at setup.

Pure torch and scriptable.  ``forward(node, Ahat, candidates, edge, tokens)
-> W`` maps one level's graph data (:mod:`petsc_neural.npo_mg.features`) to
``W`` (n, K): for every row a convex combination of its candidate tokens
(the roots within two edges).  The PC turns ``W`` into the prolongator
``P = (I - omega D^-1 A) W`` and PETSc does the rest (``MatPtAP``, PCMG).

The three steps of the NAMG operator, as they appear here:

1. **Restriction (eqs. 11-12).**  Fine features ``h`` (a lift of the
   operator features and graph layers ``h + MLP([h, Â h])``, NAMG's
   pre-relaxation of the features) give scores ``S = (W_coarse h_i) ·
   φ(e_ij)`` over each row's candidate tokens (``φ``: an MLP of the
   edge features: hops, path strength, offsets), a softmax over the
   candidates with a learned temperature ``τ``, and the tokens' features are
   the weighted means of the fine features.
2. **Coarse attention (eqs. 13-14).**  Pre-norm multi-head self-attention
   and an MLP over the tokens, each token attending to the tokens it shares
   rows with (its neighbourhood in the coarse graph).
3. **Prolongation (eq. 15).**  The weights returned are a second softmax
   over the candidates whose scores add the query-key product of the fine
   feature and the refined token, ``q(h_i) · k(x_j) / sqrt(C)``, to the
   restriction scores: fine nodes attend to their refined tokens.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..npo.network import CoarseAttention
from .features import N_EDGE, N_NODE

__all__ = ["TransferConfig", "AttentionTransfer", "masked_softmax", "level_inputs", "csr_tensor",
           "INPUTS"]

#: The inputs a model file declares (checked by the PC), in ``forward``'s order.
INPUTS = ["node_features", "scaled_operator", "candidates", "edge_features", "token_graph"]


@dataclass
class TransferConfig:
    """Hyperparameters (width, heads: the paper's Table 6; layers: its one pre-pass + one)."""

    width: int = 32
    heads: int = 4
    layers: int = 2
    edge_width: int = 16

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last axis where ``mask``; rows with no valid slot give zeros."""
    neg = torch.full_like(scores, -1e30)
    s = torch.where(mask, scores, neg)
    s = s - s.max(dim=-1, keepdim=True).values
    e = torch.exp(s) * mask.to(scores.dtype)
    return e / torch.clamp(e.sum(dim=-1, keepdim=True), min=1e-30)


class GraphLayer(nn.Module):
    """``h + W2 relu(W1 [h, Â h])``: one pass of feature relaxation on the operator's graph."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(2 * width, width)
        self.lin2 = nn.Linear(width, width)

    def forward(self, h: Tensor, Ahat: Tensor) -> Tensor:
        ah = torch.sparse.mm(Ahat, h)
        return h + self.lin2(torch.relu(self.lin1(torch.cat([h, ah], dim=1))))


class TokenAttention(CoarseAttention):
    """NPO's coarse attention (eqs. 13-14, the same layers as
    :class:`~petsc_neural.npo.network.CoarseAttention`) over padded token neighbourhoods."""

    def forward(self, x: Tensor, nbr: Tensor) -> Tensor:
        m, c = x.shape
        kc = nbr.shape[1]
        hd = c // self.heads
        mask = (nbr >= 0).unsqueeze(-1).expand(m, kc, self.heads)
        idx = torch.clamp(nbr, min=0)
        z = self.norm1(x)
        q = self.q(z).reshape(m, 1, self.heads, hd)
        k = self.k(z)[idx].reshape(m, kc, self.heads, hd)
        v = self.v(z)[idx].reshape(m, kc, self.heads, hd)
        att = masked_softmax(((q * k).sum(-1) / math.sqrt(hd)).transpose(1, 2),
                             mask.transpose(1, 2))  # (m, heads, kc)
        y = (att.transpose(1, 2).unsqueeze(-1) * v).sum(1).reshape(m, c)
        x1 = x + self.o(y)
        return x1 + self.mlp2(torch.relu(self.mlp1(self.norm2(x1))))


class AttentionTransfer(nn.Module):
    """NAMG's attention as transfer weights: ``forward(node, Ahat, cand, edge, tokens) -> W``.

    ``node``: (n, N_NODE) features; ``Ahat``: the scaled local operator,
    sparse CSR (n, n); ``cand``: (n, K) candidate tokens (-1: padding);
    ``edge``: (n, K, N_EDGE) features of each candidate; ``tokens``:
    (n_tokens, Kc) token neighbourhoods (-1: padding).  Returns (n, K)
    nonnegative weights, each row summing to one (zero for a row with no
    candidate).
    """

    def __init__(self, config: TransferConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        cfg = config if config is not None else TransferConfig(**kwargs)
        self.config_dict = cfg.to_dict()
        w, we = cfg.width, cfg.edge_width
        self.width = w
        self.lift = nn.Linear(N_NODE, w)
        self.layers = nn.ModuleList([GraphLayer(w) for _ in range(cfg.layers)])
        self.phi1 = nn.Linear(N_EDGE, we)
        self.phi2 = nn.Linear(we, we)
        self.w_coarse = nn.Linear(w, we)
        self.edge_bias = nn.Linear(we, 1)
        self.attention = TokenAttention(w, cfg.heads)
        self.q = nn.Linear(w, w)
        self.k = nn.Linear(w, w)
        self.log_tau = nn.Parameter(torch.zeros(1))
        # A prior that starts near the nearest root: one hop beats two.
        self.hop_prior = nn.Parameter(torch.tensor([0.0, 0.0, -2.0]))

    def forward(self, node: Tensor, Ahat: Tensor, cand: Tensor, edge: Tensor,
                tokens: Tensor) -> Tensor:
        n, K = cand.shape
        nc = tokens.shape[0]
        mask = cand >= 0
        idx = torch.clamp(cand, min=0)
        tau = torch.exp(self.log_tau)
        h = self.lift(node)
        for layer in self.layers:
            h = layer(h, Ahat)
        # Restriction (eqs. 11-12): scores over the candidates, tokens as weighted means.
        phi = self.phi2(torch.relu(self.phi1(edge)))  # (n, K, we)
        s0 = (self.w_coarse(h).unsqueeze(1) * phi).sum(-1) + self.edge_bias(phi).squeeze(-1) \
            + edge[:, :, 0:3] @ self.hop_prior
        w0 = masked_softmax(s0 / tau, mask)
        flat = idx.reshape(-1)
        contrib = (w0.unsqueeze(-1) * h.unsqueeze(1)).reshape(n * K, self.width)
        xc = torch.zeros(nc, self.width, dtype=h.dtype, device=h.device).index_add_(0, flat,
                                                                                   contrib)
        mass = torch.zeros(nc, dtype=h.dtype, device=h.device).index_add_(0, flat,
                                                                          w0.reshape(-1))
        xc = xc / torch.clamp(mass, min=1e-12).unsqueeze(-1)
        # Coarse attention (eqs. 13-14).
        xc = self.attention(xc, tokens)
        # Prolongation (eq. 15): fine rows attend to their refined tokens.
        qk = (self.q(h).unsqueeze(1) * self.k(xc)[idx]).sum(-1) / math.sqrt(self.width)
        return masked_softmax((s0 + qk) / tau, mask)


def csr_tensor(A: Any, dtype: torch.dtype = torch.float64,
               device: torch.device | None = None) -> Tensor:
    """A torch CSR tensor from a scipy CSR matrix (torch's beta warnings silenced)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        warnings.filterwarnings("ignore", message="Sparse invariant checks")
        return torch.sparse_csr_tensor(
            torch.from_numpy(A.indptr.astype("int64")),
            torch.from_numpy(A.indices.astype("int64")),
            torch.from_numpy(A.data).to(dtype), A.shape, device=device or torch.device("cpu"))


def level_inputs(
    graph: Any, dtype: torch.dtype = torch.float32, device: torch.device | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The network's inputs from a :class:`~petsc_neural.npo_mg.features.LevelGraph`."""
    dev = device or torch.device("cpu")
    return (torch.from_numpy(graph.node).to(device=dev, dtype=dtype),
            csr_tensor(graph.Ahat, dtype, dev),
            torch.from_numpy(graph.candidates.index).to(dev),
            torch.from_numpy(graph.edge).to(device=dev, dtype=dtype),
            torch.from_numpy(graph.tokens).to(dev))
