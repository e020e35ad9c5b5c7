"""alpha-MSNN: the adaptive multiscale network of seed 003 for a Green's function G(x, y).

Pure torch and scriptable (``torch.jit.script``); no petsc4py, no Firedrake.

The kernel (seed 003, eqs. 27-28, 39-41) is a sum of

- one global **far-field** branch ``phi_far(x, y, p)`` (a tanh MLP, 3 hidden
  layers of 50 neurons);
- per source width ``eps_k`` (the multi-eps schedule, e.g. 1e-2, 1e-3, 1e-4
  in 1D) a **near-field** and a **middle-field** branch
  ``phi_j = eps^alpha_j(y) f_j((x - y) / eps^beta_j(y), y, p)`` with learned,
  source-dependent exponents (tanh MLPs with 5 neurons per hidden layer) under
  the ordering constraints ``beta_2 < beta_1`` (broader support) and
  ``alpha_2 >= alpha_1`` (weaker amplitude), enforced by construction:
  ``beta_1 = 1 + 0.25 tanh(.)``, ``beta_2 = beta_1 sigmoid(.)``,
  ``alpha_2 = alpha_1 + softplus(.)``;
- at the finest level, an overlapping **domain-decomposition mixture**
  ``sum_m r_m(s) expert_m`` of ``Q`` copies of that level's branches, with a
  softmax gating network ``r(s)`` of the source ``s = y`` (or of the problem
  parameters ``s = p`` for a parametric family, e.g. 9 subdomains in theta).

``p`` are problem parameters passed through unscaled (``(cos 2 theta, sin 2
theta)`` for the rotated Laplacian; an empty ``(B, 0)`` tensor otherwise).

Besides ``forward(x, y, p) -> G`` (what the preconditioner evaluates) the
network has :meth:`AlphaMSNN.derivatives`, which returns ``G``, ``grad_x G``
and the second derivatives ``d2G/dx_k dx_l`` (pairs ``(0,0)``, ``(1,1)``,
``(0,1)`` in 2D) by forward-mode propagation through the tanh layers: for a
tanh MLP that is ``1 + dim + n_pairs`` times a forward pass, far cheaper than
differentiating twice with autograd, and it is what the PDE-residual loss
needs (``L_x G`` in eq. 33).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["StackedMLP", "Level", "AlphaMSNN", "hessian_pairs", "count_parameters"]


def count_parameters(module: nn.Module) -> int:
    return sum(int(p.numel()) for p in module.parameters())


def _tanh(z: torch.Tensor) -> torch.Tensor:
    """``tanh(z)`` as ``2 sigmoid(2z) - 1``: the same function, several times faster than
    ``torch.tanh`` on CPU builds whose tanh is not vectorised (measured 1.5 vs 5-9 ns an
    element on the AVX2 machine these models were trained on)."""
    return torch.sigmoid(2.0 * z) * 2.0 - 1.0


def hessian_pairs(dim: int) -> list[tuple[int, int]]:
    """The second derivatives kept, in order: diagonal ones first, then the mixed one."""
    if dim == 1:
        return [(0, 0)]
    if dim == 2:
        return [(0, 0), (1, 1), (0, 1)]
    raise ValueError(f"alpha-MSNN supports 1D and 2D, got dim={dim}")


class StackedMLP(nn.Module):
    """``E`` tanh MLPs of one shape evaluated together (batched matmuls), linear read-out.

    ``forward(z)``: ``z`` ``(E, B, n_in)`` -> ``(E, B, n_out)``.  ``derivatives(z)`` also
    returns the first ``(E, B, nd, n_out)`` and second ``(E, B, n_pairs, n_out)``
    derivatives in the first ``nd`` inputs (pairs of :func:`hessian_pairs`), propagated
    forward through the layers (exact, no autograd).  Batching the experts and branches
    of a level into one matmul per layer is what makes evaluating the kernel on ``10^7``
    to ``10^8`` pairs affordable on a CPU.
    """

    def __init__(self, n_mlps: int, n_in: int, width: int, depth: int, nd: int,
                 n_out: int = 1, zero_last: bool = False) -> None:
        super().__init__()
        self.nd = int(nd)
        dims = [n_in] + [width] * depth + [n_out]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            bound = 1.0 / math.sqrt(a)
            last = i == len(dims) - 2
            w = torch.empty(n_mlps, a, b).uniform_(-bound, bound)  # stored transposed
            c = torch.empty(n_mlps, 1, b).uniform_(-bound, bound)
            if last and zero_last:
                w.zero_()
                c.zero_()
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(c))
        self.n_layers = len(dims) - 1
        self.pairs: list[tuple[int, int]] = hessian_pairs(nd) if nd > 0 else []

    def forward(self, z: torch.Tensor, first: int = -1, start: int = 0) -> torch.Tensor:
        """``first > 0``: only MLPs ``start .. start + first - 1`` (``z`` has that many rows)."""
        # tanh(u) = 2 sigmoid(2u) - 1, with the factors folded into the weights: with
        # h = sigmoid(2u) the next pre-activation is 2 W h + (b - W 1).  One elementwise
        # pass per layer instead of four (evaluation cost is what bounds the setup).
        h = z
        i = 0
        last = self.n_layers - 1
        for w_all, b_all in zip(self.weights, self.biases):  # noqa: B905 (TorchScript)
            w = w_all if first < 0 else w_all[start:start + first]
            b = b_all if first < 0 else b_all[start:start + first]
            if i == 0:  # 2u = 2 (z W + b)
                h = torch.sigmoid(torch.baddbmm(b, h, w, beta=2.0, alpha=2.0))
            else:  # u = (2h - 1) W + b = 2 h W + (b - 1 W)
                shift = b - w.sum(1, keepdim=True)
                if i < last:
                    h = torch.sigmoid(torch.baddbmm(shift, h, w, beta=2.0, alpha=4.0))
                else:
                    h = torch.baddbmm(shift, h, w, beta=1.0, alpha=2.0)
            i += 1
        return h

    def derivatives(self, z: torch.Tensor, first: int = -1
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Value ``(E, B)``, gradient ``(E, B, nd)``, second derivatives ``(E, B, n_pairs)``
        (single-output MLPs).  The value and derivative channels are stacked along the
        batch axis, so each layer is one ``bmm`` and every elementwise operation runs on
        contiguous ``(E, B, width)`` slices."""
        nd = self.nd
        E, B = z.shape[0], z.shape[1]
        w0 = self.weights[0] if first < 0 else self.weights[0][:first]
        b0 = self.biases[0] if first < 0 else self.biases[0][:first]
        zz = torch.baddbmm(b0, z, w0)
        width = zz.shape[2]
        dz = [w0[:, k:k + 1, :].expand(E, B, width) for k in range(nd)]
        hz: list[torch.Tensor] = []
        chans: list[torch.Tensor] = []
        i = 1
        for w_all, b_all in zip(self.weights, self.biases):  # noqa: B905 (TorchScript)
            w = w_all if first < 0 else w_all[:first]
            b = b_all if first < 0 else b_all[:first]
            if i > 1:
                # previous layer's activations and derivatives, stacked: one bmm
                u = torch.bmm(torch.cat(chans, dim=1), w)
                zz = u[:, :B] + b
                dz = [u[:, (1 + k) * B:(2 + k) * B] for k in range(nd)]
                hz = [u[:, (1 + nd + q) * B:(2 + nd + q) * B] for q in range(len(self.pairs))]
            if i == self.n_layers:
                return (zz[:, :, 0], torch.stack([d[:, :, 0] for d in dz], dim=2),
                        torch.stack([h[:, :, 0] for h in hz], dim=2))
            s = _tanh(zz)
            s1 = 1.0 - s * s
            s2 = -2.0 * s * s1
            chans = [s] + [s1 * d for d in dz]
            for q, (k, m) in enumerate(self.pairs):
                second = s2 * dz[k] * dz[m]
                chans.append(second if i == 1 else s1 * hz[q] + second)
            i += 1
        raise RuntimeError("unreachable")


