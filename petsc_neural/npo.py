"""``petsc_neural.NPO``: the Neural Preconditioning Operator (seed 000) as a PETSc PC.

Use::

    -ksp_type fgmres -pc_type python -pc_python_type petsc_neural.NPO
    [-pc_neural_model FILE] [-pc_npo_family auto|poisson|diffusion|elasticity]

The network (:class:`petsc_neural.networks.npo.NAMG`) is applied to the
residual at every Krylov iteration with the local diagonal block of the
operator (a neural block Jacobi under MPI), its diagonal, the node
coordinates (when attached with :func:`pcshell.set_coordinates`; without
them the network runs on residual and operator features only) and, for
vector problems, the near-nullspace (``MatSetNearNullSpace``).  It is
nonlinear in the residual: use a flexible method (FGMRES, FCG).  Under CG the
bridge refuses it unless ``-pc_neural_allow_nonlinear_cg`` is given.

Without ``-pc_neural_model`` a shipped model is used: the elasticity model for
block size 2, otherwise the 2D Poisson model, or the one named by
``-pc_npo_family``.  Train your own with ``petsc-neural train npo``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from petsc4py import PETSc

from pcshell import NeuralPCBase, NeuralPCError

__all__ = ["NPO"]

logger = logging.getLogger("petsc_neural.npo")

MODELS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")
#: Shipped models, by problem family (see petsc_neural/models/README.md).
SHIPPED_MODELS: dict[str, str] = {
    "poisson": "npo_poisson2d.pt",
    "diffusion": "npo_diffusion2d.pt",
    "elasticity": "npo_elasticity2d.pt",
}


def shipped_model(family: str) -> str:
    """Path of the shipped model of ``family`` (which must exist)."""
    try:
        name = SHIPPED_MODELS[family]
    except KeyError:
        raise NeuralPCError(
            f"NPO ships no model for family {family!r}; shipped: {sorted(SHIPPED_MODELS)}"
        ) from None
    path = os.path.join(MODELS_DIR, name)
    if not os.path.exists(path):
        raise NeuralPCError(f"the shipped NPO model {path!r} is missing from this install")
    return path


class NPO(NeuralPCBase):
    """Neural Preconditioning Operator (NAMG network) served per Krylov iteration.

    Options: the common ``-pc_neural_*`` options of :class:`pcshell.NeuralPCBase`
    and ``-pc_npo_family auto|poisson|diffusion|elasticity`` (which shipped
    model to use when ``-pc_neural_model`` is not given; ``auto``: elasticity
    for block size 2, else poisson).
    """

    method = "npo"

    def default_model(self) -> str | None:
        path = os.path.join(MODELS_DIR, SHIPPED_MODELS["poisson"])
        return path if os.path.exists(path) else None

    def read_options(self, pc: PETSc.PC) -> dict[str, Any]:
        out = super().read_options(pc)
        prefix = (pc.getOptionsPrefix() or "") + "pc_npo_"
        family = PETSc.Options(prefix).getString("family", "auto")
        out["family"] = family
        user_model = PETSc.Options(self.options_prefix(pc)).hasName("model")
        if not user_model:
            if family == "auto":
                _, P = pc.getOperators()
                family = "elasticity" if P.getBlockSize() == 2 else "poisson"
            out["model"] = shipped_model(family)
        return out

    def build(self, pc: PETSc.PC) -> None:
        if self.op.coordinates is None and not getattr(self, "_warned_coords", False):
            logger.info(
                "NPO: no node coordinates attached (pcshell.set_coordinates); the network "
                "uses residual and operator features only")
            self._warned_coords = True

    def view_details(self, pc: PETSc.PC) -> list[str]:
        lines = super().view_details(pc)
        if self.op is not None:
            c = self.op.coordinates
            lines.append(
                "node coordinates: " + ("none (residual and operator features only)" if c is None
                                        else f"{c.shape[0]} nodes in {c.shape[1]}D"))
        return lines
