"""What a neural preconditioner reads from the operator, as torch tensors.

Built once at setup from the local diagonal block of the preconditioning
matrix (the whole matrix on one rank); :meth:`LocalOperator.refresh` copies new
values into the same tensors when only the values changed.  Nothing here runs
per apply.
"""

from __future__ import annotations

import ctypes
import logging
import os
import warnings
from collections.abc import Callable

import numpy as np
import torch
from petsc4py import PETSc

from .errors import NeuralPCError
from .mats import local_block

__all__ = [
    "LocalOperator",
    "set_coordinates",
    "get_coordinates",
    "dm_coordinates",
    "COORDINATES_KEY",
    "enable_pc_set_coordinates",
]

COORDINATES_KEY = "petsc_neural_coordinates"


def set_coordinates(obj: PETSc.PC | PETSc.Mat, coordinates: np.ndarray) -> None:
    """Attach node coordinates ``(n_local_nodes, dim)`` to a PC or to its operator.

    ``PCSetCoordinates`` is a no-op for ``-pc_type python`` (PETSc dispatches it
    only to PCs that implement it), so the coordinates travel as a composed
    ``Vec`` (block size = dim) that :class:`LocalOperator` reads at setup.
    Attaching them to the operator Mat lets a Firedrake or C caller that only
    holds the matrix pass them on.
    """
    coords = np.ascontiguousarray(coordinates, dtype=PETSc.RealType)
    if coords.ndim != 2:
        raise ValueError(f"coordinates must be (n_nodes, dim), got shape {coords.shape}")
    v = PETSc.Vec().createWithArray(coords.ravel().copy(), comm=PETSc.COMM_SELF)
    v.setBlockSize(coords.shape[1])
    obj.compose(COORDINATES_KEY, v)


_libpetsc: ctypes.CDLL | None = None
# PetscErrorCode PCSetCoordinates_C(PC, PetscInt dim, PetscInt nloc, PetscReal coords[])
_INT = ctypes.c_int64 if np.dtype(PETSc.IntType).itemsize == 8 else ctypes.c_int32
_SETCOORDS = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, _INT, _INT, ctypes.POINTER(ctypes.c_double)
)


def _petsc_library() -> ctypes.CDLL:
    global _libpetsc
    if _libpetsc is None:
        import petsc4py

        cfg = petsc4py.get_config()
        path = os.path.join(cfg["PETSC_DIR"], cfg["PETSC_ARCH"], "lib", "libpetsc.so")
        _libpetsc = ctypes.CDLL(path)  # already loaded by petsc4py: the same handle
        _libpetsc.PetscObjectComposeFunction_Private.argtypes = [
            ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p
        ]
        _libpetsc.PetscObjectComposeFunction_Private.restype = ctypes.c_int
    return _libpetsc


def enable_pc_set_coordinates(pc: PETSc.PC, store: Callable[[np.ndarray], None]) -> object:
    """Make ``PCSetCoordinates`` work on a ``-pc_type python`` PC.

    PETSc dispatches ``PCSetCoordinates`` to ``"PCSetCoordinates_C"`` composed on
    the PC (GAMG and friends compose one; PCPYTHON does not, so the call is a
    silent no-op).  petsc4py has no hook for it, so we compose a ctypes callback
    that hands a copy of the ``(nloc, dim)`` coordinates to ``store``.  C
    programs, ``pc.setCoordinates`` and Firedrake helpers then reach the neural
    PC.  The returned callback must be kept alive as long as the PC (the python
    context holds it; ``store`` should not hold the PC, to avoid a cycle
    through C references that Python's collector cannot see).
    """

    def callback(_pc, dim, nloc, coords):
        try:
            arr = np.ctypeslib.as_array(coords, shape=(int(nloc) * int(dim),))
            store(arr.reshape(int(nloc), int(dim)).copy())
            return 0
        except Exception:  # never let an exception cross into C
            logging.getLogger("petsc_neural.pcshell").exception("PCSetCoordinates failed")
            return 1

    cfunc = _SETCOORDS(callback)
    err = _petsc_library().PetscObjectComposeFunction_Private(
        pc.handle, b"PCSetCoordinates_C", ctypes.cast(cfunc, ctypes.c_void_p)
    )
    if err:
        raise NeuralPCError(f"could not compose PCSetCoordinates_C (PETSc error {err})")
    return cfunc


def get_coordinates(*objs: PETSc.Object) -> np.ndarray | None:
    """Coordinates composed on the first of ``objs`` that has them."""
    for obj in objs:
        if obj is None:
            continue
        v = obj.query(COORDINATES_KEY)
        if v is not None:
            return v.getArray(readonly=True).reshape(-1, v.getBlockSize()).copy()
    return None


