"""Training data for KrylovUNet: ``mixed_3d1d`` systems with random vessel trees, cached once.

Generating a system needs Firedrake (``firedrake_problems.mixed_3d1d``, a few
seconds each at 33^3 nodes); training needs only the cached tensors, so
:func:`generate_graphs` writes one ``.npz`` file per vessel tree into a cache
directory and :func:`load_graph` reads it back (no pickle: ``np.load`` with
``allow_pickle=False``).

Per graph (3D rows in lattice order, see :mod:`petsc_neural.krylov_unet.grid`):
``A33 - K3`` (the coupling term ``2 pi R beta Pi^T M Pi``, sparse: the
stiffness ``K3`` is the same for every tree and is stored once per grid),
``A31``, ``A13`` (sparse), ``A11`` (dense, the 1D block is small), the
right-hand side of the family's ``rhs="source"`` problem (``f = 0``, ``g = 1``)
and a smooth random one (Gaussian random fields on the 3D and 1D nodes times
the lumped masses).  The physics-informed training right-hand sides are
their reductions ``f_3 - A_31 A_11^{-1} f_1`` to the 3D Schur complement
(seed 002 §2-3).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from .grid import dirichlet_faces, lattice_order
from .system import CoupledSystem

__all__ = ["GraphData", "generate_graphs", "load_graph", "graph_path", "split_problem",
           "problem_blocks", "family_params", "load_stiffness"]

log = logging.getLogger("petsc_neural.training.krylov_unet")


def family_params(params: dict | None = None) -> dict:
    """The ``mixed_3d1d`` parameters of the training data (defaults of the family)."""
    return dict(params or {})


def graph_path(cache: str, size: int, seed: int) -> str:
    return os.path.join(cache, f"mixed_3d1d_n{size}_seed{seed}.npz")


def _stiffness_path(cache: str, size: int) -> str:
    return os.path.join(cache, f"mixed_3d1d_n{size}_K3.npz")


def split_problem(A: sp.csr_matrix, rows3: np.ndarray, rows1: np.ndarray) -> dict:
    """The blocks of the coupled matrix, 3D rows/columns in the order ``rows3``."""
    A = sp.csr_matrix(A)
    R3, R1 = A[rows3], A[rows1]
    return {"A33": R3[:, rows3].tocsr(), "A31": R3[:, rows1].tocsr(),
            "A13": R1[:, rows3].tocsr(), "A11": R1[:, rows1].tocsr()}


def _save_csr(out: dict, name: str, M: sp.spmatrix) -> None:
    M = sp.csr_matrix(M)
    M.eliminate_zeros()
    out[f"{name}_indptr"] = M.indptr.astype(np.int64)
    out[f"{name}_indices"] = M.indices.astype(np.int32)
    out[f"{name}_data"] = M.data
    out[f"{name}_shape"] = np.asarray(M.shape, np.int64)


def _load_csr(z, name: str) -> sp.csr_matrix:
    return sp.csr_matrix((z[f"{name}_data"], z[f"{name}_indices"], z[f"{name}_indptr"]),
                         shape=tuple(z[f"{name}_shape"]))


def problem_blocks(p) -> tuple[dict, np.ndarray, np.ndarray, int]:
    """``(blocks, rows3, rows1, G)`` of a serial ``mixed_3d1d`` Problem (3D rows in grid order)."""
    from pcshell import to_scipy

    if p.A.getComm().getSize() != 1:
        raise ValueError("problem_blocks needs a problem on one process")
    A = to_scipy(p.A)
    is3 = np.asarray(p.fields["3d"].getIndices(), np.int64)
    is1 = np.asarray(p.fields["1d"].getIndices(), np.int64)
    order, G = lattice_order(p.coordinates[is3])
    rows3 = is3[order]
    return split_problem(A, rows3, is1), rows3, is1, G


def _problem_blocks(size: int, seed: int, params: dict):
    from mpi4py import MPI

    from firedrake_problems.mixed_3d1d import mixed_3d1d

    p = mixed_3d1d(size, seed, MPI.COMM_SELF, rhs="source", **params)
    blocks, rows3, rows1, G = problem_blocks(p)
    b = p.b.getArray(readonly=True).copy()
    return p, blocks, rows3, rows1, b, G


def generate_graphs(
    size: int,
    seeds: Iterable[int],
    cache: str,
    *,
    params: dict | None = None,
    progress: bool = False,
) -> list[str]:
    """Build (or find in ``cache``) the systems of ``seeds``; returns their file paths."""
    from firedrake_problems.fields import grf_values, stream

    params = family_params(params)
    os.makedirs(cache, exist_ok=True)
    seeds = list(seeds)
    kpath = _stiffness_path(cache, size)
    if not os.path.exists(kpath):
        # The stiffness alone: the same family with the coupling switched off.
        _, blocks, _, _, _, G = _problem_blocks(size, 0, {**params, "beta": 0.0})
        out: dict = {"G": np.int64(G)}
        _save_csr(out, "K3", blocks["A33"])
        _atomic_savez(kpath, out)
    K3 = load_stiffness(cache, size)
    paths = []
    it = seeds
    if progress:
        from tqdm import tqdm

        it = tqdm(seeds, desc=f"mixed_3d1d n={size} graphs", leave=False)
    for seed in it:
        path = graph_path(cache, size, seed)
        paths.append(path)
        if os.path.exists(path):
            continue
        p, blocks, rows3, rows1, b, G = _problem_blocks(size, seed, params)
        coords = p.coordinates
        h3 = 1.0 / size
        face = dirichlet_faces(G)
        f3g = grf_values(coords[rows3], stream(seed, "rhs"), length_scale=0.1) * h3**3
        f3g[face] = 0.0
        radius = float(p.metadata["parameters"]["radius"])
        h1 = float(p.metadata["network_length"]) / max(len(rows1) - 1, 1)
        f1g = grf_values(coords[rows1], stream(seed, "rhs2"), length_scale=0.1) * (
            math.pi * radius**2 * h1)
        out = {"G": np.int64(G), "seed": np.int64(seed), "n1": np.int64(len(rows1)),
               "network_length": np.float64(p.metadata["network_length"]),
               "network_segments": np.int64(p.metadata["network_segments"]),
               "A11": blocks["A11"].toarray(),
               "f3": b[rows3], "f1": b[rows1], "f3_grf": f3g, "f1_grf": f1g,
               "coords1": coords[rows1]}
        _save_csr(out, "D33", blocks["A33"] - K3)
        _save_csr(out, "A31", blocks["A31"])
        _save_csr(out, "A13", blocks["A13"])
        _atomic_savez(path, out)
        p.A.destroy()
    return paths


def _atomic_savez(path: str, arrays: dict) -> None:
    tmp = path + ".part.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_stiffness(cache: str, size: int) -> sp.csr_matrix:
    with np.load(_stiffness_path(cache, size), allow_pickle=False) as z:
        return _load_csr(z, "K3")


@dataclass
class GraphData:
    """One cached system: the torch operator and its physics right-hand sides (reduced)."""

    seed: int
    system: CoupledSystem
    rhs: torch.Tensor  # (k, n3): normalised reduced right-hand sides (source, grf)
    n1: int
    network_length: float


def load_graph(path: str, K3: sp.csr_matrix, dtype: torch.dtype = torch.float32) -> GraphData:
    """Read a cached system (see :func:`generate_graphs`)."""
    with np.load(path, allow_pickle=False) as z:
        A33 = (K3 + _load_csr(z, "D33")).tocsr()
        system = CoupledSystem(A33, _load_csr(z, "A31"), _load_csr(z, "A13"), z["A11"],
                               dtype=dtype)
        rhs = []
        for f3, f1 in (("f3", "f1"), ("f3_grf", "f1_grf")):
            r = system.reduce_rhs(z[f3], z[f1])
            rhs.append(r / np.linalg.norm(r))
        return GraphData(seed=int(z["seed"]), system=system,
                         rhs=torch.from_numpy(np.stack(rhs)).to(dtype), n1=int(z["n1"]),
                         network_length=float(z["network_length"]))
