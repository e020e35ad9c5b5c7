"""Setup-network preconditioners: the network runs at setup, PETSc applies what it built.

NeuraLSP (a learned coarse space served as PCMG) and GreenInverse (a learned
Green's function compressed to a sparse or hierarchical approximate inverse)
are of this kind.  A subclass implements :meth:`SetupNetworkPC.build`, which
runs the network through :meth:`SetupNetworkPC.run_network` and returns an
inner PETSc PC (``PCMG``, ``PCMAT`` around an assembled or python ``Mat``,
...), already set up.  The base then

- checks every network output for NaN/Inf and agrees on the result across
  ranks before the next collective (a failure on one rank raises the same
  error on all ranks, or switches all of them to the fallback PC with
  ``-pc_neural_on_failure fallback``);
- gives the inner PC the options prefix ``-[pc prefix]<inner_prefix>``, a tab
  level under the outer PC, views it in ``-ksp_view`` and destroys it with
  the outer PC;
- applies it: ``apply``, ``applyTranspose`` and ``matApply`` are the inner
  PC's own.  The preconditioner is linear in the residual (a fixed operator),
  so every Krylov method may use it (CG too, when the operator is symmetric).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from petsc4py import PETSc

from .base import ModelPC, log_event
from .errors import ModelMismatchError, NonFiniteOutputError
from .mpi import agreed, all_true

__all__ = ["SetupNetworkPC", "FallbackRequested"]


class FallbackRequested(Exception):
    """Raised by :meth:`SetupNetworkPC.run_network` on every rank to abandon ``build``."""


def _all_finite(out: Any) -> bool:
    if isinstance(out, torch.Tensor):
        return bool(torch.isfinite(out).all()) if out.is_floating_point() else True
    if isinstance(out, tuple | list):
        return all(_all_finite(o) for o in out)
    return True


class SetupNetworkPC(ModelPC):
    """Network at setup, PETSc-native apply (see the module docstring)."""

    nonlinear = False
    #: Options prefix of the inner PC, after the outer PC's prefix (e.g. ``"neuralsp_"``).
    inner_prefix: ClassVar[str] = "inner_"

    def __init__(self) -> None:
        super().__init__()
        self.inner: PETSc.PC | None = None
        self._network_calls = 0

    def setup(self, pc: PETSc.PC) -> None:
        self._network_calls = 0
        try:
            inner = self.build(pc)
        except FallbackRequested as exc:
            self.activate_fallback(pc, str(exc))
            return
        self.inner = inner
        self.inner.incrementTabLevel(1, parent=pc)
        if inner not in self.inner_objects:
            self.inner_objects.append(inner)

    def inner_options_prefix(self, pc: PETSc.PC) -> str:
        return (pc.getOptionsPrefix() or "") + self.inner_prefix

    def build(self, pc: PETSc.PC) -> PETSc.PC:
        """Run the network (via :meth:`run_network`) and return the inner PC, set up."""
        raise NotImplementedError

    def run_network(
        self,
        pc: PETSc.PC,
        *args: torch.Tensor,
        where: str = "",
        local_skip: bool = False,
        check: Callable[[Any], None] | None = None,
    ) -> Any:
        """Call the model under ``inference_mode`` on this rank; agree on the outcome.

        Collective: every rank calls it the same number of times (a rank with
        nothing to compute passes ``local_skip=True`` and gets ``None``).  A
        model that raises or returns a wrong shape (``check`` raises) is a
        :class:`~pcshell.errors.ModelMismatchError` on every rank; a non-finite
        output is a :class:`~pcshell.errors.NonFiniteOutputError` on every rank,
        or, with ``-pc_neural_on_failure fallback``, :class:`FallbackRequested`.
        """
        self._network_calls += 1
        out, error = None, None
        comm = pc.getComm()
        detail = f" ({where})" if where else ""
        with log_event("PCNeuralInfer"), agreed(comm, f"{type(self).__name__} network"):
            if not local_skip:
                try:
                    with torch.inference_mode():
                        out = self.model.module(*args)
                except Exception as exc:  # noqa: BLE001 - reported as a mismatch
                    msg = str(exc).strip().splitlines()
                    error = ModelMismatchError(
                        f"model {self.model.path!r} fails on this operator{detail}: "
                        f"{msg[-1] if msg else type(exc).__name__}")
                if error is None and check is not None:
                    check(out)
                if error is not None:
                    raise error
        if all_true(comm, local_skip or _all_finite(out)):
            return out
        bad = [] if comm.getSize() == 1 else [
            r for r, ok in enumerate(comm.tompi4py().allgather(local_skip or _all_finite(out)))
            if not ok]
        where_ranks = f" on rank(s) {bad}" if bad else ""
        cause = (f"{type(self).__name__}: the network returned non-finite values (NaN/Inf)"
                 f"{where_ranks} at setup{detail} (model {self.model.path!r})")
        if self.opts["on_failure"] == "fallback":
            raise FallbackRequested(cause)
        # Every rank is here with the same list of failing ranks: the same error on all.
        raise NonFiniteOutputError(
            cause + f"; -{self._prefix}on_failure fallback switches to a classical PC instead")

    # -- apply: the inner PC's own -----------------------------------------------------
    def _active(self) -> PETSc.PC:
        return self.fallback if self.fallback_reason is not None else self.inner

    def apply(self, pc: PETSc.PC, x: PETSc.Vec, y: PETSc.Vec) -> None:
        with log_event("PCNeuralApply"):
            self._applies += 1
            self._active().apply(x, y)

    def applyTranspose(self, pc: PETSc.PC, x: PETSc.Vec, y: PETSc.Vec) -> None:  # noqa: N802
        self._active().applyTranspose(x, y)

    def matApply(self, pc: PETSc.PC, X: PETSc.Mat, Y: PETSc.Mat) -> None:  # noqa: N802
        with log_event("PCNeuralApply"):
            self._applies += 1
            self._active().matApply(X, Y)

    def reset(self, pc: PETSc.PC) -> None:
        super().reset(pc)  # destroys the inner PC (listed in inner_objects)
        self.inner = None

    # -- view --------------------------------------------------------------------------
    def view_details(self, pc: PETSc.PC) -> list[str]:
        lines = super().view_details(pc)
        lines.append(f"network calls at the last setup: {self._network_calls}")
        return lines

    def view_inner(self, pc: PETSc.PC, viewer: PETSc.Viewer) -> None:
        if self.fallback_reason is not None:
            super().view_inner(pc, viewer)
        elif self.inner is not None:
            viewer.printfASCII(f"inner PC (prefix -{self.inner.getOptionsPrefix()}):\n")
            self.inner.view(viewer)
