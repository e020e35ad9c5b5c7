"""PETSc ``Vec`` <-> torch tensor through DLPack.

On the CPU a Vec's local array *is* the tensor's storage (zero copy; the test
suite compares data pointers).  petsc4py's ``toDLPack(mode)`` takes the array
with the access mode (``'r'`` -> ``VecGetArrayRead``, ``'w'`` ->
``VecGetArrayWrite``) and restores it at once, so PETSc's object state is
bumped at export time; the consumer must honour the mode (never write to an
``'r'`` export), which the bridge does.  The capsule holds a reference to the
Vec for as long as the tensor lives.

A CUDA Vec (``-vec_type cuda``, PETSc built with CUDA) exports a CUDA tensor,
still without a copy.
"""

from __future__ import annotations

from typing import Literal

import torch
from petsc4py import PETSc

__all__ = ["vec_to_tensor", "is_device_vec", "DEVICE_VEC_TYPES"]

DEVICE_VEC_TYPES = frozenset({"seqcuda", "mpicuda", "cuda"})


def vec_to_tensor(vec: PETSc.Vec, mode: Literal["r", "w", "rw"] = "rw") -> torch.Tensor:
    """The local part of ``vec`` as a 1-D tensor sharing its memory."""
    return torch.from_dlpack(vec.toDLPack(mode))


def is_device_vec(vec: PETSc.Vec) -> bool:
    """Does ``vec`` keep its array on a CUDA device?"""
    return vec.getType() in DEVICE_VEC_TYPES
