"""ResidualNetworkPC served through TorchScriptPC: exactness and the bad-input catalogue."""

import logging

import numpy as np
import pytest
import torch
from pcshell_helpers import Jacobi, NonFinite, TiedMLP, laplacian, neural_ksp, rhs, save
from petsc4py import PETSc

from pcshell import ModelFileError, ModelMismatchError, NeuralPCError, NonFiniteOutputError


def solve(ksp, b):
    x = b.duplicate()
    ksp.setConvergenceHistory()
    ksp.solve(b, x)
    return x, ksp.getConvergenceHistory().copy()


def jacobi_ksp(A, ksp_type):
    ksp = PETSc.KSP().create(comm=A.getComm())
    ksp.setOperators(A)
    ksp.setType(ksp_type)
    ksp.setTolerances(rtol=1e-10, max_it=500)
    ksp.getPC().setType("jacobi")
    return ksp


def _assert_same_as_jacobi(model, ksp_type, n=24, device="cpu"):
    A = laplacian(n)
    b = rhs(A)
    _, h_ref = solve(jacobi_ksp(A, ksp_type), b)
    ksp = neural_ksp(A, model, ksp_type, pc_neural_device=device)
    x, h = solve(ksp, b)
    assert ksp.getConvergedReason() > 0
    assert len(h) == len(h_ref)  # same iteration count
    # Same residual history to round-off (GMRES amplifies round-off late in the solve).
    np.testing.assert_allclose(h, h_ref, rtol=1e-6)


@pytest.mark.parametrize("ksp_type", ["cg", "gmres"])
def test_jacobi_model_matches_pc_jacobi(jacobi_model, ksp_type, device):
    _assert_same_as_jacobi(jacobi_model, ksp_type, device=device)


@pytest.mark.parallel(nprocs=2)
@pytest.mark.parametrize("ksp_type", ["cg", "gmres"])
def test_jacobi_model_matches_pc_jacobi_on_two_ranks(tmp_path, ksp_type):
    assert PETSc.COMM_WORLD.size == 2
    _assert_same_as_jacobi(save(Jacobi(), tmp_path / "j.pt", linear=True), ksp_type)


def test_float32_model_costs_one_cast_and_still_converges(tmp_path):
    model = save(Jacobi(), tmp_path / "j32.pt", linear=True, dtype="float32")
    A = laplacian(16)
    b = rhs(A)
    _, h_ref = solve(jacobi_ksp(A, "fgmres"), b)
    ksp = neural_ksp(A, model, "fgmres")
    _, h = solve(ksp, b)
    assert ksp.getConvergedReason() > 0
    assert abs(len(h) - len(h_ref)) <= 1


def test_zero_rhs_gives_zero_solution(jacobi_model):
    A = laplacian(8)
    b = A.createVecLeft()
    b.zeroEntries()
    ksp = neural_ksp(A, jacobi_model, "fgmres")
    x, _ = solve(ksp, b)
    assert ksp.getConvergedReason() > 0
    assert x.norm() == 0.0


def test_positive_homogeneity(tmp_path):
    """With scaling on, a nonlinear network's apply satisfies P(a r) = a P(r) for a > 0."""
    A = laplacian(4)
    torch.manual_seed(0)
    model = save(TiedMLP(16), tmp_path / "mlp.pt", inputs=["residual"])
    ksp = neural_ksp(A, model, "fgmres")
    ksp.setUp()
    pc = ksp.getPC()
    r = rhs(A, seed=3)
    y1, y2 = r.duplicate(), r.duplicate()
    pc.apply(r, y1)
    r.scale(1e3)
    pc.apply(r, y2)
    np.testing.assert_allclose(y2.getArray(), 1e3 * y1.getArray(), rtol=1e-12)
    r.zeroEntries()
    pc.apply(r, y2)
    assert y2.norm() == 0.0


