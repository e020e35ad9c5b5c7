"""Scalar elliptic families: Poisson, random diffusion, anisotropic diffusion,
screened Poisson and convection-diffusion-reaction.

All use continuous Lagrange elements (P_k, or Q_k on quadrilateral meshes) and
homogeneous Dirichlet conditions on the whole boundary, as the seeds do
(``rhs="manufactured"`` imposes the exact solution's boundary values instead).

Right-hand sides (``rhs=``):

``"source"``     the physical source f = 1 (seed 001's problems have a source term),
``"grf"``        a Gaussian random field sampled at the nodes (seed 000 §5.1.2),
``"manufactured"`` f computed from u = prod_i sin(pi x_i) (UFL differentiates the
                 strong operator), ``Problem.exact`` is u; used by the tests.
"""

from __future__ import annotations

import logging
import math

import firedrake as fd
import numpy as np
import ufl

from .core import Problem, assemble_linear_system, base_metadata, gdim, node_coordinates
from .fields import grf_values, hashed_normal, stream
from .meshes import make_mesh

__all__ = [
    "poisson",
    "diffusion",
    "anisotropic",
    "screened_poisson",
    "cdr",
    "manufactured_solution",
    "grf_function",
    "cell_lognormal",
    "cell_normal",
]

log = logging.getLogger("petsc_neural.problems")


# ----------------------------------------------------------------------------- helpers
def manufactured_solution(mesh) -> ufl.core.expr.Expr:
    """u = prod_i sin(pi x_i): smooth, zero on the boundary of the unit box."""
    x = ufl.SpatialCoordinate(mesh)
    u = 1.0
    for i in range(gdim(mesh)):
        u = u * ufl.sin(ufl.pi * x[i])
    return u


def grf_function(
    V, seed: int, *, length_scale: float = 0.1, kernel: str = "se", stream_name: str = "rhs"
) -> fd.Function:
    """A Gaussian random field interpolated at the nodes of the scalar space ``V``."""
    f = fd.Function(V, name="grf")
    pts = node_coordinates(V)
    f.dat.data_wo[:] = grf_values(
        pts, stream(seed, stream_name), length_scale=length_scale, kernel=kernel
    )
    return f


def cell_normal(mesh, seed: int, *, salt: int = 0) -> fd.Function:
    """Piecewise-constant ξ_K ~ N(0, 1), i.i.d. per cell (a DG0 Function).

    The sample of a cell is a hash of its centroid and the seed, so it does
    not depend on the partition (see :mod:`.fields`).
    """
    Q = fd.FunctionSpace(mesh, "DG", 0)
    C = fd.Function(fd.VectorFunctionSpace(mesh, "DG", 0)).interpolate(ufl.SpatialCoordinate(mesh))
    cent = np.asarray(C.dat.data_ro).reshape(-1, gdim(mesh))
    g = fd.Function(Q, name="coefficient")
    g.dat.data_wo[:] = hashed_normal(cent, seed, salt=salt)
    return g


def cell_lognormal(mesh, seed: int, sigma: float, *, salt: int = 0) -> fd.Function:
    """Piecewise-constant exp(sigma ξ_K), ξ_K ~ N(0, 1) i.i.d. per cell."""
    g = cell_normal(mesh, seed, salt=salt)
    g.dat.data_wo[:] = np.exp(sigma * g.dat.data_ro)
    return g


def _space(mesh, degree: int):
    return fd.FunctionSpace(mesh, "CG", degree)


def _rhs(rhs: str, V, seed: int, length_scale: float):
    if rhs == "source":
        return fd.Constant(1.0)
    if rhs == "grf":
        return grf_function(V, seed, length_scale=length_scale)
    raise ValueError(f"unknown rhs {rhs!r}: use 'source', 'grf' or 'manufactured'")


