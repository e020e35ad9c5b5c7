"""Shared helpers of the firedrake_problems tests."""

from __future__ import annotations

import firedrake as fd
import numpy as np
import ufl

DIRECT = {"ksp_type": "preonly", "pc_type": "lu", "pc_factor_mat_solver_type": "mumps"}


def l2_error(u_h, exact) -> float:
    """||u_h - exact||_L2 with an over-integrated quadrature."""
    e = u_h - exact
    return float(np.sqrt(fd.assemble(ufl.inner(e, e) * ufl.dx(degree=8))))


def observed_rate(sizes, errors) -> float:
    """Least-squares slope of log(error) against log(h), h = 1/size."""
    h = 1.0 / np.asarray(sizes, dtype=float)
    return float(np.polyfit(np.log(h), np.log(np.asarray(errors)), 1)[0])
