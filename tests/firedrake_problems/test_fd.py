"""Finite-difference families (PETSc DMDA): stencils, convergence orders, ranks, no Firedrake."""

import subprocess
import sys

import numpy as np
import pytest
from petsc4py import PETSc

from firedrake_problems import make_problem
from firedrake_problems.fd import cdr_operator, manufactured, rotated_operator, stencil_scipy
from pcshell import to_scipy

LU = {"ksp_type": "preonly", "pc_type": "lu"}


def _orders(family, sizes, **params):
    errs = []
    for N in sizes:
        p = make_problem(family, N, rhs="manufactured", **params)
        x, ksp = p.solve(LU)
        assert ksp.getConvergedReason() > 0
        errs.append(p.error(x))
    return [float(np.log2(errs[i] / errs[i + 1])) for i in range(len(errs) - 1)], errs


@pytest.mark.parametrize(
    "family, params, sizes, order",
    [
        ("fd_cdr", {"dim": 1, "regime": "convection"}, (128, 256, 512), 1),  # upwind
        ("fd_cdr", {"dim": 1, "regime": "convection", "scheme": "central"}, (64, 128, 256), 2),
        ("fd_cdr", {"dim": 1, "regime": "reaction"}, (32, 64, 128), 2),
        ("fd_cdr", {"dim": 2, "regime": "convection"}, (32, 64, 128), 1),
        ("fd_cdr", {"dim": 2, "regime": "reaction"}, (16, 32, 64), 2),
        ("fd_rotated", {"theta": 0.5}, (16, 32, 64), 2),
    ],
)
def test_manufactured_solution_converges_at_the_scheme_order(family, params, sizes, order):
    rates, errs = _orders(family, sizes, **params)
    assert errs[-1] < errs[0]
    # the last rate is in the asymptotic range: within 0.15 of the order
    assert abs(rates[-1] - order) < 0.15, (rates, errs)


def test_operator_apply_is_the_strong_form_the_stencil_discretises():
    # L u at the nodes from the analytic derivatives equals the stencil applied to u,
    # up to the truncation error (second order for central differences).
    for op in (cdr_operator(2, "reaction"), rotated_operator(0.3, 0.1),
               cdr_operator(1, "convection", "central")):
        errs = []
        for N in (32, 64):
            from firedrake_problems.fd import grid_points

            X = grid_points(N, op.dim)
            x = [X[:, k] for k in range(op.dim)]
            u, g, h = manufactured(x)
            Lu = op.apply(x, u, g, h)
            errs.append(np.abs(stencil_scipy(op, N) @ u - Lu).max() / np.abs(Lu).max())
        assert errs[1] < errs[0] / 3.5, errs


def test_petsc_assembly_matches_the_scipy_stencil_and_is_nonsymmetric_or_indefinite():
    p = make_problem("fd_cdr", 12, dim=2, regime="convection")
    S = stencil_scipy(p.operator, 12)
    D = to_scipy(p.A)
    assert abs(S - D).max() < 1e-12 * abs(S).max()
    assert abs(D - D.T).max() > 1.0  # upwind convection: nonsymmetric
    q = make_problem("fd_cdr", 32, dim=1, regime="reaction")
    ev = np.linalg.eigvalsh(to_scipy(q.A).toarray())
    assert ev.min() < 0 < ev.max()  # indefinite (two negative eigenvalues)
    assert (ev < 0).sum() == 2
    r = make_problem("fd_rotated", 10, theta=0.7)
    assert to_scipy(r.A).getnnz(axis=1).max() == 9


def test_coordinates_random_rhs_and_geometric_multigrid():
    p = make_problem("fd_cdr", 32, dim=2, regime="reaction", seed=3)
    h = 1 / 33
    assert p.coordinates.shape == (32 * 32, 2)
    np.testing.assert_allclose(p.coordinates.min(0), [h, h])
    np.testing.assert_allclose(p.coordinates[1] - p.coordinates[0], [h, 0])  # x fastest
    b = p.b.getArray(readonly=True)
    assert -0.5 <= b.min() < -0.4 and 0.4 < b.max() <= 0.5
    x, ksp = p.solve({"ksp_type": "fgmres", "ksp_rtol": 1e-8, "pc_type": "mg",
                      "pc_mg_levels": 3, "pc_mg_galerkin": "pmat",
                      "mg_levels_ksp_type": "richardson", "mg_levels_pc_type": "sor"})
    assert ksp.getConvergedReason() > 0 and ksp.getIterationNumber() < 30
    assert ksp.getPC().getMGLevels() == 3


def test_bad_parameters_are_clear_errors():
    with pytest.raises(ValueError, match="regime"):
        make_problem("fd_cdr", 8, regime="diffusion")
    with pytest.raises(ValueError, match="scheme"):
        make_problem("fd_cdr", 8, scheme="weno")
    with pytest.raises(ValueError, match="rhs"):
        make_problem("fd_rotated", 8, rhs="zero")


def test_fd_families_do_not_import_firedrake():
    code = ("import sys; from firedrake_problems import make_problem; "
            "p = make_problem('fd_cdr', 8, dim=2); p.solve({'pc_type': 'ilu'}); "
            "print('firedrake' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.parallel(nprocs=2)
def test_two_ranks_assemble_the_serial_matrix_and_solution():
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    par = make_problem("fd_rotated", 20, theta=0.4, rhs="manufactured", comm=PETSc.COMM_WORLD)
    ser = make_problem("fd_rotated", 20, theta=0.4, rhs="manufactured", comm=PETSc.COMM_SELF)
    xp, _ = par.solve({"ksp_type": "gmres", "ksp_rtol": 1e-12, "pc_type": "bjacobi"})
    xs, _ = ser.solve({"ksp_type": "preonly", "pc_type": "lu"})
    assert par.A.getSize() == ser.A.getSize()
    assert abs(par.error(xp) - ser.error(xs)) < 1e-8
    # the same right-hand side entries at the same coordinates (natural-order draw)
    rp = make_problem("fd_cdr", 16, dim=2, seed=5, comm=PETSc.COMM_WORLD)
    rs = make_problem("fd_cdr", 16, dim=2, seed=5, comm=PETSc.COMM_SELF)
    coords = np.concatenate(comm.allgather(rp.coordinates))
    vals = np.concatenate(comm.allgather(rp.b.getArray(readonly=True).copy()))
    order = np.lexsort(np.round(coords, 12).T)
    order_s = np.lexsort(np.round(rs.coordinates, 12).T)
    np.testing.assert_allclose(vals[order], rs.b.getArray(readonly=True)[order_s])
