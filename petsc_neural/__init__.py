"""petsc-neural: learned preconditioners served inside PETSc.

Preconditioner classes (``-pc_type python -pc_python_type petsc_neural.<Name>``),
one per method of :data:`petsc_neural.registry.METHODS`:

- :class:`TorchScriptPC`: any TorchScript module with petsc-neural metadata.
- :class:`NPO`: Neural Preconditioning Operator (seed 000), a NAMG network per Krylov iteration.
- :class:`NeuraLSP`: learned two-level coarse space (seed 001) served as PETSc's PCMG.
- :class:`KrylovUNet`: 3D U-Net for 3D-1D problems trained on Krylov angles (seed 002).
- :class:`GreenInverse`: learned Green's function (seed 003) compressed to a sparse or
  hierarchical approximate inverse.
- :class:`Algebraformer`: transformer mapping (A, b) to x for small dense systems and the
  blocks of PCBJACOBI / PCASM (seed 004).

The classes are loaded on first use (PEP 562), so ``import petsc_neural``
stays cheap and the registry is the one list of methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pcshell.lazy import lazy_exports

from ._version import __version__
from .registry import METHODS, pc_classes

__all__ = ["__version__", "METHODS", *pc_classes()]

if TYPE_CHECKING:  # pragma: no cover - the classes the registry names, for type checkers
    from .algebraformer.pc import Algebraformer  # noqa: F401
    from .green.pc import GreenInverse  # noqa: F401
    from .krylov_unet.pc import KrylovUNet  # noqa: F401
    from .neuralsp.pc import NeuraLSP  # noqa: F401
    from .npo.pc import NPO  # noqa: F401
    from .torchscript_pc import TorchScriptPC  # noqa: F401


__getattr__, __dir__ = lazy_exports(
    __name__, {spec.class_name: spec.pc.split(":")[0] for spec in METHODS.values()}, globals())