def dm_coordinates(pc: PETSc.PC) -> np.ndarray | None:
    """Node coordinates of the DMDA attached to ``pc`` (local nodes, x fastest).

    The DMDA's own coordinates when it has them (``DMDASetUniformCoordinates``),
    else uniform ones on the unit cube from the grid indices: PETSc's DMDA
    tutorials (``ksp/ex29``, ``ex45``, ``ex50``) then give a neural PC the
    geometry it was trained with.  ``None`` without a DMDA.
    """
    try:
        dm = pc.getDM()
    except PETSc.Error:
        return None
    if dm is None or dm.handle == 0 or dm.getType() != "da":
        return None
    dim = dm.getDim()
    c = dm.getCoordinates()
    if c is not None and c.handle != 0 and c.getLocalSize() > 0:
        return c.getArray(readonly=True).reshape(-1, dim).copy()
    (starts, widths) = dm.getCorners()
    sizes = dm.getSizes()
    axes = [(np.arange(starts[d], starts[d] + widths[d]) / max(sizes[d] - 1, 1))
            for d in range(dim)]
    grids = np.meshgrid(*axes[::-1], indexing="ij")  # last axis slowest: x runs fastest
    return np.stack([g.ravel() for g in grids[::-1]], axis=1)


class LocalOperator:
    """The local rows of the operator as torch tensors, refreshed in place.

    Attributes: ``csr`` (sparse CSR, the local diagonal block), ``diagonal``,
    ``block_size``, ``near_nullspace`` (``(n, k)`` or ``None``),
    ``coordinates`` (``(n_nodes, dim)`` or ``None``, as given: see
    :meth:`pcshell.PCBase.node_coordinates`), ``n_local``,
    ``n_global``, ``nnz``.
    """

    def __init__(
        self,
        P: PETSc.Mat,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
        coordinates: np.ndarray | None = None,
    ) -> None:
        self.dtype = dtype
        self.device = torch.device(device)
        self.n_local, _ = P.getLocalSize()
        self.n_global, _ = P.getSize()
        self.block_size = P.getBlockSize()
        indptr, indices, values = local_block(P).getValuesCSR()
        self._indptr = indptr
        self._indices = indices
        self.nnz = int(indptr[-1])
        with warnings.catch_warnings():
            # torch flags sparse CSR as "beta"; the invariants are checked once here.
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            self.csr = torch.sparse_csr_tensor(
                torch.from_numpy(indptr.astype(np.int64)),
                torch.from_numpy(indices.astype(np.int64)),
                torch.from_numpy(values).to(dtype),
                size=(self.n_local, self.n_local),
                check_invariants=True,
            ).to(self.device)
        self.diagonal = torch.from_numpy(P.getDiagonal().getArray(readonly=True).copy()).to(
            device=self.device, dtype=dtype
        )
        self.near_nullspace = self._read_near_nullspace(P)
        self.coordinates = (
            None if coordinates is None
            else torch.from_numpy(np.ascontiguousarray(coordinates)).to(device=self.device,
                                                                        dtype=dtype)
        )

    def _read_near_nullspace(self, P: PETSc.Mat) -> torch.Tensor | None:
        nsp = P.getNearNullSpace()
        if nsp is None or nsp.handle == 0:
            return None
        vecs = list(nsp.getVecs())
        cols = [v.getArray(readonly=True) for v in vecs]
        if nsp.hasConstant():
            cols.insert(0, np.ones(self.n_local))
        if not cols:
            return None
        arr = np.stack(cols, axis=1)
        return torch.from_numpy(arr.copy()).to(device=self.device, dtype=self.dtype)

    def same_pattern(self, P: PETSc.Mat) -> bool:
        """Does ``P`` have this operator's sizes and local nonzero pattern?"""
        if P.getLocalSize()[0] != self.n_local or P.getSize()[0] != self.n_global:
            return False
        indptr, indices, _ = local_block(P).getValuesCSR()
        return np.array_equal(indptr, self._indptr) and np.array_equal(indices, self._indices)

    def refresh(self, P: PETSc.Mat) -> None:
        """Copy ``P``'s current values into the existing tensors (same pattern)."""
        _, _, values = local_block(P).getValuesCSR()
        self.csr.values().copy_(torch.from_numpy(values))
        self.diagonal.copy_(torch.from_numpy(P.getDiagonal().getArray(readonly=True).copy()))
        self.near_nullspace = self._read_near_nullspace(P)

    def inputs(self, names: list[str]) -> tuple[torch.Tensor, ...]:
        """The static network inputs named in a model's metadata (after ``residual``)."""
        out = []
        for name in names:
            if name == "operator":
                out.append(self.csr)
            elif name == "diagonal":
                out.append(self.diagonal)
            elif name == "coordinates":
                out.append(
                    self.coordinates
                    if self.coordinates is not None
                    else torch.zeros((0, 0), dtype=self.dtype, device=self.device)
                )
            elif name == "near_nullspace":
                if self.near_nullspace is None:
                    raise NeuralPCError(
                        "the model needs the operator's near-nullspace, but none is set "
                        "(MatSetNearNullSpace)"
                    )
                out.append(self.near_nullspace)
            else:
                raise NeuralPCError(f"unknown model input {name!r}")
        return tuple(out)
