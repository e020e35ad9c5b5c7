"""petsc_neural.Algebraformer in PETSc: preonly, FGMRES, block Jacobi batching, limits, MPI."""

import numpy as np
import pytest
import torch
from algebraformer_helpers import N_TINY, chebyshev_system, save_exact, save_tiny, tiny_solver
from petsc4py import PETSc

from firedrake_problems.spectral import to_petsc
from pcshell import NeuralPCError


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return save_tiny(str(tmp_path_factory.mktemp("af") / "tiny.pt"))


@pytest.fixture(scope="module")
def exact(tmp_path_factory) -> str:
    """A model whose "network" solves each block exactly: an LU block Jacobi."""
    return save_exact(str(tmp_path_factory.mktemp("af") / "exact.pt"))


def _solve(A, b, opts, comm=PETSc.COMM_SELF, mat_type="aij"):
    M, v = to_petsc(A, b, comm=comm, mat_type=mat_type)
    o = PETSc.Options()
    for k, val in opts.items():
        o[k] = val
    try:
        ksp = PETSc.KSP().create(comm)
        ksp.setOperators(M)
        ksp.setFromOptions()
        x = v.duplicate()
        ksp.solve(v, x)
    finally:
        for k in opts:
            o.delValue(k)
    return x, ksp, M, v


def _af(model, **extra):
    return {"pc_type": "python", "pc_python_type": "petsc_neural.Algebraformer",
            "pc_neural_model": model, **extra}


def _model_on_blocks(A, r, sizes):
    """The reference: the network called on each diagonal block (padded with identity)."""
    solver = tiny_solver()
    out, start = [], 0
    for size in sizes:
        pad = torch.eye(N_TINY, dtype=torch.float64)
        pad[:size, :size] = torch.from_numpy(A[start:start + size, start:start + size])
        rb = torch.zeros(N_TINY, dtype=torch.float64)
        rb[:size] = torch.from_numpy(r[start:start + size])
        with torch.no_grad():
            out.append(solver.solve(pad[None], rb[None])[0, :size].numpy())
        start += size
    return np.concatenate(out)


@pytest.mark.parametrize("mat_type", ["aij", "dense"])
def test_preonly_gives_the_networks_solution(model, mat_type):
    A, b = chebyshev_system(N_TINY)
    x, ksp, *_ = _solve(A, b, {"ksp_type": "preonly", **_af(model)}, mat_type=mat_type)
    np.testing.assert_allclose(x.getArray(), _model_on_blocks(A, b, [N_TINY]), rtol=1e-12,
                               atol=1e-12)
    pc = ksp.getPC().getPythonContext()
    assert pc.block_sizes == [N_TINY] and pc._applies == 1


def test_fgmres_runs_and_gmres_is_refused(model):
    A, b = chebyshev_system(N_TINY, seed=3)
    x, ksp, M, v = _solve(A, b, {"ksp_type": "fgmres", "ksp_rtol": 1e-10, "ksp_max_it": 300,
                                 "ksp_gmres_restart": 50, **_af(model)})
    assert ksp.getConvergedReason() > 0
    np.testing.assert_allclose(x.getArray(), np.linalg.solve(A, b), rtol=1e-6)
    with pytest.raises(PETSc.Error) as info:
        _solve(A, b, {"ksp_type": "gmres", **_af(model)})
    cause = info.value.__cause__
    assert isinstance(cause, NeuralPCError)
    assert "nonlinear in the residual" in str(cause) and "fgmres" in str(cause)


def test_a_system_larger_than_the_model_is_refused_naming_the_limit(model):
    A, b = chebyshev_system(N_TINY + 1)
    with pytest.raises(PETSc.Error) as info:
        _solve(A, b, {"ksp_type": "preonly", **_af(model)})
    msg = str(info.value.__cause__)
    assert f"{N_TINY + 1} rows" in msg and f"n <= {N_TINY}" in msg
    assert "-pc_algebraformer_blocks auto" in msg


def test_bad_blocks_option_is_refused(model):
    A, b = chebyshev_system(N_TINY)
    with pytest.raises(PETSc.Error) as info:
        _solve(A, b, {"ksp_type": "preonly", **_af(model, pc_algebraformer_blocks="many")})
    assert "blocks must be auto or a positive integer" in str(info.value.__cause__)


