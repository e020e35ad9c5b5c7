"""Coarse-space toolkit shared by NeuraLSP and later methods.

- :mod:`.smoothed`: random start vectors and damped-Jacobi smoothing with PETSc;
- :mod:`.aggregation`: graph aggregation and per-aggregate bases;
- :mod:`.prolongation`: prolongators as PETSc matrices;
- :mod:`.roots`: root nodes (MIS-2), candidate tokens, token graph;
- :mod:`.mg`: PCMG around given prolongators (two levels or a hierarchy).
"""

from .aggregation import (
    aggregate,
    coordinate_order,
    local_svd_bases,
    pad_aggregates,
    prepend_constant,
    project_out_constant,
)
from .mg import COARSE_SOLVES, aij_operator, coarse_solve_options, mg_hierarchy, two_level_mg
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
    "mg_hierarchy",
    "coarse_solve_options",
    "COARSE_SOLVES",
    "aij_operator",
    "block_prolongator",
    "dense_prolongator",
    "smooth_prolongator",
    "coordinate_start_vectors",
    "smoothed_vectors",
    "start_vectors",
    "svd_basis",
]
