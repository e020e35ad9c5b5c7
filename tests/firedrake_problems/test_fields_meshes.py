"""Random fields and meshes: statistics, determinism, partition independence."""

from __future__ import annotations

import numpy as np
import pytest

from firedrake_problems.fields import grf_values, hashed_normal, stream
from firedrake_problems.meshes import jittered_points


@pytest.mark.parametrize("kernel", ["se", "matern"])
def test_grf_is_deterministic_and_has_the_kernel_correlation(kernel):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (400, 2))
    a = grf_values(x, stream(3, "rhs"), length_scale=0.2, kernel=kernel)
    b = grf_values(x, stream(3, "rhs"), length_scale=0.2, kernel=kernel)
    np.testing.assert_array_equal(a, b)
    # evaluating in chunks / subsets gives the same values (partition independence)
    c = grf_values(x[::-1], stream(3, "rhs"), length_scale=0.2, kernel=kernel, chunk=7)
    np.testing.assert_allclose(c[::-1], a, rtol=0, atol=1e-12)
    # ensemble statistics at two points a length scale apart (SE: exp(-1/2))
    pts = np.array([[0.3, 0.3], [0.5, 0.3]])
    s = np.array(
        [grf_values(pts, stream(k, "rhs"), length_scale=0.2, kernel=kernel) for k in range(2000)]
    )
    assert abs(s.var(axis=0).mean() - 1.0) < 0.12
    if kernel == "se":
        assert abs(np.corrcoef(s.T)[0, 1] - np.exp(-0.5)) < 0.08


def test_hashed_normals_are_standard_and_point_keyed():
    rng = np.random.default_rng(1)
    pts = rng.uniform(0, 1, (20000, 2))
    z = hashed_normal(pts, seed=4)
    assert abs(z.mean()) < 0.03 and abs(z.std() - 1.0) < 0.03
    perm = rng.permutation(len(pts))
    np.testing.assert_array_equal(hashed_normal(pts[perm], seed=4), z[perm])
    assert not np.array_equal(hashed_normal(pts, seed=5), z)


def test_jittered_points_lock_the_boundary():
    p = jittered_points(16, seed=2, jitter=0.3)
    grid = jittered_points(16, seed=2, jitter=0.0)
    boundary = ((grid == 0) | (grid == 1)).any(axis=1)
    np.testing.assert_array_equal(p[boundary], grid[boundary])
    shift = np.abs(p - grid)[~boundary]
    assert shift.max() <= 0.3 / 16 + 1e-15 and shift.max() > 0.1 / 16


@pytest.mark.parametrize(
    "kind,dim", [("uniform", 2), ("uniform", 3), ("jittered", 2), ("gmsh", 2), ("gmsh", 3)]
)
def test_boundary_marker_1_is_the_face_x0(kind, dim):
    """Every mesh kind marks x = 0 with 1 (elasticity clamps it)."""
    import firedrake as fd

    from firedrake_problems.core import node_coordinates
    from firedrake_problems.meshes import make_mesh

    m = make_mesh(kind, dim, 6, seed=1)
    V = fd.FunctionSpace(m, "CG", 1)
    x = node_coordinates(V)
    nodes = fd.DirichletBC(V, 0.0, 1).nodes
    nodes = nodes[nodes < len(x)]
    assert len(nodes) >= 3
    assert np.abs(x[nodes, 0]).max() < 1e-10
    assert np.isclose(x[:, 0].min(), 0.0) and np.isclose(x[:, 0].max(), 1.0)
