"""NPO's training losses (seed 000 §3.3 and §5.1.1), pure torch.

Every loss is relative (each column divided by its own norm), so residuals of
any scale count alike, and is averaged over the columns of a batch.

- :func:`condition_loss` (eq. 9): ``‖(I - A M)(r_i)‖² / ‖r_i‖²`` over sampled
  residuals ``r_i``, the sampled form of ``‖I - A M‖_F²`` (eq. 8).
- :func:`residual_loss` (eq. 10): ``‖A M(b_i) - b_i‖² / ‖b_i‖²`` on the
  right-hand sides.
- :func:`data_loss` (§5.1.1): ``‖M(r_k) - e_k‖² / ‖e_k‖²`` on the recorded
  Krylov iterates, with ``e_k = x_final - x_k`` the error of iterate k (what
  an exact preconditioner would return for the residual ``r_k``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

__all__ = ["LossWeights", "condition_loss", "residual_loss", "data_loss", "npo_loss"]


def _relative_sq(diff: Tensor, ref: Tensor) -> Tensor:
    num = (diff * diff).sum(dim=0)
    den = torch.clamp((ref * ref).sum(dim=0), min=1e-300)
    return (num / den).mean()


def condition_loss(A: Tensor, R: Tensor, Z: Tensor) -> Tensor:
    """Eq. 9: mean over columns of ``‖R - A Z‖² / ‖R‖²`` (``R``, ``Z``: (n, B))."""
    return _relative_sq(R - torch.sparse.mm(A, Z), R)


def residual_loss(A: Tensor, b: Tensor, z: Tensor) -> Tensor:
    """Eq. 10: ``‖A z - b‖² / ‖b‖²`` with ``z = M(b)`` (columns of (n, B) or (n,))."""
    if b.dim() == 1:
        b, z = b.unsqueeze(1), z.unsqueeze(1)
    return _relative_sq(torch.sparse.mm(A, z) - b, b)


def data_loss(Z: Tensor, E: Tensor) -> Tensor:
    """§5.1.1: ``‖Z - E‖² / ‖E‖²`` with ``Z = M(r_k)`` and ``E`` the recorded errors."""
    return _relative_sq(Z - E, E)


@dataclass
class LossWeights:
    """Weights of the three losses; a weight of 0 switches that loss off."""

    condition: float = 1.0
    residual: float = 1.0
    data: float = 1.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def npo_loss(
    A: Tensor,
    weights: LossWeights,
    *,
    R_cond: Tensor | None = None,
    Z_cond: Tensor | None = None,
    b: Tensor | None = None,
    z_b: Tensor | None = None,
    Z_data: Tensor | None = None,
    E_data: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Weighted sum of the switched-on losses, and each loss's value (for logging)."""
    total = torch.zeros((), dtype=A.dtype, device=A.device)
    parts: dict[str, float] = {}
    if weights.condition and R_cond is not None and Z_cond is not None and R_cond.shape[1]:
        loss = condition_loss(A, R_cond, Z_cond)
        total = total + weights.condition * loss
        parts["condition"] = float(loss.detach())
    if weights.residual and b is not None and z_b is not None:
        loss = residual_loss(A, b, z_b)
        total = total + weights.residual * loss
        parts["residual"] = float(loss.detach())
    if weights.data and Z_data is not None and E_data is not None and E_data.shape[1]:
        loss = data_loss(Z_data, E_data)
        total = total + weights.data * loss
        parts["data"] = float(loss.detach())
    return total, parts
