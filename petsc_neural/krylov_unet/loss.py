"""KrylovUNet's two losses (seed 002 §3, §5, §6).

- :func:`static_loss`: residual minimisation ``mean ||S N(r) - r|| / ||r||``
  over normalised right-hand sides (physics-informed and random unit
  vectors), without unrolling any solver;
- :func:`dynamic_loss`: the mean of ``|sin theta_j|``, the sines of the angles
  between the residual and the Krylov subspace, over the first ``m`` FGMRES
  iterations, batched over systems; the sines come out of the Givens
  rotations of the differentiable FGMRES (:mod:`petsc_neural.krylov`).
"""

from __future__ import annotations

import torch

from ..krylov import fgmres
from .network import KrylovUNet
from .system import CoupledSystem, batch_matvec

__all__ = ["static_loss", "dynamic_loss", "network_precond"]


def _stack_inputs(systems: list[CoupledSystem]) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.stack([s.geometry for s in systems]),
            torch.stack([s.diagonal for s in systems]))


def network_precond(net: KrylovUNet, systems: list[CoupledSystem]):
    """The network as the flexible preconditioner of a batch of systems: ``(B, n) -> (B, n)``."""
    geo, diag = _stack_inputs(systems)

    def prec(V: torch.Tensor) -> torch.Tensor:
        return net.apply_batch(V, geo, diag)

    return prec


def static_loss(net: KrylovUNet, systems: list[CoupledSystem], R: torch.Tensor) -> torch.Tensor:
    """``mean_i ||S_i N(r_i) - r_i|| / ||r_i||`` for the rows ``r_i`` of ``R`` ``(B, n)``."""
    Z = network_precond(net, systems)(R)
    res = batch_matvec(systems)(Z) - R
    return (torch.linalg.vector_norm(res, dim=-1) / torch.linalg.vector_norm(R, dim=-1)).mean()


def dynamic_loss(
    net: KrylovUNet, systems: list[CoupledSystem], b: torch.Tensor, m: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean |sin|, sines (B, m))``: ``m`` FGMRES steps on ``S_i x = b_i``, ``net`` the PC."""
    res = fgmres(batch_matvec(systems), b, network_precond(net, systems), m)
    sines = res.sines
    return sines.abs().mean(), sines.detach()
