"""Meshes of the problem families.

Three kinds, all with the same boundary marker convention so that every family
can clamp / mark "the left side" the same way:

``"uniform"``
    Firedrake's ``UnitIntervalMesh`` / ``UnitSquareMesh`` / ``UnitCubeMesh``
    (``size`` cells per direction; quadrilaterals/hexahedra on request).
    Markers: 1 is x=0, 2 is x=1, 3 is y=0, 4 is y=1, 5 is z=0, 6 is z=1.
``"jittered"``
    Seed 001's meshes: an (N+1)^2 grid of [0, 1]^2 (N = ``size``), interior
    nodes moved by a uniform random jitter of at most ``jitter * h`` per
    coordinate (boundary nodes locked), then Delaunay-triangulated
    (scipy/Qhull: PETSc has no Delaunay mesher).  N = 64 gives 4,225 nodes.
    Same markers as the uniform square.
``"gmsh"``
    Unstructured simplex meshes of non-square domains made with gmsh: in 2D
    the L-shaped domain [0,1]^2 minus [0.5,1]^2 with a circular hole of radius
    0.1 at (0.25, 0.25); in 3D the L-shaped prism [0,1]^3 minus
    [0.5,1]x[0.5,1]x[0,1] with a spherical hole of radius 0.15 at
    (0.25, 0.25, 0.5).  Target element size 1/``size``.  Markers: 1 is the face
    x=0, 2 the rest of the outer boundary, 3 the hole.

Every mesh is built identically on every rank count: random node positions
come from ``np.random.default_rng`` of the seed on every rank, and the
triangulation is done once (rank 0) and distributed by PETSc.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile

import firedrake as fd
import numpy as np
from firedrake.petsc import PETSc
from mpi4py import MPI

from .fields import stream

__all__ = ["make_mesh", "jittered_delaunay_mesh", "gmsh_mesh", "MESH_KINDS", "mesh_size_h"]

log = logging.getLogger("petsc_neural.problems")

MESH_KINDS = ("uniform", "jittered", "gmsh")
FACE_SETS = "Face Sets"


def _comm(comm):
    return MPI.COMM_WORLD if comm is None else comm


def mesh_size_h(kind: str, size: int) -> float:
    """Nominal mesh size h of a mesh of this kind and size."""
    return 1.0 / size


def make_mesh(
    kind: str = "uniform",
    dim: int = 2,
    size: int = 16,
    seed: int = 0,
    comm=None,
    *,
    quadrilateral: bool = False,
    jitter: float = 0.25,
):
    """Build a Firedrake mesh of the given kind (see the module docstring)."""
    comm = _comm(comm)
    if kind == "uniform":
        if dim == 1:
            return fd.UnitIntervalMesh(size, comm=comm)
        if dim == 2:
            return fd.UnitSquareMesh(size, size, quadrilateral=quadrilateral, comm=comm)
        if dim == 3:
            return fd.UnitCubeMesh(size, size, size, hexahedral=quadrilateral, comm=comm)
        raise ValueError(f"uniform meshes have dim 1, 2 or 3, not {dim}")
    if quadrilateral:
        raise ValueError(
            f"quadrilateral meshes are only available for kind='uniform', not {kind!r}"
        )
    if kind == "jittered":
        if dim != 2:
            raise ValueError("jittered Delaunay meshes are 2D (seed 001)")
        return jittered_delaunay_mesh(size, seed, comm, jitter=jitter)
    if kind == "gmsh":
        return gmsh_mesh(dim, size, comm)
    raise ValueError(f"unknown mesh kind {kind!r}; choose from {MESH_KINDS}")


def _label_square_faces(plex: PETSc.DMPlex, tol: float) -> None:
    """Mark the boundary faces of a [0,1]^2 plex like UnitSquareMesh does."""
    plex.createLabel(FACE_SETS)
    plex.markBoundaryFaces("boundary_faces")
    # Collective calls first (ranks without cells have no boundary faces).
    coords = plex.getCoordinates()
    coord_sec = plex.getCoordinateSection()
    faces = (
        plex.getStratumIS("boundary_faces", 1).getIndices()
        if plex.getStratumSize("boundary_faces", 1) > 0
        else []
    )
    for face in faces:
        fc = plex.vecGetClosure(coord_sec, coords, face).reshape(-1, 2)
        if np.all(np.abs(fc[:, 0]) < tol):
            plex.setLabelValue(FACE_SETS, face, 1)
        elif np.all(np.abs(fc[:, 0] - 1.0) < tol):
            plex.setLabelValue(FACE_SETS, face, 2)
        elif np.all(np.abs(fc[:, 1]) < tol):
            plex.setLabelValue(FACE_SETS, face, 3)
        elif np.all(np.abs(fc[:, 1] - 1.0) < tol):
            plex.setLabelValue(FACE_SETS, face, 4)
    plex.removeLabel("boundary_faces")


def jittered_points(size: int, seed: int, jitter: float = 0.25) -> np.ndarray:
    """The (size+1)^2 jittered grid nodes of [0,1]^2 (boundary nodes locked)."""
    if not 0.0 <= jitter < 0.5:
        raise ValueError("jitter must be in [0, 0.5) so that nodes cannot cross")
    n = size + 1
    h = 1.0 / size
    x, y = np.meshgrid(np.linspace(0.0, 1.0, n), np.linspace(0.0, 1.0, n), indexing="xy")
    pts = np.column_stack([x.ravel(), y.ravel()])
    rng = stream(seed, "mesh")
    shift = rng.uniform(-jitter * h, jitter * h, size=pts.shape)
    interior = (pts[:, 0] > 0) & (pts[:, 0] < 1) & (pts[:, 1] > 0) & (pts[:, 1] < 1)
    pts[interior] += shift[interior]
    return pts


def jittered_delaunay_mesh(size: int, seed: int = 0, comm=None, *, jitter: float = 0.25):
    """Seed 001's mesh: jittered (size+1)^2 grid + Delaunay triangulation."""
    comm = _comm(comm)
    if comm.rank == 0:
        # Qhull's Delaunay: PETSc/Firedrake have no Delaunay triangulator of a
        # given point set (gmsh re-meshes and would not keep the jittered nodes).
        from scipy.spatial import Delaunay

        pts = jittered_points(size, seed, jitter)
        tri = Delaunay(pts, qhull_options="Qbb Qc Qz Q12")
        cells = tri.simplices.astype(np.int32)
        # Drop (near-)degenerate triangles Qhull can create on the straight
        # boundary; orient all triangles counter-clockwise.
        p = pts[cells]
        area2 = (p[:, 1, 0] - p[:, 0, 0]) * (p[:, 2, 1] - p[:, 0, 1]) - (
            p[:, 2, 0] - p[:, 0, 0]
        ) * (p[:, 1, 1] - p[:, 0, 1])
        keep = np.abs(area2) > 1e-12 / size**2
        cells = cells[keep]
        neg = area2[keep] < 0
        cells[neg] = cells[neg][:, [0, 2, 1]]
        coords = pts
    else:
        cells = np.zeros((0, 3), dtype=np.int32)
        coords = np.zeros((0, 2))
    plex = PETSc.DMPlex().createFromCellList(2, cells, coords, interpolate=True, comm=comm)
    _label_square_faces(plex, tol=1e-10)
    plex.setName(f"jittered_{size}_{seed}")
    mesh = fd.Mesh(plex, comm=comm, name=f"jittered_{size}_{seed}")
    return mesh


