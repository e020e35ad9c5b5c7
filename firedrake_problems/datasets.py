"""Datasets of baseline Krylov solves (seed 000 §5.1.2) in HDF5.

For each sample the problem ``make_problem(family, size, seed + i, **params)``
is solved by the baseline Krylov method (CG + GAMG for symmetric families,
GMRES + GAMG for indefinite ones, GMRES + GAMG with SOR smoothing for
nonsymmetric ones; relative tolerance 1e-10 on the unpreconditioned
residual, at most 100 iterations, zero initial guess), and a KSP monitor
records every iterate x_k and its true residual r_k = b - A x_k.  The file is
reproducible from the generating arguments, which it stores.

HDF5 schema (all arrays in the global PETSc ordering of the generating run;
float64 unless said otherwise)::

    /                         attrs: format = "petsc-neural/krylov-dataset",
                                     version = 1, family, size, seed, count,
                                     params (JSON), solver (JSON of the KSP options),
                                     created_by (JSON of package versions)
    /samples/000000/          one group per sample, numbered 0..count-1
        attrs: seed (int, = seed + i), iterations (int), converged_reason (int),
               block_size (int), shape (int64[2]), metadata (JSON of Problem.metadata)
        A_indptr      int64[n+1]  CSR row pointers of A
        A_indices     int64[nnz]  CSR column indices
        A_data        float64[nnz] CSR values
        b             float64[n]
        coordinates   float64[n/block_size, gdim]   node coordinates
        x             float64[k+1, n]   iterates x_0 (= 0), ..., x_k
        r             float64[k+1, n]   residuals b - A x_j
        residual_norms float64[k+1]     the norms the KSP monitor saw

Loading (:func:`load_dataset`) returns the arrays bit for bit.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from firedrake.petsc import PETSc
from mpi4py import MPI

from pcshell.mats import gather_scipy  # petsc4py only: no torch

from .core import Problem
from .registry import make_problem

__all__ = [
    "baseline_solver_parameters",
    "record_krylov_solve",
    "generate_dataset",
    "load_dataset",
    "KrylovDataset",
    "Sample",
    "FORMAT",
]

log = logging.getLogger("petsc_neural.problems")

FORMAT = "petsc-neural/krylov-dataset"
VERSION = 1


def baseline_solver_parameters(problem: Problem, rtol: float = 1e-10, max_it: int = 100) -> dict:
    """Seed 000's baseline: CG + algebraic multigrid (GAMG).

    GMRES instead of CG where the operator is nonsymmetric or known to be
    indefinite (``metadata["definite"] is False``), as seed 000 allows.
    """
    md = problem.metadata
    symmetric = md.get("symmetric", True)
    use_cg = symmetric and md.get("definite", True) is not False
    params = {
        "ksp_type": "cg" if use_cg else "gmres",
        "ksp_norm_type": "unpreconditioned",
        "ksp_rtol": rtol,
        "ksp_atol": 0.0,
        "ksp_max_it": max_it,
        "pc_type": "gamg",
    }
    if not symmetric:
        # GAMG's default Chebyshev smoother needs a (nearly) symmetric
        # operator; SOR smoothing keeps AMG working on convection (SUPG).
        params.update({"mg_levels_ksp_type": "richardson", "mg_levels_pc_type": "sor"})
    return params


def _gather_vec(v: PETSc.Vec) -> np.ndarray | None:
    """The whole of ``v`` on rank 0 (None elsewhere)."""
    scatter, v0 = PETSc.Scatter.toZero(v)
    scatter.scatter(v, v0, addv=PETSc.InsertMode.INSERT_VALUES, mode=PETSc.ScatterMode.FORWARD)
    out = v0.getArray(readonly=True).copy() if v.getComm().getRank() == 0 else None
    scatter.destroy()
    v0.destroy()
    return out


def _gather_csr(A: PETSc.Mat) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(indptr, indices, data)`` of all of ``A`` on rank 0 (None elsewhere)."""
    M = gather_scipy(A)
    if M is None:
        return None
    return (np.asarray(M.indptr, np.int64), np.asarray(M.indices, np.int64),
            np.asarray(M.data, np.float64))


def record_krylov_solve(problem: Problem, solver_parameters: Mapping[str, Any]) -> dict | None:
    """Solve ``problem`` from a zero guess, recording iterates and residuals.

    Returns (on rank 0; None on other ranks) a dict with ``x`` (k+1, n),
    ``r`` (k+1, n), ``residual_norms`` (k+1,), ``iterations`` and
    ``converged_reason``.
    """
    A, b = problem.A, problem.b
    xs: list = []
    rs: list = []
    norms: list[float] = []
    r = b.duplicate()

    def monitor(ksp, its, rnorm):
        x = ksp.buildSolution()
        A.mult(x, r)
        r.aypx(-1.0, b)  # r = b - A x
        xs.append(_gather_vec(x))
        rs.append(_gather_vec(r))
        norms.append(float(rnorm))

    x0 = A.createVecRight()
    x0.set(0.0)
    ksp = problem.make_ksp(solver_parameters)
    ksp.setMonitor(monitor)
    ksp.solve(b, x0)
    out = None
    if A.getComm().getRank() == 0:
        out = {
            "x": np.array(xs),
            "r": np.array(rs),
            "residual_norms": np.array(norms),
            "iterations": int(ksp.getIterationNumber()),
            "converged_reason": int(ksp.getConvergedReason()),
        }
    ksp.destroy()
    return out


def _versions() -> dict:
    out = {"petsc": ".".join(map(str, PETSc.Sys.getVersion())), "numpy": np.__version__}
    try:
        import firedrake

        out["firedrake"] = getattr(firedrake, "__version__", "unknown")
    except Exception:  # pragma: no cover - firedrake is imported above anyway
        pass
    return out


