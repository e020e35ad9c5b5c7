"""3D-1D coupled problem: known solution, symmetry and definiteness, block structure."""

from __future__ import annotations

import firedrake as fd
import numpy as np
import pytest
import ufl
from fdp_helpers import DIRECT, observed_rate

from firedrake_problems import make_problem
from firedrake_problems.mixed_3d1d import random_network


def _errors(p, x):
    u3, u1 = p.to_function(x)
    e3 = float(np.sqrt(fd.assemble((u3 - p.exact[0]) ** 2 * ufl.dx(degree=6))))
    e1 = float(np.sqrt(fd.assemble((u1 - p.exact[1]) ** 2 * ufl.dx(degree=6))))
    return e3, e1


def test_manufactured_straight_vessel_converges():
    """u = sin sin sin, û = its circle average: both errors fall like h^2."""
    sizes = (4, 8, 16)
    e3s, e1s = [], []
    for n in sizes:
        p = make_problem("mixed_3d1d", n, network="straight", rhs="manufactured", radius=0.05)
        x, ksp = p.solve(DIRECT)
        e3, e1 = _errors(p, x)
        e3s.append(e3)
        e1s.append(e1)
    assert observed_rate(sizes, e3s) > 1.7, e3s
    assert observed_rate(sizes, e1s) > 1.5, e1s


def _dense(A):
    from scipy.sparse import csr_matrix

    ip, ix, v = A.getValuesCSR()
    n = A.getSize()[0]
    return csr_matrix((v, ix, ip), shape=(n, n)).toarray()


@pytest.mark.parametrize("seed", [0, 1])
def test_random_network_matrix_is_spd_and_blocked(seed):
    p = make_problem("mixed_3d1d", 4, seed=seed, generations=3)
    A = _dense(p.A)
    assert np.abs(A - A.T).max() <= 1e-13 * np.abs(A).max()
    assert np.linalg.eigvalsh(A).min() > 0
    n3, n1 = p.metadata["blocks"]["sizes"]
    assert n3 == 5**3 and n1 == p.metadata["network_nodes"] and n3 + n1 == A.shape[0]
    assert p.fields["3d"].getSize() == n3 and p.fields["1d"].getSize() == n1
    # the coupling blocks are really there and carry the -2πRβ M Π sign
    i3, i1 = p.fields["3d"].getIndices(), p.fields["1d"].getIndices()
    C = A[np.ix_(i1, i3)]
    assert C.min() < 0 and C.max() <= 1e-15
    pts, segs = p.extra["network"]
    assert len(segs) >= 3


def test_random_networks_vary_with_seed():
    a, b = random_network(0), random_network(1)
    assert a[0].shape != b[0].shape or not np.allclose(a[0], b[0])
    for pts, _ in (a, b):
        assert pts.min() >= 0.1 - 1e-12 and pts.max() <= 0.9 + 1e-12


def test_fieldsplit_and_gamg_solve():
    p = make_problem("mixed_3d1d", 6, seed=2, rhs="grf")
    x1, k1 = p.solve({"ksp_type": "cg", "pc_type": "gamg", "ksp_rtol": 1e-10, "ksp_max_it": 200})
    assert k1.getConvergedReason() > 0
    x2, k2 = p.solve(
        {
            "ksp_type": "gmres",
            "ksp_rtol": 1e-10,
            "pc_type": "fieldsplit",
            "pc_fieldsplit_type": "additive",
            "fieldsplit_3d": {"ksp_type": "preonly", "pc_type": "gamg"},
            "fieldsplit_1d": {"ksp_type": "preonly", "pc_type": "lu"},
        }
    )
    assert k2.getConvergedReason() > 0
    assert (x1 - x2).norm() < 1e-7 * x1.norm()
