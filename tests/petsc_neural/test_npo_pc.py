"""petsc_neural.NPO served by PETSc: iterations, MPI, CG refusal, Firedrake solver_parameters."""

import numpy as np
import pytest
from npo_helpers import npo_params, plain_params, tiny_model
from petsc4py import PETSc

from firedrake_problems import make_problem
from pcshell import NeuralPCError, set_coordinates


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return tiny_model(str(tmp_path_factory.mktemp("npo") / "tiny.pt"))


def _problem(comm=None):
    # Not what the model was trained on: another family (random lognormal
    # coefficient), an unstructured (jittered Delaunay) mesh and another size.
    p = make_problem("diffusion", 20, seed=7, comm=comm, mesh="jittered", rhs="grf")
    set_coordinates(p.A, p.coordinates)
    return p


def test_npo_reduces_fgmres_iterations_on_an_unseen_problem(model, device):
    p = _problem()
    _, ksp_none = p.solve(plain_params("none"))
    x, ksp = p.solve({**npo_params(model), "pc_neural_device": device})
    assert ksp.getConvergedReason() > 0 and ksp_none.getConvergedReason() > 0
    its, its_none = ksp.getIterationNumber(), ksp_none.getIterationNumber()
    assert its <= 0.25 * its_none, (its, its_none)
    r = p.b.duplicate()
    p.A.mult(x, r)
    r.aypx(-1.0, p.b)
    assert r.norm() <= 1e-9 * p.b.norm()
    pc = ksp.getPC().getPythonContext()
    assert type(pc).__name__ == "NPO" and pc.op.coordinates is not None
    assert pc.device.type == device


def test_npo_is_refused_under_cg_and_allowed_with_the_override(model):
    p = _problem()
    with pytest.raises(PETSc.Error) as info:
        p.solve(npo_params(model, ksp_type="cg"))
    cause = info.value.__cause__
    assert isinstance(cause, NeuralPCError)
    assert "nonlinear in the residual" in str(cause) and "fgmres" in str(cause)
    params = npo_params(model, ksp_type="cg")
    params["pc_neural_allow_nonflexible"] = True
    _, ksp = p.solve(params)  # runs (the user asked for it); converges on this SPD problem
    assert ksp.getIterationNumber() > 0


def test_npo_model_for_another_block_size_is_refused(model):
    p = make_problem("elasticity", 4, seed=0, rhs="grf")
    with pytest.raises(PETSc.Error) as info:
        p.solve(npo_params(model))
    assert "block size" in str(info.value.__cause__)


@pytest.mark.parallel(nprocs=2)
def test_npo_serial_and_two_ranks_agree(tmp_path):
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    assert comm.size == 2
    path = comm.bcast(tiny_model(str(tmp_path / "tiny.pt")) if comm.rank == 0 else None)
    par = _problem(comm)
    x_par, ksp_par = par.solve(npo_params(path))
    ser = _problem(MPI.COMM_SELF)
    x_ser, ksp_ser = ser.solve(npo_params(path))
    assert ksp_par.getConvergedReason() > 0 and ksp_ser.getConvergedReason() > 0
    # The same solution (to the solver tolerance); the numberings differ, so
    # match the dofs by their coordinates.
    full = np.concatenate(comm.allgather(x_par.getArray(readonly=True).copy()))
    coords = np.concatenate(comm.allgather(par.coordinates))
    xs = x_ser.getArray(readonly=True)

    def by_position(values, xy):
        order = np.lexsort(np.round(xy, 10).T[::-1])
        return values[order], xy[order]

    a, xy_a = by_position(full, coords)
    b, xy_b = by_position(xs, ser.coordinates)
    np.testing.assert_allclose(xy_a, xy_b, atol=1e-12)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-7 * np.abs(b).max())
    # Under MPI each rank applies the network to its diagonal block (neural block
    # Jacobi): a few more iterations, never a different method.
    its_par, its_ser = ksp_par.getIterationNumber(), ksp_ser.getIterationNumber()
    assert its_ser <= its_par <= 2 * its_ser + 5, (its_ser, its_par)
    _, ksp_none = par.solve(plain_params("none"))
    assert its_par < ksp_none.getIterationNumber() / 3


