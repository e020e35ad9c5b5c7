"""pcshell: serve a TorchScript model inside a PETSc preconditioner.

The bridge every petsc-neural method stands on.  Imports petsc4py and torch
only (never Firedrake, never ``petsc_neural``), so C programs and plain
petsc4py users can use it.

- :class:`ModelPC` (:mod:`pcshell.base`): options, model file, view, events,
  citations, fallback, warnings, agreement of failures across ranks;
- :class:`ResidualNetworkPC` (:mod:`pcshell.residual`): a network at every apply;
- :class:`SetupNetworkPC` (:mod:`pcshell.setup_network`): a network at setup,
  a PETSc object applied;
- :mod:`pcshell.bridge` (DLPack), :mod:`pcshell.modelfile`, :mod:`pcshell.options`,
  :mod:`pcshell.mpi`, :mod:`pcshell.mats`, :mod:`pcshell.operator`,
  :mod:`pcshell.errors`, :mod:`pcshell.messages`.

The names below are loaded on first use (PEP 562): ``pcshell.mats``,
``pcshell.options``, ``pcshell.mpi`` and ``pcshell.errors`` need petsc4py only,
so a torch-free package (``firedrake_problems``) may use them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_exports

_WHERE = {
    "FLEXIBLE_KSP_TYPES": ".base",
    "ModelPC": ".base",
    "PCBase": ".base",
    "log_event": ".base",
    "register_citation": ".base",
    "is_device_vec": ".bridge",
    "vec_to_tensor": ".bridge",
    "ModelFileError": ".errors",
    "ModelMismatchError": ".errors",
    "NeuralPCError": ".errors",
    "NonFiniteOutputError": ".errors",
    "check_operator": ".mats",
    "gather_scipy": ".mats",
    "local_block": ".mats",
    "local_csr": ".mats",
    "to_scipy": ".mats",
    "warn_user": ".messages",
    "LoadedModel": ".modelfile",
    "ModelMetadata": ".modelfile",
    "atomic_write_bytes": ".modelfile",
    "content_hash": ".modelfile",
    "load_model": ".modelfile",
    "save_model": ".modelfile",
    "agree": ".mpi",
    "agreed": ".mpi",
    "all_true": ".mpi",
    "LocalOperator": ".operator",
    "get_coordinates": ".operator",
    "set_coordinates": ".operator",
    "Option": ".options",
    "print_option_help": ".options",
    "pushed_options": ".options",
    "read_options": ".options",
    "tristate": ".options",
    "ResidualNetworkPC": ".residual",
    "FallbackRequested": ".setup_network",
    "SetupNetworkPC": ".setup_network",
}

__all__ = [
    "FLEXIBLE_KSP_TYPES",
    "FallbackRequested",
    "LoadedModel",
    "LocalOperator",
    "ModelFileError",
    "ModelMetadata",
    "ModelMismatchError",
    "ModelPC",
    "NeuralPCError",
    "NonFiniteOutputError",
    "Option",
    "PCBase",
    "ResidualNetworkPC",
    "SetupNetworkPC",
    "agree",
    "agreed",
    "all_true",
    "atomic_write_bytes",
    "check_operator",
    "content_hash",
    "gather_scipy",
    "get_coordinates",
    "is_device_vec",
    "load_model",
    "local_block",
    "local_csr",
    "log_event",
    "print_option_help",
    "pushed_options",
    "read_options",
    "register_citation",
    "save_model",
    "set_coordinates",
    "to_scipy",
    "tristate",
    "vec_to_tensor",
    "warn_user",
]

if TYPE_CHECKING:  # pragma: no cover - static imports for type checkers
    from .base import FLEXIBLE_KSP_TYPES, ModelPC, PCBase, log_event, register_citation
    from .bridge import is_device_vec, vec_to_tensor
    from .errors import ModelFileError, ModelMismatchError, NeuralPCError, NonFiniteOutputError
    from .mats import check_operator, gather_scipy, local_block, local_csr, to_scipy
    from .messages import warn_user
    from .modelfile import (
        LoadedModel,
        ModelMetadata,
        atomic_write_bytes,
        content_hash,
        load_model,
        save_model,
    )
    from .mpi import agree, agreed, all_true
    from .operator import LocalOperator, get_coordinates, set_coordinates
    from .options import Option, print_option_help, pushed_options, read_options, tristate
    from .residual import ResidualNetworkPC
    from .setup_network import FallbackRequested, SetupNetworkPC


__getattr__, __dir__ = lazy_exports(__name__, _WHERE, globals())