def _build(
    family: str,
    size: int,
    seed: int,
    params: dict,
    V,
    a,
    L,
    bcs,
    *,
    exact=None,
    coefficient=None,
    rhs_function=None,
    symmetric: bool = True,
    definite: bool | None = True,
    **md,
) -> Problem:
    A, b, Amat, seconds = assemble_linear_system(a, L, bcs, V)
    mesh = V.mesh()
    metadata = base_metadata(
        family,
        size,
        seed,
        params,
        A,
        assembly_time=seconds,
        dim=gdim(mesh),
        symmetric=symmetric,
        definite=definite,
        spd=bool(symmetric and definite),
        **md,
    )
    log.info(
        "%s: %d dofs, %d nnz, assembled in %.3fs",
        family,
        metadata["dofs"],
        metadata["nnz"],
        seconds,
    )
    return Problem(
        family=family,
        A=A,
        b=b,
        coordinates=node_coordinates(V),
        block_size=V.block_size,
        near_nullspace=None,
        mesh=mesh,
        V=V,
        metadata=metadata,
        exact=exact,
        extra={"firedrake_matrix": Amat, "coefficient": coefficient, "rhs_function": rhs_function},
    )


def _dirichlet(V, rhs: str, exact):
    value = exact if rhs == "manufactured" else 0.0
    return [fd.DirichletBC(V, value, "on_boundary")]


# ----------------------------------------------------------------------------- families
def poisson(
    size: int = 32,
    seed: int = 0,
    comm=None,
    *,
    dim: int = 2,
    mesh: str = "uniform",
    degree: int = 1,
    quadrilateral: bool = False,
    jitter: float = 0.25,
    rhs: str = "source",
    length_scale: float = 0.1,
) -> Problem:
    """-Δu = f, u = 0 on the boundary (seed 000's Poisson, 1D/2D/3D; seed 001's meshes)."""
    params = dict(
        dim=dim,
        mesh=mesh,
        degree=degree,
        quadrilateral=quadrilateral,
        jitter=jitter,
        rhs=rhs,
        length_scale=length_scale,
    )
    m = make_mesh(mesh, dim, size, seed, comm, quadrilateral=quadrilateral, jitter=jitter)
    V = _space(m, degree)
    u, v = fd.TrialFunction(V), fd.TestFunction(V)
    exact = manufactured_solution(m)
    f = -ufl.div(ufl.grad(exact)) if rhs == "manufactured" else _rhs(rhs, V, seed, length_scale)
    a = ufl.inner(ufl.grad(u), ufl.grad(v)) * ufl.dx
    L = f * v * ufl.dx
    return _build(
        "poisson",
        size,
        seed,
        params,
        V,
        a,
        L,
        _dirichlet(V, rhs, exact),
        exact=exact if rhs == "manufactured" else None,
        rhs_function=f,
        mesh_kind=mesh,
    )


def diffusion(
    size: int = 64,
    seed: int = 0,
    comm=None,
    *,
    dim: int = 2,
    mesh: str = "jittered",
    degree: int = 1,
    quadrilateral: bool = False,
    jitter: float = 0.25,
    coefficient: str = "piecewise",
    sigma: float = 1.5,
    coefficient_length_scale: float = 0.1,
    time_step: float | None = None,
    rhs: str = "grf",
    length_scale: float = 0.1,
) -> Problem:
    """-div(g ∇u) = f with a random lognormal coefficient g (seed 001), or the
    implicit Euler step (M + Δt K) u = M u_prev + Δt f of u_t = div(g ∇u) (seed 000).

    ``coefficient``: ``"piecewise"``: g_K = exp(sigma ξ_K), ξ_K ~ N(0,1) per cell
    (seed 001 writes g_K ~ e^{N(0, 1.5)}; we read 1.5 as the standard deviation);
    ``"grf"``: g = exp(sigma G) with G a smooth unit-variance GRF (squared
    exponential, length ``coefficient_length_scale``) interpolated in P1;
    ``"constant"``: g = 1.
    With ``time_step`` set, ``rhs="grf"`` means a GRF initial state u_prev
    and f = 0, ``rhs="source"`` means u_prev = 0 and f = 1.
    """
    params = dict(
        dim=dim,
        mesh=mesh,
        degree=degree,
        quadrilateral=quadrilateral,
        jitter=jitter,
        coefficient=coefficient,
        sigma=sigma,
        coefficient_length_scale=coefficient_length_scale,
        time_step=time_step,
        rhs=rhs,
        length_scale=length_scale,
    )
    m = make_mesh(mesh, dim, size, seed, comm, quadrilateral=quadrilateral, jitter=jitter)
    V = _space(m, degree)
    if coefficient == "piecewise":
        g = cell_lognormal(m, seed, sigma)
    elif coefficient == "grf":
        G = grf_function(
            _space(m, 1), seed, length_scale=coefficient_length_scale, stream_name="coefficient"
        )
        g = fd.Function(G.function_space(), name="coefficient")
        g.dat.data_wo[:] = np.exp(sigma * G.dat.data_ro)
    elif coefficient == "constant":
        g = fd.Function(fd.FunctionSpace(m, "DG", 0), name="coefficient").assign(1.0)
    else:
        raise ValueError(f"unknown coefficient {coefficient!r}: 'piecewise', 'grf' or 'constant'")
    u, v = fd.TrialFunction(V), fd.TestFunction(V)
    exact = manufactured_solution(m)
    stiff = g * ufl.inner(ufl.grad(u), ufl.grad(v)) * ufl.dx
    if time_step is None:
        a = stiff
        f = (
            -ufl.div(g * ufl.grad(exact))
            if rhs == "manufactured"
            else _rhs(rhs, V, seed, length_scale)
        )
        L = f * v * ufl.dx
    else:
        dt = fd.Constant(time_step)
        a = u * v * ufl.dx + dt * stiff
        if rhs == "manufactured":
            f = exact - dt * ufl.div(g * ufl.grad(exact))
            L = f * v * ufl.dx
        elif rhs == "grf":
            f = grf_function(V, seed, length_scale=length_scale)  # the previous state
            L = f * v * ufl.dx
        elif rhs == "source":
            f = fd.Constant(1.0)
            L = dt * f * v * ufl.dx
        else:
            raise ValueError(f"unknown rhs {rhs!r}")
    return _build(
        "diffusion",
        size,
        seed,
        params,
        V,
        a,
        L,
        _dirichlet(V, rhs, exact),
        exact=exact if rhs == "manufactured" else None,
        coefficient=g,
        rhs_function=f,
        mesh_kind=mesh,
    )


