"""Algebraformer's loss and metric: relative mean squared error of the solution.

The paper trains on the squared error ``sum_i (x_i - y_i)^2`` (eq. 2) and
reports a relative MSE (Table 1, Fig. 2).  We train on the metric itself,
``mean_k ||x̂_k - x_k||^2 / ||x_k||^2`` over a batch: it is invariant to the
scale of each system, so systems of every size count alike.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["relative_mse", "relative_mse_each"]


def relative_mse_each(pred: Tensor, target: Tensor) -> Tensor:
    """``||pred_k - target_k||^2 / ||target_k||^2`` per system (last axis: the unknowns)."""
    err = (pred - target).pow(2).sum(-1)
    return err / target.pow(2).sum(-1).clamp_min(torch.finfo(target.dtype).tiny)


def relative_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean of :func:`relative_mse_each` over the batch."""
    return relative_mse_each(pred, target).mean()
