"""Exceptions raised by the bridge.

Every one names what is wrong and what to do about it; none is swallowed.
Raised inside a PETSc callback they surface as a PETSc error whose message
carries this text.
"""

from __future__ import annotations

__all__ = ["NeuralPCError", "ModelFileError", "ModelMismatchError", "NonFiniteOutputError"]


class NeuralPCError(RuntimeError):
    """Base class of the bridge's errors."""


class ModelFileError(NeuralPCError):
    """A model file is missing, unreadable, corrupt or not a petsc-neural model."""


class ModelMismatchError(NeuralPCError):
    """A valid model that was made for another problem (size, block size, dtype, method)."""


class NonFiniteOutputError(NeuralPCError):
    """The network returned NaN or Inf for a finite input."""
