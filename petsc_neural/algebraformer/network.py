"""Algebraformer (seed 004) and its recurrent baselines: pure torch, scriptable.

**Encoding** (§3.1, Fig. 1): a system ``A x = b`` of size ``n`` is a sequence
of ``n`` tokens, token ``i = [column i of A, b_i]`` (``n + 1`` numbers),
projected to the model width by a linear encoder; the backbone's output at
token ``i`` is decoded by a linear layer into ``x_i``.

**Backbones** (§4):

- :class:`AlgebraformerCore`: GPT-2-style pre-norm transformer blocks (eq. 1:
  ``x + Attn(LN(x))``, then ``x + MLP(LN(x))``, GELU, 4x expansion) with a
  final LayerNorm.  ``CHOICE``: attention is bidirectional (a causal mask, as
  in a GPT decoder, would make ``x_1`` depend on column 1 alone, which cannot
  solve a system) and, as in GPT-2 [55], tokens get a learned position
  embedding.  The paper's configuration (12 blocks, width 256, 8 heads) has
  9.5 M parameters, as the paper says (:data:`PAPER_CONFIGS`).
- :class:`RecurrentCore`: bidirectional LSTM or GRU with the same encoder and
  decoder (paper: 4 layers of 384, 12 M and 9 M parameters... ours count 13.0 M
  and 9.8 M with the 65 -> 384 encoder).

**Normalisation** (``CHOICE``; the paper does not state one; optionally the
token features are also standardised with training-set statistics,
:func:`token_statistics`): the network
sees the row-equilibrated system ``Â = D A``, ``D = diag(1 / ||row_i(A)||_2)``
(same solution, condition number ~3e3 instead of ~5e5 for the diffusion
systems) and the unit right-hand side ``b̂ = D b / ||D b||``; its output,
times a fixed ``out_scale`` (the RMS of the normalised training solutions),
approximates ``x̂ = x / ||D b||``.  :func:`normalise_system` is the one
implementation, used by the trainer and by the preconditioner; the map
``b -> x`` of :meth:`SystemSolver.solve` is positively homogeneous.

**Serving** (:class:`SystemSolver`, what a model file holds): ``solve(A, b)``
for batches of systems, and ``forward(r, blocks, rowscale, gather, scatter)``
for the PETSc preconditioner, which solves every diagonal block of the local
matrix (prepared once at setup by :func:`prepare_blocks`) in one batched
network call per apply.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ARCHS",
    "ArchConfig",
    "PAPER_CONFIGS",
    "CPU_CONFIGS",
    "AlgebraformerCore",
    "RecurrentCore",
    "SystemSolver",
    "build_solver",
    "normalise_system",
    "make_tokens",
    "prepare_blocks",
    "diagonal_blocks",
    "split_sizes",
    "count_parameters",
    "token_statistics",
]

ARCHS = ("algebraformer", "lstm", "gru")


@dataclass
class ArchConfig:
    """Network hyperparameters; ``n`` is the system size the network solves."""

    arch: str = "algebraformer"
    n: int = 64
    width: int = 128
    layers: int = 4
    heads: int = 4
    mlp_ratio: int = 4
    positional: bool = True
    #: standardise each token feature with the training set's mean and std (see SystemSolver)
    standardize: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: The paper's architectures (§4).
PAPER_CONFIGS: dict[str, dict[str, Any]] = {
    "algebraformer": {"width": 256, "layers": 12, "heads": 8, "mlp_ratio": 4},
    "lstm": {"width": 384, "layers": 4},
    "gru": {"width": 384, "layers": 4},
}

#: CPU-sized defaults: similar parameter counts (~0.5 M) for the three
#: architectures, trainable in tens of minutes on one core.
CPU_CONFIGS: dict[str, dict[str, Any]] = {
    "algebraformer": {"width": 96, "layers": 4, "heads": 4, "mlp_ratio": 4},
    "lstm": {"width": 96, "layers": 2},
    "gru": {"width": 112, "layers": 2},
}


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class Block(nn.Module):
    """Pre-norm transformer block (eq. 1), bidirectional multi-head attention."""

    def __init__(self, width: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of heads {heads}")
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.fc = nn.Linear(width, mlp_ratio * width)
        self.out = nn.Linear(mlp_ratio * width, width)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        h = self.heads
        q = q.view(B, T, h, C // h).transpose(1, 2)
        k = k.view(B, T, h, C // h).transpose(1, 2)
        v = v.view(B, T, h, C // h).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class AlgebraformerCore(nn.Module):
    """Tokens ``(B, n, n + 1)`` -> normalised solution ``(B, n)``."""

    def __init__(self, n: int, width: int, layers: int, heads: int, mlp_ratio: int = 4,
                 positional: bool = True) -> None:
        super().__init__()
        self.encoder = nn.Linear(n + 1, width)
        self.pos = nn.Parameter(torch.zeros(n, width))
        self.use_pos = positional
        self.blocks = nn.ModuleList([Block(width, heads, mlp_ratio) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(width)
        self.decoder = nn.Linear(width, 1)
        # GPT-2's initialisation: N(0, 0.02), residual projections scaled by depth.
        for name, p in self.named_parameters():
            if p.dim() >= 2 and "ln" not in name:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("proj.weight",
                                                                     "out.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
        if not positional:
            self.pos.requires_grad_(False)

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.encoder(tokens)
        if self.use_pos:
            h = h + self.pos[: h.shape[1]]
        for blk in self.blocks:
            h = blk(h)
        return self.decoder(self.ln_f(h)).squeeze(-1)


class RecurrentCore(nn.Module):
    """Bidirectional LSTM or GRU with the Algebraformer encoding (§4)."""

    def __init__(self, kind: str, n: int, width: int, layers: int) -> None:
        super().__init__()
        self.encoder = nn.Linear(n + 1, width)
        if kind == "lstm":
            self.rnn = nn.LSTM(width, width, num_layers=layers, batch_first=True,
                               bidirectional=True)
        elif kind == "gru":
            self.rnn = nn.GRU(width, width, num_layers=layers, batch_first=True,
                              bidirectional=True)
        else:
            raise ValueError(f"unknown recurrent kind {kind!r}")
        self.decoder = nn.Linear(2 * width, 1)

    def forward(self, tokens: Tensor) -> Tensor:
        h, _ = self.rnn(self.encoder(tokens))
        return self.decoder(h).squeeze(-1)


class _LSTMCore(RecurrentCore):
    """RecurrentCore with a static LSTM type (TorchScript types ``self.rnn`` per class)."""

    def __init__(self, n: int, width: int, layers: int) -> None:
        super().__init__("lstm", n, width, layers)


class _GRUCore(RecurrentCore):
    def __init__(self, n: int, width: int, layers: int) -> None:
        super().__init__("gru", n, width, layers)


def normalise_system(A: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Row-equilibrate ``A x = b`` and scale ``b`` to unit norm.

    ``A``: ``(..., n, n)``, ``b``: ``(..., n)``.  Returns ``(Â, b̂, d, s)`` with
    ``d = 1 / ||row_i(A)||``, ``Â = d A``, ``s = ||d b||`` and ``b̂ = d b / s``
    (``s = 0`` leaves ``b̂ = 0``); the solution of ``Â y = b̂`` is ``x / s``.
    """
    d = 1.0 / torch.linalg.vector_norm(A, dim=-1)
    Ah = A * d.unsqueeze(-1)
    bd = b * d
    s = torch.linalg.vector_norm(bd, dim=-1)
    safe = torch.where(s > 0, s, torch.ones_like(s))
    return Ah, bd / safe.unsqueeze(-1), d, s


