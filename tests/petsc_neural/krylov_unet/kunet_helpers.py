"""A small synthetic 3D-1D coupled system without Firedrake (scipy), for fast unit tests.

Imported by name (pytest prepend mode), hence the unique module name.

The tissue: the 7-point Laplacian (scaled by h, like P1 stiffness) on the
``G^3`` node grid of the unit cube, Dirichlet faces as unit rows with
eliminated columns.  The vessel: a polyline of ``n1`` nodes; ``Pi`` is the
trilinear interpolation at the nodes (a one-point "average"), ``M`` the
lumped 1D mass; the blocks are those of ``firedrake_problems.mixed_3d1d``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def grid_coordinates(G: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, G)
    Z, Y, X = np.meshgrid(t, t, t, indexing="ij")
    return np.stack([X.ravel(), Y.ravel(), Z.ravel()], axis=1)  # x fastest


def laplacian3d(G: int) -> sp.csr_matrix:
    h = 1.0 / (G - 1)
    T = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(G, G))
    E = sp.eye(G)
    K = (sp.kron(sp.kron(E, E), T) + sp.kron(sp.kron(E, T), E) + sp.kron(sp.kron(T, E), E)) * h
    return K.tocsr()


def interpolation(G: int, pts: np.ndarray) -> sp.csr_matrix:
    """Trilinear interpolation from the grid (x fastest) to ``pts``: ``(len(pts), G^3)``."""
    h = 1.0 / (G - 1)
    rows, cols, vals = [], [], []
    for i, p in enumerate(pts):
        f = p / h
        i0 = np.minimum(np.floor(f).astype(int), G - 2)
        t = f - i0
        for dz in (0, 1):
            for dy in (0, 1):
                for dx in (0, 1):
                    w = ((t[0] if dx else 1 - t[0]) * (t[1] if dy else 1 - t[1])
                         * (t[2] if dz else 1 - t[2]))
                    k = (i0[0] + dx) + G * ((i0[1] + dy) + G * (i0[2] + dz))
                    rows.append(i)
                    cols.append(k)
                    vals.append(w)
    return sp.csr_matrix((vals, (rows, cols)), shape=(len(pts), G**3))


def coupled_system(G: int = 9, seed: int = 0, n1: int = 12, c: float = 0.5):
    """``(A full (n3+n1)^2 with 3D rows first, n3, coords (n3+n1, 3), blocks dict)``."""
    rng = np.random.default_rng(seed)
    n3 = G**3
    face = np.zeros((G, G, G), bool)
    face[0] = face[-1] = face[:, 0] = face[:, -1] = face[:, :, 0] = face[:, :, -1] = True
    face = face.ravel()
    mask = sp.diags((~face).astype(float))
    start = rng.uniform(0.3, 0.7, 3)
    start[2] = 0.2
    direction = np.array([rng.normal(0, 0.3), rng.normal(0, 0.3), 1.0])
    direction /= np.linalg.norm(direction)
    pts = start + np.linspace(0.0, 0.55, n1)[:, None] * direction
    hs = 0.55 / (n1 - 1)
    Pi = (interpolation(G, pts) @ mask).tocsr()
    M = sp.diags(np.full(n1, hs))
    K1 = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(n1, n1)).tolil()
    K1[0, 0] = K1[-1, -1] = 1.0
    K1 = K1.tocsr() / hs * 1e-2
    K = mask @ laplacian3d(G) @ mask + sp.diags(face.astype(float))
    A33 = (K + c * Pi.T @ M @ Pi).tocsr()
    A31 = (-c * Pi.T @ M).tocsr()
    A13 = A31.T.tocsr()
    A11 = (K1 + c * M).tocsr()
    A = sp.bmat([[A33, A31], [A13, A11]]).tocsr()
    coords = np.vstack([grid_coordinates(G), pts])
    return A, n3, coords, {"A33": A33, "A31": A31, "A13": A13, "A11": A11}


def kunet_params(model: str | None, ksp_type: str = "fgmres", rtol: float = 1e-8) -> dict:
    params = {"ksp_type": ksp_type, "ksp_rtol": rtol, "ksp_atol": 0.0, "ksp_max_it": 400,
              "ksp_gmres_restart": 400, "pc_type": "python",
              "pc_python_type": "petsc_neural.KrylovUNet"}
    if model:
        params["pc_neural_model"] = model
    return params


def plain_params(pc_type: str = "none", rtol: float = 1e-8) -> dict:
    return {"ksp_type": "fgmres", "ksp_rtol": rtol, "ksp_atol": 0.0, "ksp_max_it": 400,
            "ksp_gmres_restart": 400, "pc_type": pc_type}


def train_tiny_model(path: str, systems, steps: int = 150, width: int = 4, seed: int = 0) -> str:
    """A float64 KrylovUNet of ``width`` trained ``steps`` static steps on ``systems``; saved."""
    import torch

    from pcshell import ModelMetadata, save_model
    from petsc_neural.krylov_unet.loss import static_loss
    from petsc_neural.krylov_unet.network import KrylovUNet
    from petsc_neural.krylov_unet.train import GEOMETRY_SCALE, MODEL_INPUTS

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = KrylovUNet(width=width, geometry_scale=GEOMETRY_SCALE).double()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        R = torch.randn(len(systems), systems[0].n3, generator=gen, dtype=torch.float64)
        opt.zero_grad()
        static_loss(net, systems, R).backward()
        opt.step()
    save_model(net.eval(), path, ModelMetadata(method="krylov_unet", dtype="float64",
                                               problem_family="mixed_3d1d",
                                               inputs=list(MODEL_INPUTS), linear=False,
                                               training={"network": net.config()}))
    return path