def rotation_tensor(theta, epsilon: float):
    """K = R(θ) diag(1, ε) R(θ)^T as a UFL 2x2 tensor (θ a float or UFL scalar)."""
    c, s = ufl.cos(theta), ufl.sin(theta)
    R = ufl.as_matrix([[c, -s], [s, c]])
    D = ufl.as_matrix([[1.0, 0.0], [0.0, epsilon]])
    return R * D * R.T


def anisotropic(
    size: int = 64,
    seed: int = 0,
    comm=None,
    *,
    mesh: str = "jittered",
    degree: int = 1,
    quadrilateral: bool = False,
    jitter: float = 0.25,
    epsilon: float = 1e-5,
    theta: float | None = None,
    theta_field: str = "constant",
    preset: str | None = None,
    rhs: str = "source",
    length_scale: float = 0.1,
) -> Problem:
    """-div(K ∇u) = f, K = R(θ) diag(1, ε) R(θ)^T in 2D.

    Seed 001: θ ~ N(0, π²) drawn per sample (``theta=None``), ε = 1e-5
    (the paper's diag(1e5, 1) divided by 1e5), jittered Delaunay mesh.
    ``theta_field="cell"`` draws an independent θ_K ~ N(0, π²) per cell instead.
    ``preset="rotated_laplacian"``: seed 003's rotated anisotropic Laplacian,
    ξ = ε = 0.1, on a uniform quadrilateral mesh with Q1 elements (the FEM
    analogue of the paper's 9-point stencil); θ = π/4 unless given.
    """
    if preset == "rotated_laplacian":
        mesh, quadrilateral, epsilon = "uniform", True, 0.1
        theta = math.pi / 4 if theta is None else theta
    elif preset is not None:
        raise ValueError(f"unknown preset {preset!r}")
    if theta is None and theta_field == "constant":
        theta = float(stream(seed, "parameter").normal(0.0, math.pi))
    params = dict(
        mesh=mesh,
        degree=degree,
        quadrilateral=quadrilateral,
        jitter=jitter,
        epsilon=epsilon,
        theta=theta,
        theta_field=theta_field,
        preset=preset,
        rhs=rhs,
        length_scale=length_scale,
    )
    m = make_mesh(mesh, 2, size, seed, comm, quadrilateral=quadrilateral, jitter=jitter)
    V = _space(m, degree)
    if theta_field == "cell":
        th = cell_normal(m, seed, salt=7)
        th.dat.data_wo[:] = math.pi * th.dat.data_ro  # θ_K ~ N(0, π²)
        K = rotation_tensor(th, epsilon)
        coef = th
    elif theta_field == "constant":
        K = rotation_tensor(fd.Constant(theta), epsilon)
        coef = None
    else:
        raise ValueError(f"unknown theta_field {theta_field!r}")
    u, v = fd.TrialFunction(V), fd.TestFunction(V)
    exact = manufactured_solution(m)
    f = -ufl.div(K * ufl.grad(exact)) if rhs == "manufactured" else _rhs(rhs, V, seed, length_scale)
    a = ufl.inner(K * ufl.grad(u), ufl.grad(v)) * ufl.dx
    L = f * v * ufl.dx
    return _build(
        "anisotropic",
        size,
        seed,
        params,
        V,
        a,
        L,
        _dirichlet(V, rhs, exact),
        exact=exact if rhs == "manufactured" else None,
        coefficient=coef,
        rhs_function=f,
        mesh_kind=mesh,
    )


