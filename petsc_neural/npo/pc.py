"""``petsc_neural.NPO``: the Neural Preconditioning Operator (seed 000) as a PETSc PC.

Use::

    -ksp_type fgmres -pc_type python -pc_python_type petsc_neural.NPO
    [-pc_neural_model FILE] [-pc_npo_family auto|poisson|diffusion|elasticity]

The network (:class:`petsc_neural.npo.network.NAMG`) is applied to the
residual at every Krylov iteration with the local diagonal block of the
operator (a neural block Jacobi under MPI), its diagonal, the node
coordinates (``PCSetCoordinates``, a composed ``Vec``, or a DMDA's grid; see
:meth:`pcshell.PCBase.node_coordinates`; without them the network runs on
residual and operator features only) and, for vector problems, the
near-nullspace (``MatSetNearNullSpace``).  It is nonlinear in the residual:
use a flexible method (FGMRES, FCG, GCR); any other KSP is refused (see
:mod:`pcshell.residual`).

Without ``-pc_neural_model`` a shipped model is used: the one named by
``-pc_npo_family``, or with ``auto`` (the default) the elasticity model for
block size 2 and the 2D Poisson model otherwise.  Train your own with
``petsc-neural train npo``.
"""

from __future__ import annotations

import os

from petsc4py import PETSc

from pcshell import LoadedModel, NeuralPCError, Option, ResidualNetworkPC
from pcshell.base import cached_load_model

from ..registry import get_method

__all__ = ["NPO", "shipped_model", "CITATION"]

CITATION = """@inproceedings{npo2025,
  title     = {Neural Preconditioning Operator for Efficient {PDE} Solves},
  booktitle = {arXiv preprint},
  year      = {2025}
}
"""


def shipped_model(family: str) -> str:
    """Path of the shipped NPO model of ``family`` (which must exist)."""
    spec = get_method("npo")
    path = spec.model_path(family)
    if path is None:
        raise NeuralPCError(
            f"NPO ships no model for family {family!r}; shipped: {sorted(spec.models)}"
        )
    if not os.path.exists(path):
        raise NeuralPCError(f"the shipped NPO model {path!r} is missing from this install")
    return path


class NPO(ResidualNetworkPC):
    """Neural Preconditioning Operator (NAMG network) served per Krylov iteration.

    Options: the common ``-pc_neural_*`` options of :class:`pcshell.ResidualNetworkPC`
    and ``-pc_npo_family auto|poisson|diffusion|elasticity`` (which shipped
    model to use when ``-pc_neural_model`` is not given; ``auto``: elasticity
    for block size 2, else poisson).
    """

    method = "npo"
    title = "NPO neural AMG (seed 000)"
    method_prefix = get_method("npo").prefix
    citation = CITATION

    def method_options(self) -> list[Option]:
        return [Option("family", "auto", "shipped model used without -pc_neural_model",
                       choices=("auto", *sorted(get_method("npo").models)))]

    def load_model(self, pc: PETSc.PC) -> LoadedModel:
        # The shipped model is chosen here, at setup, where the operator exists
        # (DMDA and KSPSetComputeOperators clients have none at setFromOptions).
        if not PETSc.Options(self.options_prefix(pc)).hasName("model"):
            family = self.opts["family"]
            if family == "auto":
                _, P = pc.getOperators()
                family = "elasticity" if P.getBlockSize() == 2 else "poisson"
            self.opts["model"] = shipped_model(family)
        return cached_load_model(self.opts["model"], self.device, self.method)

    def build(self, pc: PETSc.PC) -> None:
        if self.op.coordinates is None:
            self.warn(pc, "NPO: no node coordinates reached the PC (PCSetCoordinates); the "
                          "network uses residual and operator features only and is weaker",
                      key="coordinates")

    def view_details(self, pc: PETSc.PC) -> list[str]:
        lines = super().view_details(pc)
        if self.op is not None:
            c = self.op.coordinates
            lines.append(
                "node coordinates: " + ("none (residual and operator features only)" if c is None
                                        else f"{c.shape[0]} nodes in {c.shape[1]}D"))
        return lines
