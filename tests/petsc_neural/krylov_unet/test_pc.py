"""petsc_neural.KrylovUNet in PETSc: whole coupled matrix, fieldsplit, Firedrake, MPI, errors."""

import numpy as np
import pytest
import torch
from kunet_helpers import kunet_params, plain_params, train_tiny_model
from petsc4py import PETSc

from pcshell import load_model, set_coordinates
from petsc_neural.krylov_unet.data import problem_blocks
from petsc_neural.krylov_unet.system import CoupledSystem

SIZE = 8  # a 9^3 grid


def _problem(seed, comm=None):
    from firedrake_problems.mixed_3d1d import mixed_3d1d

    return mixed_3d1d(SIZE, seed, comm)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny network trained for a few seconds on two systems of the family."""
    from mpi4py import MPI

    systems = []
    for seed in (101, 102):
        blocks = problem_blocks(_problem(seed, MPI.COMM_SELF))[0]
        systems.append(CoupledSystem(blocks["A33"], blocks["A31"], blocks["A13"],
                                     blocks["A11"], dtype=torch.float64))
    return train_tiny_model(str(tmp_path_factory.mktemp("kunet") / "tiny.pt"), systems)


@pytest.fixture(scope="module")
def problem():
    return _problem(7)


def test_apply_is_the_block_elimination_around_the_network(model, problem):
    ksp = problem.make_ksp(kunet_params(model))
    r = problem.A.createVecLeft()
    r.setArray(np.random.default_rng(0).standard_normal(r.getSize()))
    z = r.duplicate()
    ksp.getPC().apply(r, z)
    blocks, rows3, rows1, G = problem_blocks(problem)
    S = CoupledSystem(blocks["A33"], blocks["A31"], blocks["A13"], blocks["A11"])
    ra = r.getArray()
    scale = np.linalg.norm(ra)
    ru = ra / scale
    net = load_model(model).module
    with torch.no_grad():
        z3 = net(torch.from_numpy(S.reduce_rhs(ru[rows3], ru[rows1])), S.geometry,
                 S.diagonal).numpy()
    z1 = np.linalg.solve(blocks["A11"].toarray(), ru[rows1] - blocks["A13"] @ z3)
    za = z.getArray()
    np.testing.assert_allclose(za[rows3], scale * z3, rtol=1e-12, atol=1e-14 * abs(za).max())
    np.testing.assert_allclose(za[rows1], scale * z1, rtol=1e-10, atol=1e-14 * abs(za).max())


def test_mat_apply_is_apply_column_by_column(model, problem):
    ksp = problem.make_ksp(kunet_params(model))
    pc = ksp.getPC()
    n = problem.A.getSize()[0]
    X = PETSc.Mat().createDense((n, 3), comm=PETSc.COMM_SELF)
    X.setUp()
    data = np.random.default_rng(4).standard_normal((n, 3))
    data[:, 1] = 0.0  # zero in, zero out
    X.getDenseArray()[:] = data
    X.assemble()
    Y = X.duplicate()
    pc.matApply(X, Y)
    for j in range(3):
        x, y = problem.A.createVecs()
        x.setArray(data[:, j])
        pc.apply(x, y)
        np.testing.assert_allclose(Y.getDenseArray()[:, j], y.getArray(), rtol=1e-13, atol=0)
    assert not Y.getDenseArray()[:, 1].any()


def test_fgmres_on_the_coupled_matrix_beats_no_preconditioner(model, problem):
    x, ksp = problem.solve(kunet_params(model))
    _, ksp_none = problem.solve(plain_params("none"))
    assert ksp.getConvergedReason() > 0
    its, its_none = ksp.getIterationNumber(), ksp_none.getIterationNumber()
    assert its < its_none / 2, (its, its_none)
    r = problem.b.duplicate()
    problem.A.mult(x, r)
    r.aypx(-1.0, problem.b)
    assert r.norm() <= 1.01e-8 * problem.b.norm()


def test_as_the_pc_of_the_3d_block_inside_a_schur_fieldsplit(model, problem):
    params = {**plain_params(), "pc_type": "fieldsplit", "pc_fieldsplit_type": "schur",
              "pc_fieldsplit_schur_fact_type": "full",
              "fieldsplit_3d": {"ksp_type": "preonly", "pc_type": "python",
                                "pc_python_type": "petsc_neural.KrylovUNet",
                                "pc_neural_model": model},
              "fieldsplit_1d": {"ksp_type": "preonly", "pc_type": "lu"}}
    _, ksp = problem.solve(params)
    _, ksp_none = problem.solve(plain_params("none"))
    assert ksp.getConvergedReason() > 0
    assert ksp.getIterationNumber() < ksp_none.getIterationNumber() / 2
    sub = ksp.getPC().getFieldSplitSubKSP()[0].getPC().getPythonContext()
    assert sub.model.path == model and sub._info["n1"] == 0 and sub._info["G"] == SIZE + 1


def test_shipped_model_is_used_when_none_is_given(problem):
    """The shipped model (trained on a 33^3 grid) serves the 9^3 grid too."""
    _, ksp = problem.solve(kunet_params(None))
    _, ksp_none = problem.solve(plain_params("none"))
    ctx = ksp.getPC().getPythonContext()
    assert ctx.model.path.endswith("krylov_unet_mixed3d1d.pt")
    assert ctx.model.metadata.dtype == "float32"
    assert ksp.getConvergedReason() > 0
    assert ksp.getIterationNumber() < ksp_none.getIterationNumber() / 2


def test_refused_under_gmres_and_view_says_what_it_does(model, problem, tmp_path):
    with pytest.raises(PETSc.Error) as info:
        problem.solve(kunet_params(model, ksp_type="gmres"))
    assert "nonlinear in the residual" in str(info.value.__cause__)
    ksp = problem.make_ksp(kunet_params(model))
    path = str(tmp_path / "kunet_view.txt")
    viewer = PETSc.Viewer().createASCII(path, comm=PETSc.COMM_SELF)
    ksp.view(viewer)
    viewer.destroy()
    with open(path) as f:
        text = f.read()
    assert "petsc_neural KrylovUNet" in text and f"grid {SIZE + 1}^3" in text
    assert "eliminated exactly" in text and "network on this process" in text


def _bare_ksp(A):
    ksp = PETSc.KSP().create(comm=A.getComm())
    ksp.setOperators(A)
    ksp.setType("fgmres")
    ksp.getPC().setType("python")
    ksp.getPC().setPythonContext(__import__("petsc_neural").KrylovUNet())
    return ksp


def test_clear_errors_without_coordinates_or_on_a_non_grid_operator(model, problem):
    from firedrake_problems import make_problem

    opts = PETSc.Options()
    opts["pc_neural_model"] = model
    try:
        with pytest.raises(PETSc.Error) as info:
            _bare_ksp(problem.A).setUp()
        assert "node coordinates" in str(info.value.__cause__)
        p2 = make_problem("poisson", 6, dim=3)
        ksp = _bare_ksp(p2.A)
        jitter = 0.01 * np.random.default_rng(1).random(p2.coordinates.shape)
        set_coordinates(p2.A, p2.coordinates + jitter)
        with pytest.raises(PETSc.Error) as info:
            ksp.setUp()
        assert "not on a uniform" in str(info.value.__cause__)
    finally:
        opts.delValue("pc_neural_model")


def test_from_firedrake_solver_parameters_on_a_3d_block(model):
    """A Firedrake LinearSolver on the tissue operator alone (coordinates on the matrix)."""
    import firedrake as fd

    from firedrake_problems.core import node_coordinates

    mesh = fd.UnitCubeMesh(SIZE, SIZE, SIZE)
    V = fd.FunctionSpace(mesh, "CG", 1)
    u, v = fd.TrialFunction(V), fd.TestFunction(V)
    x = fd.SpatialCoordinate(mesh)
    bc = fd.DirichletBC(V, 0, "on_boundary")
    A = fd.assemble(fd.inner(fd.grad(u), fd.grad(v)) * fd.dx, bcs=[bc], mat_type="aij")
    set_coordinates(A.petscmat, node_coordinates(V))
    L = fd.assemble(fd.exp(x[0]) * fd.sin(3 * x[1]) * x[2] * v * fd.dx, bcs=[bc])
    out = {}
    for name, params in (("kunet", kunet_params(model)), ("none", plain_params("none"))):
        uh = fd.Function(V)
        solver = fd.LinearSolver(A, solver_parameters=params)
        solver.solve(uh, L)
        out[name] = (uh, solver.ksp)
    uh, ksp = out["kunet"]
    assert ksp.getConvergedReason() > 0
    assert ksp.getIterationNumber() < out["none"][1].getIterationNumber()
    assert fd.errornorm(out["none"][0], uh) <= 1e-6 * fd.norm(out["none"][0])


@pytest.mark.parallel(nprocs=2)
def test_two_ranks_give_the_serial_iterations(tmp_path):
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    # Every rank trains the same tiny model (deterministic, one thread): no broadcast
    # that could cross Firedrake's own collectives.
    blocks = problem_blocks(_problem(101, MPI.COMM_SELF))[0]
    S = CoupledSystem(blocks["A33"], blocks["A31"], blocks["A13"], blocks["A11"])
    path = train_tiny_model(str(tmp_path / f"tiny{comm.rank}.pt"), [S], steps=80)
    par = _problem(7, comm)
    x_par, ksp_par = par.solve(kunet_params(path))
    ser = _problem(7, MPI.COMM_SELF)
    x_ser, ksp_ser = ser.solve(kunet_params(path))
    assert ksp_par.getConvergedReason() > 0 and ksp_ser.getConvergedReason() > 0
    assert ksp_par.getIterationNumber() == ksp_ser.getIterationNumber()
    ctx = ksp_par.getPC().getPythonContext()
    assert "network on rank 0 of 2" in "\n".join(ctx.view_details(ksp_par.getPC()))
    # the same solution, matched by coordinates (the numberings differ)
    full = np.concatenate(comm.allgather(x_par.getArray(readonly=True).copy()))
    coords = np.concatenate(comm.allgather(par.coordinates))

    def by_position(values, xyz):
        order = np.lexsort(np.round(xyz, 9).T[::-1])
        return values[order]

    a, b = by_position(full, coords), by_position(x_ser.getArray(readonly=True), ser.coordinates)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6 * np.abs(b).max())


@pytest.mark.parametrize("on_failure", ["error", "fallback"])
def test_non_finite_network_output_is_an_error_or_the_fallback(model, problem, on_failure):
    """NaN from the network: a clear NonFiniteOutputError, or the fallback PC takes over."""
    from pcshell import NonFiniteOutputError

    ksp = problem.make_ksp({**kunet_params(model), "pc_neural_on_failure": on_failure,
                            "pc_neural_fallback_pc_type": "jacobi"})
    ctx = ksp.getPC().getPythonContext()
    ctx._root_apply = lambda r: np.full_like(r, np.nan)
    x = problem.A.createVecRight()
    if on_failure == "error":
        with pytest.raises(PETSc.Error) as info:
            ksp.solve(problem.b, x)
        err = info.value.__cause__
        assert isinstance(err, NonFiniteOutputError)
        assert "KrylovUNet: the network returned non-finite values" in str(err)
        assert "on_failure fallback switches to a classical PC" in str(err)
        return
    ksp.solve(problem.b, x)
    assert ksp.getConvergedReason() > 0
    assert ctx.fallback_reason is not None and "non-finite" in ctx.fallback_reason