def test_npo_from_firedrake_solver_parameters(model):
    import firedrake as fd

    mesh = fd.UnitSquareMesh(16, 16)
    V = fd.FunctionSpace(mesh, "CG", 1)
    u, v = fd.TrialFunction(V), fd.TestFunction(V)
    x, y = fd.SpatialCoordinate(mesh)
    f = fd.sin(3 * x) * fd.exp(y)
    bc = fd.DirichletBC(V, 0, "on_boundary")

    def solve(params):
        uh = fd.Function(V)
        problem = fd.LinearVariationalProblem(fd.inner(fd.grad(u), fd.grad(v)) * fd.dx,
                                              f * v * fd.dx, uh, bcs=bc)
        solver = fd.LinearVariationalSolver(problem, solver_parameters=params)
        solver.solve()
        return uh, solver.snes.ksp

    u_ref, _ = solve({"ksp_type": "preonly", "pc_type": "lu"})
    uh, ksp = solve(npo_params(model))
    _, ksp_none = solve(plain_params("none"))
    assert ksp.getConvergedReason() > 0
    assert ksp.getIterationNumber() < ksp_none.getIterationNumber()
    assert fd.errornorm(u_ref, uh) <= 1e-8 * fd.norm(u_ref)


@pytest.mark.parametrize("family, size, extra, expected", [
    ("poisson", 12, {}, "npo_poisson2d.pt"),
    ("poisson", 12, {"pc_npo_family": "diffusion"}, "npo_diffusion2d.pt"),
    ("elasticity", 6, {}, "npo_elasticity2d.pt"),
])
def test_shipped_model_is_used_when_none_is_given(family, size, extra, expected):
    p = make_problem(family, size, seed=3, rhs="grf")
    _, ksp_none = p.solve(plain_params("none"))
    _, ksp = p.solve({**npo_params(None), **extra})
    assert ksp.getPC().getPythonContext().model.path.endswith(expected)
    assert ksp.getConvergedReason() > 0
    assert ksp.getIterationNumber() < ksp_none.getIterationNumber() / 2


_CMDLINE_SCRIPT = """
import sys
import petsc4py
petsc4py.init(sys.argv)
from petsc4py import PETSc
n = 20
A = PETSc.Mat().createAIJ([n * n, n * n], nnz=5)
for row in range(n * n):
    i, j = divmod(row, n)
    A.setValue(row, row, 4.0)
    for ii, jj in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)):
        if 0 <= ii < n and 0 <= jj < n:
            A.setValue(row, ii * n + jj, -1.0)
A.assemble()
b = A.createVecLeft()
b.set(1.0)
x = b.duplicate()
ksp = PETSc.KSP().create()
ksp.setOperators(A)
ksp.setFromOptions()
ksp.solve(b, x)
print("ITERATIONS", ksp.getIterationNumber(), ksp.getConvergedReason())
"""


def test_npo_from_the_command_line(tmp_path):
    """Plain petsc4py program, options on its command line, the shipped model."""
    import subprocess
    import sys

    script = tmp_path / "solve.py"
    script.write_text(_CMDLINE_SCRIPT)
    opts = ["-ksp_type", "fgmres", "-ksp_rtol", "1e-10", "-pc_type", "python",
            "-pc_python_type", "petsc_neural.NPO", "-ksp_view"]
    out = subprocess.run([sys.executable, str(script), *opts], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    its, reason = (int(v) for v in out.split("ITERATIONS")[1].split())
    assert reason > 0 and its < 25, out
    assert "petsc_neural NPO" in out and "npo_poisson2d.pt" in out
    assert "nonlinear in the residual" in out
    assert "node coordinates: none" in out  # a plain petsc4py program attaches none
