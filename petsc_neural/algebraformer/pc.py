"""``petsc_neural.Algebraformer``: a transformer that solves small dense systems, as a PETSc PC.

Seed 004 (Sittoni and Tudisco, *Algebraformer: A Neural Approach to Linear
Systems*).  The network (:mod:`.network`) maps a system ``(A, b)`` of up to
``n`` unknowns (the model's size: 64 for the Chebyshev BVP model, 60 for the
Newton model) to an approximation of ``A^{-1} b``, reading token ``i =
[column i of A, b_i]``.  Served as a preconditioner, it is applied to the
residual at every Krylov iteration with the dense diagonal block(s) of the
local matrix::

    -ksp_type fgmres -pc_type python -pc_python_type petsc_neural.Algebraformer
    # the network's solution itself:
    -ksp_type preonly -pc_type python -pc_python_type petsc_neural.Algebraformer

    # the solver of the diagonal blocks of block Jacobi / additive Schwarz:
    -ksp_type fgmres -pc_type bjacobi -sub_pc_type python
        -sub_pc_python_type petsc_neural.Algebraformer -sub_pc_algebraformer_blocks auto

The map is nonlinear in the right-hand side: only flexible Krylov methods
(FGMRES, FCG, GCR; ``preonly``) are accepted, as for every nonlinear PC of
:mod:`pcshell.residual` (PETSc's default GMRES is refused with an error).

**Blocks and batching.**  ``-pc_algebraformer_blocks`` splits the local
matrix (the rank's rows; the whole matrix on one process, the sub-matrix
under PCBJACOBI/PCASM) into contiguous diagonal blocks of at most ``n``
rows; every block is row-equilibrated and padded with identity rows and
columns to ``n`` once at setup, and each apply solves all blocks in **one
batched network call** (block Jacobi inside the PC).  The default ``1``
keeps the local system whole: one larger than the model is refused with an
error naming the limit.  Why the splitting lives here and not in PCBJACOBI's
own blocks: PETSc applies the sub-PCs of ``-pc_bjacobi_local_blocks k`` one
after the other, each through its own ``KSPSolve``, so a sub-PC never sees
its siblings' right-hand sides and ``k`` blocks would cost ``k`` network
calls.  With one PCBJACOBI/PCASM block per rank (their default) the sub-PC
gets the whole local (or overlapping) matrix and batches its blocks itself;
``-pc_bjacobi_local_blocks k`` also works, one network call per block.

**Normalisation** (what the network was trained on): each block's rows are
scaled to unit 2-norm (``D A x = D b`` has the same solution) and each
block's right-hand side ``D r`` to unit norm; the network's output is scaled
back, so the apply is positively homogeneous block by block (besides the
base class's global scaling, ``-pc_neural_scale``).

**Outer Krylov method as a sub-PC.**  Inside PCBJACOBI/PCASM the PC sees
only its ``preonly`` sub-KSP; the outer method is checked from the options
database (``-ksp_type`` of the outer prefix): a non-flexible one is refused,
an unset one (PETSc's default GMRES, unless the program set it) gets a
warning.

Options (prefix ``-[pc prefix]pc_algebraformer_``), besides the common
``-pc_neural_*`` options of :class:`pcshell.ResidualNetworkPC`:

``-pc_algebraformer_blocks 1|auto|k``
    Diagonal blocks of the local matrix (default 1: the whole local system;
    ``auto``: as few as fit in the model; ``k``: ``k`` blocks of near-equal size).
``-pc_algebraformer_problem diffusion|newton``
    Shipped model used when ``-pc_neural_model`` is not given (default
    ``diffusion``: the 64-point Chebyshev diffusion BVP; ``newton``: the
    60 x 60 Newton systems of the l_p regression).
"""

from __future__ import annotations

import os

import torch
from petsc4py import PETSc

from pcshell import (
    LoadedModel,
    ModelFileError,
    NeuralPCError,
    Option,
    ResidualNetworkPC,
)
from pcshell.base import cached_load_model

from ..registry import get_method
from .network import diagonal_blocks, prepare_blocks, split_sizes

__all__ = ["Algebraformer", "CITATION", "MODEL_INPUTS", "shipped_model"]

CITATION = """@misc{sittoni2025algebraformer,
  title  = {Algebraformer: A Neural Approach to Linear Systems},
  author = {Sittoni, Pietro and Tudisco, Francesco},
  year   = {2025}
}
"""

#: What an Algebraformer model's ``forward`` takes (see :class:`.network.SystemSolver`).
MODEL_INPUTS = ["residual", "blocks", "rowscale", "gather", "scatter"]


def shipped_model(problem: str) -> str:
    """Path of the shipped Algebraformer model for ``problem`` (which must exist)."""
    spec = get_method("algebraformer")
    path = spec.model_path(problem)
    if path is None:
        raise NeuralPCError(f"Algebraformer ships no model for {problem!r}; shipped: "
                            f"{sorted(spec.models)}")
    if not os.path.exists(path):
        raise NeuralPCError(f"the shipped Algebraformer model {path!r} is missing from this "
                            "install (train one with petsc-neural train algebraformer)")
    return path