def test_blocks_in_one_batched_call_equal_the_model_on_each_block(model):
    A, b = chebyshev_system(40)  # 3 blocks: 14, 13, 13 rows
    ref = _model_on_blocks(A, b, [14, 13, 13])
    x, ksp, *_ = _solve(A, b, {"ksp_type": "preonly",
                               **_af(model, pc_algebraformer_blocks="auto")})
    np.testing.assert_allclose(x.getArray(), ref, rtol=1e-12, atol=1e-12)
    pc = ksp.getPC().getPythonContext()
    assert pc.block_sizes == [14, 13, 13] and pc._applies == 1  # one network call


def test_as_the_block_solver_of_bjacobi_and_asm(model, exact):
    A, b = chebyshev_system(40)
    ref = _model_on_blocks(A, b, [14, 13, 13])
    sub = {"pc_type": "bjacobi", "sub_pc_type": "python",
           "sub_pc_python_type": "petsc_neural.Algebraformer", "sub_pc_neural_model": model}
    # one PCBJACOBI block, split and batched by the sub-PC
    x, ksp, *_ = _solve(A, b, {"ksp_type": "preonly", **sub,
                               "sub_pc_algebraformer_blocks": "auto"})
    np.testing.assert_allclose(x.getArray(), ref, rtol=1e-12, atol=1e-12)
    subpc = ksp.getPC().getBJacobiSubKSP()[0].getPC().getPythonContext()
    assert subpc.block_sizes == [14, 13, 13] and subpc._applies == 1
    # PCBJACOBI's own three blocks: the same result, one network call each
    x3, *_ = _solve(A, b, {"ksp_type": "preonly", **sub, "pc_bjacobi_blocks": 3})
    np.testing.assert_allclose(x3.getArray(), ref, rtol=1e-12, atol=1e-12)
    # under FGMRES, PCBJACOBI and PCASM with exact block "networks" converge to the
    # solution in as many iterations as with PETSc's LU on the same blocks
    sol = np.linalg.solve(A, b)
    for outer in ({"pc_type": "bjacobi"}, {"pc_type": "asm", "pc_asm_overlap": 1}):
        opts = {"ksp_type": "fgmres", "ksp_rtol": 1e-10, "ksp_max_it": 200, **outer}
        x, ksp, *_ = _solve(A, b, {**opts, **sub, "sub_pc_neural_model": exact,
                                   "sub_pc_algebraformer_blocks": "auto"})
        assert ksp.getConvergedReason() > 0, outer
        np.testing.assert_allclose(x.getArray(), sol, rtol=1e-6)
        _, ksp_lu, *_ = _solve(A, b, {**opts, "sub_pc_type": "lu", **(
            {"pc_bjacobi_blocks": 3} if outer["pc_type"] == "bjacobi" else {})})
        if outer["pc_type"] == "bjacobi":  # the same three blocks
            assert abs(ksp.getIterationNumber() - ksp_lu.getIterationNumber()) <= 1


def test_outer_gmres_is_refused_for_the_sub_pc(model):
    A, b = chebyshev_system(N_TINY)
    with pytest.raises(PETSc.Error) as info:
        _solve(A, b, {"ksp_type": "gmres", "pc_type": "bjacobi", "sub_pc_type": "python",
                      "sub_pc_python_type": "petsc_neural.Algebraformer",
                      "sub_pc_neural_model": model})
    assert "-ksp_type gmres" in str(info.value.__cause__)


