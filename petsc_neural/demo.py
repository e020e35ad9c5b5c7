"""``petsc-neural demo``: the project's main job.

For now (foundation): a Firedrake P1 Poisson problem on the unit square, solved
by PETSc KSP (CG + GAMG); prints the iterations, final residual and time.
"""

from __future__ import annotations

import argparse
import sys
import time

__all__ = ["register", "run_demo"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="solve a Firedrake Poisson problem and report it")
    p.add_argument("--n", type=int, default=64, help="cells per side of the unit square")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    import firedrake as fd

    n = args.n
    mesh = fd.UnitSquareMesh(n, n)
    V = fd.FunctionSpace(mesh, "CG", 1)
    u, v = fd.TrialFunction(V), fd.TestFunction(V)
    x, y = fd.SpatialCoordinate(mesh)
    exact = fd.sin(fd.pi * x) * fd.sin(fd.pi * y)
    f = 2 * fd.pi**2 * exact
    a = fd.inner(fd.grad(u), fd.grad(v)) * fd.dx
    L = f * v * fd.dx
    bc = fd.DirichletBC(V, 0, "on_boundary")
    uh = fd.Function(V)
    params = {"ksp_type": "cg", "pc_type": "gamg", "ksp_rtol": 1e-10}
    solver = fd.LinearVariationalSolver(
        fd.LinearVariationalProblem(a, L, uh, bcs=bc), solver_parameters=params
    )
    t0 = time.perf_counter()
    solver.solve()
    elapsed = time.perf_counter() - t0
    ksp = solver.snes.ksp
    err = fd.errornorm(exact, uh)
    if mesh.comm.rank == 0:
        out = sys.stdout
        out.write(f"Poisson P1 on a {n}x{n} unit square: {V.dim()} dofs, "
                  f"{mesh.comm.size} rank(s)\n")
        out.write(f"KSP cg + pc gamg: {ksp.getIterationNumber()} iterations, "
                  f"residual norm {ksp.getResidualNorm():.3e}, "
                  f"reason {ksp.getConvergedReason()}, time {elapsed:.3f} s\n")
        out.write(f"L2 error against the exact solution: {err:.3e}\n")
    return 0 if ksp.getConvergedReason() > 0 else 1
