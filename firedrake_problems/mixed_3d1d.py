"""Mixed-dimensional 3D-1D diffusion-reaction (seed 002; D'Angelo & Quarteroni 2008).

Tissue Ω = [0, 1]^3 with unknown u, a network Λ of thin vessels (radius R)
with unknown û, coupled through the average ū of u on the circles of radius R
around the centerline (seed 002's formulas are lost in its text; this is the
model of its refs. [1], [21], which seed 002 says it uses):

    (κ ∇u, ∇v)_Ω + 2πR β (ū - û, v̄)_Λ                     = (f, v)_Ω
    πR² (κ̂ dû/ds, dv̂/ds)_Λ + 2πR β (û - ū, v̂)_Λ           = πR² (g, v̂)_Λ

with u = 0 on ∂Ω and, on the network ends, homogeneous Neumann (random
networks) or Dirichlet (``network_bc="dirichlet"``, used by the manufactured
test where the vessel crosses the cube).  The coupling form
2πRβ (ū - û, v̄ - v̂)_Λ is symmetric positive semi-definite, so the whole
operator is symmetric positive definite.

Discretisation: P1 on a uniform tetrahedral cube mesh and P1 on a 1D mesh of
the network immersed in 3D, both assembled by Firedrake.  Firedrake has no
co-dimension-2 submeshes, so the average ū is an explicit sparse operator
Π: V_3D -> V_1D, (Π u)_i = (1/n_q) Σ_j u(x_i + R (cos θ_j n1 + sin θ_j n2)),
the mean of u over n_q points on the circle around 1D node x_i (n1, n2 span
the plane normal to the centerline).  Point evaluation of the 3D P1 basis is
done here by hand (Firedrake's cell location gives the cell and reference
coordinates; P1 basis values are the barycentric coordinates), because the
cross-mesh interpolation matrix is not available as an assembled AIJ
matrix.  With the 1D mass matrix M (rows/columns of Dirichlet nodes of either
side removed), the blocks are

    A_33 = K_3 + 2πRβ Πᵀ M Π,   A_31 = -2πRβ Πᵀ M,
    A_13 = -2πRβ M Π,           A_11 = πR² K_1 + 2πRβ M,

delivered as ONE PETSc AIJ matrix (converted from a MATNEST: rows are, on
each rank, its 3D dofs then its 1D dofs).  ``Problem.fields`` holds the two
index sets ("3d", "1d") for PCFIELDSPLIT (the 3D one is also composed on
``A`` as ``"petsc_neural_field_3d"``); ``metadata["blocks"]`` records their
global sizes.

Networks (``network="random"``): a random binary tree grown from a root near
the bottom of the cube, ``generations`` levels, segment lengths and branching
angles drawn from the seed (geometric variability as in seed 002), kept inside
[0.1, 0.9]^3.  ``network="straight"``: one vertical vessel through
(0.5, 0.5) from z = 0 to z = 1.
"""

from __future__ import annotations

import logging
import math
import time

import firedrake as fd
import numpy as np
import ufl
from firedrake.petsc import PETSc
from mpi4py import MPI

from .core import Problem, base_metadata, node_coordinates
from .fields import grf_values, stream

__all__ = ["mixed_3d1d", "random_network", "straight_network", "circle_average_operator"]

log = logging.getLogger("petsc_neural.problems")


