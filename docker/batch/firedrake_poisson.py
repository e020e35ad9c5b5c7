"""A Firedrake solve with its preconditioner chosen by PETSc options (a batch-job example).

Poisson's equation -Δu = f on the unit square, P1 elements on a SIZE×SIZE mesh,
u = 0 on the boundary, with the manufactured solution u = sin(πx) sin(πy).  The
solver's options prefix is ``poisson_``; any ``-poisson_*`` option on the command
line overrides the defaults below (PETSc's usual rule in Firedrake), e.g. a neural
preconditioner::

    mpiexec -n 4 python firedrake_poisson.py -size 128 \\
        -poisson_ksp_type fgmres -poisson_pc_type python \\
        -poisson_pc_python_type petsc_neural.NPO \\
        -poisson_ksp_monitor_true_residual ascii:poisson.hist -log_view :poisson.log_view

The node coordinates are handed to the PC (``PCSetCoordinates``), which NPO and
GAMG use.  Prints the iteration count, the converged reason and the L2 error
against the exact solution on rank 0; exits non-zero if the solve did not
converge or the error is not at discretisation level.
"""

from __future__ import annotations

import math
import sys

import firedrake as fd  # initialises PETSc with sys.argv (the -poisson_* options)
from petsc4py import PETSc

from firedrake_problems.core import node_coordinates

DEFAULTS = {
    "mat_type": "aij",
    "snes_type": "ksponly",
    "ksp_type": "cg",
    "ksp_norm_type": "unpreconditioned",
    "ksp_rtol": 1e-8,
    "ksp_max_it": 2000,
    "ksp_error_if_not_converged": True,
    "pc_type": "gamg",
}


def main() -> int:
    size = PETSc.Options().getInt("size", 64)  # -size N: cells per direction
    mesh = fd.UnitSquareMesh(size, size)
    V = fd.FunctionSpace(mesh, "CG", 1)
    x, y = fd.SpatialCoordinate(mesh)
    exact = fd.sin(math.pi * x) * fd.sin(math.pi * y)
    u, v = fd.TrialFunction(V), fd.TestFunction(V)
    a = fd.inner(fd.grad(u), fd.grad(v)) * fd.dx
    L = 2 * math.pi ** 2 * exact * v * fd.dx
    uh = fd.Function(V)
    bc = fd.DirichletBC(V, 0.0, "on_boundary")
    problem = fd.LinearVariationalProblem(a, L, uh, bcs=bc)
    solver = fd.LinearVariationalSolver(problem, solver_parameters=DEFAULTS,
                                        options_prefix="poisson_")
    solver.snes.ksp.getPC().setCoordinates(node_coordinates(V))
    solver.solve()

    ksp = solver.snes.ksp
    its, reason = ksp.getIterationNumber(), ksp.getConvergedReason()
    error = fd.errornorm(fd.Function(fd.FunctionSpace(mesh, "CG", 3)).interpolate(exact), uh)
    pc = ksp.getPC()
    kind = pc.getType() + (f" ({pc.getPythonContext().__class__.__name__})"
                           if pc.getType() == "python" else "")
    if mesh.comm.rank == 0:
        sys.stdout.write(
            f"firedrake_poisson: {V.dim()} dofs on {mesh.comm.size} ranks, "
            f"KSP {ksp.getType()}, PC {kind}: {its} iterations, reason {reason}, "
            f"L2 error {error:.3e}\n")
    # P1 on this mesh: the L2 error is about 1.4 h^2 (measured 1.35e-3 at SIZE=32);
    # an unconverged or wrong solution is off by O(1).
    return 0 if reason > 0 and error < 4.0 / size ** 2 else 1


if __name__ == "__main__":
    sys.exit(main())
