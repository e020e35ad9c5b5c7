"""Analytic kernels served as GreenInverse model files (fast, deterministic tests)."""

from __future__ import annotations

import math

import torch
from torch import nn

from pcshell import ModelMetadata, save_model


class LaplaceGreen1D(nn.Module):
    """The Green's function of -u'' on (0, 1), Dirichlet: ``min(x,y) (1 - max(x,y))``.

    Sampled on the grid, ``h G`` is exactly the inverse of the 3-point Laplacian."""

    def forward(self, x: torch.Tensor, y: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        a, b = x[:, 0], y[:, 0]
        return torch.minimum(a, b) * (1.0 - torch.maximum(a, b))


class ScreenedKernel(nn.Module):
    """A local kernel: ``exp(-|x - y| / l) / (2 l)`` (screened diffusion, strong reaction)."""

    def __init__(self, length: float = 0.02) -> None:
        super().__init__()
        self.length = length

    def forward(self, x: torch.Tensor, y: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        r = torch.sqrt(((x - y) ** 2).sum(1) + 1e-30)
        return torch.exp(-r / self.length) / (2.0 * self.length)


class ConvectionKernel(nn.Module):
    """A long-range kernel like a convection-dominated Green's function: about ``1/b``
    everywhere downstream of the source (``x > y`` in every direction), boundary layer at 1."""

    def forward(self, x: torch.Tensor, y: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid((x - y) / 0.01).prod(1)
        layer = (1.0 - torch.exp(-(1.0 - x) / 0.02)).prod(1)
        return s * layer / (1.0 + y[:, 0] ** 2)


class SmoothKernel2D(nn.Module):
    """A smooth 2D kernel with a mild logarithmic peak (for compression accuracy)."""

    def forward(self, x: torch.Tensor, y: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        r2 = ((x - y) ** 2).sum(1)
        bump = (x * (1 - x)).prod(1) * (y * (1 - y)).prod(1)
        return -torch.log(r2 + 1e-2) * bump * (1 + x[:, 0] ** 2)


class ScreenedGreen2D(nn.Module):
    """The free-space Green's function of ``-Laplace + kappa^2`` in 2D, ``K0(kappa r)/(2 pi)``,
    with the logarithmic core cut at ``delta``: a fair approximate inverse for strong
    screening (the boundary barely matters)."""

    def __init__(self, kappa: float = 20.0, delta: float = 0.02) -> None:
        super().__init__()
        self.kappa, self.delta = kappa, delta

    def forward(self, x: torch.Tensor, y: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        r = torch.sqrt(((x - y) ** 2).sum(1) + self.delta**2)
        return torch.special.modified_bessel_k0(self.kappa * r) / (2 * math.pi)


class ParamKernel(nn.Module):
    """A parametric kernel (uses ``p = (cos 2 theta, sin 2 theta)``)."""

    def forward(self, x: torch.Tensor, y: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        d = x - y
        q = d[:, 0] * p[:, 0] + d[:, 1] * p[:, 1]
        return torch.exp(-(d ** 2).sum(1) / 0.01 - q)


def kernel_model(path: str, module: nn.Module, dim: int, *, dtype: str = "float64",
                 parametric: bool = False, family: str = "fd_cdr") -> str:
    """Save ``module`` as a GreenInverse model file (method ``green``)."""
    module = module.to(torch.float64 if dtype == "float64" else torch.float32)
    meta = ModelMetadata(method="green", problem_family=family, block_size=1, dtype=dtype,
                         inputs=["x", "y", "params"], linear=True,
                         training={"dim": dim, "parametric": ["theta"] if parametric else [],
                                   "note": "analytic test kernel"})
    save_model(module, path, meta)
    return path


def exact_green_matvec(module: nn.Module, X, v, h: float, dim: int, params=None):
    """``h^d K v`` with the dense kernel matrix (numpy float64 reference)."""
    import numpy as np

    n = len(X)
    xi = torch.from_numpy(np.repeat(X, n, axis=0))
    yj = torch.from_numpy(np.tile(X, (n, 1)))
    p = torch.zeros(n * n, 0, dtype=torch.float64) if params is None else \
        torch.tensor(params, dtype=torch.float64).expand(n * n, len(params))
    with torch.no_grad():
        K = module.double()(xi.double(), yj.double(), p).numpy().reshape(n, n)
    return h**dim * (K @ v), K


def theta_params(theta: float) -> list[float]:
    return [math.cos(2 * theta), math.sin(2 * theta)]
