"""Shared helpers of the Algebraformer tests: tiny models and small Chebyshev systems."""

from __future__ import annotations

import numpy as np
import torch

from firedrake_problems.spectral import generate
from pcshell import ModelMetadata, save_model
from petsc_neural.algebraformer.network import ArchConfig, SystemSolver, build_solver

N_TINY = 16


def tiny_solver(n: int = N_TINY, arch: str = "algebraformer", seed: int = 0,
                dtype: torch.dtype = torch.float64) -> SystemSolver:
    torch.manual_seed(seed)
    cfg = ArchConfig(arch=arch, n=n, width=16, layers=1, heads=2)
    return build_solver(cfg, out_scale=50.0).to(dtype).eval()


def save_tiny(path: str, n: int = N_TINY, dtype: torch.dtype = torch.float64,
              seed: int = 0) -> str:
    solver = tiny_solver(n, seed=seed, dtype=dtype)
    meta = ModelMetadata(
        method="algebraformer", problem_family="diffusion", block_size=1,
        dtype="float64" if dtype == torch.float64 else "float32", n=None,
        inputs=["residual", "blocks", "rowscale", "gather", "scatter"], linear=False,
        training={"arch": "algebraformer",
                  "network": ArchConfig(arch="algebraformer", n=n, width=16, layers=1,
                                        heads=2).to_dict()},
    )
    save_model(solver, path, meta)
    return path


class ExactCore(torch.nn.Module):
    """A stand-in backbone that solves the normalised system exactly (LU) from its tokens.

    Served through the same SystemSolver and PC code as a network, it makes the
    PC an exact block solver: convergence tests then test the plumbing, not a
    tiny network's accuracy.
    """

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        Ah = tokens[:, :, : self.n].transpose(1, 2)
        bh = tokens[:, :, self.n]
        return torch.linalg.solve(Ah, bh.unsqueeze(-1)).squeeze(-1) + 0.0 * self.dummy


def save_exact(path: str, n: int = N_TINY) -> str:
    """A model file whose network is :class:`ExactCore` (float64)."""
    solver = SystemSolver(ExactCore(n), n, out_scale=1.0).double().eval()
    meta = ModelMetadata(
        method="algebraformer", problem_family="diffusion", block_size=1, dtype="float64",
        n=None, inputs=["residual", "blocks", "rowscale", "gather", "scatter"], linear=False,
        training={"arch": "exact"},
    )
    save_model(solver, path, meta)
    return path


def chebyshev_system(n: int, seed: int = 0, kind: str = "diffusion"
                     ) -> tuple[np.ndarray, np.ndarray]:
    data = generate(kind, 1, seed=seed, n=n)
    return data.A[0], data.b[0]
