"""Finite-difference families on uniform grids, assembled with a PETSc DMDA (no Firedrake).

Seed 003's model problem (its eq. 44) on the unit interval or square, with
homogeneous Dirichlet conditions eliminated (the unknowns are the ``N^d``
interior nodes ``x_i = i h``, ``h = 1/(N+1)``)::

    -div(a grad u) + b . grad u + c u = f   in (0, 1)^d,   u = 0 on the boundary.

Families (``make_problem(name, N, ...)``; ``N`` interior points per direction):

``fd_cdr`` (``dim=1|2``, ``regime="convection"|"reaction"``)
    1D convection-dominated ``a = 0.01, b = 1 + x^2, c = 0``; 1D
    reaction-dominated ``a = 1, b = 0, c = -50 (1 + x^2)`` (indefinite);
    2D convection-dominated ``a = 0.01 (1 + x1^2 + x2^2) I``,
    ``b = (1 + x2^2, 1 + x1^2)``, ``c = 0``; 2D reaction-dominated ``a = I``,
    ``b = 0``, ``c = -10 (1 + x1^2 + x2^2)``.  3-point / 5-point stencils,
    diffusion in conservative form with ``a`` at the half points, upwind
    convection (first order) or central (``scheme="central"``; second order);
    the default is upwind where there is convection, as in the paper.
``fd_rotated`` (``theta``, ``xi=0.1``)
    The rotated anisotropic Laplacian ``-div(K grad u)`` with the constant
    tensor of seed 003 eq. 48 (principal directions rotated by ``theta``,
    anisotropy ``xi``), 9-point stencil (the mixed derivative by the
    four-corner difference).

The operator is the difference operator itself (rows scale like ``h^-2``),
so its inverse approximates ``h^d G(x_i, x_j)`` with ``G`` the Green's
function.  The right-hand side is ``f`` at the nodes: by default the paper's
random ``U[-0.5, 0.5]`` entries (``rhs="random"``, drawn in the natural
ordering so they do not depend on the number of ranks), or
``rhs="manufactured"`` with a known solution (``problem.exact``).

Coefficients are written with arithmetic only, so the same
:class:`CDROperator` evaluates on numpy arrays (assembly here) and on torch
tensors (the PDE residual of a learned Green's function,
:mod:`petsc_neural.green.loss`).  :meth:`CDROperator.apply` is the strong form
``L u`` from ``u``, its gradient and second derivatives.

The DMDA goes with the problem (``problem.dm``): :meth:`FDProblem.make_ksp`
attaches it to the KSP so PETSc's geometric multigrid (``-pc_type mg
-pc_mg_galerkin pmat``) can coarsen it, and passes the node coordinates
(``problem.coordinates``) to the PC with ``PCSetCoordinates``.  The paper's
even ``N`` (32, 64, ...) do not nest for vertex (Q1) interpolation, so the
DMDA uses PETSc's piecewise-constant (Q0) interpolation, which halves any even
``N``; for the same reason the DMDA carries no coordinates (PETSc injects
them when it coarsens, which needs Q1-nested sizes).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
from petsc4py import PETSc

from .petsc_util import SolveMixin, global_nnz

__all__ = [
    "CDROperator",
    "FDProblem",
    "cdr_operator",
    "rotated_operator",
    "rotated_tensor",
    "fd_operator",
    "fd_cdr",
    "fd_rotated",
    "stencil_scipy",
    "grid_points",
    "manufactured",
]

log = logging.getLogger("petsc_neural.problems")

Coeff = Callable[[Sequence[Any]], Any]


@dataclass(frozen=True)
class CDROperator:
    """``L u = -div(a grad u) + b . grad u + c u`` on ``(0, 1)^dim`` (see the module docstring).

    ``diffusion(x)`` is an isotropic ``a(x)`` with gradient ``diffusion_grad(x)``
    (a list of ``dim`` arrays), or ``tensor`` a constant symmetric matrix; ``x``
    is a sequence of ``dim`` coordinate arrays (numpy or torch).
    """

    name: str
    dim: int
    diffusion: Coeff | None = None
    diffusion_grad: Callable[[Sequence[Any]], list[Any]] | None = None
    tensor: tuple[tuple[float, ...], ...] | None = None
    convection: Callable[[Sequence[Any]], list[Any]] | None = None
    reaction: Coeff | None = None
    scheme: str = "upwind"
    params: dict[str, Any] = field(default_factory=dict)

    def apply(self, x: Sequence[Any], u: Any, grad: Sequence[Any], hess: Sequence[Any]) -> Any:
        """``L u`` from ``u``, ``grad = [u_k]`` and ``hess`` in the order of
        ``[(0,0)]`` (1D) or ``[(0,0), (1,1), (0,1)]`` (2D)."""
        d = self.dim
        out = 0.0 * u
        if self.tensor is not None:
            T = self.tensor
            for k in range(d):
                out = out - T[k][k] * hess[k]
            if d == 2:
                out = out - 2.0 * T[0][1] * hess[2]
        else:
            a = self.diffusion(x)
            da = self.diffusion_grad(x)
            for k in range(d):
                out = out - a * hess[k] - da[k] * grad[k]
        if self.convection is not None:
            b = self.convection(x)
            for k in range(d):
                out = out + b[k] * grad[k]
        if self.reaction is not None:
            out = out + self.reaction(x) * u
        return out

    def diffusion_scale(self, x: Sequence[Any]) -> Any:
        """A scalar diffusion magnitude at ``x`` (``a(x)``, or the tensor's mean eigenvalue)."""
        if self.tensor is not None:
            return sum(self.tensor[k][k] for k in range(self.dim)) / self.dim + 0.0 * x[0]
        return self.diffusion(x) + 0.0 * x[0]


def _r2(x: Sequence[Any]) -> Any:
    out = 0.0 * x[0]
    for xk in x:
        out = out + xk * xk
    return out


def cdr_operator(dim: int = 1, regime: str = "convection", scheme: str = "auto") -> CDROperator:
    """Seed 003's convection- or reaction-dominated operator in 1D or 2D."""
    if dim not in (1, 2) or regime not in ("convection", "reaction"):
        raise ValueError(f"fd_cdr: dim must be 1 or 2 and regime 'convection' or 'reaction', "
                         f"got dim={dim!r}, regime={regime!r}")
    if scheme not in ("auto", "upwind", "central"):
        raise ValueError(f"fd_cdr: scheme must be auto, upwind or central, got {scheme!r}")
    if scheme == "auto":
        scheme = "upwind" if regime == "convection" else "central"
    params = {"dim": dim, "regime": regime, "scheme": scheme}
    name = f"fd_cdr_{regime}_{dim}d"
    if regime == "convection" and dim == 1:
        return CDROperator(name, 1, diffusion=lambda x: 0.01 + 0.0 * x[0],
                           diffusion_grad=lambda x: [0.0 * x[0]],
                           convection=lambda x: [1.0 + x[0] * x[0]], scheme=scheme, params=params)
    if regime == "reaction" and dim == 1:
        return CDROperator(name, 1, diffusion=lambda x: 1.0 + 0.0 * x[0],
                           diffusion_grad=lambda x: [0.0 * x[0]],
                           reaction=lambda x: -50.0 * (1.0 + x[0] * x[0]), scheme=scheme,
                           params=params)
    if regime == "convection":
        return CDROperator(name, 2, diffusion=lambda x: 0.01 * (1.0 + _r2(x)),
                           diffusion_grad=lambda x: [0.02 * x[0], 0.02 * x[1]],
                           convection=lambda x: [1.0 + x[1] * x[1], 1.0 + x[0] * x[0]],
                           scheme=scheme, params=params)
    return CDROperator(name, 2, diffusion=lambda x: 1.0 + 0.0 * x[0],
                       diffusion_grad=lambda x: [0.0 * x[0], 0.0 * x[1]],
                       reaction=lambda x: -10.0 * (1.0 + _r2(x)), scheme=scheme, params=params)


def rotated_tensor(cos2: Any, sin2: Any, xi: float) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    """Seed 003 eq. 48 in terms of ``(cos 2 theta, sin 2 theta)`` (floats or arrays): the
    tensor is pi-periodic in theta, and a parametric network takes these two inputs."""
    m, d = 0.5 * (1.0 + xi), 0.5 * (1.0 - xi)
    return ((m + d * cos2, d * sin2), (d * sin2, m - d * cos2))


def rotated_operator(theta: float = 0.0, xi: float = 0.1) -> CDROperator:
    """The rotated anisotropic Laplacian of seed 003 eq. 48 (constant tensor)."""
    T = rotated_tensor(math.cos(2 * theta), math.sin(2 * theta), xi)
    return CDROperator("fd_rotated", 2, tensor=T, scheme="central",
                       params={"theta": float(theta), "xi": float(xi)})


def fd_operator(family: str, **params: Any) -> CDROperator:
    """The operator of family ``fd_cdr`` or ``fd_rotated`` with its parameters."""
    if family == "fd_cdr":
        return cdr_operator(**params)
    if family == "fd_rotated":
        return rotated_operator(**params)
    raise ValueError(f"unknown finite-difference family {family!r} (fd_cdr, fd_rotated)")


# -- the stencil ---------------------------------------------------------------------


def _box_indices(lo: Sequence[int], hi: Sequence[int]) -> list[np.ndarray]:
    """Grid indices of the box ``lo <= i < hi``, first direction fastest (DMDA order)."""
    axes = [np.arange(a, b) for a, b in zip(lo, hi, strict=True)]
    grids = np.meshgrid(*axes[::-1], indexing="ij")
    return [g.ravel() for g in grids[::-1]]


def _stencil(op: CDROperator, N: int, idx: list[np.ndarray]
             ) -> tuple[list[tuple[int, ...]], list[np.ndarray]]:
    """Offsets and values of the rows at grid indices ``idx`` (diagonal first)."""
    d = op.dim
    h = 1.0 / (N + 1)
    x = [(i + 1) * h for i in idx]
    m = idx[0].shape[0]
    zero = (0,) * d
    entries: dict[tuple[int, ...], np.ndarray] = {zero: np.zeros(m)}

    def add(off: tuple[int, ...], val: np.ndarray | float) -> None:
        if off not in entries:
            entries[off] = np.zeros(m)
        entries[off] += val

    def unit(k: int, s: int) -> tuple[int, ...]:
        return tuple(s if j == k else 0 for j in range(d))

    if op.tensor is not None:
        T = op.tensor
        for k in range(d):
            add(zero, 2.0 * T[k][k] / h**2)
            add(unit(k, 1), -T[k][k] / h**2)
            add(unit(k, -1), -T[k][k] / h**2)
        if d == 2 and T[0][1] != 0.0:
            q = 2.0 * T[0][1] / (4.0 * h**2)  # -2 K01 u_xy, four-corner difference
            add((1, 1), -q)
            add((-1, -1), -q)
            add((1, -1), q)
            add((-1, 1), q)
    else:
        for k in range(d):
            xp = [xj + (0.5 * h if j == k else 0.0) for j, xj in enumerate(x)]
            xm = [xj - (0.5 * h if j == k else 0.0) for j, xj in enumerate(x)]
            ap = np.broadcast_to(op.diffusion(xp), (m,))
            am = np.broadcast_to(op.diffusion(xm), (m,))
            add(zero, (ap + am) / h**2)
            add(unit(k, 1), -ap / h**2)
            add(unit(k, -1), -am / h**2)
    if op.convection is not None:
        b = [np.broadcast_to(bk, (m,)) for bk in op.convection(x)]
        for k in range(d):
            if op.scheme == "upwind":
                pos, neg = np.maximum(b[k], 0.0), np.minimum(b[k], 0.0)
                add(zero, (pos - neg) / h)
                add(unit(k, -1), -pos / h)
                add(unit(k, 1), neg / h)
            else:
                add(unit(k, 1), b[k] / (2 * h))
                add(unit(k, -1), -b[k] / (2 * h))
    if op.reaction is not None:
        add(zero, np.broadcast_to(op.reaction(x), (m,)))
    offs = list(entries)
    return offs, [entries[o] for o in offs]


def grid_points(N: int, dim: int) -> np.ndarray:
    """Interior nodes ``(N^dim, dim)`` in the natural ordering (first direction fastest)."""
    idx = _box_indices([0] * dim, [N] * dim)
    return np.stack([(i + 1) / (N + 1) for i in idx], axis=1)


def stencil_scipy(op: CDROperator, N: int) -> sp.csr_matrix:
    """The operator as a scipy CSR matrix in the natural ordering (serial; for small grids,
    the anchor data of the Green's-function training and spectra)."""
    d = op.dim
    idx = _box_indices([0] * d, [N] * d)
    offs, vals = _stencil(op, N, idx)
    rows, cols, data = [], [], []
    row = _natural(idx, N)
    for off, v in zip(offs, vals, strict=True):
        nb = [i + o for i, o in zip(idx, off, strict=True)]
        ok = np.all([(j >= 0) & (j < N) for j in nb], axis=0)
        rows.append(row[ok])
        cols.append(_natural([j[ok] for j in nb], N))
        data.append(v[ok])
    n = N**d
    return sp.csr_matrix((np.concatenate(data), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(n, n))


def _natural(idx: Sequence[np.ndarray], N: int) -> np.ndarray:
    out = np.zeros_like(idx[0])
    for k in reversed(range(len(idx))):
        out = out * N + idx[k]
    return out


# -- manufactured solution -----------------------------------------------------------


def manufactured(x: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """``u = prod_k sin(pi x_k) exp(x_k)`` (zero on the boundary), its gradient and second
    derivatives (order of :meth:`CDROperator.apply`)."""
    pi = math.pi
    s = [np.sin(pi * t) * np.exp(t) for t in x]
    s1 = [np.exp(t) * (pi * np.cos(pi * t) + np.sin(pi * t)) for t in x]
    s2 = [np.exp(t) * (2 * pi * np.cos(pi * t) + (1 - pi**2) * np.sin(pi * t)) for t in x]
    d = len(x)
    u = np.prod(s, axis=0)

    def prod_except(k: int, fk: np.ndarray) -> np.ndarray:
        out = fk
        for j in range(d):
            if j != k:
                out = out * s[j]
        return out

    grad = [prod_except(k, s1[k]) for k in range(d)]
    hess = [prod_except(k, s2[k]) for k in range(d)]
    if d == 2:
        hess.append(s1[0] * s1[1])
    return u, grad, hess


# -- the problem object --------------------------------------------------------------


@dataclass
class FDProblem(SolveMixin):
    """An assembled finite-difference problem (same attributes as
    :class:`firedrake_problems.core.Problem` where they apply, plus the DMDA).

    ``coordinates``: the locally owned nodes ``(n_local, dim)`` in the row order
    of ``A``; ``exact``: the manufactured solution at those nodes (or ``None``);
    ``operator``: the :class:`CDROperator`.
    """

    family: str
    A: PETSc.Mat
    b: PETSc.Vec
    coordinates: np.ndarray
    dm: PETSc.DM
    operator: CDROperator
    metadata: dict
    exact: np.ndarray | None = None
    block_size: int = 1
    near_nullspace: PETSc.NullSpace | None = None
    mesh: object | None = None
    V: object | None = None
    fields: dict[str, PETSc.IS] | None = None
    extra: dict = field(default_factory=dict, repr=False)

    @property
    def comm(self):
        return self.A.getComm().tompi4py()

    @property
    def N(self) -> int:
        return int(self.metadata["size"])

    def plot(self, x: PETSc.Vec, out: str) -> str:
        """PNG of the solution (serial): a curve in 1D, an image in 2D."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        u = x.getArray(readonly=True)
        N, d = self.N, self.operator.dim
        fig, ax = plt.subplots(figsize=(6, 4.5))
        if d == 1:
            ax.plot(self.coordinates[:, 0], u)
            ax.set_xlabel("x")
        else:
            im = ax.imshow(u.reshape(N, N), origin="lower", extent=(0, 1, 0, 1))
            fig.colorbar(im, ax=ax)
        ax.set_title(f"{self.family} {self.metadata['parameters']}, N = {N}", fontsize=8)
        fig.tight_layout()
        fig.savefig(out, dpi=100)
        plt.close(fig)
        return out

    def error(self, x: PETSc.Vec) -> float:
        """Max-norm error of ``x`` against the manufactured solution (all ranks)."""
        if self.exact is None:
            raise ValueError(f"{self.family}: built without a manufactured solution")
        from mpi4py import MPI

        local = float(np.abs(x.getArray(readonly=True) - self.exact).max(initial=0.0))
        return self.comm.allreduce(local, op=MPI.MAX)


def _assemble(op: CDROperator, family: str, N: int, seed: int, comm, rhs: str,
              params: dict[str, Any]) -> FDProblem:
    t0 = time.perf_counter()
    comm = comm or PETSc.COMM_WORLD
    d = op.dim
    if N < 2:
        raise ValueError(f"{family}: need at least 2 interior points per direction, got {N}")
    h = 1.0 / (N + 1)
    da = PETSc.DMDA().create(dim=d, sizes=(N,) * d, dof=1, stencil_width=1,
                             stencil_type=PETSc.DMDA.StencilType.BOX,
                             boundary_type=(PETSc.DM.BoundaryType.NONE,) * d, comm=comm)
    da.setInterpolationType(PETSc.DMDA.InterpolationType.Q0)
    da.setUp()
    # No coordinates on the DMDA: PETSc injects them when PCMG coarsens, which needs
    # Q1-nested sizes.  They reach PCs by PCSetCoordinates (see make_ksp).
    (starts, widths) = da.getCorners()
    (gstarts, gwidths) = da.getGhostCorners()
    lo = list(starts)
    hi = [s + w for s, w in zip(starts, widths, strict=True)]
    idx = _box_indices(lo, hi)
    offs, vals = _stencil(op, N, idx)

    def ghosted(j: Sequence[np.ndarray]) -> np.ndarray:
        out = np.zeros_like(j[0])
        for k in reversed(range(d)):
            out = out * gwidths[k] + (j[k] - gstarts[k])
        return out

    row = ghosted(idx)
    rows, cols, data = [], [], []
    for off, v in zip(offs, vals, strict=True):
        nb = [i + o for i, o in zip(idx, off, strict=True)]
        ok = np.all([(j >= 0) & (j < N) for j in nb], axis=0)
        rows.append(row)
        cols.append(np.where(ok, ghosted(nb), -1))  # negative: ignored (Dirichlet, eliminated)
        data.append(np.where(ok, v, 0.0))
    A = da.createMat()
    A.setPreallocationCOOLocal(np.concatenate(rows).astype(PETSc.IntType),
                               np.concatenate(cols).astype(PETSc.IntType))
    A.setValuesCOO(np.concatenate(data).astype(PETSc.ScalarType))
    A.assemble()
    A.setOption(PETSc.Mat.Option.NEW_NONZERO_ALLOCATION_ERR, True)

    x = [(i + 1) * h for i in idx]
    coords = np.stack(x, axis=1)
    exact = None
    if rhs == "manufactured":
        u, grad, hess = manufactured(x)
        f = op.apply(x, u, grad, hess)
        exact = u
    elif rhs == "random":
        rng = np.random.default_rng(seed)
        full = rng.uniform(-0.5, 0.5, size=N**d)
        f = full[_natural(idx, N)]
    elif rhs == "ones":
        f = np.ones(len(idx[0]))
    else:
        raise ValueError(f"{family}: rhs must be random, manufactured or ones, got {rhs!r}")
    b = da.createGlobalVec()
    b.setArray(np.asarray(f, dtype=PETSc.ScalarType))
    seconds = time.perf_counter() - t0
    md = {
        "family": family,
        "size": int(N),
        "seed": int(seed),
        "parameters": {**op.params, **params, "rhs": rhs},
        "dofs": int(A.getSize()[0]),
        "nnz": global_nnz(A),
        "block_size": 1,
        "nranks": int(comm.getSize()),
        "dim": d,
        "h": h,
        "operator": op.name,
        "assembly_time": seconds,
        # for baseline solvers (CG only where symmetric and definite): the negative
        # reactions of these families make them indefinite or nearly so
        "symmetric": op.convection is None,
        "definite": op.reaction is None,
    }
    log.info("%s N=%d: %d dofs, %d nnz, %.3fs", family, N, md["dofs"], md["nnz"], seconds)
    return FDProblem(family=family, A=A, b=b, coordinates=coords, dm=da, operator=op,
                     metadata=md, exact=exact)


def fd_cdr(size: int = 64, seed: int = 0, comm=None, *, dim: int = 1,
           regime: str = "convection", scheme: str = "auto", rhs: str = "random") -> FDProblem:
    """Seed 003's convection/reaction-dominated problems by finite differences (DMDA)."""
    op = cdr_operator(dim, regime, scheme)
    return _assemble(op, "fd_cdr", size, seed, comm, rhs, {})


def fd_rotated(size: int = 98, seed: int = 0, comm=None, *, theta: float = 0.0,
               xi: float = 0.1, rhs: str = "random") -> FDProblem:
    """Rotated anisotropic Laplacian, 9-point finite differences (DMDA), seed 003 eq. 48."""
    op = rotated_operator(theta, xi)
    return _assemble(op, "fd_rotated", size, seed, comm, rhs, {})
