"""Regression tests of issue 12: never a silent wrong answer, never a hang.

Each test fails on the code before the fix (false convergence under GMRES,
hangs when a rank has no work or fails alone, invisible warnings, the
whole-file hash).  MPI tests carry a timeout so that a hang fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from pcshell_helpers import Jacobi, laplacian, neural_ksp, rewrite_record, rhs, save
from petsc4py import PETSc

from pcshell import (
    ModelFileError,
    ModelMetadata,
    NeuralPCError,
    load_model,
    save_model,
)


class Cubic(torch.nn.Module):
    """Jacobi plus a cubic term: clearly nonlinear, still a decent preconditioner."""

    def forward(self, r: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        z = r / d
        return z + 5.0 * z * z * z


def _true_rel_residual(A, b, x) -> float:
    r = b.duplicate()
    A.mult(x, r)
    r.aypx(-1.0, b)
    return r.norm() / b.norm()


# ----------------------------------------------------------------- defect 1
@pytest.mark.parametrize("ksp_type", ["gmres", "bcgs", "cg", "tfqmr"])
def test_nonlinear_pc_refused_under_non_flexible_ksp(tmp_path, ksp_type):
    A = laplacian(8)
    ksp = neural_ksp(A, save(Cubic(), tmp_path / "c.pt"), ksp_type)
    b = rhs(A)
    with pytest.raises(PETSc.Error) as info:
        ksp.solve(b, b.duplicate())
    msg = str(info.value.__cause__)
    assert isinstance(info.value.__cause__, NeuralPCError)
    assert f"-ksp_type {ksp_type}" in msg and "fgmres" in msg and "allow_nonflexible" in msg
    assert ksp.getIterationNumber() == 0  # refused before the first iteration


def test_nonlinear_pc_refused_at_setup_when_ksp_type_is_an_option(tmp_path):
    A = laplacian(8)
    ksp = neural_ksp(A, save(Cubic(), tmp_path / "c.pt"), "fgmres", ksp_type="gmres")
    assert ksp.getType() == "gmres"
    with pytest.raises(PETSc.Error) as info:
        ksp.setUp()
    assert "nonlinear in the residual" in str(info.value.__cause__)


@pytest.mark.parametrize("ksp_type", ["fgmres", "fcg", "gcr", "preonly"])
def test_nonlinear_pc_runs_under_flexible_ksp(tmp_path, ksp_type):
    A = laplacian(8)
    ksp = neural_ksp(A, save(Cubic(), tmp_path / "c.pt"), ksp_type)
    b = rhs(A)
    x = b.duplicate()
    ksp.solve(b, x)
    if ksp_type != "preonly":
        assert ksp.getConvergedReason() > 0
        assert _true_rel_residual(A, b, x) < 1e-8


def test_linear_model_allowed_under_every_ksp(tmp_path):
    A = laplacian(8)
    model = save(Jacobi(), tmp_path / "j.pt", linear=True)
    for ksp_type in ("gmres", "cg", "bcgs"):
        ksp = neural_ksp(A, model, ksp_type)
        b = rhs(A)
        x = b.duplicate()
        ksp.solve(b, x)
        assert ksp.getConvergedReason() > 0
        assert _true_rel_residual(A, b, x) < 1e-8


@pytest.mark.parametrize("rtol, scale", [(1e-5, "false"), (1e-8, "false"), (1e-5, "true")])
def test_override_turns_false_convergence_into_divergence(tmp_path, caplog, rtol, scale):
    """Left-preconditioned GMRES with a nonlinear PC reports CONVERGED for a wrong x.

    Under the expert override the true-residual check at the end of the solve
    turns that into KSP_DIVERGED_BREAKDOWN and says why (here GMRES's own
    verdict is CONVERGED_RTOL while the true residual is 1e-3 to 0.3).
    """
    A = laplacian(12)
    b = rhs(A)
    ksp = neural_ksp(A, save(Cubic(), tmp_path / "c.pt"), "gmres",
                     pc_neural_allow_nonflexible="true", pc_neural_scale=scale)
    ksp.setTolerances(rtol=rtol, max_it=500)
    x = b.duplicate()
    with caplog.at_level("WARNING", logger="petsc_neural"):
        ksp.solve(b, x)
    assert _true_rel_residual(A, b, x) > 100 * rtol  # what GMRES returned is wrong ...
    # ... and is no longer reported as converged.
    assert ksp.getConvergedReason() == PETSc.KSP.ConvergedReason.DIVERGED_BREAKDOWN
    assert "runs under -ksp_type gmres" in caplog.text
    assert "reported convergence (reason 2)" in caplog.text
    assert "reason set to KSP_DIVERGED_BREAKDOWN" in caplog.text


# ----------------------------------------------------------------- defect 2
@pytest.mark.parallel(nprocs=2)
@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", ["zero rows on rank 0", "zero residual on rank 0"])
def test_no_hang_when_a_rank_has_no_work(tmp_path, case):
    comm = PETSc.COMM_WORLD
    n = 8
    local = (0 if comm.rank == 0 else n * n) if case.startswith("zero rows") else None
    A = laplacian(n, local_rows=local)
    model = save(Cubic(), tmp_path / "c.pt")
    ksp = neural_ksp(A, model, "fgmres")
    b = A.createVecLeft()
    full = np.random.default_rng(0).standard_normal(n * n)
    if case.startswith("zero residual"):
        full[: n * n // 2] = 0.0  # rank 0's rows (the first half)
    rs, re = b.getOwnershipRange()
    b.setArray(full[rs:re])
    x = b.duplicate()
    ksp.solve(b, x)
    assert ksp.getConvergedReason() > 0
    assert _true_rel_residual(A, b, x) < 1e-8


class RaisesOnSize(torch.nn.Module):
    """Jacobi, but raises inside the network for one local size (not on the constant probe)."""

    def __init__(self, bad_rows: int) -> None:
        super().__init__()
        self.bad_rows = bad_rows

    def forward(self, r: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        if r.shape[0] == self.bad_rows and bool(r.max() - r.min() > 0):
            raise RuntimeError("simulated failure inside the network")
        return r / d


@pytest.mark.parallel(nprocs=2)
@pytest.mark.timeout(60)
def test_network_error_at_apply_on_one_rank_raises_on_both(tmp_path):
    comm = PETSc.COMM_WORLD
    A = laplacian(8, local_rows=30 if comm.rank == 0 else 34)
    model = save(RaisesOnSize(34), tmp_path / "r.pt")
    ksp = neural_ksp(A, model, "fgmres")
    ksp.setUp()  # the probe (a constant residual) passes
    b = rhs(A)
    with pytest.raises(PETSc.Error) as info:
        ksp.solve(b, b.duplicate())
    msg = str(info.value.__cause__)
    msgs = comm.tompi4py().allgather(msg)
    assert msgs[0] == msgs[1] and "rank(s) [1]" in msg and "simulated failure" in msg


# ----------------------------------------------------------------- defect 5
class TwoMethods(torch.nn.Module):
    def forward(self, r: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return r / d

    @torch.jit.export
    def forward_batch(self, R: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return R / d.unsqueeze(1)


def test_edited_batched_forward_is_refused(tmp_path):
    path = tmp_path / "m.pt"
    save(TwoMethods(), path, linear=True)
    assert load_model(path).metadata.content_hash.startswith("sha256:")
    rewrite_record(path, "code/", lambda b: b.replace(b"torch.div(R", b"torch.mul(R")
                    if b"torch.div(R" in b else b.replace(b"R, ", b"R,  "))
    with pytest.raises(ModelFileError, match="fails its content hash") as info:
        load_model(path)
    assert str(path) in str(info.value)


def test_edited_metadata_is_refused(tmp_path):
    path = tmp_path / "m.pt"
    save_model(Jacobi(), path, ModelMetadata(inputs=["residual", "diagonal"], linear=False))
    rewrite_record(path, "petsc_neural.json",
                    lambda b: b.replace(b'"linear": false', b'"linear": true'))
    with pytest.raises(ModelFileError, match="fails its content hash"):
        load_model(path)


def test_old_format_is_refused_with_a_reason():
    meta = ModelMetadata()
    meta.format_version = 1
    with pytest.raises(ModelFileError, match="covered the forward code and weights only"):
        ModelMetadata.from_json(meta.to_json())


# ----------------------------------------------------------------- defect 7
_SCRIPT = textwrap.dedent("""
    import sys, torch
    from petsc4py import PETSc
    sys.path[:0] = [{helpers!r}, {helpers!r} + '/..']
    from pcshell_helpers import laplacian, neural_ksp, rhs, save
    class Cubic(torch.nn.Module):
        def forward(self, r: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
            z = r / d
            return z + 5.0 * z * z * z
    A = laplacian(8)
    model = save(Cubic(), {model!r})
    opts = dict(pc_neural_allow_nonflexible="true")
    opts.update({extra!r})
    ksp = neural_ksp(A, model, "gmres", **opts)
    b = rhs(A)
    for _ in range(2):  # two solves: the warning once per solve
        ksp.solve(b, b.duplicate())
""")


def _run_script(tmp_path, extra: dict, nprocs: int = 1) -> subprocess.CompletedProcess:
    helpers = os.path.dirname(os.path.abspath(__file__))
    script = tmp_path / "s.py"
    script.write_text(_SCRIPT.format(helpers=helpers, model=str(tmp_path / "c.pt"),
                                     extra=extra))
    cmd = [sys.executable, str(script)]
    if nprocs > 1:
        cmd = ["mpiexec", "-n", str(nprocs), *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ))


def test_warnings_reach_stderr_once_per_solve(tmp_path):
    out = _run_script(tmp_path, {})
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("petsc-neural: TorchScriptPC is nonlinear") == 2, out.stderr


def test_warnings_on_rank_zero_only(tmp_path):
    out = _run_script(tmp_path, {}, nprocs=2)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("petsc-neural: TorchScriptPC is nonlinear") == 2, out.stderr


def test_warnings_can_be_silenced(tmp_path):
    out = _run_script(tmp_path, {"pc_neural_warnings": "false"})
    assert out.returncode == 0, out.stderr
    assert "petsc-neural" not in out.stderr


def test_fallback_is_shown_by_ksp_view(tmp_path):
    from pcshell_helpers import NonFinite

    A = laplacian(8)
    ksp = neural_ksp(A, save(NonFinite(64), tmp_path / "nan.pt"),
                     pc_neural_on_failure="fallback")
    b = rhs(A)
    ksp.solve(b, b.duplicate())
    assert ksp.getConvergedReason() > 0
    text = "\n".join(ksp.getPC().getPythonContext().view_details(ksp.getPC()))
    assert "fallback ACTIVE: jacobi" in text and "non-finite" in text


# ----------------------------------------------------------------- safeguards
class Useless(torch.nn.Module):
    """A network that has learnt nothing useful: returns a fixed direction."""

    def forward(self, r: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        z = torch.ones_like(r) * torch.sign(r.sum() + 1e-30)
        return z / torch.linalg.vector_norm(z)


def test_stagnation_safeguard_switches_to_the_fallback(tmp_path, caplog):
    A = laplacian(12)
    b = rhs(A)
    model = save(Useless(), tmp_path / "u.pt")
    ksp = neural_ksp(A, model, "fgmres")
    ksp.setTolerances(rtol=1e-8, max_it=300)
    x = b.duplicate()
    ksp.solve(b, x)
    assert ksp.getConvergedReason() < 0  # without the safeguard it stalls
    ksp = neural_ksp(A, model, "fgmres", prefix="s_", pc_neural_stagnation=5,
                     pc_neural_fallback_pc_type="ilu")
    ksp.setTolerances(rtol=1e-8, max_it=300)
    with caplog.at_level("WARNING", logger="petsc_neural"):
        ksp.solve(b, x)
    assert ksp.getConvergedReason() > 0
    assert _true_rel_residual(A, b, x) < 1e-7
    assert "switching to -pc_neural_fallback_pc_type ilu" in caplog.text
    view = "\n".join(ksp.getPC().getPythonContext().view_details(ksp.getPC()))
    assert "stagnation fallbacks: 1 solve(s)" in view


# ----------------------------------------------------------------- defect 8 (options)
@pytest.mark.parametrize("option, value, message", [
    ("pc_neural_residual_factor", "0.5", "must be >= 1"),
    ("pc_neural_stagnation_factor", "0", "must be > 0"),
    ("pc_neural_dtype", "float16", "must be one of auto, float64, float32"),
    ("pc_neural_device", "tpu", "must be cpu, cuda or cuda:N"),
])
def test_bad_common_option_values_are_refused(jacobi_model, option, value, message):
    with pytest.raises(PETSc.Error) as info:
        neural_ksp(laplacian(4), jacobi_model, **{option: value}).setUp()
    assert message in str(info.value.__cause__)


def test_help_lists_every_option(tmp_path, jacobi_model):
    script = tmp_path / "h.py"
    helpers = os.path.dirname(os.path.abspath(__file__))
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{helpers!r}, {helpers!r} + '/..']
        import petsc4py
        petsc4py.init(["-help"])
        from pcshell_helpers import laplacian, neural_ksp
        neural_ksp(laplacian(4), {jacobi_model!r}).setUp()
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    for name in ("model", "device", "dtype", "on_failure", "fallback_pc_type", "warnings",
                 "scale", "allow_nonflexible", "check_residual", "stagnation"):
        assert f"-t_pc_neural_{name} <" in out.stdout, name


# ----------------------------------------------------------------- many right-hand sides
class BatchedJacobi(torch.nn.Module):
    """Nonlinear, and not zero at zero (a bias): the PC must still map 0 to 0."""

    def forward(self, r: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        z = r / d
        return z + 0.5 * z * z * z + 0.01

    @torch.jit.export
    def forward_batch(self, R: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        Z = R / d.unsqueeze(1)
        return Z + 0.5 * Z * Z * Z + 0.01


@pytest.mark.parametrize("model_cls", [BatchedJacobi, Cubic])
def test_mat_apply_equals_column_by_column_apply(tmp_path, model_cls):
    """PCMatApply: one batched call (forward_batch) or a loop, the same as apply per column."""
    A = laplacian(6)
    ksp = neural_ksp(A, save(model_cls(), tmp_path / "m.pt"), "fgmres")
    ksp.setUp()
    pc = ksp.getPC()
    n = A.getSize()[0]
    rng = np.random.default_rng(4)
    X = PETSc.Mat().createDense((n, 3), comm=PETSc.COMM_SELF)
    X.setUp()
    X.getDenseArray()[:] = rng.standard_normal((n, 3)) * np.array([1.0, 1e3, 0.0])
    X.assemble()
    Y = X.duplicate()
    pc.matApply(X, Y)
    for j in range(3):
        x = A.createVecLeft()
        x.setArray(X.getDenseArray()[:, j].copy())
        y = x.duplicate()
        pc.apply(x, y)
        np.testing.assert_allclose(Y.getDenseArray()[:, j], y.getArray(), rtol=1e-12,
                                   atol=1e-300)
    assert np.all(Y.getDenseArray()[:, 2] == 0.0)  # the zero column