def make_tokens(Ah: Tensor, bh: Tensor) -> Tensor:
    """Token ``i = [column i of Â, b̂_i]``: ``(B, n, n + 1)``."""
    return torch.cat([Ah.transpose(-1, -2), bh.unsqueeze(-1)], dim=-1)


class SystemSolver(nn.Module):
    """A backbone with the normalisation and the PETSc serving path (a model file's module).

    ``forward(r, blocks, rowscale, gather, scatter)`` (preconditioner apply):
    ``blocks`` ``(nb, n, n)`` are the row-equilibrated diagonal blocks of the
    local matrix, padded with identity rows/columns up to ``n``; ``rowscale``
    ``(nb, n)`` the equilibration factors (0 on padding); ``gather`` ``(nb * n,)``
    the local row of each block position (``len(r)`` on padding, a zero);
    ``scatter`` ``(len(r),)`` the block position of each local row.  Each
    block's right-hand side is scaled to unit norm before the network and
    its solution scaled back, so the apply is positively homogeneous block by
    block.
    """

    def __init__(self, core: nn.Module, n: int, out_scale: float = 1.0) -> None:
        super().__init__()
        self.core = core
        self.n = n
        self.register_buffer("out_scale", torch.tensor(float(out_scale)))
        # Token features enter as (t - in_mean) / in_std: identity unless the trainer
        # sets them from its data (ArchConfig.standardize).
        self.register_buffer("in_mean", torch.zeros(n + 1))
        self.register_buffer("in_std", torch.ones(n + 1))

    def solve_normalised(self, Ah: Tensor, bh: Tensor) -> Tensor:
        """``(B, n, n), (B, n) -> (B, n)``: the network on normalised systems."""
        tokens = (make_tokens(Ah, bh) - self.in_mean) / self.in_std
        return self.core(tokens) * self.out_scale

    @torch.jit.export
    def solve(self, A: Tensor, b: Tensor) -> Tensor:
        """Approximate ``A^{-1} b`` for a batch ``(B, n, n), (B, n)`` (any row scaling)."""
        Ah, bh, _, s = normalise_system(A, b)
        return self.solve_normalised(Ah, bh) * s.unsqueeze(-1)

    def _blocks_apply(self, R: Tensor, blocks: Tensor, rowscale: Tensor, gather: Tensor,
                      scatter: Tensor) -> Tensor:
        """``R`` ``(m, k)`` local right-hand sides -> ``(m, k)`` block solutions."""
        nb, n = rowscale.shape[0], self.n
        k = R.shape[1]
        Rext = torch.cat([R, torch.zeros(1, k, dtype=R.dtype, device=R.device)], dim=0)
        # (nb, n, k): equilibrated right-hand sides of every block and column
        Bd = Rext.index_select(0, gather).view(nb, n, k) * rowscale.unsqueeze(-1)
        s = torch.linalg.vector_norm(Bd, dim=1)  # (nb, k)
        safe = torch.where(s > 0, s, torch.ones_like(s))
        bh = (Bd / safe.unsqueeze(1)).permute(0, 2, 1).reshape(nb * k, n)
        Ah = blocks.unsqueeze(1).expand(nb, k, n, n).reshape(nb * k, n, n)
        y = self.solve_normalised(Ah, bh).view(nb, k, n) * s.unsqueeze(-1)
        return y.permute(0, 2, 1).reshape(nb * n, k).index_select(0, scatter)

    def forward(self, r: Tensor, blocks: Tensor, rowscale: Tensor, gather: Tensor,
                scatter: Tensor) -> Tensor:
        return self._blocks_apply(r.unsqueeze(1), blocks, rowscale, gather, scatter).squeeze(1)

    @torch.jit.export
    def forward_batch(self, R: Tensor, blocks: Tensor, rowscale: Tensor, gather: Tensor,
                      scatter: Tensor) -> Tensor:
        return self._blocks_apply(R, blocks, rowscale, gather, scatter)


