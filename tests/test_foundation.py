"""The stack itself: PETSc from the cache, CPU torch, Firedrake + KSP on 1 and 2 ranks."""

import os

import pytest


def test_petsc4py_uses_cached_petsc_3_26_0():
    import sys

    import petsc4py
    from petsc4py import PETSc

    assert PETSc.Sys.getVersion() == (3, 26, 0)
    cfg = petsc4py.get_config()
    # The setup script records the PETSc it built (in the cache, outside the repo).
    with open(os.path.join(sys.prefix, "petsc-neural-env.sh")) as f:
        recorded = dict(
            kv.split("=", 1) for kv in f.read().replace("export", " ").split() if "=" in kv
        )
    assert os.path.realpath(cfg["PETSC_DIR"]) == os.path.realpath(recorded["PETSC_DIR"])
    assert cfg["PETSC_ARCH"] == recorded["PETSC_ARCH"]
    assert os.path.basename(cfg["PETSC_DIR"]).startswith("petsc-3.26.0-")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert not os.path.realpath(cfg["PETSC_DIR"]).startswith(os.path.realpath(repo) + os.sep)


def test_torch_is_the_pinned_2_13_0():
    """The setup pins torch 2.13.0 (CPU wheel here; a CUDA build on a GPU host is fine too)."""
    import torch

    assert torch.__version__.split("+")[0] == "2.13.0"


def _poisson(n, comm=None):
    """Solve -Δu = f on the unit square with P1, CG + GAMG; return (L2 error, its)."""
    import firedrake as fd

    kw = {} if comm is None else {"comm": comm}
    mesh = fd.UnitSquareMesh(n, n, **kw)
    V = fd.FunctionSpace(mesh, "CG", 1)
    u, v = fd.TrialFunction(V), fd.TestFunction(V)
    x, y = fd.SpatialCoordinate(mesh)
    exact = fd.sin(fd.pi * x) * fd.sin(fd.pi * y)
    a = fd.inner(fd.grad(u), fd.grad(v)) * fd.dx
    L = 2 * fd.pi**2 * exact * v * fd.dx
    uh = fd.Function(V)
    solver = fd.LinearVariationalSolver(
        fd.LinearVariationalProblem(a, L, uh, bcs=fd.DirichletBC(V, 0, "on_boundary")),
        solver_parameters={"ksp_type": "cg", "pc_type": "gamg", "ksp_rtol": 1e-10},
    )
    solver.solve()
    ksp = solver.snes.ksp
    assert ksp.getType() == "cg" and ksp.getPC().getType() == "gamg"
    assert ksp.getConvergedReason() > 0
    return fd.errornorm(exact, uh), ksp.getIterationNumber()


def _assert_p1_rate(comm=None):
    errors = [_poisson(n, comm)[0] for n in (8, 16, 32)]
    ratios = [errors[i] / errors[i + 1] for i in range(2)]
    # P1 in L2: error ~ h^2, so halving h divides it by ~4.
    assert all(3.5 < r < 4.5 for r in ratios), (errors, ratios)


def test_poisson_p1_rate_serial():
    _assert_p1_rate()


@pytest.mark.parallel(nprocs=2)
def test_poisson_p1_rate_and_iterations_on_two_ranks():
    from mpi4py import MPI

    assert MPI.COMM_WORLD.size == 2
    _assert_p1_rate()
    # The same problem on one rank (COMM_SELF) needs the same iterations within ±1.
    for n in (16, 32):
        _, its_parallel = _poisson(n)
        _, its_serial = _poisson(n, MPI.COMM_SELF)
        assert abs(its_parallel - its_serial) <= 1, (n, its_parallel, its_serial)
