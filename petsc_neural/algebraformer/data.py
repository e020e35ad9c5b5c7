"""Training and test sets of Algebraformer as normalised tensors.

Tasks: the three Chebyshev BVPs of :mod:`firedrake_problems.spectral`
(``diffusion``, ``reaction``, ``advection``; systems of size 64) and the
Newton steps of the l_p regression (``newton``, size 60; :mod:`.newton`).
Sets are generated deterministically from a seed and cached as HDF5 files
in a work directory; the test set of a task uses seed ``data_seed + 1000``
(disjoint from every training seed below 1000).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from .network import normalise_system

__all__ = ["TASKS", "TASK_SIZES", "SystemSet", "load_task", "normalised_set", "random_rhs",
           "TEST_SEED_OFFSET"]

TASKS = ("diffusion", "reaction", "advection", "newton")
#: System size of each task (the model's n).
TASK_SIZES = {"diffusion": 64, "reaction": 64, "advection": 64, "newton": 60}
TEST_SEED_OFFSET = 1000


@dataclass
class SystemSet:
    """Normalised systems: ``Ah`` (N, n, n), ``bh`` (N, n) unit, targets ``xh`` (N, n).

    ``A``, ``b``, ``x`` keep the raw float64 systems (for the classical
    solvers and for evaluation in the original scaling).
    """

    task: str
    Ah: torch.Tensor
    bh: torch.Tensor
    xh: torch.Tensor
    A: np.ndarray
    b: np.ndarray
    x: np.ndarray

    def __len__(self) -> int:
        return int(self.Ah.shape[0])

    @property
    def n(self) -> int:
        return int(self.Ah.shape[1])

    def to(self, device: torch.device | str, dtype: torch.dtype) -> SystemSet:
        return SystemSet(self.task, self.Ah.to(device, dtype), self.bh.to(device, dtype),
                         self.xh.to(device, dtype), self.A, self.b, self.x)


def normalised_set(task: str, A: np.ndarray, b: np.ndarray, x: np.ndarray,
                   dtype: torch.dtype = torch.float32, keep_raw: bool = True,
                   chunk: int = 2048) -> SystemSet:
    """The normalised tensors (:func:`.network.normalise_system`, in float64, stored in ``dtype``).

    ``keep_raw=False`` drops the float64 arrays (training sets: half the memory).
    """
    if A.shape[0] == 0:
        raise ValueError(f"no {task} systems to normalise")
    Ahs, bhs, xhs = [], [], []
    for i in range(0, A.shape[0], chunk):
        Ah, bh, _, s = normalise_system(torch.from_numpy(A[i:i + chunk]),
                                        torch.from_numpy(b[i:i + chunk]))
        Ahs.append(Ah.to(dtype))
        bhs.append(bh.to(dtype))
        xhs.append((torch.from_numpy(x[i:i + chunk]) / s.unsqueeze(-1)).to(dtype))
    Ah, bh, xh = torch.cat(Ahs), torch.cat(bhs), torch.cat(xhs)
    if not keep_raw:
        A = b = x = np.zeros((0,))
    return SystemSet(task, Ah, bh, xh, A, b, x)


def random_rhs(Ah: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random right-hand sides ``b̂ = Â e / ||Â e||`` and their solutions ``e / ||Â e||``.

    ``e`` has random cosine coefficients in the index ``i`` (at Chebyshev-Gauss-
    Lobatto nodes these are the Chebyshev polynomials) with spectral decay
    ``(k + 1)^-s``, ``s ~ U[0, 3]`` per system: from white noise to smooth
    functions.  These are the residuals a Krylov method hands a preconditioner
    (``r = A e`` for an error ``e``), unlike the smooth sources of the paper.
    """
    B, n = Ah.shape[0], Ah.shape[1]
    dtype = Ah.dtype
    k = torch.arange(n, dtype=dtype)
    decay = torch.rand(B, 1, generator=gen, dtype=dtype) * 3.0
    coef = torch.randn(B, n, generator=gen, dtype=dtype) * (k + 1.0).pow(-decay)
    i = torch.arange(n, dtype=dtype)
    basis = torch.cos(torch.pi * torch.outer(k, i) / max(n - 1, 1))  # (k, i)
    e = (coef @ basis).to(Ah.device)
    b = (Ah @ e.unsqueeze(-1)).squeeze(-1)
    s = torch.linalg.vector_norm(b, dim=-1, keepdim=True)
    return b / s, e / s


def load_task(task: str, count: int, seed: int, workdir: str | os.PathLike,
              progress: bool = False, dtype: torch.dtype = torch.float32,
              keep_raw: bool = True) -> SystemSet:
    """``count`` systems of ``task`` from seed ``seed`` (for ``newton``: ``count`` trajectories).

    Generated on first use and cached in ``workdir``.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    os.makedirs(os.fspath(workdir), exist_ok=True)
    if task == "newton":
        from .newton import cached_newton_steps

        A, b, x = cached_newton_steps(count, seed, workdir, progress=progress)
        return normalised_set(task, A, b, x, dtype, keep_raw)
    from firedrake_problems.spectral import cached_set

    data = cached_set(task, count, seed, workdir, n=TASK_SIZES[task], progress=progress)
    return normalised_set(task, data.A, data.b, data.x, dtype, keep_raw)
