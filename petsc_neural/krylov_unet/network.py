"""The KrylovUNet network: a depth-3 3D U-Net on the grid of the tissue (3D) unknowns.

Seed 002 §6.1, Table 1 (channels 2 -> 32 -> 64 -> 128, max pooling down,
transposed convolutions up, skip connections by concatenation)::

    level 0  conv 3^3 2 -> 32 (residual, geometry)   ... up 2^3 64 -> 32, conv 3^3 64 -> 32, 1 -> 1
    level 1  pool, conv 3^3 32 -> 64                 ... up 2^3 128 -> 64, conv 3^3 128 -> 64
    level 2  pool, conv 3^3 64 -> 128, conv 3^3 128 -> 128 (bottom)

1.08 M parameters (Table 1: 1.09 M; its first row counts 13,840 where one
2 -> 32 convolution has 1,760: the paper does not say what else that row holds).

What the network sees (all on the ``G^3`` grid of the P1 nodes of the unit
cube, lexicographic order, x fastest):

- ``residual``: the 3D residual (for the coupled system: the residual of the
  3D Schur complement after eliminating the 1D unknowns, see
  :mod:`petsc_neural.krylov_unet.pc`);
- ``geometry``: the row sums of the 3D block ``A_33`` (:func:`.grid.geometry_field`;
  zero on the faces and the layer next to them).  For an interior node
  the stiffness part sums to zero, so what remains is ``2 pi R beta (Pi^T M 1)_i``:
  the vessel length coupled to node ``i`` (the discrete vessel-geometry field
  of seed 002).  It is scaled by the RMS of the diagonal and by ``geometry_scale``
  (fixed at training time so that the channel is O(1));
- ``diagonal``: the diagonal of ``A_33``.  Its RMS over the interior sets the
  output scale (seed 002 §6.2: "a normalization factor based on the average
  RMS of the matrix diagonals"), so the same network serves grids of other
  spacing.

The grid's faces are the Dirichlet nodes (unit rows, eliminated columns, as
Firedrake makes them); they are solved exactly (``z = r / diag``), and the
U-Net runs on the ``(G-2)^3`` interior, zero-padded to a multiple of 4.  The
map is positively homogeneous (``f(a r) = a f(r)`` for ``a >= 0``; the
residual is normalised to unit RMS inside) and maps zero to zero; it is
nonlinear otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["KrylovUNet", "UNet3D", "grid_size"]


def grid_size(n: int) -> int:
    """``G`` with ``G^3 == n`` (an error otherwise)."""
    g = int(round(float(n) ** (1.0 / 3.0)))
    if g * g * g != n:
        raise ValueError(f"{n} grid values are not a cube G^3")
    return g


class UNet3D(nn.Module):
    """Table 1's depth-3 U-Net, ``(B, in, D, D, D) -> (B, out, D, D, D)``, D divisible by 4."""

    def __init__(self, in_channels: int = 2, width: int = 32, out_channels: int = 1) -> None:
        super().__init__()
        w0, w1, w2 = width, 2 * width, 4 * width
        self.enc0 = nn.Conv3d(in_channels, w0, 3, padding=1)
        self.enc1 = nn.Conv3d(w0, w1, 3, padding=1, bias=False)
        self.enc2 = nn.Conv3d(w1, w2, 3, padding=1, bias=False)
        self.bottom = nn.Conv3d(w2, w2, 3, padding=1, bias=False)
        self.up1 = nn.ConvTranspose3d(w2, w1, 2, stride=2)
        self.dec1 = nn.Conv3d(2 * w1, w1, 3, padding=1, bias=False)
        self.up0 = nn.ConvTranspose3d(w1, w0, 2, stride=2)
        self.dec0 = nn.Conv3d(2 * w0, w0, 3, padding=1, bias=False)
        self.head = nn.Conv3d(w0, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e0 = F.gelu(self.enc0(x))
        e1 = F.gelu(self.enc1(F.max_pool3d(e0, 2)))
        e2 = F.gelu(self.enc2(F.max_pool3d(e1, 2)))
        b = F.gelu(self.bottom(e2))
        d1 = F.gelu(self.dec1(torch.cat([self.up1(b), e1], dim=1)))
        d0 = F.gelu(self.dec0(torch.cat([self.up0(d1), e0], dim=1)))
        return self.head(d0)


class KrylovUNet(nn.Module):
    """The KrylovUNet preconditioner network (module docstring).

    ``forward(residual (n,), geometry (n,), diagonal (n,)) -> (n,)`` with
    ``n = G^3``; ``forward_batch(R (n, k), geometry, diagonal) -> (n, k)`` for
    many residuals of one operator (``PCMatApply``); :meth:`apply_batch` for
    a batch of systems (training).
    """

    def __init__(self, width: int = 32, geometry_scale: float = 1.0) -> None:
        super().__init__()
        self.width = width
        self.unet = UNet3D(2, width, 1)
        self.register_buffer("geometry_scale", torch.tensor(float(geometry_scale)))

    @torch.jit.unused
    def config(self) -> dict[str, float]:
        """Constructor arguments (for the model file's metadata)."""
        return {"width": int(self.width), "geometry_scale": float(self.geometry_scale)}

    def apply_batch(
        self, R: torch.Tensor, geometry: torch.Tensor, diagonal: torch.Tensor
    ) -> torch.Tensor:
        """``(B, n)`` residuals of ``B`` systems with their ``(B, n)`` geometry and diagonal."""
        B, n = R.shape[0], R.shape[1]
        G = grid_size(n)
        if G < 4:
            raise ValueError(f"KrylovUNet needs a grid of at least 4^3 nodes, got {G}^3")
        g = G - 2
        P = ((g + 3) // 4) * 4
        pad = [0, P - g, 0, P - g, 0, P - g]
        R3 = R.reshape(B, G, G, G)
        D3 = diagonal.reshape(B, G, G, G)
        r = R3[:, 1:-1, 1:-1, 1:-1]
        d = D3[:, 1:-1, 1:-1, 1:-1]
        geo = geometry.reshape(B, G, G, G)[:, 1:-1, 1:-1, 1:-1]
        d_rms = torch.sqrt((d * d).mean(dim=(1, 2, 3)))  # (B,)
        # Positive homogeneity: unit RMS in, the norm back out; zero stays zero.
        rms = torch.sqrt((r * r).mean(dim=(1, 2, 3)))
        nz = rms > 0
        rms_s = torch.where(nz, rms, torch.ones_like(rms))
        x = torch.stack([r / rms_s[:, None, None, None],
                         geo * (self.geometry_scale / d_rms)[:, None, None, None]], dim=1)
        y = self.unet(F.pad(x, pad))[:, 0, :g, :g, :g]
        y = y * torch.where(nz, rms / d_rms, torch.zeros_like(rms))[:, None, None, None]
        # Faces: the Dirichlet rows, solved exactly; the interior from the U-Net.
        out = R3 / D3
        out = torch.cat([out[:, :1], torch.cat(
            [out[:, 1:-1, :1], torch.cat([out[:, 1:-1, 1:-1, :1], y, out[:, 1:-1, 1:-1, -1:]],
                                         dim=3), out[:, 1:-1, -1:]], dim=2), out[:, -1:]], dim=1)
        return out.reshape(B, n)

    def forward(
        self, residual: torch.Tensor, geometry: torch.Tensor, diagonal: torch.Tensor
    ) -> torch.Tensor:
        return self.apply_batch(residual.unsqueeze(0), geometry.unsqueeze(0),
                                diagonal.unsqueeze(0))[0]

    @torch.jit.export
    def forward_batch(
        self, R: torch.Tensor, geometry: torch.Tensor, diagonal: torch.Tensor
    ) -> torch.Tensor:
        k = R.shape[1]
        return self.apply_batch(R.t(), geometry.unsqueeze(0).expand(k, -1),
                                diagonal.unsqueeze(0).expand(k, -1)).t()
