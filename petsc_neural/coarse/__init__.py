"""Coarse-space toolkit shared by NeuraLSP and later methods.

- :mod:`.smoothed`: random start vectors and damped-Jacobi smoothing with PETSc;
- :mod:`.aggregation`: graph aggregation and per-aggregate bases;
- :mod:`.prolongation`: prolongators as PETSc matrices;
- :mod:`.mg`: a two-level PCMG around a prolongator.
"""

from .aggregation import (
    aggregate,
    coordinate_order,
    local_svd_bases,
    pad_aggregates,
    prepend_constant,
    project_out_constant,
)
from .mg import two_level_mg
from .prolongation import block_prolongator, dense_prolongator, smooth_prolongator
from .smoothed import coordinate_start_vectors, smoothed_vectors, start_vectors, svd_basis

__all__ = [
    "aggregate",
    "coordinate_order",
    "local_svd_bases",
    "pad_aggregates",
    "prepend_constant",
    "project_out_constant",
    "two_level_mg",
    "block_prolongator",
    "dense_prolongator",
    "smooth_prolongator",
    "coordinate_start_vectors",
    "smoothed_vectors",
    "start_vectors",
    "svd_basis",
]
