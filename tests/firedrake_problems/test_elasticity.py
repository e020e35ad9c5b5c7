"""Linear elasticity: manufactured displacement, rigid-body near-nullspace, GAMG."""

from __future__ import annotations

import numpy as np
import pytest
from fdp_helpers import DIRECT, l2_error, observed_rate

from firedrake_problems import make_problem


@pytest.mark.parametrize(
    "dim,degree,sizes,rate",
    [
        (2, 1, (4, 8, 16), 2.0),
        (2, 2, (4, 8, 16), 3.0),
        (3, 1, (2, 4, 8), 2.0),
    ],
)
def test_manufactured_displacement(dim, degree, sizes, rate):
    errors = []
    for n in sizes:
        p = make_problem("elasticity", n, dim=dim, degree=degree, rhs="manufactured")
        x, ksp = p.solve(DIRECT)
        errors.append(l2_error(p.to_function(x), p.exact))
    assert observed_rate(sizes, errors) > rate - 0.3, errors


@pytest.mark.parametrize("dim,degree", [(2, 1), (2, 2), (3, 1)])
def test_rigid_body_modes_are_near_nullspace(dim, degree):
    """A z = 0 away from the clamped face x = 0 for every rigid-body mode z."""
    n = 6 if dim == 2 else 3
    p = make_problem("elasticity", n, dim=dim, degree=degree)
    assert p.block_size == dim and p.A.getBlockSize() == dim
    nsp = p.A.getNearNullSpace()
    vecs = nsp.getVecs()
    assert len(vecs) == (3 if dim == 2 else 6)
    far = np.repeat(p.coordinates[:, 0] > 1.5 / n, dim)
    y = p.A.createVecLeft()
    for z in vecs:
        p.A.mult(z, y)
        assert np.abs(y.getArray()[far]).max() < 1e-10 * np.abs(p.A.getValuesCSR()[2]).max()


@pytest.mark.parametrize(
    "params",
    [
        {"dim": 2, "lame": "heterogeneous", "rhs": "grf"},
        {"dim": 2, "degree": 2, "mesh": "jittered"},
        {"dim": 3, "lame": "heterogeneous"},
        {"dim": 3, "mesh": "gmsh"},
    ],
)
def test_gamg_with_rigid_body_modes_converges(params):
    p = make_problem("elasticity", 8 if params["dim"] == 2 else 4, seed=4, **params)
    x, ksp = p.solve({"ksp_type": "cg", "pc_type": "gamg", "ksp_rtol": 1e-8, "ksp_max_it": 200})
    assert ksp.getConvergedReason() > 0
    assert ksp.getIterationNumber() < 100