def generate_dataset(
    family: str,
    size: int,
    count: int,
    seed: int,
    out: str,
    *,
    params: Mapping[str, Any] | None = None,
    solver_parameters: Mapping[str, Any] | None = None,
    rtol: float = 1e-10,
    max_it: int = 100,
    comm=None,
    progress: bool = False,
) -> str:
    """Write ``count`` recorded baseline solves of ``family`` to the HDF5 file ``out``.

    Sample i is ``make_problem(family, size, seed + i, comm, **params)``;
    ``params`` defaults to ``{"rhs": "grf"}`` (seed 000's GRF right-hand sides).
    """
    import h5py

    comm = MPI.COMM_WORLD if comm is None else comm
    params = {"rhs": "grf"} if params is None else dict(params)
    f = h5py.File(out, "w") if comm.rank == 0 else None
    try:
        it = range(count)
        if progress and comm.rank == 0:
            from tqdm import tqdm

            it = tqdm(it, desc=f"{family} n={size}", unit="sample")
        solver_json = None
        for i in it:
            problem = make_problem(family, size, seed + i, comm, **params)
            sp = (
                dict(solver_parameters)
                if solver_parameters is not None
                else baseline_solver_parameters(problem, rtol, max_it)
            )
            rec = record_krylov_solve(problem, sp)
            csr = _gather_csr(problem.A)
            b = _gather_vec(problem.b)
            coords = comm.gather(problem.coordinates, root=0)
            if comm.rank == 0:
                solver_json = json.dumps(sp, sort_keys=True)
                g = f.create_group(f"samples/{i:06d}")
                g.attrs["seed"] = seed + i
                g.attrs["iterations"] = rec["iterations"]
                g.attrs["converged_reason"] = rec["converged_reason"]
                g.attrs["block_size"] = problem.block_size
                g.attrs["shape"] = np.array(problem.A.getSize(), dtype=np.int64)
                g.attrs["metadata"] = json.dumps(problem.metadata, sort_keys=True)
                g.create_dataset("A_indptr", data=csr[0])
                g.create_dataset("A_indices", data=csr[1])
                g.create_dataset("A_data", data=csr[2])
                g.create_dataset("b", data=b)
                g.create_dataset("coordinates", data=np.concatenate(coords))
                g.create_dataset("x", data=rec["x"])
                g.create_dataset("r", data=rec["r"])
                g.create_dataset("residual_norms", data=rec["residual_norms"])
                log.info(
                    "sample %d: %d iterations (reason %d)",
                    i,
                    rec["iterations"],
                    rec["converged_reason"],
                )
        if comm.rank == 0:
            f.attrs["format"] = FORMAT
            f.attrs["version"] = VERSION
            f.attrs["family"] = family
            f.attrs["size"] = size
            f.attrs["seed"] = seed
            f.attrs["count"] = count
            f.attrs["params"] = json.dumps(params, sort_keys=True)
            f.attrs["solver"] = solver_json or "{}"
            f.attrs["created_by"] = json.dumps(_versions(), sort_keys=True)
    finally:
        if f is not None:
            f.close()
    return out


@dataclass
class Sample:
    """One recorded solve (see the module docstring for the fields)."""

    A_indptr: np.ndarray
    A_indices: np.ndarray
    A_data: np.ndarray
    shape: tuple[int, int]
    b: np.ndarray
    coordinates: np.ndarray
    x: np.ndarray
    r: np.ndarray
    residual_norms: np.ndarray
    block_size: int
    seed: int
    iterations: int
    converged_reason: int
    metadata: dict = field(default_factory=dict)

    def A_scipy(self):
        """A as a ``scipy.sparse.csr_matrix``."""
        from scipy.sparse import csr_matrix

        return csr_matrix((self.A_data, self.A_indices, self.A_indptr), shape=self.shape)

    def A_petsc(self, comm=None) -> PETSc.Mat:
        """A as a sequential PETSc AIJ matrix (on COMM_SELF)."""
        return PETSc.Mat().createAIJ(
            size=self.shape,
            csr=(
                self.A_indptr.astype(PETSc.IntType),
                self.A_indices.astype(PETSc.IntType),
                self.A_data,
            ),
            comm=comm or PETSc.COMM_SELF,
        )


class KrylovDataset:
    """Read access to a dataset file: ``len(ds)``, ``ds[i]`` -> :class:`Sample`."""

    def __init__(self, path: str):
        import h5py

        self.path = path
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise ValueError(f"{path}: not a {FORMAT} file")
            self.attrs = {
                k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()
            }
            self.keys = sorted(f["samples"].keys()) if "samples" in f else []
        self.params = json.loads(self.attrs["params"])
        self.solver = json.loads(self.attrs["solver"])

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> Sample:
        import h5py

        with h5py.File(self.path, "r") as f:
            g = f["samples"][self.keys[i]]
            return Sample(
                A_indptr=g["A_indptr"][()],
                A_indices=g["A_indices"][()],
                A_data=g["A_data"][()],
                shape=tuple(int(s) for s in g.attrs["shape"]),
                b=g["b"][()],
                coordinates=g["coordinates"][()],
                x=g["x"][()],
                r=g["r"][()],
                residual_norms=g["residual_norms"][()],
                block_size=int(g.attrs["block_size"]),
                seed=int(g.attrs["seed"]),
                iterations=int(g.attrs["iterations"]),
                converged_reason=int(g.attrs["converged_reason"]),
                metadata=json.loads(g.attrs["metadata"]),
            )

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]


def load_dataset(path: str) -> KrylovDataset:
    """Open a dataset written by :func:`generate_dataset`."""
    return KrylovDataset(path)
