"""petsc_neural.TorchScriptPC from its real clients: Firedrake and PETSc's C tutorial ex2."""

import os
import subprocess
import sys

import numpy as np
import petsc4py
import pytest
import torch

from pcshell import LocalOperator
from petsc_neural import TorchScriptPC


class Jacobi(torch.nn.Module):
    def forward(self, r: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return r / d


class Polynomial(torch.nn.Module):
    """z = sum_k c_k (D^-1 A)^k D^-1 r with learned c: a small linear network on the graph."""

    def __init__(self, degree: int) -> None:
        super().__init__()
        c = torch.zeros(degree, dtype=torch.float64)
        c[0] = 1.0
        self.c = torch.nn.Parameter(c)

    def forward(self, r: torch.Tensor, A: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        v = r / d
        z = self.c[0] * v
        for k in range(1, self.c.shape[0]):
            v = torch.mv(A, v) / d
            z = z + self.c[k] * v
        return z


def firedrake_poisson(n: int):
    import firedrake as fd

    mesh = fd.UnitSquareMesh(n, n)
    V = fd.FunctionSpace(mesh, "CG", 1)
    u, v = fd.TrialFunction(V), fd.TestFunction(V)
    x, y = fd.SpatialCoordinate(mesh)
    a = fd.inner(fd.grad(u), fd.grad(v)) * fd.dx
    L = fd.sin(3 * x) * fd.exp(y) * v * fd.dx
    return fd, V, a, L, fd.DirichletBC(V, 0, "on_boundary")


def solve_firedrake(n: int, params: dict) -> int:
    fd, V, a, L, bc = firedrake_poisson(n)
    uh = fd.Function(V)
    solver = fd.LinearVariationalSolver(
        fd.LinearVariationalProblem(a, L, uh, bcs=bc), solver_parameters=params
    )
    solver.solve()
    ksp = solver.snes.ksp
    assert ksp.getConvergedReason() > 0, ksp.getConvergedReason()
    return ksp.getIterationNumber(), uh


BASE = {"ksp_type": "fgmres", "ksp_rtol": 1e-8, "ksp_max_it": 400,
        "ksp_gmres_restart": 400, "mat_type": "aij"}


def test_firedrake_solver_parameters(tmp_path):
    model = str(tmp_path / "jacobi.pt")
    TorchScriptPC.export(Jacobi(), model, inputs=["residual", "diagonal"], linear=True)
    neural = {**BASE, "pc_type": "python", "pc_python_type": "petsc_neural.TorchScriptPC",
              "pc_neural_model": model}
    its_neural, u_neural = solve_firedrake(24, neural)
    its_jacobi, u_jacobi = solve_firedrake(24, {**BASE, "pc_type": "jacobi"})
    assert its_neural == its_jacobi
    assert np.allclose(u_neural.dat.data_ro, u_jacobi.dat.data_ro, rtol=1e-6, atol=1e-10)


def train_polynomial(A_csr: torch.Tensor, d: torch.Tensor, degree: int, steps: int, seed: int):
    """Minimise E ||z(A e) - e||_A^2 / ||e||_A^2 over random errors e (a few seconds).

    The A-norm error loss weighs the smooth modes that limit Krylov convergence;
    a residual loss over random r would only learn to damp the rough ones.
    """
    torch.manual_seed(seed)
    net = Polynomial(degree)
    # The loss is quadratic in the coefficients: L-BFGS converges in a few dozen steps.
    opt = torch.optim.LBFGS(net.parameters(), lr=1.0, max_iter=20, line_search_fn="strong_wolfe")
    n = d.shape[0]
    E = torch.randn(n, 32, dtype=torch.float64)
    R = A_csr @ E
    losses = []

    def closure():
        opt.zero_grad()
        Z = torch.stack([net(R[:, j], A_csr, d) for j in range(R.shape[1])], dim=1)
        err = Z - E
        loss = ((err * (A_csr @ err)).sum(0) / (E * R).sum(0)).mean()
        loss.backward()
        losses.append(loss.item())
        return loss

    for _ in range(steps):
        opt.step(closure)
    return net, losses


def test_tiny_trained_model_reduces_fgmres_iterations(tmp_path):
    fd, V, a, L, bc = firedrake_poisson(12)  # train on 12x12 ...
    A = fd.assemble(a, bcs=bc, mat_type="aij").petscmat
    op = LocalOperator(A)
    net, losses = train_polynomial(op.csr, op.diagonal, degree=6, steps=3, seed=0)
    assert losses[-1] < 0.5 * losses[0]
    model = str(tmp_path / "poly.pt")
    TorchScriptPC.export(net, model, inputs=["residual", "operator", "diagonal"], linear=True,
                         problem_family="poisson", training={"lbfgs_steps": 3, "degree": 6})
    neural = {**BASE, "pc_type": "python", "pc_python_type": "petsc_neural.TorchScriptPC",
              "pc_neural_model": model}
    its_neural, _ = solve_firedrake(32, neural)  # ... applied on 32x32, not seen in training
    its_none, _ = solve_firedrake(32, {**BASE, "pc_type": "none"})
    its_jacobi, _ = solve_firedrake(32, {**BASE, "pc_type": "jacobi"})
    # Measured: 23 iterations against 90 for none and for jacobi.
    assert its_neural < 0.5 * its_none, (its_neural, its_none)
    assert its_neural < its_jacobi, (its_neural, its_jacobi)


# ----------------------------------------------------------- PETSc's C tutorial ex2
@pytest.fixture(scope="module")
def ex2(tmp_path_factory):
    """Compile src/ksp/ksp/tutorials/ex2.c from the PETSc source in the setup cache."""
    cfg = petsc4py.get_config()
    petsc_dir, arch = cfg["PETSC_DIR"], cfg["PETSC_ARCH"]
    src = os.path.join(petsc_dir, "src", "ksp", "ksp", "tutorials", "ex2.c")
    assert os.path.exists(src), src
    d = tmp_path_factory.mktemp("ex2")
    (d / "ex2.c").write_bytes(open(src, "rb").read())
    (d / "makefile").write_text(
        f"PETSC_DIR={petsc_dir}\nPETSC_ARCH={arch}\n"
        "include ${PETSC_DIR}/lib/petsc/conf/variables\n"
        "include ${PETSC_DIR}/lib/petsc/conf/rules\n"
    )
    subprocess.run(["make", "-s", "ex2"], cwd=d, check=True, capture_output=True)
    return str(d / "ex2")


def run_ex2(exe, *args, nprocs=1):
    cmd = [exe, "-m", "32", "-n", "32", "-ksp_type", "cg", *args]
    if nprocs > 1:
        cmd = ["mpiexec", "-n", str(nprocs), *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ), timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def iterations(text):
    line = [ln for ln in text.splitlines() if "iterations" in ln and "Norm of error" in ln][0]
    return int(line.split("iterations")[1])


@pytest.fixture
def jacobi_file(tmp_path):
    model = str(tmp_path / "jacobi.pt")
    TorchScriptPC.export(Jacobi(), model, inputs=["residual", "diagonal"], linear=True)
    return model


def neural_args(model):
    return ["-python", sys.executable, "-pc_type", "python",
            "-pc_python_type", "petsc_neural.TorchScriptPC", "-pc_neural_model", model]


@pytest.mark.parametrize("nprocs", [1, 2])
def test_c_ex2_same_iterations_as_jacobi(ex2, jacobi_file, nprocs):
    its_jacobi = iterations(run_ex2(ex2, "-pc_type", "jacobi", nprocs=nprocs))
    its_neural = iterations(run_ex2(ex2, *neural_args(jacobi_file), nprocs=nprocs))
    assert its_neural == its_jacobi
    if nprocs == 1:
        assert its_jacobi == 49  # PETSc's own figure for -m 32 -n 32 with jacobi


def test_c_ex2_view_log_help_and_option_typos(ex2, jacobi_file):
    out = run_ex2(ex2, *neural_args(jacobi_file), "-ksp_view", "-log_view", "-help",
                  "-pc_neural_modle", "typo.pt", "-options_left")
    assert "petsc_neural TorchScriptPC" in out and jacobi_file in out  # -ksp_view
    assert "PCNeuralApply" in out and "PCNeuralInfer" in out  # -log_view events
    assert "-pc_neural_on_failure <error>" in out  # -help lists the options
    assert "Option left: name:-pc_neural_modle value: typo.pt" in out  # typo reported
    assert "Option left: name:-pc_neural_model " not in out  # the real option was used


class CoordinateJacobi(torch.nn.Module):
    """(1 + x) D^-1 r: only right if the node coordinates reached the network."""

    def forward(self, r: torch.Tensor, d: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
        return (1.0 + xy[:, 0]) * r / d


def test_firedrake_coordinates_via_pc_set_coordinates(tmp_path):
    """Firedrake passes no coordinates; PCSetCoordinates on the solver's PC does."""
    from firedrake_problems.core import node_coordinates

    model = str(tmp_path / "cj.pt")
    TorchScriptPC.export(CoordinateJacobi(), model, linear=True,
                         inputs=["residual", "diagonal", "coordinates"])
    fd, V, a, L, bc = firedrake_poisson(8)
    uh = fd.Function(V)
    params = {**BASE, "pc_type": "python", "pc_python_type": "petsc_neural.TorchScriptPC",
              "pc_neural_model": model}
    solver = fd.LinearVariationalSolver(
        fd.LinearVariationalProblem(a, L, uh, bcs=bc), solver_parameters=params)
    pc = solver.snes.ksp.getPC()
    coords = node_coordinates(V)
    pc.setCoordinates(coords)  # the python context exists once the solver is built
    solver.solve()
    ctx = pc.getPythonContext()
    np.testing.assert_array_equal(ctx.op.coordinates.numpy(), coords)
    r = solver.snes.ksp.getOperators()[0].createVecLeft()
    r.set(1.0)
    y = r.duplicate()
    pc.apply(r, y)
    diag = solver.snes.ksp.getOperators()[1].getDiagonal().getArray()
    np.testing.assert_allclose(y.getArray(), (1 + coords[:, 0]) / diag)