def screened_poisson(
    size: int = 64,
    seed: int = 0,
    comm=None,
    *,
    dim: int = 2,
    mesh: str = "jittered",
    degree: int = 1,
    quadrilateral: bool = False,
    jitter: float = 0.25,
    kappa: str = "piecewise",
    kappa_sigma: float = 1.0,
    sigma: float | None = None,
    sigma_max: float = 20.0,
    rhs: str = "source",
    length_scale: float = 0.1,
) -> Problem:
    """-div(κ ∇u) + σ u = f (seed 001): κ_K = exp(N(0,1)) per cell, σ ~ U(0, 20).

    ``kappa="grf"`` uses a smooth lognormal κ (P1) instead, ``"constant"`` κ = 1;
    ``sigma=None`` draws σ ~ U(0, sigma_max) from the seed.
    """
    if sigma is None:
        sigma = float(stream(seed, "parameter").uniform(0.0, sigma_max))
    params = dict(
        dim=dim,
        mesh=mesh,
        degree=degree,
        quadrilateral=quadrilateral,
        jitter=jitter,
        kappa=kappa,
        kappa_sigma=kappa_sigma,
        sigma=sigma,
        rhs=rhs,
        length_scale=length_scale,
    )
    m = make_mesh(mesh, dim, size, seed, comm, quadrilateral=quadrilateral, jitter=jitter)
    V = _space(m, degree)
    if kappa == "piecewise":
        k = cell_lognormal(m, seed, kappa_sigma)
    elif kappa == "grf":
        G = grf_function(_space(m, 1), seed, stream_name="coefficient")
        k = fd.Function(G.function_space(), name="coefficient")
        k.dat.data_wo[:] = np.exp(kappa_sigma * G.dat.data_ro)
    elif kappa == "constant":
        k = fd.Function(fd.FunctionSpace(m, "DG", 0), name="coefficient").assign(1.0)
    else:
        raise ValueError(f"unknown kappa {kappa!r}")
    s = fd.Constant(sigma)
    u, v = fd.TrialFunction(V), fd.TestFunction(V)
    exact = manufactured_solution(m)
    if rhs == "manufactured":
        f = -ufl.div(k * ufl.grad(exact)) + s * exact
    else:
        f = _rhs(rhs, V, seed, length_scale)
    a = (k * ufl.inner(ufl.grad(u), ufl.grad(v)) + s * u * v) * ufl.dx
    L = f * v * ufl.dx
    return _build(
        "screened_poisson",
        size,
        seed,
        params,
        V,
        a,
        L,
        _dirichlet(V, rhs, exact),
        exact=exact if rhs == "manufactured" else None,
        coefficient=k,
        rhs_function=f,
        mesh_kind=mesh,
    )


# Seed 003 §5.2-5.3 coefficients (a, b, c) per (regime, dim).
def cdr_coefficients(regime: str, x) -> tuple:
    """Seed 003's diffusion a (scalar), convection b (vector or None), reaction c."""
    dim = len(x)
    r2 = sum(x[i] ** 2 for i in range(dim))
    if regime == "convection" and dim == 1:
        return 0.01, ufl.as_vector([1.0 + x[0] ** 2]), 0.0
    if regime == "reaction" and dim == 1:
        return 1.0, None, -50.0 * (1.0 + x[0] ** 2)
    if regime == "convection" and dim == 2:
        return 0.01 * (1.0 + r2), ufl.as_vector([1.0 + x[1] ** 2, 1.0 + x[0] ** 2]), 0.0
    if regime == "reaction" and dim == 2:
        return 1.0, None, -10.0 * (1.0 + r2)
    raise ValueError(
        f"cdr: regime must be 'convection' or 'reaction' in 1D or 2D, got {regime!r}, {dim}D"
    )


