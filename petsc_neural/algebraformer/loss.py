"""Algebraformer's loss and metric: relative mean squared error of the solution.

The paper trains on the squared error ``sum_i (x_i - y_i)^2`` (eq. 2) and
reports a relative MSE (Table 1, Fig. 2).  We train on the metric itself,
``mean_k ||x̂_k - x_k||^2 / ||x_k||^2`` over a batch: it is invariant to the
scale of each system, so systems of every size count alike.  Models meant as
Krylov preconditioners add the relative residual (:func:`relative_residual`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["relative_mse", "relative_mse_each", "relative_residual", "paired_ratio_interval"]


def relative_mse_each(pred: Tensor, target: Tensor) -> Tensor:
    """``||pred_k - target_k||^2 / ||target_k||^2`` per system (last axis: the unknowns)."""
    err = (pred - target).pow(2).sum(-1)
    return err / target.pow(2).sum(-1).clamp_min(torch.finfo(target.dtype).tiny)


def relative_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean of :func:`relative_mse_each` over the batch."""
    return relative_mse_each(pred, target).mean()


def relative_residual(Ah: Tensor, pred: Tensor, bh: Tensor) -> Tensor:
    """Mean of ``||Â pred_k - b̂_k||^2 / ||b̂_k||^2``: the loss of a preconditioner.

    The error loss weighs the smooth part of a solution (``A^{-1}`` amplifies
    it); a Krylov method needs the residual reduced in every direction, which
    this loss asks for.
    """
    res = (Ah @ pred.unsqueeze(-1)).squeeze(-1) - bh
    return (res.pow(2).sum(-1) / bh.pow(2).sum(-1).clamp_min(torch.finfo(bh.dtype).tiny)).mean()


def paired_ratio_interval(base: np.ndarray, other: np.ndarray, rng: np.random.Generator,
                          reps: int = 2000) -> tuple[float, float, float]:
    """``mean(base) / mean(other)`` of per-system errors on the same systems, and its
    paired bootstrap 95% interval (``reps`` resamples of the systems)."""
    idx = rng.integers(0, len(other), size=(reps, len(other)))
    ratios = base[idx].mean(axis=1) / other[idx].mean(axis=1)
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    return float(base.mean() / other.mean()), float(lo), float(hi)