def token_statistics(Ah: Tensor, bh: Tensor, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of each token feature over a set of normalised systems.

    Systems whose matrices share a dominant part (the Newton Hessians of a
    uniform ``A`` are ``c 1 1^T`` plus 5% deviations) carry their information
    in small variations of the tokens; standardising the features makes those
    variations O(1) for the network.
    """
    total = torch.zeros(Ah.shape[-1] + 1, dtype=torch.float64)
    sq = torch.zeros_like(total)
    count = 0
    for i in range(0, Ah.shape[0], chunk):
        t = make_tokens(Ah[i:i + chunk], bh[i:i + chunk]).double().reshape(-1, total.numel())
        total += t.sum(0)
        sq += t.pow(2).sum(0)
        count += t.shape[0]
    mean = total / count
    std = (sq / count - mean.pow(2)).clamp_min(0.0).sqrt()
    return mean, torch.where(std > 1e-12 * std.max(), std, torch.ones_like(std))


def build_solver(cfg: ArchConfig, out_scale: float = 1.0) -> SystemSolver:
    """The network of ``cfg`` wrapped in a :class:`SystemSolver`."""
    if cfg.arch == "algebraformer":
        core: nn.Module = AlgebraformerCore(cfg.n, cfg.width, cfg.layers, cfg.heads,
                                            cfg.mlp_ratio, cfg.positional)
    elif cfg.arch == "lstm":
        core = _LSTMCore(cfg.n, cfg.width, cfg.layers)
    elif cfg.arch == "gru":
        core = _GRUCore(cfg.n, cfg.width, cfg.layers)
    else:
        raise ValueError(f"unknown architecture {cfg.arch!r}; known: {', '.join(ARCHS)}")
    return SystemSolver(core, cfg.n, out_scale)


def split_sizes(m: int, n: int, blocks: int = 0) -> list[int]:
    """Sizes of ``blocks`` contiguous blocks covering ``m`` rows (0: as few as fit in ``n``).

    The sizes differ by at most one.
    """
    if m == 0:
        return []
    nb = blocks if blocks > 0 else -(-m // n)
    nb = min(nb, m)
    q, rem = divmod(m, nb)
    return [q + 1] * rem + [q] * (nb - rem)


def prepare_blocks(diag_blocks: list[Tensor], n: int
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The static inputs of :meth:`SystemSolver.forward` for dense diagonal blocks.

    ``diag_blocks``: the contiguous diagonal blocks of the local matrix, in
    order, each square and of at most ``n`` rows.  Returns ``(blocks,
    rowscale, gather, scatter)``; a block with a zero row raises
    ``ValueError`` (the block is singular).
    """
    sizes = [int(b.shape[0]) for b in diag_blocks]
    m, nb = sum(sizes), len(sizes)
    like = diag_blocks[0] if diag_blocks else torch.zeros(0)
    dtype, device = like.dtype, like.device
    blocks = torch.zeros(nb, n, n, dtype=dtype, device=device)
    rowscale = torch.zeros(nb, n, dtype=dtype, device=device)
    gather = torch.full((nb * n,), m, dtype=torch.long, device=device)
    scatter = torch.empty(m, dtype=torch.long, device=device)
    start = 0
    for k, sub in enumerate(diag_blocks):
        size = sizes[k]
        if size > n or tuple(sub.shape) != (size, size):
            raise ValueError(f"block {k} has shape {tuple(sub.shape)}; blocks must be square "
                             f"with at most the model's {n} rows")
        norms = torch.linalg.vector_norm(sub, dim=1)
        if bool((norms == 0).any()):
            row = start + int(torch.nonzero(norms == 0)[0, 0])
            raise ValueError(f"local row {row} is zero in its diagonal block {k}: "
                             "the block is singular")
        blocks[k, :size, :size] = sub / norms.unsqueeze(1)
        if size < n:
            idx = torch.arange(size, n, device=device)
            blocks[k, idx, idx] = 1.0
        rowscale[k, :size] = 1.0 / norms
        pos = k * n + torch.arange(size, device=device)
        gather[pos] = torch.arange(start, start + size, device=device)
        scatter[start:start + size] = pos
        start += size
    return blocks, rowscale, gather, scatter


def diagonal_blocks(crow: Tensor, col: Tensor, val: Tensor, sizes: list[int]) -> list[Tensor]:
    """Dense contiguous diagonal blocks of a CSR matrix (entries outside them dropped).

    Memory is ``sum(size^2)``, never ``m^2``.
    """
    m = int(crow.numel()) - 1
    device = crow.device
    if len(sizes) == 1:  # the whole matrix; the arrays come from a checked CSR tensor
        csr = torch.sparse_csr_tensor(crow, col, val, (m, m), check_invariants=False)
        return [csr.to_dense()]
    rows = torch.repeat_interleave(torch.arange(m, device=device), crow.diff())
    block_of = torch.repeat_interleave(torch.arange(len(sizes), device=device),
                                       torch.tensor(sizes, device=device))
    keep = block_of[rows] == block_of[col]
    rows, col, val, b = rows[keep], col[keep], val[keep], block_of[rows[keep]]
    out, start = [], 0
    for k, size in enumerate(sizes):
        sel = b == k
        blk = torch.zeros(size, size, dtype=val.dtype, device=device)
        blk[rows[sel] - start, col[sel] - start] = val[sel]
        out.append(blk)
        start += size
    return out
