"""The :class:`Problem` object and the assembly helpers shared by the families."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import firedrake as fd
import numpy as np
import ufl
from firedrake.petsc import PETSc

from .petsc_util import SolveMixin, flatten_options, global_nnz

__all__ = [
    "Problem",
    "assemble_linear_system",
    "node_coordinates",
    "global_nnz",
    "flatten_options",
]

log = logging.getLogger("petsc_neural.problems")


def node_coordinates(V) -> np.ndarray:
    """Coordinates (n_owned_nodes, gdim) of the locally owned nodes of ``V``.

    For a vector space every node carries ``V.block_size`` dofs; the rows of
    the result are per node, as ``PCSetCoordinates`` wants them.
    """
    mesh = V.mesh()
    elem = V.ufl_element()
    if V.block_size > 1 or len(V.value_shape) > 0:
        elem = elem.sub_elements[0]
    W = fd.VectorFunctionSpace(mesh, elem)
    X = fd.Function(W).interpolate(ufl.SpatialCoordinate(mesh))
    return np.array(X.dat.data_ro, dtype=float).reshape(-1, gdim(mesh))


def gdim(mesh) -> int:
    """Geometric dimension of a Firedrake mesh (a property or a method, by version)."""
    g = mesh.geometric_dimension
    return int(g() if callable(g) else g)


def tdim(mesh) -> int:
    """Topological dimension of a Firedrake mesh."""
    t = mesh.topological_dimension
    return int(t() if callable(t) else t)


@dataclass
class Problem(SolveMixin):
    """One assembled linear problem ``A x = b`` of a PDE family.

    ``A`` and ``b`` live on the problem's communicator; Dirichlet rows are as
    Firedrake makes them (unit diagonal, symmetric elimination of the boundary
    columns, the boundary values in ``b``).  ``coordinates`` has one row per
    locally owned *node* (``block_size`` dofs each) in the row order of ``A``.
    """

    family: str
    A: PETSc.Mat
    b: PETSc.Vec
    coordinates: np.ndarray
    block_size: int
    near_nullspace: PETSc.NullSpace | None
    mesh: object | None
    V: object | None
    metadata: dict
    exact: object | None = None
    # Optional extras: named index sets of the blocks (for PCFIELDSPLIT), and
    # objects that must stay alive with A (Firedrake matrices, meshes, ...).
    fields: dict[str, PETSc.IS] | None = None
    extra: dict = field(default_factory=dict, repr=False)

    @property
    def comm(self):
        return self.A.getComm().tompi4py()

    def to_function(self, x: PETSc.Vec):
        """The Firedrake Function with dof values ``x`` (a tuple for block problems)."""
        if self.V is not None:
            u = fd.Function(self.V)
            with u.dat.vec_wo as v:
                x.copy(v)
            return u
        spaces = self.extra.get("spaces")
        if spaces is None or self.fields is None:
            raise ValueError(f"{self.family}: no Firedrake space to build a Function on")
        out = []
        for (_, iset), V in zip(self.fields.items(), spaces, strict=True):
            u = fd.Function(V)
            sub = x.getSubVector(iset)
            with u.dat.vec_wo as v:
                sub.copy(v)
            x.restoreSubVector(iset, sub)
            out.append(u)
        return tuple(out)


def _copy_vec(cofunc) -> PETSc.Vec:
    with cofunc.dat.vec_ro as v:
        return v.copy()


def assemble_linear_system(
    a: ufl.Form,
    L: ufl.Form,
    bcs: list,
    V,
) -> tuple[PETSc.Mat, PETSc.Vec, object, float]:
    """Assemble ``a`` and ``L`` with Dirichlet conditions ``bcs`` on ``V``.

    Returns ``(A, b, firedrake_matrix, seconds)``.  Inhomogeneous Dirichlet
    values are lifted: ``b = L - a(g, .)`` with ``g`` the boundary values
    (zero inside), then ``b`` is set to ``g`` on the boundary rows, which
    matches Firedrake's matrix (unit diagonal, eliminated boundary columns).
    """
    t0 = time.perf_counter()
    Amat = fd.assemble(a, bcs=bcs, mat_type="aij")
    g = fd.Function(V)
    for bc in bcs:
        bc.apply(g)
    inhomogeneous = bool(np.abs(g.dat.data_ro).max(initial=0.0) > 0.0)
    inhomogeneous = V.mesh().comm.allreduce(inhomogeneous, op=_mpi_lor())
    if inhomogeneous:
        rhs = fd.assemble(L - ufl.action(a, g))
    else:
        rhs = fd.assemble(L)
    with rhs.dat.vec_ro as bv, g.dat.vec_ro as gv:
        b = bv.copy()
        # Set the Dirichlet rows to the boundary values.
        nodes = np.unique(np.concatenate([bc.nodes for bc in bcs])) if bcs else np.zeros(0, int)
        n_owned = V.dof_dset.size
        nodes = nodes[nodes < n_owned]
        bs = V.block_size
        if len(nodes):
            idx = (nodes[:, None] * bs + np.arange(bs)[None, :]).ravel()
            barr = b.getArray()
            barr[idx] = gv.getArray(readonly=True)[idx]
            b.setArray(barr)
    A = Amat.petscmat
    A.assemble()
    return A, b, Amat, time.perf_counter() - t0


def _mpi_lor():
    from mpi4py import MPI

    return MPI.LOR


def base_metadata(family: str, size: int, seed: int, params: dict, A: PETSc.Mat, **extra) -> dict:
    """The metadata every family records."""
    n = A.getSize()[0]
    md = {
        "family": family,
        "size": int(size),
        "seed": int(seed),
        "parameters": {k: _jsonable(v) for k, v in params.items()},
        "dofs": int(n),
        "nnz": global_nnz(A),
        "block_size": int(A.getBlockSize()),
        "nranks": int(A.getComm().getSize()),
    }
    md.update({k: _jsonable(v) for k, v in extra.items()})
    return md


def _jsonable(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, int | float | str | bool) or v is None:
        return v
    return str(v)


Builder = Callable[..., Problem]