# ----------------------------------------------------------------------------- networks
def straight_network(x0: float = 0.5, y0: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """One vertical vessel from (x0, y0, 0) to (x0, y0, 1): (points, segments)."""
    return np.array([[x0, y0, 0.0], [x0, y0, 1.0]]), np.array([[0, 1]])


def _perpendicular(d: np.ndarray) -> np.ndarray:
    a = np.array([1.0, 0.0, 0.0]) if abs(d[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    n = np.cross(d, a)
    return n / np.linalg.norm(n)


def _rotate(v: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    return (
        v * math.cos(angle)
        + np.cross(axis, v) * math.sin(angle)
        + axis * np.dot(axis, v) * (1 - math.cos(angle))
    )


def random_network(
    seed: int, generations: int = 3, lo: float = 0.1, hi: float = 0.9
) -> tuple[np.ndarray, np.ndarray]:
    """A random binary tree of straight segments inside [lo, hi]^3: (points, segments)."""
    rng = stream(seed, "graph")
    root = np.array([rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65), lo])
    d0 = np.array([rng.normal(0, 0.2), rng.normal(0, 0.2), 1.0])
    points = [root]
    segments: list[tuple[int, int]] = []

    def grow(i_start: int, direction: np.ndarray, gen: int) -> None:
        p = points[i_start]
        direction = direction / np.linalg.norm(direction)
        length = rng.uniform(0.2, 0.35) * 0.8**gen
        # Longest step that stays inside the box.
        tmax = np.inf
        for k in range(3):
            if direction[k] > 1e-12:
                tmax = min(tmax, (hi - p[k]) / direction[k])
            elif direction[k] < -1e-12:
                tmax = min(tmax, (lo - p[k]) / direction[k])
        length = min(length, tmax)
        if length < 0.05:
            return
        points.append(p + length * direction)
        i_end = len(points) - 1
        segments.append((i_start, i_end))
        if gen + 1 >= generations:
            return
        axis = _rotate(_perpendicular(direction), direction, rng.uniform(0, 2 * math.pi))
        for sign in (1.0, -1.0):
            angle = sign * rng.uniform(math.radians(25), math.radians(55))
            grow(i_end, _rotate(direction, axis, angle), gen + 1)

    grow(0, d0, 0)
    return np.array(points), np.array(segments, dtype=np.int64)


def discretize_network(points: np.ndarray, segments: np.ndarray, h: float):
    """Split each segment into ceil(length / h) elements: (nodes, cells, tangents)."""
    nodes = [p for p in points]
    cells = []
    tangents = [np.zeros(3) for _ in points]
    for a, b in segments:
        pa, pb = points[a], points[b]
        t = (pb - pa) / np.linalg.norm(pb - pa)
        tangents[a] = tangents[a] + t
        tangents[b] = tangents[b] + t
        k = max(1, int(math.ceil(np.linalg.norm(pb - pa) / h - 1e-9)))
        prev = a
        for j in range(1, k):
            nodes.append(pa + (pb - pa) * j / k)
            tangents.append(t.copy())
            cells.append((prev, len(nodes) - 1))
            prev = len(nodes) - 1
        cells.append((prev, b))
    tangents = np.array(tangents)
    tangents /= np.linalg.norm(tangents, axis=1)[:, None]
    return np.array(nodes), np.array(cells, dtype=np.int32), tangents


def network_mesh(nodes: np.ndarray, cells: np.ndarray, comm, name: str):
    """Firedrake 1D mesh immersed in 3D from a node/cell list (built on rank 0)."""
    if comm.rank == 0:
        c, x = cells.astype(np.int32), nodes
    else:
        c, x = np.zeros((0, 2), dtype=np.int32), np.zeros((0, 3))
    plex = PETSc.DMPlex().createFromCellList(1, c, x, interpolate=True, comm=comm)
    plex.setName(name)
    return fd.Mesh(plex, comm=comm, name=name)


# ----------------------------------------------------------------------------- coupling
def _node_ids(V1, nodes: np.ndarray) -> np.ndarray:
    """Generator node index of each local (owned + ghost) node of the P1 space V1."""
    from scipy.spatial import cKDTree

    X = fd.Function(fd.VectorFunctionSpace(V1.mesh(), "CG", 1)).interpolate(
        ufl.SpatialCoordinate(V1.mesh())
    )
    xl = np.asarray(X.dat.data_ro_with_halos).reshape(-1, 3)
    dist, ids = cKDTree(nodes).query(xl)
    if len(dist) and dist.max() > 1e-8:
        raise RuntimeError("1D mesh nodes do not match the network nodes")
    return ids


def circle_average_operator(
    V3, V1, nodes: np.ndarray, tangents: np.ndarray, radius: float, n_quad: int
) -> PETSc.Mat:
    """Π (AIJ, rows V1 dofs, cols V3 dofs): mean of the P1 field over circles.

    Every rank knows the whole (small) network; every circle point is
    evaluated by exactly one rank, preferring a rank that owns a containing
    cell (ties -> lowest rank), so the operator is the same on any number of
    ranks (up to the choice of containing cell for points on cell faces,
    where P1 is continuous).
    """
    comm = V3.mesh().comm
    mesh3 = V3.mesh()
    if V3.ufl_element().degree() != 1 or str(mesh3.ufl_cell()) != "tetrahedron":
        raise NotImplementedError("the 3D space must be P1 on tetrahedra")
    nn = len(nodes)
    n1 = np.array([_perpendicular(t) for t in tangents])
    n2 = np.cross(tangents, n1)
    theta = 2 * np.pi * np.arange(n_quad) / n_quad
    pts = (
        nodes[:, None, :]
        + radius
        * (
            np.cos(theta)[None, :, None] * n1[:, None, :]
            + np.sin(theta)[None, :, None] * n2[:, None, :]
        )
    ).reshape(-1, 3)
    cells, ref, _ = mesh3.locate_cells_ref_coords_and_dists(pts)
    n_owned_cells = mesh3.cell_set.size
    big = np.iinfo(np.int64).max // 4
    prio = np.where(cells < 0, 2, np.where(cells < n_owned_cells, 0, 1)).astype(np.int64)
    key = np.where(prio < 2, prio * comm.size + comm.rank, big)
    best = np.empty_like(key)
    comm.Allreduce(key, best, op=MPI.MIN)
    if np.any(best == big):
        raise RuntimeError("circle points outside the 3D mesh (vessel too close to the boundary?)")
    mine = np.nonzero(best == key)[0]
    # Global row (1D dof) of every generator node.
    lg1 = V1.dof_dset.lgmap
    ids = _node_ids(V1, nodes)
    n1_owned = V1.dof_dset.size
    pairs = np.column_stack([ids[:n1_owned], lg1.apply(np.arange(n1_owned, dtype=PETSc.IntType))])
    allpairs = np.concatenate(comm.allgather(pairs))
    row_of_node = np.full(nn, -1, dtype=np.int64)
    row_of_node[allpairs[:, 0]] = allpairs[:, 1]
    assert (row_of_node >= 0).all()
    # P1 basis values at the points: barycentric coordinates (Firedrake's P1
    # local dof order is the reference vertex order (0,0,0), (1,0,0), (0,1,0), (0,0,1)).
    cnm = V3.cell_node_map().values_with_halo
    lg3 = V3.dof_dset.lgmap
    X = ref[mine]
    bary = np.column_stack([1.0 - X.sum(axis=1), X])
    cols = lg3.apply(cnm[cells[mine]].ravel().astype(PETSc.IntType)).reshape(-1, 4)
    rows = row_of_node[mine // n_quad]

    Pi = PETSc.Mat().createAIJ(
        size=((V1.dof_dset.size, None), (V3.dof_dset.size, None)),
        nnz=(4 * n_quad, 4 * n_quad),
        comm=comm,
    )
    Pi.setOption(PETSc.Mat.Option.NEW_NONZERO_ALLOCATION_ERR, False)
    w = 1.0 / n_quad
    for r, cc, vals in zip(rows, cols, bary, strict=True):
        Pi.setValues([int(r)], cc, w * vals, addv=PETSc.InsertMode.ADD_VALUES)
    Pi.assemble()
    return Pi


def _vec_of(f) -> PETSc.Vec:
    with f.dat.vec_ro as v:
        return v.copy()


# ----------------------------------------------------------------------------- family
def mixed_3d1d(
    size: int = 8,
    seed: int = 0,
    comm=None,
    *,
    network: str = "random",
    generations: int = 3,
    network_bc: str | None = None,
    radius: float = 0.02,
    beta: float = 1.0,
    kappa: float = 1.0,
    kappa_1d: float = 1.0,
    n_quad: int = 16,
    h_1d: float | None = None,
    rhs: str = "source",
    length_scale: float = 0.1,
) -> Problem:
    """3D-1D coupled diffusion-reaction (module docstring); ``size`` cells per cube edge.

    ``rhs``: ``"source"`` f = 0 in the tissue, g = 1 in the vessels;
    ``"grf"`` GRFs f (3D) and g (sampled on the network nodes);
    ``"manufactured"`` (straight network only) u = sin(πx) sin(πy) sin(πz),
    û = ū (its circle average), so the coupling vanishes and the exact
    solution is known; ``Problem.exact`` is (u, û).
    """
    comm = MPI.COMM_WORLD if comm is None else comm
    if network_bc is None:
        network_bc = "dirichlet" if network == "straight" else "neumann"
    params = dict(
        network=network,
        generations=generations,
        network_bc=network_bc,
        radius=radius,
        beta=beta,
        kappa=kappa,
        kappa_1d=kappa_1d,
        n_quad=n_quad,
        h_1d=h_1d,
        rhs=rhs,
        length_scale=length_scale,
    )
    if rhs == "manufactured" and network != "straight":
        raise ValueError("rhs='manufactured' needs network='straight'")
    t0 = time.perf_counter()
    if network == "random":
        gpts, gsegs = random_network(seed, generations)
    elif network == "straight":
        gpts, gsegs = straight_network()
    else:
        raise ValueError(f"unknown network {network!r}")
    nodes, cells1, tangents = discretize_network(gpts, gsegs, h_1d or 1.0 / size)

    mesh3 = fd.UnitCubeMesh(size, size, size, comm=comm)
    mesh1 = network_mesh(nodes, cells1, comm, name=f"network_{network}_{seed}_{size}")
    V3 = fd.FunctionSpace(mesh3, "CG", 1)
    V1 = fd.FunctionSpace(mesh1, "CG", 1)
    u3, v3 = fd.TrialFunction(V3), fd.TestFunction(V3)
    u1, v1 = fd.TrialFunction(V1), fd.TestFunction(V1)
    x3 = ufl.SpatialCoordinate(mesh3)
    x1 = ufl.SpatialCoordinate(mesh1)
    area, perim = math.pi * radius**2, 2 * math.pi * radius
    c = perim * beta

    exact = None
    if rhs == "manufactured":
        ue = ufl.sin(ufl.pi * x3[0]) * ufl.sin(ufl.pi * x3[1]) * ufl.sin(ufl.pi * x3[2])
        th = 2 * np.pi * np.arange(4096) / 4096
        cavg = float(
            np.mean(
                np.sin(np.pi * (0.5 + radius * np.cos(th)))
                * np.sin(np.pi * (0.5 + radius * np.sin(th)))
            )
        )
        uhat = cavg * ufl.sin(ufl.pi * x1[2])
        f3 = 3 * ufl.pi**2 * kappa * ue
        g1 = kappa_1d * ufl.pi**2 * uhat
        exact = (ue, uhat)
    elif rhs == "source":
        f3, g1 = fd.Constant(0.0), fd.Constant(1.0)
    elif rhs == "grf":
        f3 = fd.Function(V3)
        f3.dat.data_wo[:] = grf_values(
            node_coordinates(V3), stream(seed, "rhs"), length_scale=length_scale
        )
        g1 = fd.Function(V1)
        g1.dat.data_wo[:] = grf_values(
            node_coordinates(V1), stream(seed, "rhs2"), length_scale=length_scale
        )
    else:
        raise ValueError(f"unknown rhs {rhs!r}")

    bc3 = fd.DirichletBC(V3, 0.0, "on_boundary")
    bcs1 = [fd.DirichletBC(V1, 0.0, "on_boundary")] if network_bc == "dirichlet" else []
    K3 = fd.assemble(
        kappa * ufl.inner(ufl.grad(u3), ufl.grad(v3)) * ufl.dx, bcs=[bc3], mat_type="aij"
    ).petscmat
    A11 = fd.assemble(
        area * kappa_1d * ufl.inner(ufl.grad(u1), ufl.grad(v1)) * ufl.dx,
        bcs=bcs1,
        mat_type="aij",
    ).petscmat
    M = fd.assemble(u1 * v1 * ufl.dx, mat_type="aij").petscmat
    b3 = _vec_of(fd.assemble(f3 * v3 * ufl.dx, bcs=[bc3]))
    b1 = _vec_of(fd.assemble(area * g1 * v1 * ufl.dx, bcs=bcs1))

    # Remove the Dirichlet dofs of both sides from the coupling (keeps the
    # unit Dirichlet rows of Firedrake's matrices and the symmetry).
    m3z = fd.Function(V3).assign(1.0)
    bc3.apply(m3z)  # homogeneous bc: zero on the boundary nodes
    mask3 = _vec_of(m3z)
    m1z = fd.Function(V1).assign(1.0)
    for bc in bcs1:
        bc.apply(m1z)
    mask1 = _vec_of(m1z)
    for bc in bcs1:
        b1_arr = b1.getArray()
        owned = bc.nodes[bc.nodes < V1.dof_dset.size]
        b1_arr[owned] = 0.0
        b1.setArray(b1_arr)

    Pi = circle_average_operator(V3, V1, nodes, tangents, radius, n_quad)
    Pi.diagonalScale(R=mask3)
    M.diagonalScale(L=mask1, R=mask1)
    MPi = M.matMult(Pi)  # n1 x n3
    PtMP = M.ptap(Pi)  # n3 x n3
    A33 = K3.duplicate(copy=True)
    A33.axpy(c, PtMP, structure=PETSc.Mat.Structure.DIFFERENT_NONZERO_PATTERN)
    A13 = MPi.copy()
    A13.scale(-c)
    A31 = A13.transpose(PETSc.Mat())  # (out=None would transpose in place)
    A11c = A11.duplicate(copy=True)
    A11c.axpy(c, M, structure=PETSc.Mat.Structure.DIFFERENT_NONZERO_PATTERN)
    nest = PETSc.Mat().createNest([[A33, A31], [A13, A11c]], comm=comm)
    is3, is1 = (iset.duplicate() for iset in nest.getNestISs()[0])
    A = nest.convert("aij", out=PETSc.Mat())
    A.assemble()
    # The 3D rows travel with the matrix, for PCs that take the tissue grid from the
    # whole coupled operator (petsc_neural.KrylovUNet reads this key).
    A.compose("petsc_neural_field_3d", is3)
    # Right-hand side in the same (per-rank 3D then 1D) ordering.
    b = A.createVecLeft()
    b.setArray(np.concatenate([b3.getArray(readonly=True), b1.getArray(readonly=True)]))
    seconds = time.perf_counter() - t0
    coords = np.vstack([node_coordinates(V3), node_coordinates(V1)])
    n3, n1 = V3.dim(), V1.dim()
    metadata = base_metadata(
        "mixed_3d1d",
        size,
        seed,
        params,
        A,
        assembly_time=seconds,
        dim=3,
        symmetric=True,
        definite=True,
        spd=True,
        mesh_kind="uniform",
        blocks={"names": ["3d", "1d"], "sizes": [n3, n1]},
        network_nodes=len(nodes),
        network_segments=len(gsegs),
        network_length=float(sum(np.linalg.norm(gpts[b_] - gpts[a_]) for a_, b_ in gsegs)),
    )
    log.info(
        "mixed_3d1d: %d + %d dofs, %d nnz, assembled in %.3fs", n3, n1, metadata["nnz"], seconds
    )
    return Problem(
        family="mixed_3d1d",
        A=A,
        b=b,
        coordinates=coords,
        block_size=1,
        near_nullspace=None,
        mesh=mesh3,
        V=None,
        metadata=metadata,
        exact=exact,
        fields={"3d": is3, "1d": is1},
        extra={
            "spaces": (V3, V1),
            "mesh_1d": mesh1,
            "network": (gpts, gsegs),
            "Pi": Pi,
            "rhs_function": f3,
        },
    )
