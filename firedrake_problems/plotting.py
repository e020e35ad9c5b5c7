"""Figures of a problem: mesh, coefficient field and solution (serial)."""

from __future__ import annotations

import logging

import firedrake as fd
import numpy as np
import ufl
from firedrake.petsc import PETSc

from .core import Problem, node_coordinates, tdim

__all__ = ["plot_problem"]

log = logging.getLogger("petsc_neural.problems")


def _scalar_view(u):
    """A scalar Function to colour by: u itself, or |u| for vector fields."""
    if len(u.ufl_shape) == 0:
        return u
    V = fd.FunctionSpace(u.function_space().mesh(), "CG", u.function_space().ufl_element().degree())
    return fd.Function(V, name="|u|").interpolate(ufl.sqrt(ufl.inner(u, u)))


def _slice_scatter(ax, fig, u, title, *, log10=False, z=0.5):
    """3D fields: the values on the node layer nearest to the plane z = 0.5."""
    V = u.function_space()
    if V.ufl_element().family() != "Lagrange" or len(u.ufl_shape):
        # cell-wise (DG) data: an L2 projection to P1 for display only
        u = fd.project(u, fd.FunctionSpace(V.mesh(), "CG", 1))
        V = u.function_space()
    pts = node_coordinates(V)
    vals = np.asarray(u.dat.data_ro).ravel()
    zs = pts[:, 2]
    zstar = zs[np.argmin(np.abs(zs - z))]
    sel = np.abs(zs - zstar) < 1e-8
    v = np.log10(np.maximum(vals[sel], 1e-300)) if log10 else vals[sel]
    if sel.sum() >= 10:
        c = ax.tricontourf(pts[sel, 0], pts[sel, 1], v, levels=30, cmap="viridis")
    else:  # no planar node layer (unstructured 3D mesh): a band of nodes
        band = np.abs(zs - z) < 0.1
        v = np.log10(np.maximum(vals[band], 1e-300)) if log10 else vals[band]
        c = ax.scatter(pts[band, 0], pts[band, 1], c=v, s=10, cmap="viridis")
    fig.colorbar(c, ax=ax)
    ax.set_aspect("equal")
    ax.set_title(f"{'log10 ' if log10 else ''}{title} (plane z={zstar:.3g})")


def _field(ax, fig, u, title, *, log10=False):
    from firedrake.pyplot import plot, tripcolor

    mesh = u.function_space().mesh()
    td = tdim(mesh)
    if td == 1:
        plot(u, axes=ax)
        ax.set_title(title)
        if log10:
            ax.set_yscale("log")
        return
    if log10:
        w = fd.Function(u.function_space()).assign(u)
        w.dat.data_wo[:] = np.log10(np.asarray(u.dat.data_ro))
        u = w
        title = f"log10 {title}"
    if td == 3:
        _slice_scatter(ax, fig, u, title)
        return
    c = tripcolor(u, axes=ax, cmap="viridis")
    fig.colorbar(c, ax=ax)
    ax.set_aspect("equal")
    ax.set_title(title)


def _mesh(ax, mesh, title):
    from firedrake.pyplot import triplot

    td = tdim(mesh)
    if td == 2:
        triplot(
            mesh,
            axes=ax,
            interior_kw={"linewidths": 0.3},
            boundary_kw={"linewidths": 1.0, "colors": "k"},
        )
        ax.set_aspect("equal")
    elif td == 1:
        x = np.sort(np.asarray(mesh.coordinates.dat.data_ro).ravel())
        ax.plot(x, np.zeros_like(x), "|-", ms=8)
    else:
        X = np.asarray(mesh.coordinates.dat.data_ro)
        sel = np.abs(X[:, 2] - 0.5) < 1e-9
        ax.scatter(X[sel, 0], X[sel, 1], s=2, c="k")
        ax.set_aspect("equal")
        title += " (nodes on z=0.5)"
    ax.set_title(title)


def plot_problem(problem: Problem, x: PETSc.Vec, out: str, *, title: str | None = None) -> str:
    """Write a PNG with three panels: mesh, coefficient field, solution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    md = problem.metadata
    fig = plt.figure(figsize=(16, 5))
    head = title or (
        f"{problem.family}: {md['dofs']} dofs, {md['nnz']} nnz, params {md['parameters']}"
    )
    fig.suptitle(head if len(head) < 220 else head[:217] + "...", fontsize=8)
    ax1 = fig.add_subplot(1, 3, 1)
    _mesh(ax1, problem.mesh, f"mesh ({md.get('mesh_kind', '')})")
    if problem.family == "mixed_3d1d":
        V3, V1 = problem.extra["spaces"]
        pts, segs = problem.extra["network"]
        for a, b in segs:
            ax1.plot([pts[a, 0], pts[b, 0]], [pts[a, 1], pts[b, 1]], "r-", lw=2)
        ax1.set_title("cube mesh (z=0.5 nodes) + network (x-y projection, red)")
    ax2 = fig.add_subplot(1, 3, 2)
    coef = problem.extra.get("coefficient")
    if problem.family == "mixed_3d1d":
        u3, u1 = problem.to_function(x)
        ax2.remove()
        ax2 = fig.add_subplot(1, 3, 2, projection="3d")
        X1 = node_coordinates(V1)
        for a, b in segs:
            ax2.plot(*[[pts[a, k], pts[b, k]] for k in range(3)], color="0.6", lw=1)
        sc = ax2.scatter(X1[:, 0], X1[:, 1], X1[:, 2], c=np.asarray(u1.dat.data_ro), s=10)
        fig.colorbar(sc, ax=ax2, shrink=0.7)
        ax2.set_title("network solution û")
        ax2.set_xlim(0, 1)
        ax2.set_ylim(0, 1)
        ax2.set_zlim(0, 1)
        ax3 = fig.add_subplot(1, 3, 3)
        _field(ax3, fig, u3, "tissue solution u")
    else:
        if coef is not None:
            vals = np.asarray(coef.dat.data_ro)
            # log scale for positive fields spanning more than a decade
            positive = bool(np.all(vals > 0) and vals.max() > 10 * vals.min())
            _field(
                ax2,
                fig,
                coef,
                "coefficient" if coef.name() == "coefficient" else f"coefficient {coef.name()}",
                log10=positive,
            )
        else:
            ax2.axis("off")
            p = md["parameters"]
            txt = "\n".join(f"{k} = {v}" for k, v in p.items())
            ax2.text(
                0.05,
                0.95,
                "constant coefficients (parameters)\n\n" + txt,
                va="top",
                fontsize=9,
                family="monospace",
                transform=ax2.transAxes,
            )
        ax3 = fig.add_subplot(1, 3, 3)
        u = problem.to_function(x)
        _field(ax3, fig, _scalar_view(u), "solution" + (" |u|" if len(u.ufl_shape) else ""))
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    log.info("wrote %s", out)
    return out
