"""The Neural Algebraic Multigrid (NAMG) operator of NPO (seed 000, §3.4, Fig. 2, Table 6).

Pure torch and scriptable (``torch.jit.script``): no petsc4py, no Firedrake.
Every operation on the operator is a sparse CSR product or a gather over its
edge list, so time and memory grow with ``nnz * n_coarse``, never with n².

One apply maps a residual ``r`` to a correction ``z ≈ A⁻¹ r``:

1. **Scaling.**  Work on the symmetrically scaled system
   ``Â = D^-1/2 A D^-1/2`` (unit diagonal), ``r̂ = D^-1/2 r / s`` with ``s`` the
   RMS of ``D^-1/2 r``; the output is multiplied back by ``s``, so the map is
   exactly positively homogeneous and independent of the operator's scale.
2. **Pre-relaxation** (``pre`` passes): a damped-Jacobi step on the solution
   channel ``y ← y + ω (r̂ - Â y)`` (ω learned) and a graph layer on the fine
   features ``h ← h + MLP([h, Â h])``.  Fine features are lifted from the
   residual, the relaxed solution and its residual, and (when known) node
   coordinates (Fourier features in the local bounding box) and the dof's
   component.
3. **Restriction** (eqs. 11-12): scores ``S = W_coarse h / τ`` over the
   ``n_coarse`` tokens, a softmax over the tokens (each fine node hands out a
   unit mass), then ``E = |Â|_row · softmax(S)`` (the product with the
   row-normalised operator: attention restricted to the operator's graph, the
   ``R = A · E_θ`` of eq. 11).  Coarse tokens are the E-weighted means of the
   fine features.  The tokens are attention-derived, so their number does not
   depend on n (resolution generalization).
4. **Coarse correction** (eqs. 13-14): pre-norm multi-head self-attention and
   an MLP over the tokens.
5. **Prolongation** (eq. 15): ``h ← h + E x_c`` with the same weights
   (``P = A · E_θᵀ``; rows of E sum to one).
6. **Post-relaxation** (``post`` passes): as 2.
7. **Output**: ``y + α Q(h)`` with ``Q`` a two-layer head, mapped back with
   ``D^-1/2 · s``.

Choices where the extracted text is garbled or silent (each marked ``CHOICE``
below): eq. 12's normalisation over neighbours with raw ``A_ji'`` weights
would divide by sums of mixed sign for a Laplacian, so the graph product uses
``|Â|`` normalised by rows; the softmax over tokens (Transolver-style slices)
is what makes a fixed number of tokens meaningful on any graph; attention is
scaled by ``sqrt(C / heads)`` per head (the text's ``sqrt(C)`` is the
single-head case); relaxation acts on features and on an explicit solution
channel.  ``galerkin=True`` (default) adds to the coarse step the algebraic
coarse solve of AMG: with ``P = E ⊙ B`` (``B`` the near-nullspace, or the
constant per component), ``y ← y + P (Pᵀ Â P)⁻¹ Pᵀ (r̂ - Â y)`` and the
coarse solution is a feature of the tokens.  ``galerkin=False`` is the
attention-only coarse step of the paper's text (compare in the ablation).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

__all__ = ["NAMGConfig", "NAMG", "sparse_parts"]


@dataclass
class NAMGConfig:
    """Hyperparameters (defaults: the paper's Table 6)."""

    width: int = 32
    heads: int = 4
    n_coarse: int = 128
    pre: int = 1
    post: int = 1
    block_size: int = 1
    n_fourier: int = 4
    tau: float = 1.0
    galerkin: bool = True
    use_operator: bool = True
    use_coarse: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sparse_parts(A: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(crow, col, row, values) of a CSR tensor; ``row`` is the row of each stored entry."""
    crow = A.crow_indices()
    col = A.col_indices()
    n = crow.numel() - 1
    counts = crow[1:] - crow[:-1]
    row = torch.repeat_interleave(torch.arange(n, device=crow.device), counts)
    return crow, col, row, A.values()


class GraphRelax(nn.Module):
    """One relaxation pass on features: ``h + W2 relu(W1 [h, Â h])``."""

    def __init__(self, width: int, use_operator: bool) -> None:
        super().__init__()
        self.use_operator = use_operator
        self.lin1 = nn.Linear(2 * width + 1, width)
        self.lin2 = nn.Linear(width, width)

    def forward(self, h: Tensor, Ahat: Tensor, rho: Tensor) -> Tensor:
        n, b, c = h.shape
        if self.use_operator:
            ah = torch.sparse.mm(Ahat, h.reshape(n, b * c)).reshape(n, b, c)
        else:
            ah = h
        z = torch.cat([h, ah, rho.unsqueeze(-1)], dim=-1)
        return h + self.lin2(torch.relu(self.lin1(z)))


class CoarseAttention(nn.Module):
    """Pre-norm multi-head self-attention and MLP over the coarse tokens (eqs. 13-14)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.q = nn.Linear(width, width)
        self.k = nn.Linear(width, width)
        self.v = nn.Linear(width, width)
        self.o = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp1 = nn.Linear(width, 2 * width)
        self.mlp2 = nn.Linear(2 * width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, m, c = x.shape
        hd = c // self.heads
        z = self.norm1(x)
        q = self.q(z).reshape(b, m, self.heads, hd).transpose(1, 2)
        k = self.k(z).reshape(b, m, self.heads, hd).transpose(1, 2)
        v = self.v(z).reshape(b, m, self.heads, hd).transpose(1, 2)
        # CHOICE: per-head scaling sqrt(C/heads); the text writes sqrt(C) (one head).
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, m, c)
        # New names rather than reassigning x: TorchScript renames reassigned
        # variables differently after a save/load, which would change the code
        # that pcshell's content hash covers.
        x1 = x + self.o(y)
        return x1 + self.mlp2(torch.relu(self.mlp1(self.norm2(x1))))


class NAMG(nn.Module):
    """The NAMG operator: ``forward(r, A, diag, coords, near_nullspace=None) -> z``.

    ``r``: local residual (n,); ``A``: local operator, sparse CSR (n, n);
    ``diag``: its diagonal (n,); ``coords``: node coordinates
    (n / block_size, dim), or an empty (0, 0) tensor when unknown;
    ``near_nullspace``: (n, k) or None.  :meth:`forward_batch` takes (n, B)
    residuals (training); ``forward`` is the one-residual case a PC calls.
    """

    def __init__(self, config: NAMGConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        cfg = config if config is not None else NAMGConfig(**kwargs)
        self.config_dict = cfg.to_dict()
        self.width = cfg.width
        self.n_coarse = cfg.n_coarse
        self.block_size = cfg.block_size
        self.n_fourier = cfg.n_fourier
        self.tau = float(cfg.tau)
        self.galerkin = bool(cfg.galerkin and cfg.use_operator and cfg.use_coarse)
        self.use_operator = cfg.use_operator
        self.use_coarse = cfg.use_coarse
        self.n_pre = cfg.pre
        self.n_post = cfg.post
        # Static features: 3 padded coordinates, their Fourier features, the
        # component one-hot, and a flag saying whether coordinates are known.
        self.n_pos = 3 + 3 * 2 * cfg.n_fourier + cfg.block_size + 1
        w = cfg.width
        self.lift = nn.Linear(4 + self.n_pos, w)
        self.pre_layers = nn.ModuleList([GraphRelax(w, cfg.use_operator) for _ in range(cfg.pre)])
        self.post_layers = nn.ModuleList(
            [GraphRelax(w, cfg.use_operator) for _ in range(cfg.post)]
        )
        # Damped Jacobi weights of the solution channel (2/3 is the classical choice).
        self.omega_pre = nn.Parameter(torch.full((max(cfg.pre, 1),), 2.0 / 3.0))
        self.omega_post = nn.Parameter(torch.full((max(cfg.post, 1),), 2.0 / 3.0))
        self.w_coarse = nn.Linear(w, cfg.n_coarse)
        self.coarse_in = nn.Linear(1, w)
        self.attention = CoarseAttention(w, cfg.heads)
        self.gamma = nn.Parameter(torch.ones(1))
        self.head1 = nn.Linear(w, w)
        self.head2 = nn.Linear(w, 1)
        self.alpha = nn.Parameter(torch.full((1,), 0.1))

    # -- static inputs -----------------------------------------------------------------
    def positional(
        self, coords: Tensor, n: int, dtype: torch.dtype, device: torch.device
    ) -> Tensor:
        """(n, n_pos) per-dof features from node coordinates (zeros where unknown)."""
        bs = self.block_size
        comp = torch.arange(n, device=device) % bs
        onehot = torch.nn.functional.one_hot(comp, bs).to(dtype)
        nf = 3 + 3 * 2 * self.n_fourier
        if coords.numel() == 0 or coords.shape[0] * bs != n:
            feats = torch.zeros(n, nf + 1, dtype=dtype, device=device)
            return torch.cat([feats, onehot], dim=1)
        x = coords.to(dtype)
        lo = x.min(dim=0).values
        hi = x.max(dim=0).values
        x = (x - lo) / torch.clamp(hi - lo, min=1e-12)  # the local bounding box -> [0, 1]
        d = x.shape[1]
        if d < 3:
            x = torch.cat([x, torch.zeros(x.shape[0], 3 - d, dtype=dtype, device=device)], 1)
        freqs = math.pi * torch.arange(1, self.n_fourier + 1, dtype=dtype, device=device)
        ang = (x.unsqueeze(-1) * freqs).reshape(x.shape[0], -1)
        feats = torch.cat(
            [x, torch.sin(ang), torch.cos(ang), torch.ones(x.shape[0], 1, dtype=dtype,
                                                           device=device)], dim=1)
        feats = torch.repeat_interleave(feats, bs, dim=0)
        return torch.cat([feats, onehot], dim=1)

    # -- the operator ------------------------------------------------------------------
    def forward(
        self,
        r: Tensor,
        A: Tensor,
        diag: Tensor,
        coords: Tensor,
        near_nullspace: Optional[Tensor] = None,  # noqa: UP045 (TorchScript)
    ) -> Tensor:
        return self.forward_batch(r.unsqueeze(1), A, diag, coords, near_nullspace).squeeze(1)

    @torch.jit.export
    def forward_batch(
        self,
        R: Tensor,
        A: Tensor,
        diag: Tensor,
        coords: Tensor,
        near_nullspace: Optional[Tensor] = None,  # noqa: UP045 (TorchScript)
    ) -> Tensor:
        n, nb = R.shape[0], R.shape[1]
        dtype, device = R.dtype, R.device
        d = torch.where(diag > 0, diag, torch.ones_like(diag))
        dis = torch.rsqrt(d)
        crow, col, row, val = sparse_parts(A)
        hval = val * dis[row] * dis[col]
        Ahat = torch.sparse_csr_tensor(crow, col, hval, (n, n), dtype=dtype, device=device)
        # CHOICE: eq. 12 weights neighbours by A_ji'; with |Â| normalised by rows the
        # weights are positive and the rows of E = |Â| softmax(S) sum to one.
        aval = hval.abs()
        rowsum = torch.zeros(n, dtype=dtype, device=device).index_add_(0, row, aval)
        Aabs = torch.sparse_csr_tensor(
            crow, col, aval / torch.clamp(rowsum[row], min=1e-300), (n, n), dtype=dtype,
            device=device,
        )
        rhat = R * dis.unsqueeze(1)
        s = torch.sqrt(torch.mean(rhat * rhat, dim=0, keepdim=True))
        s = torch.where(s > 0, s, torch.ones_like(s))
        rhat = rhat / s

        # Pre-relaxation of the solution channel, then the fine features.
        y = torch.zeros_like(rhat)
        for i in range(self.n_pre):
            y = y + self.omega_pre[i] * (rhat - torch.sparse.mm(Ahat, y))
        rho = rhat - torch.sparse.mm(Ahat, y)
        pos = self.positional(coords, n, dtype, device).unsqueeze(1).expand(n, nb, self.n_pos)
        h = self.lift(torch.cat([rhat.unsqueeze(-1), y.unsqueeze(-1), rho.unsqueeze(-1),
                                 torch.sparse.mm(Ahat, rhat).unsqueeze(-1), pos], dim=-1))
        for layer in self.pre_layers:
            h = layer(h, Ahat, rho)

        if self.use_coarse:
            m = self.n_coarse
            # Restriction (eqs. 11-12): softmax over the tokens, then the graph product.
            W = torch.softmax(self.w_coarse(h) / self.tau, dim=-1)  # (n, B, m)
            bs = self.block_size
            if bs > 1:  # all components of a node share its weights
                W = W.reshape(n // bs, bs, nb, m).mean(dim=1, keepdim=True)
                W = W.expand(n // bs, bs, nb, m).reshape(n, nb, m)
            if self.use_operator:
                E = torch.sparse.mm(Aabs, W.reshape(n, nb * m)).reshape(n, nb, m)
            else:
                E = W
            mass = E.sum(dim=0)  # (B, m)
            xc = torch.einsum("nbm,nbc->bmc", E, h) / (mass.unsqueeze(-1) + 1e-12)
            if self.galerkin:
                y, yc = self._galerkin(E, Ahat, rhat, y, near_nullspace, torch.sqrt(d), n, nb, m)
                xc = xc + self.coarse_in(yc.unsqueeze(-1))
            xc = self.attention(xc)  # eqs. 13-14
            h = h + torch.einsum("nbm,bmc->nbc", E, xc)  # eq. 15: prolongation + residual

        for i, layer in enumerate(self.post_layers):
            rho = rhat - torch.sparse.mm(Ahat, y)
            y = y + self.omega_post[i] * rho
            h = layer(h, Ahat, rho)
        out = y + self.alpha * self.head2(torch.relu(self.head1(h))).squeeze(-1)
        return out * dis.unsqueeze(1) * s

    def _galerkin(
        self,
        E: Tensor,
        Ahat: Tensor,
        rhat: Tensor,
        y: Tensor,
        near_nullspace: Optional[Tensor],  # noqa: UP045 (TorchScript)
        dsqrt: Tensor,
        n: int,
        nb: int,
        m: int,
    ) -> tuple[Tensor, Tensor]:
        """Coarse solve with P = E ⊙ B; returns the corrected y and (B, m) token values."""
        dtype, device = rhat.dtype, rhat.device
        if near_nullspace is not None and near_nullspace.numel() > 0:
            basis = near_nullspace.to(dtype)
        else:  # the constant, per component
            comp = torch.arange(n, device=device) % self.block_size
            basis = torch.nn.functional.one_hot(comp, self.block_size).to(dtype)
        # The near-nullspace of the scaled operator D^-1/2 A D^-1/2 is D^1/2 B.
        basis = basis * dsqrt.unsqueeze(1)
        k = basis.shape[1]
        P = (E.unsqueeze(-1) * basis.reshape(n, 1, 1, k)).reshape(n, nb, m * k)
        norms = torch.sqrt((P * P).sum(dim=0))  # (B, mk)
        P = P / torch.clamp(norms, min=1e-30).unsqueeze(0)
        AP = torch.sparse.mm(Ahat, P.reshape(n, nb * m * k)).reshape(n, nb, m * k)
        Ac = torch.einsum("nbi,nbj->bij", P, AP)
        Ac = 0.5 * (Ac + Ac.transpose(1, 2))
        eye = torch.eye(m * k, dtype=dtype, device=device).unsqueeze(0)
        # Tokens that receive no weight give zero columns: a tiny shift keeps Ac invertible.
        Ac = Ac + 1e-10 * eye
        rho = rhat - torch.sparse.mm(Ahat, y)
        rc = torch.einsum("nbi,nb->bi", P, rho)
        yc = torch.linalg.solve(Ac, rc.unsqueeze(-1)).squeeze(-1)  # (B, mk)
        y = y + self.gamma * torch.einsum("nbi,bi->nb", P, yc)
        tok = yc.reshape(nb, m, k)
        tok = torch.sqrt((tok * tok).sum(dim=-1))
        tok = tok / torch.clamp(torch.sqrt(torch.mean(tok * tok, dim=1, keepdim=True)), min=1e-30)
        return y, tok