# ----------------------------------------------------------------- bad input catalogue
def _setup_error(A, model, **opts):
    with pytest.raises(PETSc.Error) as info:  # from KSPSetFromOptions or KSPSetUp
        neural_ksp(A, model, **opts).setUp()
    return info.value.__cause__


def test_no_model_given():
    err = _setup_error(laplacian(4), None)
    assert isinstance(err, NeuralPCError)
    assert "no model given: set -t_pc_neural_model" in str(err)


def test_missing_model(tmp_path):
    err = _setup_error(laplacian(4), str(tmp_path / "absent.pt"))
    assert isinstance(err, ModelFileError) and "does not exist" in str(err)


def test_corrupt_model(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a model")
    err = _setup_error(laplacian(4), str(bad))
    assert isinstance(err, ModelFileError) and "corrupt" in str(err)


@pytest.mark.parametrize(
    "inputs, message",
    [(["diagonal"], "must start with 'residual'"), (["residual", "pressure"], "unknown inputs")],
)
def test_bad_inputs(tmp_path, inputs, message):
    err = _setup_error(laplacian(4), save(Jacobi(), tmp_path / "m.pt", inputs=inputs))
    assert isinstance(err, ModelFileError) and message in str(err)


def test_wrong_method(tmp_path):
    err = _setup_error(laplacian(4), save(Jacobi(), tmp_path / "m.pt", method="npo"))
    assert isinstance(err, ModelMismatchError)
    assert "holds a 'npo' model" in str(err)


def test_size_mismatch_declared(tmp_path):
    err = _setup_error(laplacian(4), save(Jacobi(), tmp_path / "m.pt", n=25))
    assert isinstance(err, ModelMismatchError)
    assert "made for 25 local rows, the operator has 16" in str(err)


def test_size_mismatch_found_by_probe(tmp_path):
    # No n in the metadata, but the network only works for 25 rows.
    err = _setup_error(laplacian(4), save(TiedMLP(25), tmp_path / "m.pt", inputs=["residual"]))
    assert isinstance(err, ModelMismatchError)
    assert "fails on this operator (16 local rows" in str(err)


def test_block_size_mismatch(tmp_path):
    err = _setup_error(laplacian(4), save(Jacobi(), tmp_path / "m.pt", block_size=2))
    assert isinstance(err, ModelMismatchError)
    assert "block size 2, the operator has block size 1" in str(err)


def test_dtype_mismatch_option(tmp_path):
    model = save(Jacobi(), tmp_path / "m.pt", dtype="float32")
    err = _setup_error(laplacian(4), model, pc_neural_dtype="float64")
    assert isinstance(err, ModelMismatchError)
    assert "computes in float32, but -t_pc_neural_dtype float64 was asked for" in str(err)


def test_dtype_mismatch_inside_file(tmp_path):
    model = save(TiedMLP(16, dtype=torch.float32), tmp_path / "m.pt", inputs=["residual"])
    err = _setup_error(laplacian(4), model)
    assert isinstance(err, ModelMismatchError)
    assert "declares dtype float64, but its tensor" in str(err)


def test_cuda_device_runs_or_is_refused_clearly(jacobi_model):
    """With a GPU the model runs there and matches the CPU; without one, a clear error."""
    A = laplacian(6)
    if not torch.cuda.is_available():
        err = _setup_error(A, jacobi_model, pc_neural_device="cuda")
        assert isinstance(err, NeuralPCError)
        assert "-t_pc_neural_device cuda was asked for, but CUDA is not available" in str(err)
        return
    b = rhs(A)
    _, h_cpu = solve(neural_ksp(A, jacobi_model, "cg"), b)
    _, h_gpu = solve(neural_ksp(A, jacobi_model, "cg", pc_neural_device="cuda"), b)
    np.testing.assert_allclose(h_gpu, h_cpu, rtol=1e-8)


def test_bad_option_value(jacobi_model):
    err = _setup_error(laplacian(4), jacobi_model, pc_neural_on_failure="ignore")
    assert "-t_pc_neural_on_failure must be one of error, fallback; got 'ignore'" in str(err)


@pytest.mark.parametrize("how", ["options", "programmatic"])
def test_nonlinear_model_refused_under_cg(tmp_path, how):
    model = save(TiedMLP(16), tmp_path / "m.pt", inputs=["residual"])
    A = laplacian(4)
    opts = {"ksp_type": "cg"} if how == "options" else {}
    ksp = neural_ksp(A, model, "cg", **opts)
    b = rhs(A)
    with pytest.raises(PETSc.Error) as info:
        ksp.solve(b, b.duplicate())
    err = info.value.__cause__
    assert isinstance(err, NeuralPCError)
    assert "nonlinear in the residual" in str(err) and "flexible method (fgmres, fcg" in str(err)


def test_nonlinear_model_allowed_under_cg_when_asked(tmp_path, caplog):
    model = save(TiedMLP(16), tmp_path / "m.pt", inputs=["residual"])
    A = laplacian(4)
    ksp = neural_ksp(A, model, "cg", pc_neural_allow_nonflexible="true")
    ksp.setTolerances(max_it=5)
    b = rhs(A)
    with caplog.at_level(logging.WARNING, logger="petsc_neural"):
        ksp.solve(b, b.duplicate())
    assert "convergence is not guaranteed" in caplog.text


def test_nonfinite_output_error(tmp_path):
    A = laplacian(4)
    ksp = neural_ksp(A, save(NonFinite(16), tmp_path / "nan.pt"))
    b = rhs(A)
    with pytest.raises(PETSc.Error) as info:
        ksp.solve(b, b.duplicate())
    err = info.value.__cause__
    assert isinstance(err, NonFiniteOutputError)
    assert "returned non-finite values (NaN/Inf)" in str(err)
    assert "-t_pc_neural_on_failure fallback" not in str(err)  # names the common option
    assert "-pc_neural_on_failure fallback" in str(err)


def test_nonfinite_output_fallback(tmp_path, caplog):
    A = laplacian(8)
    b = rhs(A)
    _, h_ref = solve(jacobi_ksp(A, "fgmres"), b)
    ksp = neural_ksp(A, save(NonFinite(64), tmp_path / "nan.pt"),
                     pc_neural_on_failure="fallback")
    with caplog.at_level(logging.WARNING, logger="petsc_neural"):
        x, h = solve(ksp, b)
    assert ksp.getConvergedReason() > 0
    assert len(h) == len(h_ref)  # the fallback is jacobi: same iterations
    # warned once, not per apply
    assert caplog.text.count("switching to -pc_neural_fallback_pc_type jacobi") == 1


@pytest.mark.parallel(nprocs=2)
@pytest.mark.parametrize("policy", ["error", "fallback"])
def test_nonfinite_on_one_rank_does_not_hang(tmp_path, policy):
    comm = PETSc.COMM_WORLD
    # Rank 0 owns 30 rows, rank 1 owns 34: only rank 1's network fails.
    A = laplacian(8, local_rows=30 if comm.rank == 0 else 34)
    b = rhs(A)
    ksp = neural_ksp(A, save(NonFinite(34), tmp_path / "nan.pt"), pc_neural_on_failure=policy)
    x = b.duplicate()
    if policy == "error":
        with pytest.raises(PETSc.Error) as info:
            ksp.solve(b, x)
        assert "on rank(s) [1]" in str(info.value.__cause__)  # both ranks raise, same text
    else:
        ksp.solve(b, x)
        assert ksp.getConvergedReason() > 0


@pytest.mark.parallel(nprocs=2)
def test_setup_error_on_one_rank_raises_on_both(tmp_path):
    comm = PETSc.COMM_WORLD
    A = laplacian(8, local_rows=30 if comm.rank == 0 else 34)
    model = save(Jacobi(), tmp_path / "m.pt", n=30)  # right for rank 0 only
    with pytest.raises(PETSc.Error) as info:
        neural_ksp(A, model).setUp()
    err = info.value.__cause__
    # The same error, class and text, on every rank.
    assert isinstance(err, ModelMismatchError)
    assert "setup failed on rank(s) [1]" in str(err) and "has 34 on rank 1" in str(err)
    msgs = comm.tompi4py().allgather(str(err))
    assert msgs[0] == msgs[1]


def test_view_shows_model_device_and_options(jacobi_model):
    A = laplacian(4)
    ksp = neural_ksp(A, jacobi_model, "cg")
    ksp.setUp()
    viewer = PETSc.Viewer().createASCII("/dev/null")
    ksp.view(viewer)  # must not raise; the text itself:
    lines = ksp.getPC().getPythonContext().view_details(ksp.getPC())
    text = "\n".join(lines)
    assert jacobi_model in text and "device cpu" in text and "dtype float64" in text
    assert "on_failure=error" in text


class CoordinateScaled(torch.nn.Module):
    """z = (1 + x) * r / d: uses the node coordinates given with PCSetCoordinates."""

    def forward(self, r: torch.Tensor, d: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
        return (1.0 + xy[:, 0]) * r / d


@pytest.mark.parametrize("how", ["PCSetCoordinates", "composed on the Mat"])
def test_coordinates_reach_the_network(tmp_path, how):
    from pcshell import set_coordinates

    A = laplacian(4)
    model = save(CoordinateScaled(), tmp_path / "c.pt", linear=True,
                 inputs=["residual", "diagonal", "coordinates"])
    ksp = neural_ksp(A, model)
    coords = np.stack(np.meshgrid(np.arange(4.0), np.arange(4.0), indexing="ij"), -1)
    coords = coords.reshape(-1, 2)
    if how == "PCSetCoordinates":
        ksp.getPC().setCoordinates(coords)
    else:
        set_coordinates(A, coords)
    ksp.setUp()
    r = A.createVecLeft()
    r.set(1.0)
    y = r.duplicate()
    ksp.getPC().apply(r, y)
    np.testing.assert_allclose(y.getArray(), (1 + coords[:, 0]) / A.getDiagonal().getArray())


def test_update_refreshes_values_without_reloading(jacobi_model):
    A = laplacian(4)
    ksp = neural_ksp(A, jacobi_model, "cg")
    ksp.setUp()
    ctx = ksp.getPC().getPythonContext()
    module, csr = ctx.model.module, ctx.op.csr
    r = rhs(A)
    y1, y2 = r.duplicate(), r.duplicate()
    ksp.getPC().apply(r, y1)
    A.scale(2.0)
    ksp.setOperators(A)
    ksp.setUp()
    ksp.getPC().apply(r, y2)
    assert ctx.model.module is module and ctx.op.csr is csr  # same objects, new values
    np.testing.assert_allclose(y2.getArray(), 0.5 * y1.getArray(), rtol=1e-14)


@pytest.mark.parametrize("coordinates", [False, True])
def test_destroying_the_ksp_destroys_the_python_context(tmp_path, coordinates):
    """No reference cycle PC -> context -> PC: the context and its setup data are freed."""
    import gc
    import weakref

    A = laplacian(6)
    ksp = neural_ksp(A, save(Jacobi(), tmp_path / "j.pt", linear=True), "cg")
    if coordinates:
        xy = np.stack(np.meshgrid(np.arange(6.0), np.arange(6.0)), axis=-1).reshape(-1, 2)
        ksp.getPC().setCoordinates(xy)
    x, _ = solve(ksp, rhs(A))
    assert ksp.getConvergedReason() > 0
    ctx = ksp.getPC().getPythonContext()
    calls = []
    ctx.destroy = lambda pc: calls.append("destroy")
    ref = weakref.ref(ctx)
    del ctx
    ksp.destroy()
    gc.collect()
    assert calls == ["destroy"]
    assert ref() is None
