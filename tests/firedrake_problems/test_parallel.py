"""Every family builds on 2 ranks and gives the same solution as on 1 rank.

Dof numberings differ between the two runs, so values are matched through the
node coordinates (plus the block id / component), gathered on every rank.
"""

from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from firedrake_problems import make_problem

CASES = [
    ("poisson", {"dim": 2, "mesh": "jittered"}, 10),
    ("poisson", {"dim": 2, "mesh": "gmsh"}, 8),
    ("poisson", {"dim": 3}, 4),
    ("diffusion", {}, 10),
    ("diffusion", {"coefficient": "grf", "time_step": 1e-2}, 10),
    ("anisotropic", {}, 10),
    ("screened_poisson", {"rhs": "grf"}, 10),
    ("elasticity", {"dim": 2, "degree": 2, "lame": "heterogeneous"}, 6),
    ("cdr", {"dim": 2, "regime": "convection", "rhs": "grf"}, 12),
    ("mixed_3d1d", {"rhs": "grf"}, 4),
]

SOLVER = {
    "ksp_type": "gmres",
    "ksp_rtol": 1e-12,
    "ksp_atol": 0.0,
    "ksp_max_it": 1000,
    "pc_type": "lu",
    "pc_factor_mat_solver_type": "mumps",
}


def _keyed_values(p, x, comm):
    """(keys, values) of the whole solution, sorted by (block, node coordinates, component)."""
    bs = p.block_size
    coords = np.repeat(p.coordinates, bs, axis=0)
    comp = np.tile(np.arange(bs), len(p.coordinates))
    block = np.zeros(len(coords))
    if p.fields is not None:
        lo = p.A.getOwnershipRange()[0]
        block[p.fields["1d"].getIndices() - lo] = 1.0
    keys = np.column_stack([block, np.round(coords, 10), comp])
    vals = x.getArray(readonly=True).copy()
    keys = np.concatenate(comm.allgather(keys))
    vals = np.concatenate(comm.allgather(vals))
    order = np.lexsort(keys.T[::-1])
    return keys[order], vals[order]


@pytest.mark.parallel(nprocs=2)
@pytest.mark.parametrize(
    "family,params,size",
    CASES,
    ids=[f"{c[0]}-{'-'.join(f'{k}={v}' for k, v in c[1].items())}" for c in CASES],
)
def test_two_ranks_match_one_rank(family, params, size):
    world = MPI.COMM_WORLD
    assert world.size == 2
    p2 = make_problem(family, size, seed=7, comm=world, **params)
    p1 = make_problem(family, size, seed=7, comm=MPI.COMM_SELF, **params)
    assert p2.metadata["dofs"] == p1.metadata["dofs"]
    assert p2.metadata["nnz"] == p1.metadata["nnz"]
    assert p2.A.getLocalSize()[0] < p2.metadata["dofs"]  # really distributed
    assert abs(p2.b.norm() - p1.b.norm()) <= 1e-12 * p1.b.norm()
    x2, k2 = p2.solve(SOLVER)
    x1, k1 = p1.solve(SOLVER)
    assert k1.getConvergedReason() > 0 and k2.getConvergedReason() > 0
    key2, v2 = _keyed_values(p2, x2, world)
    key1, v1 = _keyed_values(p1, x1, MPI.COMM_SELF)
    np.testing.assert_allclose(key2, key1, atol=1e-9)
    np.testing.assert_allclose(v2, v1, rtol=0, atol=1e-8 * np.abs(v1).max())
