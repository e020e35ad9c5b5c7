"""pcshell: serve a TorchScript model inside a PETSc preconditioner.

The bridge every petsc-neural method stands on.  Imports petsc4py and torch
only (never Firedrake, never ``petsc_neural``), so C programs and plain
petsc4py users can use it.
"""

from .base import (
    FIXED_SPD_KSP_TYPES,
    FLEXIBLE_KSP_TYPES,
    NeuralPCBase,
    PCBase,
    log_event,
    read_option_table,
)
from .bridge import is_device_vec, vec_to_tensor
from .errors import ModelFileError, ModelMismatchError, NeuralPCError, NonFiniteOutputError
from .modelfile import (
    LoadedModel,
    ModelMetadata,
    atomic_write_bytes,
    content_hash,
    load_model,
    save_model,
)
from .operator import LocalOperator, get_coordinates, set_coordinates

__all__ = [
    "PCBase",
    "NeuralPCBase",
    "FLEXIBLE_KSP_TYPES",
    "FIXED_SPD_KSP_TYPES",
    "log_event",
    "read_option_table",
    "vec_to_tensor",
    "is_device_vec",
    "NeuralPCError",
    "ModelFileError",
    "ModelMismatchError",
    "NonFiniteOutputError",
    "ModelMetadata",
    "LoadedModel",
    "save_model",
    "load_model",
    "content_hash",
    "atomic_write_bytes",
    "LocalOperator",
    "set_coordinates",
    "get_coordinates",
]