def _softplus_inv(v: float) -> float:
    return math.log(math.expm1(v))


class Level(nn.Module):
    """The near- and middle-field branches of one eps level, for ``Q`` experts.

    Expert ``m``: ``sum_j eps^{alpha_jm(y,p)} f_jm((x - y) / eps^{beta_jm(y,p)}, y, p)``,
    ``j = 1`` (near, ``beta_1`` about 1) and ``j = 2`` (middle, ``beta_2 < beta_1``,
    ``alpha_2 >= alpha_1``).  ``alpha0`` is the amplitude exponent the trainer
    starts from (the balance rule of seed 003 eq. 26).  The ``2Q`` branch MLPs and
    the ``Q`` exponent MLPs are each evaluated as one :class:`StackedMLP`.
    """

    def __init__(self, dim: int, n_params: int, eps: float, width: int, n_experts: int = 1,
                 depth: int = 3, scale_width: int = 5, alpha0: float = 0.0) -> None:
        super().__init__()
        self.dim = int(dim)
        self.n_experts = int(n_experts)
        self.log_eps = float(math.log(eps))
        n_in = 2 * dim + n_params
        # branches: index 2m (near) and 2m + 1 (middle) of expert m
        self.branches = StackedMLP(2 * n_experts, n_in, width, depth, dim)
        # alpha_1, beta_1, alpha_2 - alpha_1, beta_2 / beta_1 (raw), zero at start
        self.scales = StackedMLP(n_experts, dim + n_params, scale_width, depth, 0, n_out=4,
                                 zero_last=True)
        self.alpha0 = nn.Parameter(torch.full((n_experts, 1), float(alpha0)))
        self.gap0 = _softplus_inv(0.5)  # alpha_2 - alpha_1 = 0.5 at start
        self.ratio0 = 0.0  # beta_2 = beta_1 / 2 at start

    def exponents(self, y: torch.Tensor, p: torch.Tensor, n: int = -1) -> torch.Tensor:
        """``(Q, B, 4)``: ``alpha_1, beta_1, alpha_2, beta_2`` of each expert at the sources
        (of the first ``n`` experts if ``n > 0``)."""
        q = self.n_experts if n < 0 else n
        yp = torch.cat([y, p], dim=1)
        s = self.scales(yp.unsqueeze(0).expand(q, yp.shape[0], yp.shape[1]), q)
        a1 = self.alpha0[:q] + s[:, :, 0]
        b1 = 1.0 + 0.25 * torch.tanh(s[:, :, 1])
        a2 = a1 + F.softplus(s[:, :, 2] + self.gap0)
        b2 = b1 * torch.sigmoid(s[:, :, 3] + self.ratio0)
        return torch.stack([a1, b1, a2, b2], dim=2)

    def _inputs(self, x: torch.Tensor, y: torch.Tensor, p: torch.Tensor, n: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        e = self.exponents(y, p, n)  # (Q, B, 4)
        Q, B = e.shape[0], e.shape[1]
        le = self.log_eps
        amp = torch.exp(e[:, :, 0::2] * le).reshape(Q, B, 2).transpose(1, 2).reshape(2 * Q, B)
        inv = torch.exp(-e[:, :, 1::2] * le).reshape(Q, B, 2).transpose(1, 2).reshape(2 * Q, B)
        d = (x - y).unsqueeze(0) * inv.unsqueeze(2)  # (2Q, B, dim)
        yp = torch.cat([y, p], dim=1).unsqueeze(0).expand(2 * Q, B, y.shape[1] + p.shape[1])
        return torch.cat([d, yp], dim=2), amp, inv

    def expert(self, x: torch.Tensor, y: torch.Tensor, p: torch.Tensor, m: int) -> torch.Tensor:
        """Expert ``m``'s value ``(B,)`` alone."""
        yp = torch.cat([y, p], dim=1)
        s = self.scales(yp.unsqueeze(0), 1, m)[0]
        a1 = self.alpha0[m] + s[:, 0]
        b1 = 1.0 + 0.25 * torch.tanh(s[:, 1])
        a2 = a1 + F.softplus(s[:, 2] + self.gap0)
        b2 = b1 * torch.sigmoid(s[:, 3] + self.ratio0)
        le = self.log_eps
        d = x - y
        z = torch.stack([torch.cat([d * torch.exp(-b1 * le).unsqueeze(1), yp], dim=1),
                         torch.cat([d * torch.exp(-b2 * le).unsqueeze(1), yp], dim=1)])
        f = self.branches(z, 2, 2 * m).squeeze(2)
        return torch.exp(a1 * le) * f[0] + torch.exp(a2 * le) * f[1]

    def forward(self, x: torch.Tensor, y: torch.Tensor, p: torch.Tensor, n: int = -1
                ) -> torch.Tensor:
        """``(Q, B)``: each expert's value (the first ``n`` experts if ``n > 0``)."""
        q = self.n_experts if n < 0 else n
        z, amp, _ = self._inputs(x, y, p, q)
        f = self.branches(z, 2 * q).squeeze(2) * amp  # (2Q, B)
        return f.reshape(q, 2, -1).sum(1)

    def derivatives(self, x: torch.Tensor, y: torch.Tensor, p: torch.Tensor, n: int = -1
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each expert's value ``(Q, B)``, gradient ``(Q, B, dim)`` and second derivatives
        ``(Q, B, n_pairs)`` in ``x`` (the first ``n`` experts if ``n > 0``)."""
        Q = self.n_experts if n < 0 else n
        z, amp, inv = self._inputs(x, y, p, Q)
        v, g, h = self.branches.derivatives(z, 2 * Q)
        v = (v * amp).reshape(Q, 2, -1).sum(1)
        g = g * (amp * inv).unsqueeze(2)
        g = g.reshape(Q, 2, g.shape[1], g.shape[2]).sum(1)
        h = h * (amp * inv * inv).unsqueeze(2)
        h = h.reshape(Q, 2, h.shape[1], h.shape[2]).sum(1)
        return v, g, h


class AlphaMSNN(nn.Module):
    """Green's function network ``G(x, y, p)`` (see the module docstring).

    ``eps``: the source widths, coarse to fine; ``widths``: hidden width of the
    near/middle branches per level; ``n_experts``: subdomains of the mixture
    at the finest level; ``gate_on``: ``"y"`` (spatial subdomains) or ``"p"``
    (subdomains in the parameters).  ``active_levels`` and ``mixture`` are the
    training stage (levels switched on, mixture on); an exported model has all
    levels and, if it was trained, the mixture on.
    """

    def __init__(
        self,
        dim: int,
        eps: list[float],
        widths: list[int],
        n_params: int = 0,
        far_width: int = 50,
        depth: int = 3,
        scale_width: int = 5,
        n_experts: int = 1,
        gate_on: str = "y",
        alpha0: list[float] | None = None,
        far_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if len(eps) != len(widths):
            raise ValueError("one width per eps level")
        if gate_on not in ("y", "p"):
            raise ValueError(f"gate_on must be 'y' or 'p', got {gate_on!r}")
        if gate_on == "p" and n_params == 0:
            raise ValueError("gating on the parameters needs n_params > 0")
        hessian_pairs(dim)  # validates dim
        self.dim = int(dim)
        self.n_params = int(n_params)
        self.n_levels = len(eps)
        self.eps = [float(e) for e in eps]
        self.n_experts = int(n_experts)
        self.gate_on_params = gate_on == "p"
        alpha0 = alpha0 if alpha0 is not None else [0.0] * len(eps)
        self.far = StackedMLP(1, 2 * dim + n_params, far_width, depth, dim)
        if far_scale > 1.0:
            self._multiscale_init(far_scale)
        self.levels = nn.ModuleList([
            Level(dim, n_params, e, w, 1, depth, scale_width, a0)
            for e, w, a0 in zip(eps[:-1], widths[:-1], alpha0[:-1], strict=True)
        ])
        self.finest = Level(dim, n_params, eps[-1], widths[-1], self.n_experts, depth,
                            scale_width, alpha0[-1])
        gate_in = n_params if self.gate_on_params else dim
        self.gate = StackedMLP(1, gate_in, scale_width, depth, 0, n_out=self.n_experts)
        self.active_levels = self.n_levels
        self.mixture = False

    @torch.jit.unused
    def _multiscale_init(self, scale: float) -> None:
        """Spread the far field's first-layer weights in ``x`` over scales ``1 .. scale``
        (log-uniform across neurons), each neuron's transition placed at a random point of
        the domain: the far field can then represent boundary layers (of width
        ``1 / scale``) from the start instead of growing its weights ~100-fold by SGD."""
        with torch.no_grad():
            w, b = self.far.weights[0], self.far.biases[0]  # (1, n_in, width), (1, 1, width)
            width = w.shape[2]
            g = torch.Generator().manual_seed(1234)
            s = scale ** torch.rand(width, generator=g, dtype=w.dtype)
            w[0, :self.dim, :] *= s
            c = torch.rand(self.dim, width, generator=g, dtype=w.dtype)
            b[0, 0, :] = -(w[0, :self.dim, :] * c).sum(0)

    # -- training stages (plain Python; not part of the scripted interface) --------------
    @torch.jit.unused
    def set_stage(self, active_levels: int, mixture: bool) -> None:
        if not 1 <= active_levels <= self.n_levels:
            raise ValueError(f"active_levels must be in 1..{self.n_levels}")
        if mixture and active_levels != self.n_levels:
            raise ValueError("the mixture is the last stage (all levels active)")
        self.active_levels = int(active_levels)
        self.mixture = bool(mixture)

    @torch.jit.export
    def gate_weights(self, y: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """``(n_experts, B)``: the mixture weights ``r_m``, nonnegative, summing to one
        (expert 0 alone before the mixture stage)."""
        if not self.mixture:
            w = torch.zeros(self.n_experts, y.shape[0], dtype=y.dtype, device=y.device)
            w[0] = 1.0
            return w
        s = p if self.gate_on_params else y
        return torch.softmax(self.gate(s.unsqueeze(0))[0], dim=1).t()

    @torch.jit.export
    def gate_logits(self, y: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        s = p if self.gate_on_params else y
        return self.gate(s.unsqueeze(0))[0]

    def forward(self, x: torch.Tensor, y: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """``G(x_b, y_b, p_b)`` for a batch of pairs: ``x, y`` ``(B, dim)``, ``p``
        ``(B, n_params)``."""
        g = self.far(torch.cat([x, y, p], dim=1).unsqueeze(0))[0, :, 0]
        k = 0
        for level in self.levels:
            if k < self.active_levels:
                g = g + level(x, y, p)[0]
            k += 1
        if self.active_levels == self.n_levels:
            if self.mixture:
                r = self.gate_weights(y, p)
                if self.gate_on_params:
                    # one parameter value per preconditioner: experts whose weight is below
                    # 1e-7 everywhere in the batch are skipped (the sum moves by less than
                    # 1e-7 of an expert's value; a 9-expert model mostly runs 2 or 3)
                    wmax = r.max(1).values
                    for m in range(self.n_experts):
                        if bool(wmax[m] >= 1e-7):
                            g = g + r[m] * self.finest.expert(x, y, p, m)
                else:
                    g = g + (r * self.finest(x, y, p)).sum(0)
            else:
                g = g + self.finest(x, y, p, 1)[0]
        return g

    @torch.jit.export
    def derivatives(self, x: torch.Tensor, y: torch.Tensor, p: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``G``, ``grad_x G`` ``(B, dim)`` and ``d2G/dx_k dx_l`` ``(B, n_pairs)``."""
        v, g, h = self.far.derivatives(torch.cat([x, y, p], dim=1).unsqueeze(0))
        v, g, h = v[0], g[0], h[0]
        k = 0
        for level in self.levels:
            if k < self.active_levels:
                lv, lg, lh = level.derivatives(x, y, p)
                v, g, h = v + lv[0], g + lg[0], h + lh[0]
            k += 1
        if self.active_levels == self.n_levels:
            if self.mixture:
                r = self.gate_weights(y, p)
                lv, lg, lh = self.finest.derivatives(x, y, p)
                v = v + (r * lv).sum(0)
                g = g + (r.unsqueeze(2) * lg).sum(0)
                h = h + (r.unsqueeze(2) * lh).sum(0)
            else:
                lv, lg, lh = self.finest.derivatives(x, y, p, 1)
                v, g, h = v + lv[0], g + lg[0], h + lh[0]
        return v, g, h

    @torch.jit.export
    def exponents(self, y: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """Learned exponents at the sources: ``(B, n_levels, 4)`` = alpha_1, beta_1, alpha_2,
        beta_2 per level (the finest level's mixed by the gate weights)."""
        out: list[torch.Tensor] = []
        for level in self.levels:
            out.append(level.exponents(y, p)[0])
        if self.mixture:
            r = self.gate_weights(y, p)
            out.append((r.unsqueeze(2) * self.finest.exponents(y, p)).sum(0))
        else:
            out.append(self.finest.exponents(y, p, 1)[0])
        return torch.stack(out, dim=1)

    # -- domain decomposition (plain Python) ---------------------------------------------
    @torch.jit.unused
    def replicate_finest(self, noise: float, generator: torch.Generator) -> None:
        """Copy expert 0 of the finest level into the others, with small perturbations
        (breaks the symmetry before the mixture stage)."""
        with torch.no_grad():
            Q = self.n_experts
            for prm in self.finest.parameters():
                per = prm.shape[0] // Q  # 2 branch MLPs per expert, or 1
                src = prm[:per].clone()
                for m in range(1, Q):
                    pert = torch.randn(src.shape, generator=generator, dtype=prm.dtype)
                    prm[m * per:(m + 1) * per] = src + noise * pert * (src.abs().mean() + 1e-3)
