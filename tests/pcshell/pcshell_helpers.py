"""Models and operators shared by the bridge's tests (imported by name: prepend mode)."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import torch
from grid_matrices import laplacian  # noqa: F401 (re-exported for the tests)
from petsc4py import PETSc

from pcshell import ModelMetadata, save_model


class Jacobi(torch.nn.Module):
    """z = D^-1 r: with the diagonal as input, the exact point Jacobi."""

    def forward(self, r: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return r / d


class NonFinite(torch.nn.Module):
    """Returns NaN wherever ``r`` has exactly ``bad_rows`` rows (others: Jacobi)."""

    def __init__(self, bad_rows: int) -> None:
        super().__init__()
        self.bad_rows = bad_rows

    def forward(self, r: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        if r.shape[0] == self.bad_rows:
            return r * float("nan")
        return r / d


class TiedMLP(torch.nn.Module):
    """A nonlinear network tied to one size (like the paper MLPs)."""

    def __init__(self, n: int, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(n, n, dtype=dtype)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lin(r))


def save(module, path, **meta) -> str:
    inputs = meta.pop("inputs", ["residual", "diagonal"])
    save_model(module, path, ModelMetadata(inputs=inputs, **meta))
    return str(path)


def rhs(A: PETSc.Mat, seed: int = 0) -> PETSc.Vec:
    """A random right-hand side, the same on any number of ranks."""
    b = A.createVecLeft()
    full = np.random.default_rng(seed).standard_normal(A.getSize()[0])
    rs, re = b.getOwnershipRange()
    b.setArray(full[rs:re])
    return b


def neural_ksp(A, model: str | None, method: str = "fgmres", prefix: str = "t_", **opts):
    """A KSP with the TorchScriptPC under a private options prefix."""
    from petsc_neural import TorchScriptPC

    o = PETSc.Options()
    if model is not None:
        opts.setdefault("pc_neural_model", model)
    for k, v in opts.items():
        o.setValue(prefix + k, v)
    ksp = PETSc.KSP().create(comm=A.getComm())
    ksp.setOptionsPrefix(prefix)
    ksp.setOperators(A)
    ksp.setType(method)
    ksp.setTolerances(rtol=1e-10, max_it=500)
    ksp.getPC().setType("python")
    ksp.getPC().setPythonContext(TorchScriptPC())
    ksp.setFromOptions()
    return ksp


def rewrite_record(path, match: str, edit) -> None:
    """Rewrite the first record of the model archive at ``path`` whose name contains ``match``.

    What an editing tool would do to a file; ``edit(bytes) -> bytes`` must change it.
    """
    src = zipfile.ZipFile(io.BytesIO(path.read_bytes()))
    out = io.BytesIO()
    done = False
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if match in info.filename and not done:
                new = edit(data)
                assert new != data
                data, done = new, True
            dst.writestr(info, data)
    assert done, f"no record matching {match!r}"
    path.write_bytes(out.getvalue())
