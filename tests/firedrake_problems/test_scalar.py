"""Manufactured-solution convergence of the scalar families (proves the assembly)."""

from __future__ import annotations

import numpy as np
import pytest
from fdp_helpers import DIRECT, l2_error, observed_rate

from firedrake_problems import make_problem

# (family, params, sizes, expected L2 rate)
CASES = [
    ("poisson", {"dim": 1}, (8, 16, 32), 2.0),
    ("poisson", {"dim": 2}, (4, 8, 16), 2.0),
    ("poisson", {"dim": 2, "degree": 2}, (4, 8, 16), 3.0),
    ("poisson", {"dim": 3}, (4, 8, 16), 2.0),
    ("poisson", {"dim": 2, "mesh": "jittered"}, (8, 16, 32), 2.0),
    ("poisson", {"dim": 2, "mesh": "gmsh"}, (8, 16, 32), 2.0),
    ("diffusion", {"coefficient": "grf", "sigma": 1.0}, (8, 16, 32), 2.0),
    ("diffusion", {"coefficient": "grf", "time_step": 1e-2, "mesh": "uniform"}, (8, 16, 32), 2.0),
    ("anisotropic", {"epsilon": 1e-2, "theta": 0.7}, (8, 16, 32), 2.0),
    ("anisotropic", {"preset": "rotated_laplacian"}, (8, 16, 32), 2.0),
    ("screened_poisson", {"kappa": "grf", "sigma": 15.0}, (8, 16, 32), 2.0),
    ("cdr", {"dim": 1, "regime": "convection"}, (32, 64, 128), 2.0),
    ("cdr", {"dim": 1, "regime": "reaction"}, (32, 64, 128), 2.0),
    ("cdr", {"dim": 2, "regime": "convection"}, (16, 32, 64), 1.5),
    ("cdr", {"dim": 2, "regime": "reaction"}, (8, 16, 32), 2.0),
]


@pytest.mark.parametrize(
    "family,params,sizes,rate",
    CASES,
    ids=[f"{c[0]}-{'-'.join(f'{k}={v}' for k, v in c[1].items())}" for c in CASES],
)
def test_manufactured_convergence(family, params, sizes, rate):
    errors = []
    for n in sizes:
        p = make_problem(family, n, seed=3, rhs="manufactured", **params)
        x, ksp = p.solve(DIRECT)
        assert ksp.getConvergedReason() > 0
        errors.append(l2_error(p.to_function(x), p.exact))
    observed = observed_rate(sizes, errors)
    assert errors[-1] < errors[0]
    assert observed > rate - 0.3, (errors, observed)


@pytest.mark.parametrize(
    "family,params",
    [
        ("poisson", {"dim": 2}),
        ("diffusion", {}),
        ("anisotropic", {}),
        ("screened_poisson", {}),
        ("cdr", {"dim": 2, "regime": "convection"}),
    ],
)
def test_physical_and_grf_rhs_build(family, params):
    """Both right-hand-side kinds build, are finite and give a converging GAMG solve."""
    for rhs in ("source", "grf"):
        p = make_problem(family, 16, seed=1, rhs=rhs, **params)
        assert p.b.norm() > 0
        ksp_type = "cg" if p.metadata["symmetric"] else "gmres"
        x, ksp = p.solve(
            {"ksp_type": ksp_type, "pc_type": "gamg", "ksp_rtol": 1e-8, "ksp_max_it": 300}
        )
        assert ksp.getConvergedReason() > 0, (family, rhs, ksp.getConvergedReason())
        assert p.coordinates.shape == (p.A.getLocalSize()[0], p.metadata["dim"])


def _csr(A):
    return [np.asarray(a).copy() for a in A.getValuesCSR()]


def test_seed_determinism_and_variation():
    a = make_problem("diffusion", 12, seed=5)
    b = make_problem("diffusion", 12, seed=5)
    c = make_problem("diffusion", 12, seed=6)
    for x, y in zip(_csr(a.A), _csr(b.A), strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.b.getArray(), b.b.getArray())
    assert not np.array_equal(a.coordinates, c.coordinates)  # another jitter
    assert a.metadata["dofs"] == c.metadata["dofs"] == 13**2


def test_jittered_mesh_matches_seed_001():
    """N = 64 gives (N+1)^2 = 4,225 nodes; boundary nodes are locked."""
    p = make_problem("diffusion", 64, seed=0)
    assert p.metadata["dofs"] == 4225
    on_boundary = ((p.coordinates == 0.0) | (p.coordinates == 1.0)).any(axis=1)
    assert on_boundary.sum() == 4 * 64


def test_anisotropic_tensor_and_screened_parameters():
    p = make_problem("anisotropic", 8, seed=2)
    assert p.metadata["parameters"]["epsilon"] == 1e-5
    q = make_problem("screened_poisson", 8, seed=2)
    assert 0.0 <= q.metadata["parameters"]["sigma"] <= 20.0
    r = make_problem("cdr", 8, dim=1, regime="reaction")
    assert r.metadata["definite"] is False and r.metadata["symmetric"] is True
