"""A differentiable, batched Flexible GMRES in torch (Saad 1993; seed 002 §4-5).

``fgmres(matvec, b, precond, m)`` runs ``m`` steps of FGMRES (right
preconditioning, flexible basis ``Z``) on ``B`` systems at once and returns
the iterate, the residual-norm history, the Hessenberg matrix and the sines
``s_j`` of the Givens rotations.  For minimal-residual methods these sines are
the sines of the angles between the residual ``r_{j-1}`` and the image space
``A Z_j`` (Eiermann & Ernst 2001, seed 002 eq. (3)): ``||r_j|| = s_j ||r_{j-1}||``.

Why written here rather than taken from a library: PETSc's KSPFGMRES is what
serves the trained preconditioner, but it cannot be differentiated; the
GMRES of JAX (``jax.scipy.sparse.linalg.gmres``) and of other autodiff
libraries differentiates a converged solve by an implicit (adjoint) rule that
treats the preconditioner as a fixed linear map, so it neither sees the
preconditioner's parameters inside the Arnoldi process nor exposes the
per-iteration Givens sines.  Seed 002's dynamic loss needs exactly those: the
gradient of the sines with respect to the parameters of a nonlinear
preconditioner, through every Arnoldi and Givens step.  So this module
unrolls the algorithm in plain torch:

- modified Gram-Schmidt Arnoldi (one projection at a time, as PETSc's
  ``-ksp_gmres_modifiedgramschmidt``);
- Givens rotations applied column by column, as PETSc's
  ``KSPGMRESUpdateHessenberg`` does, giving ``c_j``, ``s_j`` and the residual
  estimates ``|g_j|``;
- everything built out of place (lists of new tensors, no in-place writes
  into anything autograd records), so ``loss.backward()`` differentiates the
  whole process;
- batched over systems (tensors ``(B, n)``), in the dtype of ``b`` (float64
  or float32);
- a "happy breakdown" (``h_{j+1,j}`` negligible: the residual is zero) is
  handled per system with safe denominators, so neither the values nor the
  gradients of the other systems see a NaN.

The tests compare its residual history with PETSc's KSPFGMRES on the same
system with a fixed linear preconditioner, its gradient with finite
differences, and its sines with true residual-norm ratios.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["FGMRESResult", "fgmres", "givens_sines"]

MatVec = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class FGMRESResult:
    """What :func:`fgmres` returns (all batched over systems, leading dim ``B``).

    ``x``: iterate after the last step ``(B, n)``; ``residual_norms``:
    ``(B, k+1)`` the Givens estimates ``|g_0| = ||r_0||, ..., |g_k|`` (equal to
    the true residual norms in exact arithmetic); ``sines``/``cosines``:
    ``(B, k)`` of the Givens rotations (``sines[:, j] = |g_{j+1}| / |g_j|``,
    the sine of the angle between ``r_j`` and ``A Z_{j+1}``); ``H``:
    ``(B, k+1, k)`` the Hessenberg matrix of ``A Z_k = V_{k+1} H``; ``V``,
    ``Z``: the bases, lists of ``(B, n)``; ``iterations``: ``k``.
    """

    x: torch.Tensor
    residual_norms: torch.Tensor
    sines: torch.Tensor
    cosines: torch.Tensor
    H: torch.Tensor
    V: list[torch.Tensor]
    Z: list[torch.Tensor]
    iterations: int

    def iterate(self, k: int, x0: torch.Tensor | None = None) -> torch.Tensor:
        """The FGMRES iterate after ``k <= iterations`` steps (least squares on ``H[:k+1, :k]``)."""
        B = self.H.shape[0]
        x = torch.zeros_like(self.x) if x0 is None else x0
        if k == 0:
            return x
        y = torch.linalg.lstsq(self.H[:, : k + 1, :k],
                               (self.residual_norms[:, :1] * _e1(B, k + 1, self.H)).unsqueeze(-1)
                               ).solution.squeeze(-1)
        return x + torch.einsum("bk,kbn->bn", y, torch.stack(self.Z[:k]))


def _e1(B: int, n: int, like: torch.Tensor) -> torch.Tensor:
    e = torch.zeros(B, n, dtype=like.dtype, device=like.device)
    e[:, 0] = 1.0
    return e


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(dim=-1)


def _safe_sqrt(sq: torch.Tensor) -> torch.Tensor:
    """``sqrt`` with a zero (not infinite) derivative at 0: a solved system has zero norms."""
    pos = sq > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, sq, torch.ones_like(sq))),
                       torch.zeros_like(sq))


def _norm(v: torch.Tensor) -> torch.Tensor:
    return _safe_sqrt(_dot(v, v))


def fgmres(
    matvec: MatVec,
    b: torch.Tensor,
    precond: MatVec | None = None,
    m: int = 10,
    x0: torch.Tensor | None = None,
    *,
    rtol: float = 0.0,
    breakdown_tol: float | None = None,
) -> FGMRESResult:
    """``m`` steps of flexible GMRES on the batch of systems ``matvec(x) = b``.

    ``matvec`` and ``precond`` map ``(B, n)`` to ``(B, n)`` (row ``i`` belongs to
    system ``i``); ``precond`` may be nonlinear and may have parameters: the
    result is differentiable with respect to them, to ``b`` and to anything
    ``matvec`` depends on.  ``b`` of shape ``(n,)`` is one system.  The
    iteration stops early once every system has ``|g_j| <= rtol * |g_0|``
    (``rtol = 0``: always ``m`` steps).  ``breakdown_tol`` (default
    ``100 * eps``) is the relative size of ``h_{j+1,j}`` below which a system
    is taken as solved (its later sines are zero).
    """
    single = b.dim() == 1
    if single:
        b = b.unsqueeze(0)
        x0 = None if x0 is None else x0.unsqueeze(0)
    if b.dim() != 2:
        raise ValueError(f"b must be (n,) or (B, n), got shape {tuple(b.shape)}")
    if m < 1:
        raise ValueError(f"m must be >= 1, got {m}")
    eps = torch.finfo(b.dtype).eps
    tiny = (100.0 * eps) if breakdown_tol is None else float(breakdown_tol)
    B = b.shape[0]
    if x0 is None:
        x0 = torch.zeros_like(b)
        r0 = b
    else:
        r0 = b - matvec(x0)
    beta = _norm(r0)
    alive = beta > 0
    one = torch.ones_like(beta)
    V = [r0 / torch.where(alive, beta, one)[:, None]]
    Z: list[torch.Tensor] = []
    cols: list[torch.Tensor] = []  # rotated Hessenberg columns (R), each (B, j+2)
    raw_cols: list[torch.Tensor] = []  # unrotated Hessenberg columns, each (B, j+2)
    cs: list[torch.Tensor] = []
    sn: list[torch.Tensor] = []
    g = [beta]  # the rotated right-hand side beta e_1, entry by entry
    rnorms = [beta]  # |g_{j+1}| as each step makes it: the residual-norm history
    k = 0
    for j in range(m):
        z = precond(V[j]) if precond is not None else V[j]
        z = torch.where(alive[:, None], z, torch.zeros_like(z))  # a solved system stays put
        Z.append(z)
        w = matvec(z)
        wnorm0 = _norm(w)
        h = []
        for i in range(j + 1):  # modified Gram-Schmidt: project one direction at a time
            hij = _dot(w, V[i])
            w = w - hij[:, None] * V[i]
            h.append(hij)
        hnext = _norm(w)
        # A negligible new direction (relative to A z) means the residual is in the
        # space already: a happy breakdown.  Its v_{j+1} is set to zero.
        ok = alive & (hnext > tiny * torch.where(wnorm0 > 0, wnorm0, one))
        V.append(torch.where(ok[:, None], w / torch.where(ok, hnext, one)[:, None],
                             torch.zeros_like(w)))
        hnext = torch.where(ok, hnext, torch.zeros_like(hnext))
        raw_cols.append(torch.stack(h + [hnext], dim=-1))
        # Apply the previous rotations to the new column, then make the new one.
        for i in range(j):
            hi, hi1 = h[i], h[i + 1]
            h[i] = cs[i] * hi + sn[i] * hi1
            h[i + 1] = -sn[i] * hi + cs[i] * hi1
        rho = _safe_sqrt(h[j] * h[j] + hnext * hnext)
        safe = rho > 0
        rho_s = torch.where(safe, rho, one)
        c = torch.where(safe, h[j] / rho_s, one)
        s = torch.where(safe, hnext / rho_s, torch.zeros_like(rho))
        cs.append(c)
        sn.append(s)
        h[j] = rho
        cols.append(torch.stack(h, dim=-1))
        gj = g[j]
        g[j] = c * gj
        g.append(-s * gj)
        rnorms.append(s * gj.abs())
        alive = ok
        k = j + 1
        if rtol > 0 and bool((g[-1].abs() <= rtol * beta).all()):
            break
    # Back substitution R y = g[:k], R upper triangular (k x k).
    R = torch.stack([torch.cat([col[:, :k], col.new_zeros(B, k - col.shape[1])], dim=-1)
                     if col.shape[1] < k else col[:, :k] for col in cols], dim=-1)
    diag_ok = R.diagonal(dim1=-2, dim2=-1) != 0
    R = R + torch.diag_embed(torch.where(diag_ok, torch.zeros_like(beta)[:, None], 1.0))
    y = torch.linalg.solve_triangular(R, torch.stack(g[:k], dim=-1).unsqueeze(-1),
                                      upper=True).squeeze(-1)
    x = x0 + torch.einsum("bk,kbn->bn", y, torch.stack(Z))
    H = torch.stack([torch.cat([col, col.new_zeros(B, k + 1 - col.shape[1])], dim=-1)
                     for col in raw_cols], dim=-1)
    res = FGMRESResult(
        x=x,
        residual_norms=torch.stack(rnorms, dim=-1),
        sines=torch.stack(sn, dim=-1),
        cosines=torch.stack(cs, dim=-1),
        H=H,
        V=V,
        Z=Z,
        iterations=k,
    )
    if single:
        res.x = res.x[0]
    return res


def givens_sines(
    matvec: MatVec, b: torch.Tensor, precond: MatVec | None = None, m: int = 10
) -> torch.Tensor:
    """The sines ``(B, m)`` of the first ``m`` FGMRES Givens rotations (seed 002's ``Σ_m``)."""
    return fgmres(matvec, b, precond, m).sines