class Algebraformer(ResidualNetworkPC):
    """Algebraformer solving the local diagonal block(s) at every apply (see the module doc)."""

    method = "algebraformer"
    title = "Algebraformer transformer block solver (seed 004)"
    method_prefix = "pc_algebraformer_"
    citation = CITATION

    def __init__(self) -> None:
        super().__init__()
        self.block_sizes: list[int] = []
        self.model_n = 0

    def method_options(self) -> list[Option]:
        return [
            Option("blocks", "1", "diagonal blocks of the local matrix solved in one batch: "
                                  "1 (the whole local system), auto (as few as fit the "
                                  "model), or a number"),
            Option("problem", "diffusion", "shipped model used without -pc_neural_model",
                   choices=tuple(sorted(get_method("algebraformer").models))),
        ]

    def read_options(self, pc: PETSc.PC) -> dict:
        out = super().read_options(pc)
        blocks = str(out["blocks"]).strip().lower()
        if blocks != "auto" and not (blocks.isdigit() and int(blocks) >= 1):
            raise NeuralPCError(f"-{self.options_prefix(pc, self.method_prefix)}blocks must be "
                                f"auto or a positive integer, got {out['blocks']!r}")
        out["blocks"] = blocks
        return out

    def load_model(self, pc: PETSc.PC) -> LoadedModel:
        if not PETSc.Options(self.options_prefix(pc)).hasName("model"):
            self.opts["model"] = shipped_model(self.opts["problem"])
        return cached_load_model(self.opts["model"], self.device, self.method)

    def check_inputs(self, path: str, inputs: list[str]) -> None:
        if list(inputs) != MODEL_INPUTS:
            raise ModelFileError(f"model {path!r}: an Algebraformer model takes inputs "
                                 f"{MODEL_INPUTS}, this one declares {inputs}")

    def static_inputs(self) -> tuple[torch.Tensor, ...]:
        """Row-equilibrated, identity-padded diagonal blocks and their index maps."""
        n = int(self.model.module.n)
        self.model_n = n
        m = self.op.n_local
        blocks = self.opts["blocks"]
        if blocks == "1" and m > n:
            raise NeuralPCError(
                f"Algebraformer: the local system has {m} rows, more than the {n} unknowns "
                f"the model solves (model {self.model.path!r}; limit n <= {n}); split it "
                "into diagonal blocks with -pc_algebraformer_blocks auto (block Jacobi "
                "inside the PC, one batched network call), or use PCBJACOBI/PCASM with "
                "-sub_pc_type python -sub_pc_python_type petsc_neural.Algebraformer"
            )
        sizes = split_sizes(m, n, 0 if blocks == "auto" else int(blocks))
        if sizes and max(sizes) > n:
            raise NeuralPCError(
                f"Algebraformer: {len(sizes)} blocks of the {m} local rows have up to "
                f"{max(sizes)} rows, more than the model's limit of {n} (model "
                f"{self.model.path!r}); use -pc_algebraformer_blocks auto or at least "
                f"{-(-m // n)}"
            )
        self.block_sizes = sizes
        if m == 0:
            z = torch.zeros(0, dtype=self.dtype, device=self.device)
            return (z.view(0, n, n), z.view(0, n), z.long(), z.long())
        csr = self.op.csr
        try:
            return prepare_blocks(diagonal_blocks(csr.crow_indices(), csr.col_indices(),
                                                  csr.values(), sizes), n)
        except ValueError as exc:
            raise NeuralPCError(f"Algebraformer: {exc}") from None

    def build(self, pc: PETSc.PC) -> None:
        prefix = pc.getOptionsPrefix() or ""
        if prefix.endswith("sub_"):
            outer = prefix[: -len("sub_")]
            ksp_type = PETSc.Options(outer).getString("ksp_type", "")
            if ksp_type:
                self.check_ksp(pc, ksp_type)  # refused unless flexible (or allowed)
            else:
                self.warn(pc, f"Algebraformer is a sub-PC (prefix {prefix!r}) and is nonlinear "
                              f"in the residual: the outer Krylov method must be flexible "
                              f"(-{outer}ksp_type fgmres); none is set in the options, and "
                              "PETSc's default gmres is not", key="outer-ksp")

    def view_details(self, pc: PETSc.PC) -> list[str]:
        lines = super().view_details(pc)
        if self.block_sizes:
            sizes = sorted(set(self.block_sizes))
            lines.append(f"model size n = {self.model_n}; {len(self.block_sizes)} diagonal "
                         f"block(s) of {', '.join(map(str, sizes))} rows, padded to "
                         f"{self.model_n}, solved in one batched call per apply")
        return lines
