"""``petsc_neural.TorchScriptPC``: serve any TorchScript module as a preconditioner."""

from __future__ import annotations

import torch

from pcshell import ModelMetadata, ResidualNetworkPC, save_model

__all__ = ["TorchScriptPC"]


class TorchScriptPC(ResidualNetworkPC):
    """A user's TorchScript module applied to the residual, ``z = f(r, ...)``.

    Use::

        -ksp_type fgmres -pc_type python -pc_python_type petsc_neural.TorchScriptPC
        -pc_neural_model model.pt

    The module's ``forward`` takes the local residual (1-D tensor, the rows
    this rank owns) followed by the inputs its metadata names, in order, and
    returns a tensor of the residual's shape::

        def forward(self, r: Tensor, A: Tensor, diag: Tensor) -> Tensor
        # metadata inputs = ["residual", "operator", "diagonal"]

    ``operator`` is the local diagonal block as a sparse CSR tensor,
    ``diagonal`` its diagonal, ``coordinates`` the node coordinates
    (``pcshell.set_coordinates``), ``near_nullspace`` an ``(n, k)`` tensor.
    Save the module with :meth:`export` (or ``pcshell.save_model``) so the
    file carries the metadata the PC checks (method ``"torchscript"``).

    Options: the common ``-pc_neural_*`` options of
    :class:`pcshell.ResidualNetworkPC` (model, device, dtype, on_failure,
    fallback_pc_type, warnings, scale, allow_nonflexible, check_residual,
    residual_factor, stagnation, stagnation_factor).  A model whose metadata
    says ``linear=false`` is held to the Krylov-method rule of
    :mod:`pcshell.residual` (flexible methods only).
    """

    method = "torchscript"
    title = "TorchScript model applied to the residual"

    @staticmethod
    def export(
        module: torch.nn.Module,
        path: str,
        *,
        inputs: list[str] | None = None,
        linear: bool = False,
        dtype: str = "float64",
        block_size: int = 1,
        n: int | None = None,
        problem_family: str | None = None,
        training: dict | None = None,
    ) -> ModelMetadata:
        """Script ``module`` and write it, with metadata, to ``path`` (atomically)."""
        meta = ModelMetadata(
            method="torchscript",
            problem_family=problem_family,
            block_size=block_size,
            dtype=dtype,
            n=n,
            inputs=list(inputs or ["residual"]),
            linear=linear,
            training=dict(training or {}),
        )
        return save_model(module, path, meta)