def test_float32_model(tmp_path):
    path = save_tiny(str(tmp_path / "f32.pt"), dtype=torch.float32)
    A, b = chebyshev_system(N_TINY)
    x, *_ = _solve(A, b, {"ksp_type": "preonly", **_af(path)})
    ref = _model_on_blocks(A, b, [N_TINY])
    np.testing.assert_allclose(x.getArray(), ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


@pytest.mark.timeout(120)
@pytest.mark.parallel(nprocs=2)
def test_two_ranks_solve_their_diagonal_blocks(tmp_path):
    """Each rank solves its own rows (a neural block Jacobi); FGMRES converges on 2 ranks."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    path, exact = comm.bcast((save_tiny(str(tmp_path / "tiny.pt")),
                              save_exact(str(tmp_path / "exact.pt"))) if comm.rank == 0 else None)
    A, b = chebyshev_system(2 * N_TINY)
    x, ksp, M, _ = _solve(A, b, {"ksp_type": "preonly", **_af(path)}, comm=PETSc.COMM_WORLD)
    r0, r1 = M.getOwnershipRange()
    assert r1 - r0 == N_TINY
    local = A[r0:r1, r0:r1]
    np.testing.assert_allclose(x.getArray(), _model_on_blocks(local, b[r0:r1], [N_TINY]),
                               rtol=1e-12, atol=1e-12)
    x, ksp, *_ = _solve(A, b, {"ksp_type": "fgmres", "ksp_rtol": 1e-10, "ksp_max_it": 300,
                               **_af(exact)}, comm=PETSc.COMM_WORLD)
    assert ksp.getConvergedReason() > 0
    full = np.concatenate(comm.allgather(x.getArray().copy()))
    np.testing.assert_allclose(full, np.linalg.solve(A, b), rtol=1e-6)
    # PCBJACOBI's sub-PC on each rank splits its 20 rows into two blocks of 10, batched
    A, b = chebyshev_system(40)
    x, ksp, M, _ = _solve(A, b, {"ksp_type": "preonly", "pc_type": "bjacobi",
                                 "sub_pc_type": "python",
                                 "sub_pc_python_type": "petsc_neural.Algebraformer",
                                 "sub_pc_neural_model": path,
                                 "sub_pc_algebraformer_blocks": "auto"}, comm=PETSc.COMM_WORLD)
    r0, r1 = M.getOwnershipRange()
    sub = ksp.getPC().getBJacobiSubKSP()[0].getPC().getPythonContext()
    assert (r1 - r0, sub.block_sizes, sub._applies) == (20, [10, 10], 1)
    np.testing.assert_allclose(x.getArray(), _model_on_blocks(A[r0:r1, r0:r1], b[r0:r1],
                                                              [10, 10]), rtol=1e-12, atol=1e-12)


def test_shipped_diffusion_model_solves_held_out_systems():
    """The default model through PETSc (preonly): relative MSE within the issue's floor."""
    from firedrake_problems.spectral import generate
    from petsc_neural.algebraformer.data import TEST_SEED_OFFSET
    from petsc_neural.registry import get_method

    data = generate("diffusion", 10, seed=TEST_SEED_OFFSET + 7, n=64)
    errs = []
    for A, b, x in zip(data.A, data.b, data.x, strict=True):
        y, ksp, *_ = _solve(A, b, {"ksp_type": "preonly", "pc_type": "python",
                                   "pc_python_type": "petsc_neural.Algebraformer"})
        errs.append(np.sum((y.getArray() - x) ** 2) / np.sum(x**2))
    assert np.mean(errs) <= 1e-3, errs
    pc = ksp.getPC().getPythonContext()
    assert pc.model.path == get_method("algebraformer").model_path("diffusion")


def test_matapply_is_one_batched_call_equal_to_apply(model):
    """PCMatApply (many right-hand sides) goes through the model's forward_batch."""
    A, _ = chebyshev_system(40)
    M, _ = to_petsc(A, None, comm=PETSc.COMM_SELF)
    pc = PETSc.PC().create(PETSc.COMM_SELF)
    pc.setOperators(M)
    pc.setType("python")
    pc.setPythonType("petsc_neural.Algebraformer")
    o = PETSc.Options()
    o["pc_neural_model"] = model
    o["pc_algebraformer_blocks"] = "auto"
    try:
        pc.setFromOptions()
        pc.setUp()
    finally:
        o.delValue("pc_neural_model")
        o.delValue("pc_algebraformer_blocks")
    R = np.random.default_rng(2).standard_normal((40, 3))
    R[:, 2] = 0.0  # zero in, zero out
    X = PETSc.Mat().createDense((40, 3), array=R.copy(), comm=PETSc.COMM_SELF)
    Y = PETSc.Mat().createDense((40, 3), comm=PETSc.COMM_SELF)
    Y.setUp()
    ctx = pc.getPythonContext()
    before = ctx._applies
    pc.matApply(X, Y)
    assert ctx._applies == before + 1
    out = Y.getDenseArray().copy()
    for j in range(3):
        np.testing.assert_allclose(out[:, j], _model_on_blocks(A, R[:, j], [14, 13, 13]),
                                   rtol=1e-10, atol=1e-12)
