"""Regression tests of issue 12 for the shipped methods (NPO, NeuraLSP).

Setup failures on one rank (no hang), DMDA / KSPSetComputeOperators clients,
bounded aggregates on 3D meshes, clear errors for bad operators and options,
NeuraLSP's fallback, ``-help``.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from neuralsp_helpers import NEURALSP, grid_matrix, solve
from petsc4py import PETSc

from pcshell import ModelMetadata, NeuralPCError, NonFiniteOutputError, save_model, to_scipy
from petsc_neural.coarse import aggregate
from petsc_neural.neuralsp.pc import LOCAL_INPUTS


class LocalBases(torch.nn.Module):
    """A local NeuraLSP model: QR of the first columns; NaN when an aggregate count is hit."""

    def __init__(self, rank: int, nan_above: int = 1 << 30) -> None:
        super().__init__()
        self.rank = rank
        self.nan_above = nan_above

    def forward(self, S: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        Q = torch.linalg.qr(S[:, :, : self.rank] * mask.unsqueeze(-1))[0]
        if S.shape[0] > self.nan_above:
            Q = Q * float("nan")
        return Q


def local_model(path, rank: int = 2, nan_above: int = 1 << 30) -> str:
    save_model(LocalBases(rank, nan_above).double(), path, ModelMetadata(
        method="neuralsp", dtype="float64", inputs=list(LOCAL_INPUTS), linear=True,
        training={"variant": "local", "rank": rank, "n_vectors": 12, "sweeps": 10,
                  "constant": True}))
    return str(path)


def _ksp(A, **opts) -> PETSc.KSP:
    prefix = "r_"
    o = PETSc.Options()
    for k, v in {**NEURALSP, **opts}.items():
        o[prefix + k] = v
    ksp = PETSc.KSP().create(comm=A.getComm())
    ksp.setOptionsPrefix(prefix)
    ksp.setOperators(A)
    ksp.setFromOptions()
    return ksp


# ----------------------------------------------------------------- defect 3
@pytest.mark.parallel(nprocs=2)
@pytest.mark.timeout(60)
@pytest.mark.parametrize("policy", ["error", "fallback"])
def test_neuralsp_network_failure_on_one_rank_does_not_hang(tmp_path, policy):
    comm = PETSc.COMM_WORLD
    A = grid_matrix(10, local_rows=40 if comm.rank == 0 else 60)
    counts = comm.tompi4py().allgather(aggregate(to_scipy(A))[1])
    assert counts[0] < counts[1], counts  # rank 1 has more aggregates
    path = local_model(tmp_path / f"nan{comm.rank}.pt", nan_above=counts[0])
    ksp = _ksp(A, pc_neural_model=path, pc_neural_on_failure=policy)
    b = A.createVecLeft()
    b.set(1.0)
    x = b.duplicate()
    if policy == "error":
        with pytest.raises(PETSc.Error) as info:
            ksp.solve(b, x)
        err = info.value.__cause__
        assert isinstance(err, NonFiniteOutputError)
        assert "on rank(s) [1]" in str(err)
        msgs = comm.tompi4py().allgather(str(err))
        assert msgs[0] == msgs[1]
    else:
        ksp.solve(b, x)
        assert ksp.getConvergedReason() > 0
        ctx = ksp.getPC().getPythonContext()
        assert ctx.fallback_reason is not None and "rank(s) [1]" in ctx.fallback_reason


@pytest.mark.parallel(nprocs=2)
@pytest.mark.timeout(120)
@pytest.mark.parametrize("ksp_type,coarse", [("gmres", "auto"), ("cg", "auto"), ("cg", "gamg")])
def test_neuralsp_with_an_empty_rank_converges_to_the_true_residual(ksp_type, coarse):
    """Rank 1 owns no rows; the coarse solve (MUMPS by default, or GAMG cycles) still works."""
    comm = PETSc.COMM_WORLD
    assert comm.getSize() == 2
    A = grid_matrix(12, local_rows=144 if comm.rank == 0 else 0)
    assert A.getOwnershipRange()[1] - A.getOwnershipRange()[0] == (144 if comm.rank == 0 else 0)
    ksp = _ksp(A, ksp_type=ksp_type, pc_neuralsp_coarse=coarse)
    b = A.createVecLeft()
    b.setRandom()
    x = b.duplicate()
    ksp.solve(b, x)
    assert ksp.getConvergedReason() > 0
    assert ksp.getIterationNumber() <= 30
    r = b.duplicate()
    A.mult(x, r)
    r.aypx(-1.0, b)
    assert r.norm() <= 1e-5 * b.norm()  # NEURALSP: rtol 1e-6, unpreconditioned norm
    if coarse == "auto":
        cpc = ksp.getPC().getPythonContext().inner.getMGCoarseSolve().getPC()
        assert cpc.getFactorSolverType() == "mumps"


def test_neuralsp_fallback_triggers_and_is_viewed(tmp_path):
    A = grid_matrix(10, comm=PETSc.COMM_SELF)
    path = local_model(tmp_path / "nan.pt", nan_above=0)
    ksp = _ksp(A, pc_neural_model=path, pc_neural_on_failure="fallback",
               pc_neural_fallback_pc_type="icc")
    b = A.createVecLeft()
    b.set(1.0)
    ksp.solve(b, b.duplicate())
    assert ksp.getConvergedReason() > 0
    text = "\n".join(ksp.getPC().getPythonContext().view_details(ksp.getPC()))
    assert "fallback ACTIVE: icc" in text and "non-finite" in text


# ----------------------------------------------------------------- defect 4
def _dmda_ksp(dim: int, pc_opts: dict) -> PETSc.KSP:
    """A KSP that gets its operator from a DMDA through KSPSetComputeOperators (ex29/ex45)."""
    n = 17 if dim == 2 else 9
    da = PETSc.DMDA().create([n] * dim, dof=1, stencil_width=1, comm=PETSc.COMM_WORLD)
    da.setUp()

    def compute_matrix(ksp, J, P):
        P.zeroEntries()
        (starts, widths) = da.getCorners()
        h = [1.0 / (n - 1)] * dim
        row = PETSc.Mat.Stencil()
        col = PETSc.Mat.Stencil()
        diag = sum(2.0 / hh**2 for hh in h)
        for idx in np.ndindex(*widths[::-1]):
            ijk = tuple(s + w for s, w in zip(starts, idx[::-1], strict=True))
            row.index = ijk
            if any(c == 0 or c == n - 1 for c in ijk):
                P.setValueStencil(row, row, diag)  # scaled Dirichlet rows, as ex29/ex45 do
                continue
            P.setValueStencil(row, row, diag)
            for d in range(dim):
                for s in (-1, 1):
                    nb = list(ijk)
                    nb[d] += s
                    col.index = tuple(nb)
                    P.setValueStencil(row, col, -1.0 / h[d] ** 2)
        P.assemble()
        if J.handle != P.handle:
            J.assemble()

    def compute_rhs(ksp, b):
        b.set(1.0)

    ksp = PETSc.KSP().create(comm=PETSc.COMM_WORLD)
    ksp.setOptionsPrefix("r_")
    ksp.setDM(da)
    ksp.setComputeOperators(compute_matrix)
    ksp.setComputeRHS(compute_rhs)
    o = PETSc.Options()
    for k, v in pc_opts.items():
        o["r_" + k] = v
    ksp.setFromOptions()
    return ksp


@pytest.mark.parametrize("dim", [2, 3])
def test_npo_with_ksp_set_compute_operators(dim):
    """ex29/ex45-style clients: no operator at setFromOptions; NPO reads it at setup."""
    ksp = _dmda_ksp(dim, {"ksp_type": "fgmres", "ksp_rtol": 1e-8, "ksp_max_it": 200,
                          "pc_type": "python", "pc_python_type": "petsc_neural.NPO"})
    da = ksp.getDM()
    b, x = da.createGlobalVec(), da.createGlobalVec()
    b.set(1.0)
    ksp.solve(b, x)
    assert ksp.getConvergedReason() > 0
    ctx = ksp.getPC().getPythonContext()
    assert ctx.op.coordinates is not None  # from the DMDA's grid
    assert ctx.op.coordinates.shape[1] == dim


def test_petsc_c_tutorials_run_with_npo():
    """The C tutorials of the issue, built from the PETSc sources, unmodified (ex2 on 2 ranks)."""
    script = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "petsc_tutorials.py")
    # Python's copy of the environment: this process initialised MPI, and a child
    # mpiexec must not inherit Open MPI's singleton variables (see tests/conftest.py).
    out = subprocess.run([sys.executable, script, "--quick"], capture_output=True, text=True,
                         timeout=900, env=dict(os.environ))
    assert out.returncode == 0, out.stdout + out.stderr
    for name in ("ex2", "ex29", "ex45", "ex50"):
        assert f"| {name}" in out.stdout
    assert "FAILED" not in out.stdout


# ----------------------------------------------------------------- defect 6
@pytest.mark.slow
def test_neuralsp_on_a_3d_mesh_has_bounded_aggregates_and_memory():
    from firedrake_problems import make_problem

    p = make_problem("poisson", 32, seed=0, dim=3)  # 33^3 nodes, P1 tetrahedra
    agg, n_agg = aggregate(to_scipy(p.A))
    sizes = np.bincount(agg[agg >= 0])
    assert sizes.max() <= 64, sizes.max()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _, ksp = solve(p, pc_neuralsp_basis="local_svd", pc_neuralsp_rank=2)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    assert ksp.getConvergedReason() > 0
    assert after < 2 * 1024 * 1024, after  # the whole process stays well under 2 GB
    assert after - before < 1024 * 1024


def test_phase_two_does_not_chain_left_over_nodes():
    """A path graph visited so that phase 1 leaves many nodes: no aggregate grows along it."""
    import scipy.sparse as sp

    n = 400
    A = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(n, n)).tocsr()
    order = np.concatenate([np.arange(0, n, 4), np.setdiff1d(np.arange(n), np.arange(0, n, 4))])
    agg, n_agg = aggregate(A, order=order)
    sizes = np.bincount(agg)
    assert sizes.max() <= 4 and agg.min() >= 0
    agg8, _ = aggregate(sp.random(300, 300, 0.3, random_state=1) + sp.eye(300) * 50,
                        max_size=8)
    assert np.bincount(agg8[agg8 >= 0]).max() <= 8


# ----------------------------------------------------------------- defect 8
@pytest.mark.parametrize("option, value, message", [
    ("pc_neuralsp_omega", "-0.5", "-r_pc_neuralsp_omega must be > 0"),
    ("pc_neuralsp_omega", "0", "-r_pc_neuralsp_omega must be > 0"),
    ("pc_neuralsp_smooth_its", "0", "-r_pc_neuralsp_smooth_its must be >= 1"),
    ("pc_neuralsp_smoother", "gauss", "must be one of jacobi, chebyshev"),
    ("pc_neuralsp_max_aggregate", "1", "must be >= 2"),
])
def test_neuralsp_bad_options_are_clear_errors(option, value, message):
    A = grid_matrix(6, comm=PETSc.COMM_SELF)
    with pytest.raises(PETSc.Error) as info:
        _ksp(A, pc_neuralsp_basis="local_svd", **{option: value}).setUp()
    assert isinstance(info.value.__cause__, NeuralPCError)
    assert message in str(info.value.__cause__)


class _Identity:
    def mult(self, mat, x, y):
        x.copy(y)


def test_neuralsp_refuses_non_square_and_shell_operators():
    A = PETSc.Mat().createAIJ([6, 4], nnz=1, comm=PETSc.COMM_SELF)
    for i in range(4):
        A.setValue(i, i, 1.0)
    A.assemble()
    pc = PETSc.PC().create(comm=PETSc.COMM_SELF)
    pc.setOperators(A)
    pc.setType("python")
    from petsc_neural import NeuraLSP

    ctx = NeuraLSP()
    pc.setPythonContext(ctx)
    PETSc.Options()["pc_neuralsp_basis"] = "local_svd"
    try:
        with pytest.raises(PETSc.Error) as info:
            pc.setUp()
        assert "needs a square operator" in str(info.value.__cause__)
        S = PETSc.Mat().createPython([16, 16], context=_Identity(), comm=PETSc.COMM_SELF)
        S.setUp()
        pc.setOperators(S)
        with pytest.raises(PETSc.Error) as info:
            pc.setUp()
        assert "needs an assembled preconditioning matrix, got type 'python'" in str(
            info.value.__cause__)
    finally:
        PETSc.Options().delValue("pc_neuralsp_basis")
        pc.destroy()


def test_neuralsp_on_a_baij_operator_converts_once_and_converges():
    A = grid_matrix(12, comm=PETSc.COMM_SELF)
    B = A.convert("baij", out=PETSc.Mat())
    ksp = _ksp(B, pc_neuralsp_basis="local_svd", pc_neuralsp_rank=2)
    b = B.createVecLeft()
    b.set(1.0)
    ksp.solve(b, b.duplicate())
    assert ksp.getConvergedReason() > 0
    ref = _ksp(A, pc_neuralsp_basis="local_svd", pc_neuralsp_rank=2)
    ref.solve(b, b.duplicate())
    assert ksp.getIterationNumber() == ref.getIterationNumber()
    text = "\n".join(ksp.getPC().getPythonContext().view_details(ksp.getPC()))
    assert "operator converted at setup: seqbaij -> aij" in text
    assert B.getType() == "seqbaij"  # the user's matrix is left as it was


def test_help_lists_method_and_fallback_options(tmp_path):
    script = tmp_path / "h.py"
    script.write_text(textwrap.dedent("""
        import petsc4py
        petsc4py.init(["-help", "-ksp_type", "fgmres", "-pc_type", "python",
                       "-pc_python_type", "petsc_neural.NPO"])
        from petsc4py import PETSc
        A = PETSc.Mat().createAIJ([4, 4], nnz=1)
        for i in range(4):
            A.setValue(i, i, 2.0)
        A.assemble()
        for name in ("petsc_neural.NPO", "petsc_neural.NeuraLSP"):
            ksp = PETSc.KSP().create()
            ksp.setOperators(A)
            PETSc.Options()["pc_python_type"] = name
            ksp.setFromOptions()
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    for flag in ("-pc_npo_family <auto>", "-pc_neural_fallback_pc_type <jacobi>",
                 "-pc_neural_on_failure <error>", "-pc_neuralsp_omega <0.66>",
                 "-pc_neuralsp_max_aggregate <64>", "-pc_neural_allow_nonflexible <false>"):
        assert flag in out.stdout, flag