def cdr(
    size: int = 64,
    seed: int = 0,
    comm=None,
    *,
    dim: int = 2,
    regime: str = "convection",
    mesh: str = "uniform",
    degree: int = 1,
    quadrilateral: bool = False,
    jitter: float = 0.25,
    stabilization: str = "auto",
    rhs: str = "source",
    length_scale: float = 0.1,
) -> Problem:
    """-div(a ∇u) + b·∇u + c u = f, u = 0 on ∂Ω, with seed 003's coefficients.

    1D: convection-dominated a = 0.01, b = 1 + x², c = 0; reaction-dominated
    a = 1, b = 0, c = -50(1 + x²) (indefinite).  2D: a = 0.01(1+x²+y²),
    b = (1+y², 1+x²), c = 0; and a = 1, b = 0, c = -10(1+x²+y²).
    The paper uses finite differences with upwinding for convection; here
    Galerkin FEM with SUPG (``stabilization="supg"``, the FEM counterpart of
    upwinding, on by default when convection is present) or plain Galerkin
    (``"none"``).  SUPG adds τ (b·∇v) R(u) with the full strong residual R, so
    it is consistent (manufactured solutions stay exact).
    """
    params = dict(
        dim=dim,
        regime=regime,
        mesh=mesh,
        degree=degree,
        quadrilateral=quadrilateral,
        jitter=jitter,
        stabilization=stabilization,
        rhs=rhs,
        length_scale=length_scale,
    )
    m = make_mesh(mesh, dim, size, seed, comm, quadrilateral=quadrilateral, jitter=jitter)
    V = _space(m, degree)
    x = ufl.SpatialCoordinate(m)
    acoef, bvec, ccoef = cdr_coefficients(regime, x)
    u, v = fd.TrialFunction(V), fd.TestFunction(V)
    exact = manufactured_solution(m)

    def operator(w):
        out = -ufl.div(acoef * ufl.grad(w)) + ccoef * w
        if bvec is not None:
            out = out + ufl.dot(bvec, ufl.grad(w))
        return out

    f = operator(exact) if rhs == "manufactured" else _rhs(rhs, V, seed, length_scale)
    a = (acoef * ufl.inner(ufl.grad(u), ufl.grad(v)) + ccoef * u * v) * ufl.dx
    if bvec is not None:
        a += ufl.dot(bvec, ufl.grad(u)) * v * ufl.dx
    L = f * v * ufl.dx
    use_supg = stabilization == "supg" or (stabilization == "auto" and bvec is not None)
    if use_supg:
        if bvec is None:
            raise ValueError("SUPG needs a convection field")
        h = ufl.CellDiameter(m)
        bnorm = ufl.sqrt(ufl.dot(bvec, bvec))
        peclet = bnorm * h / (2.0 * acoef)
        # τ = h/(2|b|) ξ(Pe) with the usual bound ξ ≈ min(1, Pe/3) of coth(Pe) - 1/Pe.
        tau = h / (2.0 * bnorm) * ufl.min_value(1.0, peclet / 3.0)
        a += tau * ufl.dot(bvec, ufl.grad(v)) * operator(u) * ufl.dx
        L += tau * ufl.dot(bvec, ufl.grad(v)) * f * ufl.dx
    # The field that makes the regime, for plots: |b| (convection) or c (reaction).
    Q = fd.FunctionSpace(m, "CG", 1)
    if bvec is not None:
        coef = fd.Function(Q, name="|b|").interpolate(ufl.sqrt(ufl.dot(bvec, bvec)))
    else:
        coef = fd.Function(Q, name="c").interpolate(ccoef)
    symmetric = bvec is None
    definite = None if regime == "reaction" and dim == 2 else (regime != "reaction")
    return _build(
        "cdr",
        size,
        seed,
        params,
        V,
        a,
        L,
        _dirichlet(V, rhs, exact),
        exact=exact if rhs == "manufactured" else None,
        coefficient=coef,
        rhs_function=f,
        symmetric=symmetric,
        definite=definite,
        mesh_kind=mesh,
        regime=regime,
        supg=use_supg,
    )
