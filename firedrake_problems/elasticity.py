"""Linear elasticity (seed 000 §5.1.2): -div σ(u) = f, σ = λ (div u) I + 2 μ ε(u).

Vector P1 or P2 (``degree``) in 2D or 3D; clamped (u = 0) on the boundary
marked 1 (the face x = 0 on every mesh kind, see :mod:`.meshes`), traction-free
elsewhere.  The rigid-body modes (translations and rotations, computed from
the node coordinates by ``MatNullSpaceCreateRigidBody``) are the operator's
near-nullspace, attached with ``MatSetNearNullSpace`` (GAMG uses them).

Lamé parameters: ``lame="constant"``: E = 1, ν = ``poisson_ratio`` (0.3);
``lame="heterogeneous"``: E_K = exp(sigma ξ_K) per cell (ξ_K ~ N(0, 1), hashed
by cell centroid, like seed 001's diffusion coefficient), same ν.
Right-hand sides: ``"source"`` gravity f = (0, ..., -1); ``"grf"`` independent
GRF components; ``"manufactured"`` u = (prod sin(π x_i)) (1, 2, 3)[:d] with
the whole boundary clamped to it (used by the tests).
"""

from __future__ import annotations

import logging

import firedrake as fd
import ufl
from firedrake.petsc import PETSc

from .core import Problem, assemble_linear_system, base_metadata, gdim, node_coordinates
from .fields import grf_values, stream
from .meshes import make_mesh
from .scalar import cell_lognormal, manufactured_solution

__all__ = ["elasticity", "rigid_body_modes"]

log = logging.getLogger("petsc_neural.problems")


def rigid_body_modes(V, coordinates) -> PETSc.NullSpace:
    """The rigid-body near-nullspace of the vector space ``V`` (3 modes in 2D, 6 in 3D)."""
    dim = gdim(V.mesh())
    X = PETSc.Vec().createMPI((coordinates.size, None), bsize=dim, comm=V.mesh().comm)
    X.setArray(coordinates.ravel())
    return PETSc.NullSpace().createRigidBody(X)


def elasticity(
    size: int = 32,
    seed: int = 0,
    comm=None,
    *,
    dim: int = 2,
    mesh: str = "uniform",
    degree: int = 1,
    quadrilateral: bool = False,
    jitter: float = 0.25,
    lame: str = "constant",
    youngs_modulus: float = 1.0,
    poisson_ratio: float = 0.3,
    sigma: float = 1.0,
    rhs: str = "source",
    length_scale: float = 0.1,
) -> Problem:
    """Linear elasticity with rigid-body modes as near-nullspace (module docstring)."""
    params = dict(
        dim=dim,
        mesh=mesh,
        degree=degree,
        quadrilateral=quadrilateral,
        jitter=jitter,
        lame=lame,
        youngs_modulus=youngs_modulus,
        poisson_ratio=poisson_ratio,
        sigma=sigma,
        rhs=rhs,
        length_scale=length_scale,
    )
    if dim not in (2, 3):
        raise ValueError("elasticity is 2D or 3D")
    m = make_mesh(mesh, dim, size, seed, comm, quadrilateral=quadrilateral, jitter=jitter)
    V = fd.VectorFunctionSpace(m, "CG", degree)
    nu = poisson_ratio
    if lame == "constant":
        E = fd.Constant(youngs_modulus)
        coef = None
    elif lame == "heterogeneous":
        E = cell_lognormal(m, seed, sigma)
        E.dat.data_wo[:] = youngs_modulus * E.dat.data_ro
        coef = E
    else:
        raise ValueError(f"unknown lame {lame!r}: 'constant' or 'heterogeneous'")
    mu = E / (2.0 * (1.0 + nu))
    lmbda = E * nu / ((1.0 + nu) * (1.0 - 2.0 * nu))

    def stress(w):
        return lmbda * ufl.div(w) * ufl.Identity(dim) + 2.0 * mu * ufl.sym(ufl.grad(w))

    u, v = fd.TrialFunction(V), fd.TestFunction(V)
    exact = None
    if rhs == "manufactured":
        exact = manufactured_solution(m) * ufl.as_vector([1.0, 2.0, 3.0][:dim])
        f = -ufl.div(stress(exact))
        bcs = [fd.DirichletBC(V, exact, "on_boundary")]
    else:
        if rhs == "source":
            f = fd.Constant([0.0] * (dim - 1) + [-1.0])
        elif rhs == "grf":
            f = fd.Function(V, name="grf")
            pts = node_coordinates(V)
            rng = stream(seed, "rhs")
            for i in range(dim):
                f.dat.data_wo[:, i] = grf_values(pts, rng, length_scale=length_scale)
        else:
            raise ValueError(f"unknown rhs {rhs!r}")
        bcs = [fd.DirichletBC(V, fd.Constant([0.0] * dim), 1)]
    a = ufl.inner(stress(u), ufl.sym(ufl.grad(v))) * ufl.dx
    L = ufl.inner(f, v) * ufl.dx
    A, b, Amat, seconds = assemble_linear_system(a, L, bcs, V)
    coords = node_coordinates(V)
    nsp = rigid_body_modes(V, coords)
    A.setNearNullSpace(nsp)
    metadata = base_metadata(
        "elasticity",
        size,
        seed,
        params,
        A,
        assembly_time=seconds,
        dim=dim,
        symmetric=True,
        definite=True,
        spd=True,
        mesh_kind=mesh,
        near_nullspace_dim=3 if dim == 2 else 6,
    )
    log.info(
        "elasticity: %d dofs, %d nnz, assembled in %.3fs",
        metadata["dofs"],
        metadata["nnz"],
        seconds,
    )
    return Problem(
        family="elasticity",
        A=A,
        b=b,
        coordinates=coords,
        block_size=dim,
        near_nullspace=nsp,
        mesh=m,
        V=V,
        metadata=metadata,
        exact=exact,
        extra={"firedrake_matrix": Amat, "coefficient": coef, "rhs_function": f},
    )
