"""petsc-neural: learned preconditioners served inside PETSc.

Preconditioner classes (``-pc_type python -pc_python_type petsc_neural.<Name>``):

- :class:`TorchScriptPC`: any TorchScript module with petsc-neural metadata.
- :class:`NPO`: Neural Preconditioning Operator (seed 000), a NAMG network per Krylov iteration.
- :class:`NeuraLSP`: learned two-level coarse space (seed 001) served as PETSc's PCMG.
"""

import logging

from .neuralsp import NeuraLSP
from .npo import NPO
from .torchscript_pc import TorchScriptPC

__all__ = ["TorchScriptPC", "NeuraLSP", "NPO"]
__version__ = "0.1.0"

logging.getLogger("petsc_neural").addHandler(logging.NullHandler())
