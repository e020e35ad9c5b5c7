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


def network_precond(net: KrylovUNet, systems: list[CoupledSystem]):
    """The network as the flexible preconditioner of a batch of systems: ``(B, n) -> (B, n)``.

    The network computes in its own dtype (float32 for training) and the result is
    cast back to the systems' dtype: the Krylov recurrences (and the static
    residual) stay in the systems' precision.  This matters: a float32 Arnoldi
    process reaches its rounding floor (relative residual ~1e-7) within the ten
    steps of the dynamic loss of a good preconditioner, and its late sines are
    then rounding noise, not geometry.  FGMRES is flexible, so a float32
    network inside a float64 iteration is exact for the basis it builds.
    """
    ndt = next(net.parameters()).dtype
    geo = torch.stack([s.geometry for s in systems]).to(ndt)
    diag = torch.stack([s.diagonal for s in systems]).to(ndt)

    def prec(V: torch.Tensor) -> torch.Tensor:
        return net.apply_batch(V.to(ndt), geo, diag).to(V.dtype)

    return prec


def static_loss(net: KrylovUNet, systems: list[CoupledSystem], R: torch.Tensor) -> torch.Tensor:
    """``mean_i ||S_i N(r_i) - r_i|| / ||r_i||`` for the rows ``r_i`` of ``R`` ``(B, n)``."""
    Z = network_precond(net, systems)(R)
    res = batch_matvec(systems)(Z) - R
    return (torch.linalg.vector_norm(res, dim=-1) / torch.linalg.vector_norm(R, dim=-1)).mean()


def dynamic_loss(
    net: KrylovUNet, systems: list[CoupledSystem], b: torch.Tensor, m: int = 10,
    kind: str = "mean",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, sines (B, m))``: ``m`` FGMRES steps on ``S_i x = b_i``, ``net`` the PC.

    ``kind="mean"``: seed 002's loss, the mean of ``|sin theta_j|``.
    ``kind="log"`` (an option, not the paper's): the mean of ``log |sin theta_j|``,
    i.e. the log of the geometric mean that seed 002's inequality bounds by the
    arithmetic one, ``(1/m) log(||r_m|| / ||r_0||)``: the residual reduction itself.
    """
    res = fgmres(batch_matvec(systems), b, network_precond(net, systems), m)
    sines = res.sines
    if kind == "mean":
        loss = sines.abs().mean()
    elif kind == "log":
        loss = torch.log(sines.abs().clamp_min(1e-30)).mean()
    else:
        raise ValueError(f"unknown dynamic loss {kind!r} (mean or log)")
    return loss, sines.detach()
