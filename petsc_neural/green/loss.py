"""Losses of the Green's-function training (seed 003 eqs. 33, 36-38).

``L_x G(x, y) = N_eps(x, y)`` with the regularised delta
``N_eps = (eps sqrt(pi))^-d exp(-|x - y|^2 / eps^2)`` (eq. 15), ``G = 0`` for
``x`` on the boundary, and anchors ``G(x*, y*) = g*`` from a coarse-grid
inverse (eq. 35).  The strong form ``L_x G`` comes from the network's
forward-mode derivatives (:meth:`AlphaMSNN.derivatives`) and the operator's
own :meth:`firedrake_problems.fd.CDROperator.apply` (the same coefficients the
finite-difference assembly uses).

Each part is a plain mean of squares; :class:`Balancer` divides each by a
running average of itself (the paper adjusts its weights "dynamically during
training"; this is one way to keep the parts on the same footing) before the
stage weights (``w_aux`` decreasing) are applied.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["gaussian_source", "pde_residual", "Batch", "loss_parts", "Balancer"]


def gaussian_source(x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """``N_eps(x, y)`` of seed 003 eq. 15 for a batch of pairs ``(B, d)``."""
    d = x.shape[1]
    r2 = ((x - y) ** 2).sum(1)
    return (1.0 / (eps * math.sqrt(math.pi))) ** d * torch.exp(-r2 / (eps * eps))


def pde_residual(net: Any, op: Any, x: torch.Tensor, y: torch.Tensor, p: torch.Tensor,
                 eps: float) -> torch.Tensor:
    """``L_x G(x, y, p) - N_eps(x, y)`` per pair (``op``: a ``CDROperator``)."""
    v, g, h = net.derivatives(x, y, p)
    d = x.shape[1]
    xs = [x[:, k] for k in range(d)]
    Lg = op.apply(xs, v, [g[:, k] for k in range(d)], [h[:, q] for q in range(h.shape[1])])
    return Lg - gaussian_source(x, y, eps)


@dataclass
class Batch:
    """One mini-batch: residual pairs near the diagonal and uniform, boundary pairs,
    anchors with their values.  ``p_*`` are the problem parameters per pair."""

    x_near: torch.Tensor
    y_near: torch.Tensor
    p_near: torch.Tensor
    x_unif: torch.Tensor
    y_unif: torch.Tensor
    p_unif: torch.Tensor
    x_bc: torch.Tensor
    y_bc: torch.Tensor
    p_bc: torch.Tensor
    x_aux: torch.Tensor
    y_aux: torch.Tensor
    p_aux: torch.Tensor
    g_aux: torch.Tensor


def loss_parts(net: Any, op_for: Callable[[torch.Tensor], Any], batch: Batch,
               eps: float) -> dict[str, torch.Tensor]:
    """Mean squares: ``res_near``, ``res_unif`` (eq. 33 on the two sets), ``bc`` (eq. 38),
    ``aux`` (eq. 36).  ``op_for(p)`` is the operator for the parameters ``p``."""
    b = batch
    r_near = pde_residual(net, op_for(b.p_near), b.x_near, b.y_near, b.p_near, eps)
    r_unif = pde_residual(net, op_for(b.p_unif), b.x_unif, b.y_unif, b.p_unif, eps)
    g_bc = net(b.x_bc, b.y_bc, b.p_bc)
    g_aux = net(b.x_aux, b.y_aux, b.p_aux)
    return {
        "res_near": (r_near * r_near).mean(),
        "res_unif": (r_unif * r_unif).mean(),
        "bc": (g_bc * g_bc).mean(),
        "aux": ((g_aux - b.g_aux) ** 2).mean(),
    }


class Balancer:
    """Divide each loss part by an exponential running average of its own value.

    ``state_dict``/``load_state_dict`` let the training loop checkpoint it.
    """

    def __init__(self, decay: float = 0.99) -> None:
        self.decay = float(decay)
        self.avg: dict[str, float] = {}

    def __call__(self, parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for k, v in parts.items():
            val = float(v.detach())
            prev = self.avg.get(k)
            self.avg[k] = val if prev is None else self.decay * prev + (1 - self.decay) * val
            out[k] = v / max(self.avg[k], 1e-30)
        return out

    def reset(self, keys: list[str] | None = None) -> None:
        """Forget the averages (at a stage change, where the residual's scale jumps)."""
        for k in keys if keys is not None else list(self.avg):
            self.avg.pop(k, None)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "avg": dict(self.avg)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.avg = {str(k): float(v) for k, v in state["avg"].items()}