def _gmsh_cache_dir() -> str:
    d = os.environ.get("FIREDRAKE_PROBLEMS_CACHE") or os.path.join(
        tempfile.gettempdir(), "firedrake_problems_meshes"
    )
    os.makedirs(d, exist_ok=True)
    return d


def _write_gmsh(dim: int, h: float, path: str) -> None:
    import gmsh

    gmsh.initialize(["-noenv"], readConfigFiles=False)
    try:
        gmsh.option.setNumber("General.Terminal", 0)
        gmsh.option.setNumber("General.NumThreads", 1)
        gmsh.model.add(f"lshape{dim}d")
        occ = gmsh.model.occ
        if dim == 2:
            outer = occ.addRectangle(0, 0, 0, 1, 1)
            notch = occ.addRectangle(0.5, 0.5, 0, 0.5, 0.5)
            hole = occ.addDisk(0.25, 0.25, 0, 0.1, 0.1)
            occ.cut([(2, outer)], [(2, notch), (2, hole)])
        elif dim == 3:
            outer = occ.addBox(0, 0, 0, 1, 1, 1)
            notch = occ.addBox(0.5, 0.5, 0, 0.5, 0.5, 1)
            hole = occ.addSphere(0.25, 0.25, 0.5, 0.15)
            occ.cut([(3, outer)], [(3, notch), (3, hole)])
        else:
            raise ValueError("gmsh meshes are 2D or 3D")
        occ.synchronize()
        domains = [tag for _, tag in gmsh.model.getEntities(dim)]
        gmsh.model.addPhysicalGroup(dim, domains, 1)
        left, outer_rest, holes = [], [], []
        for _, tag in gmsh.model.getEntities(dim - 1):
            xmin, ymin, zmin, xmax, ymax, zmax = gmsh.model.getBoundingBox(dim - 1, tag)
            if xmax < 1e-5:  # OCC bounding boxes carry a small tolerance
                left.append(tag)
            elif xmin > 0.05 and xmax < 0.45 and ymin > 0.05 and ymax < 0.45:
                holes.append(tag)
            else:
                outer_rest.append(tag)
        gmsh.model.addPhysicalGroup(dim - 1, left, 1)
        gmsh.model.addPhysicalGroup(dim - 1, outer_rest, 2)
        gmsh.model.addPhysicalGroup(dim - 1, holes, 3)
        gmsh.option.setNumber("Mesh.MeshSizeMax", h)
        gmsh.option.setNumber("Mesh.MeshSizeMin", 0.5 * h)
        gmsh.option.setNumber("Mesh.MeshSizeFromCurvature", 12)
        gmsh.option.setNumber("Mesh.MshFileVersion", 2.2)
        gmsh.model.mesh.generate(dim)
        tmp = path + f".tmp{os.getpid()}.msh"
        gmsh.write(tmp)
        os.replace(tmp, path)
    finally:
        gmsh.finalize()


def gmsh_mesh(dim: int, size: int, comm=None):
    """Unstructured mesh of the non-square domain (module docstring) made by gmsh."""
    comm = _comm(comm)
    h = 1.0 / size
    import gmsh

    key = hashlib.sha1(f"lshape-hole-v2-{dim}-{h!r}-{gmsh.__version__}".encode()).hexdigest()[:12]
    path = os.path.join(_gmsh_cache_dir(), f"lshape{dim}d_{size}_{key}.msh")
    err = None
    if comm.rank == 0 and not os.path.exists(path):
        try:
            log.info("gmsh: meshing the %dD domain with h=%g -> %s", dim, h, path)
            _write_gmsh(dim, h, path)
        except Exception as exc:  # re-raised on every rank below
            err = exc
    err = comm.bcast(err, root=0)
    if err is not None:
        raise err
    return fd.Mesh(path, comm=comm, name=f"gmsh{dim}d_{size}")
