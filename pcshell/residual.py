"""Residual-network preconditioners: a network applied to the residual at every Krylov iteration.

NPO, KrylovUNet and Algebraformer are of this kind.  What they share lives
here: the operator as tensors (:class:`pcshell.operator.LocalOperator`), the
DLPack bridge, positive homogeneity by scaling, batched ``matApply``, the
non-finite safeguard, the stagnation safeguard, and the Krylov-method rule
for a network that is nonlinear in the residual:

- A nonlinear PC is valid only inside a flexible method (``fgmres``,
  ``pipefgmres``, ``fcg``, ``pipefcg``, ``gcr``, ``pipegcr``, ``fbcgs``,
  ``fbcgsr``; ``preonly`` applies it once).  Under any other method
  (PETSc's default ``gmres``, ``cg``, ``bcgs``, ...) the Krylov recurrences
  assume one fixed linear operator, and the method can report
  ``CONVERGED_RTOL`` for a solution whose true residual is large.  Such a
  KSP is refused with a PETSc error before the first iteration.
- ``-pc_neural_allow_nonflexible`` lets an expert run it anyway; then a
  true-residual check at the end of every solve turns a convergence the true
  residual does not confirm into ``KSP_DIVERGED_BREAKDOWN`` (the method's
  recurrence broke down: its residual estimate no longer describes ``x``)
  with a warning (``-pc_neural_check_residual`` forces the check on or off).
  PETSc prints ``-ksp_converged_reason`` before a PC's post-solve hook, so
  that line still shows the method's own verdict; the warning follows it, and
  ``KSPGetConvergedReason`` and ``-ksp_error_if_not_converged`` see the
  corrected reason.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from petsc4py import PETSc

from .base import FLEXIBLE_KSP_ORDER, FLEXIBLE_KSP_TYPES, ModelPC, log_event
from .bridge import is_device_vec, vec_to_tensor
from .errors import ModelFileError, ModelMismatchError, NeuralPCError, NonFiniteOutputError
from .modelfile import INPUT_NAMES
from .mpi import agree, all_true
from .operator import LocalOperator
from .options import TRISTATE, Option, tristate

__all__ = ["ResidualNetworkPC"]


class ResidualNetworkPC(ModelPC):
    """A network ``z = f(r, *static inputs)`` applied at every Krylov iteration.

    Options, besides the common ``-pc_neural_*`` ones of :class:`pcshell.ModelPC`:

    ``-pc_neural_scale true|false``
        Scale the residual to unit 2-norm before a nonlinear network and back
        after (default true): the applied map is positively homogeneous and
        maps zero to zero.  Under MPI each rank scales its own rows.
    ``-pc_neural_allow_nonflexible true|false``
        Run a nonlinear network under a non-flexible Krylov method (default
        false: refused with a PETSc error).
    ``-pc_neural_check_residual auto|true|false``
        Check the true residual at the end of the solve (``auto``: when a
        nonlinear PC runs under a non-flexible method).
    ``-pc_neural_residual_factor f``
        The check fails when ``||b - A x|| > f * max(rtol ||r0||, atol)``
        (default 10).
    ``-pc_neural_stagnation k``
        Stagnation safeguard (default 0: off): when the KSP's residual norm
        has fallen by less than ``-pc_neural_stagnation_factor`` (default 0.5)
        over the last ``k`` iterations, switch to the fallback PC for the rest
        of the solve (valid under flexible methods, which allow it).

    Under MPI each rank applies the network to its own rows with its diagonal
    block (a neural block Jacobi); the safeguards agree across ranks with one
    small allreduce per apply, and a network error on one rank raises on all.
    """

    def __init__(self) -> None:
        super().__init__()
        self.op: LocalOperator | None = None
        self._static: tuple[torch.Tensor, ...] = ()
        self._ksp: PETSc.KSP | None = None
        self._r0 = 0.0
        self._fallback_this_solve = False
        self._history: list[float] = []
        self.fallback_events: list[str] = []

    # -- options ---------------------------------------------------------------------
    def common_options(self) -> list[Option]:
        return super().common_options() + [
            Option("scale", True, "scale the residual to unit norm (positive homogeneity)"),
            Option("allow_nonflexible", False,
                   "allow a nonlinear network under a non-flexible Krylov method"),
            Option("check_residual", "auto",
                   "check the true residual after the solve (auto: under non-flexible KSP)",
                   choices=TRISTATE),
            Option("residual_factor", 10.0, "tolerance factor of the true-residual check",
                   low=1.0),
            Option("stagnation", 0, "stagnation safeguard window in iterations (0: off)",
                   low=0),
            Option("stagnation_factor", 0.5,
                   "residual reduction required over the window", low=0.0, high=1.0,
                   open_low=True, open_high=True),
        ]

    # -- setup -----------------------------------------------------------------------
    def setup(self, pc: PETSc.PC) -> None:
        _, P = pc.getOperators()
        meta = self.model.metadata
        self.nonlinear = not meta.linear
        self.check_inputs(self.model.path, meta.inputs)
        self.op = LocalOperator(P, dtype=self.dtype, device=self.device,
                                coordinates=self.node_coordinates(pc, P))
        self._static = self.static_inputs()
        n_local = self.op.n_local
        self._in = torch.empty(n_local, dtype=self.dtype, device=self.device)
        self._host_out = (torch.empty(n_local, dtype=torch.float64, pin_memory=True)
                          if self.device.type == "cuda" else None)
        # A linear network is positively homogeneous already: scaling it is a no-op
        # that would cost a pass over the residual, so only nonlinear ones are scaled.
        self._scale = bool(self.opts["scale"]) and self.nonlinear
        self._parallel = pc.getComm().getSize() > 1
        self._cuda = self.device.type == "cuda"
        self._mpi = pc.getComm().tompi4py() if self._parallel else None
        self.build(pc)
        self.probe(pc)
        # A ksp_type in the options database is checked at setup already; a
        # programmatic KSPSetType (or PETSc's default gmres) in preSolve.
        ksp_type = PETSc.Options(pc.getOptionsPrefix()).getString("ksp_type", "")
        if ksp_type:
            self.check_ksp(pc, ksp_type)

    def update(self, pc: PETSc.PC) -> None:
        """New values, same pattern: refresh the tensors in place (no reload)."""
        _, P = pc.getOperators()
        if self.op is None or self.model is None or not self.op.same_pattern(P):
            self.reset(pc)
            self.initialize(pc)
            return
        self.op.refresh(P)
        self._static = self.static_inputs()
        self.fallback_reason = None
        if self.fallback is not None:
            self.fallback.setOperators(*pc.getOperators())
        self.build(pc)

    def static_inputs(self) -> tuple[torch.Tensor, ...]:
        """The network's inputs after the residual, built at setup (not per apply)."""
        return self.op.inputs(self.model.metadata.inputs[1:])

    def build(self, pc: PETSc.PC) -> None:
        """Method-specific setup after the model and operator are ready."""

    def check_inputs(self, path: str, inputs: list[str]) -> None:
        """Per-apply networks take the residual first, then known operator inputs."""
        if not inputs or inputs[0] != "residual":
            raise ModelFileError(
                f"model {path!r}: inputs must start with 'residual', got {inputs}"
            )
        unknown = [name for name in inputs if name not in INPUT_NAMES]
        if unknown:
            raise ModelFileError(
                f"model {path!r}: unknown inputs {unknown}; known: {list(INPUT_NAMES)}"
            )

    def call_model(self, *args: torch.Tensor, where: str = "") -> Any:
        """Run the network at setup; a failure is reported as a model mismatch."""
        try:
            with torch.inference_mode():
                return self.model.module(*args)
        except Exception as exc:
            msg = str(exc).strip().splitlines()
            detail = f" ({where})" if where else ""
            raise ModelMismatchError(
                f"model {self.model.path!r} fails on this operator{detail}: "
                f"{msg[-1] if msg else type(exc).__name__}"
            ) from None

    def probe(self, pc: PETSc.PC) -> None:
        """Run the network once at setup so that a shape mismatch is caught here."""
        n, rank = self.op.n_local, pc.getComm().getRank()
        if n == 0:
            return
        r = torch.full((n,), n**-0.5, dtype=self.dtype, device=self.device)
        out = self.call_model(r, *self._static, where=f"{n} local rows on rank {rank}")
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (n,):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ModelMismatchError(
                f"model {self.model.path!r} returns shape {shape} for a residual of {n} "
                f"local rows on rank {rank}; expected ({n},)"
            )

    # -- the Krylov-method rule ------------------------------------------------------
    def check_ksp(self, pc: PETSc.PC, ksp_type: str | None) -> None:
        if not ksp_type or not self.nonlinear or ksp_type in FLEXIBLE_KSP_TYPES:
            return
        name, prefix = type(self).__name__, self.options_prefix(pc)
        if self.opts.get("allow_nonflexible"):
            self.warn(pc, f"{name} is nonlinear in the residual but runs under -ksp_type "
                          f"{ksp_type} (-{prefix}allow_nonflexible): convergence is not "
                          "guaranteed; the true residual is checked after the solve",
                      key="nonflexible")
            return
        raise NeuralPCError(
            f"{name} is nonlinear in the residual, so -ksp_type {ksp_type} (which assumes a "
            "fixed linear preconditioner) can report convergence for a wrong solution: use a "
            f"flexible method ({', '.join(FLEXIBLE_KSP_ORDER)}), or "
            f"-{prefix}allow_nonflexible to run it anyway with a true-residual check"
        )

    def _check_residual_wanted(self, ksp_type: str) -> bool:
        forced = tristate(self.opts.get("check_residual", "auto"))
        if forced is not None:
            return forced
        return self.nonlinear and ksp_type not in FLEXIBLE_KSP_TYPES

    def preSolve(self, pc: PETSc.PC, ksp: PETSc.KSP, b: PETSc.Vec, x: PETSc.Vec) -> None:  # noqa: N802
        """Called by KSPSolve before the first iteration: the one place a PC sees its KSP."""
        ksp_type = ksp.getType()
        self._warned.clear()  # warnings are given once per solve
        self.check_ksp(pc, ksp_type)
        self._fallback_this_solve = False
        self._history = []
        # The KSP is held only for the duration of the solve (postSolve drops it):
        # a lasting reference would be a cycle through PETSc's refcounts.
        self._ksp = ksp if self.opts.get("stagnation", 0) > 0 else None
        self._check = self._check_residual_wanted(ksp_type) and ksp_type != "preonly"
        if self._check:
            A = ksp.getOperators()[0]
            r = b.duplicate()
            if ksp.getInitialGuessNonzero():
                A.mult(x, r)
                r.aypx(-1.0, b)
            else:
                b.copy(r)
            self._r0 = r.norm()
            r.destroy()

    def postSolve(self, pc: PETSc.PC, ksp: PETSc.KSP, b: PETSc.Vec, x: PETSc.Vec) -> None:  # noqa: N802
        self._ksp = None
        if self._fallback_this_solve:  # the stagnation fallback lasts one solve
            self.fallback_events.append(self.fallback_reason)
            self.fallback_reason = None
        if not getattr(self, "_check", False) or ksp.getConvergedReason() <= 0:
            return
        A = ksp.getOperators()[0]
        r = b.duplicate()
        A.mult(x, r)
        r.aypx(-1.0, b)
        true = r.norm()
        r.destroy()
        rtol, atol, _, _ = ksp.getTolerances()
        tol = self.opts.get("residual_factor", 10.0) * max(rtol * self._r0, atol)
        if true > tol:
            reason = ksp.getConvergedReason()
            ksp.setConvergedReason(PETSc.KSP.ConvergedReason.DIVERGED_BREAKDOWN)
            rel = true / self._r0 if self._r0 > 0 else true
            self.warn(pc, f"{type(self).__name__}: -ksp_type {ksp.getType()} reported "
                          f"convergence (reason {reason}) at iteration "
                          f"{ksp.getIterationNumber()}, but the true residual ||b - Ax|| / "
                          f"||r0|| = {rel:.3g} exceeds {self.opts.get('residual_factor')} x "
                          f"rtol {rtol:g}: the nonlinear preconditioner invalidated the "
                          "method's residual estimate; reason set to KSP_DIVERGED_BREAKDOWN "
                          "(use -ksp_type fgmres)", key="false-convergence")

    def _stagnating(self) -> bool:
        """Has the KSP's residual fallen by less than the factor over the window?"""
        ksp, k = self._ksp, int(self.opts.get("stagnation", 0))
        if ksp is None or k <= 0 or self._fallback_this_solve:
            return False
        it, rnorm = ksp.getIterationNumber(), ksp.getResidualNorm()
        h = self._history
        if not h or it >= len(h):
            h.extend([rnorm] * (it + 1 - len(h)))
        h[it] = rnorm
        return it >= k and h[it] > self.opts["stagnation_factor"] * h[it - k]

    # -- apply (the hot path: no option reads, no allocations but the network's) -----
    def apply(self, pc: PETSc.PC, x: PETSc.Vec, y: PETSc.Vec) -> None:
        with log_event("PCNeuralApply"):
            self._applies += 1
            if self._stagnating():  # the KSP's norm is global: every rank agrees
                self._fallback_this_solve = True
                self.activate_fallback(pc, f"the residual fell by less than "
                                           f"{self.opts['stagnation_factor']} over "
                                           f"{self.opts['stagnation']} iterations",
                                       until="for the rest of this solve")
            if self.fallback_reason is not None:
                self.fallback.apply(x, y)
                return
            r = vec_to_tensor(x, "r")  # zero copy: the Vec's own memory
            out_t = vec_to_tensor(y, "w")
            h2d = self._cuda and not is_device_vec(x)
            if h2d:
                with log_event("PCNeuralHtoD"):
                    self._in.copy_(r, non_blocking=True)  # the one host->device copy
                inp = self._in
            elif r.dtype != self.dtype:
                self._in.copy_(r)  # the one cast (float32 model)
                inp = self._in
            else:
                inp = r  # float64 on the Vec's device: the network reads the Vec itself
            scale = 1.0
            # No early return before the agreement below: every rank reaches it,
            # whatever its data (a zero residual, no rows at all).
            skip = r.numel() == 0
            if self._scale and not skip:
                scale = float(torch.linalg.vector_norm(r))
                skip = scale == 0.0 or not math.isfinite(scale)
                if not skip:
                    if inp is r:
                        torch.div(r, scale, out=self._in)  # never write into x
                        inp = self._in
                    else:
                        inp.div_(scale)
            z, error = None, None
            if not skip:
                try:
                    with log_event("PCNeuralInfer"), torch.inference_mode():
                        z = self.model.module(inp, *self._static)
                except Exception as exc:  # noqa: BLE001 - agreed on below, then raised
                    error = exc
            # One read pass and no allocation: the sum is finite iff every entry is
            # (barring overflow of entries near 1e308, which is no usable output).
            ok = error is None and (z is None or math.isfinite(float(z.sum())))
            if self._parallel:
                ok = all_true(pc.getComm(), ok)
            if not ok:  # every rank is here: agree on an exception first, then on NaN/Inf
                if error is not None:
                    error = NeuralPCError(
                        f"{type(self).__name__}: the network raised at apply {self._applies}: "
                        f"{type(error).__name__}: {error}")
                agree(pc.getComm(), error, "network apply")
                self._on_failure(pc, x, y, z)
                return
            if z is None:
                # Zero in, zero out; a non-finite residual is passed through for KSP to see.
                if r.numel() and not math.isfinite(scale):
                    out_t.copy_(r)
                else:
                    out_t.zero_()
                return
            if self._cuda and not is_device_vec(y):
                with log_event("PCNeuralDtoH"):
                    self._host_out.copy_(z)  # the one device->host copy
                z = self._host_out
            # The one write into y: rescale, and for float32 cast back, in the same pass.
            if scale != 1.0:
                torch.mul(z, scale, out=out_t)
            else:
                out_t.copy_(z)

    def _on_failure(self, pc: PETSc.PC, x: PETSc.Vec, y: PETSc.Vec, z: Any) -> None:
        """Non-finite output on some rank: every rank gets here (the flag was agreed)."""
        comm = pc.getComm()
        bad = 0 if z is None else int((~torch.isfinite(z)).sum())
        if comm.getSize() > 1:
            ranks = [r for r, b in enumerate(comm.tompi4py().allgather(bad)) if b]
            where = f" on rank(s) {ranks}" if ranks else ""  # z is None: a root-only network
        else:
            where = ""
        cause = (f"{type(self).__name__}: the network returned non-finite values (NaN/Inf)"
                 f"{where} for a finite residual at apply {self._applies} (model "
                 f"{self.model.path!r})")
        if self.opts["on_failure"] == "fallback":
            self.activate_fallback(pc, cause)
            self.fallback.apply(x, y)
            return
        raise NonFiniteOutputError(
            cause + f"; -{self._prefix}on_failure fallback switches to a classical PC instead"
        )

    def apply_columns(self, pc: PETSc.PC, X: PETSc.Mat, Y: PETSc.Mat) -> None:
        """``Y = P(X)`` column by column through :meth:`apply` (dense ``X`` and ``Y``)."""
        for j in range(X.getSize()[1]):
            xj = X.getDenseColumnVec(j, "r")
            yj = Y.getDenseColumnVec(j, "w")
            self.apply(pc, xj, yj)
            X.restoreDenseColumnVec(j, "r", xj)
            Y.restoreDenseColumnVec(j, "w", yj)

    def matApply(self, pc: PETSc.PC, X: PETSc.Mat, Y: PETSc.Mat) -> None:  # noqa: N802
        """Many right-hand sides (``PCMatApply``): one batched network call where possible.

        A model with a ``forward_batch(R (n, k), *inputs)`` method gets all
        columns at once; otherwise the columns go through :meth:`apply` one by one.
        """
        batch = getattr(self.model.module, "forward_batch", None)
        if batch is None or self.fallback_reason is not None or self._cuda:
            self.apply_columns(pc, X, Y)
            return
        with log_event("PCNeuralApply"):
            self._applies += 1
            R = torch.from_numpy(X.getDenseArray(readonly=True).copy()).to(self.dtype)
            scale = torch.ones(R.shape[1], dtype=self.dtype)
            zero = torch.zeros(R.shape[1], dtype=torch.bool)
            if self._scale:
                norms = torch.linalg.vector_norm(R, dim=0)
                zero = norms == 0  # zero in, zero out, as in apply
                scale = torch.where(zero, torch.ones_like(norms), norms)
            Z, error = None, None
            if R.shape[0]:
                try:
                    with log_event("PCNeuralInfer"), torch.inference_mode():
                        Z = batch(R / scale, *self._static) * scale
                        Z[:, zero] = 0.0
                except Exception as exc:  # noqa: BLE001
                    error = exc
            ok = error is None and (Z is None or bool(torch.isfinite(Z).all()))
            if error is not None:
                agree(pc.getComm(), NeuralPCError(f"network matApply: {error}"), "network")
            if not all_true(pc.getComm(), ok):
                raise NonFiniteOutputError(
                    f"{type(self).__name__}: the network returned non-finite values in "
                    "matApply")
            out = Y.getDenseArray()
            out[:] = 0.0 if Z is None else Z.to(torch.float64).numpy()

    # -- view ------------------------------------------------------------------------
    def view_details(self, pc: PETSc.PC) -> list[str]:
        if self.model is None or self.op is None:
            return ["(not set up)"]
        lines = super().view_details(pc)
        lines.insert(3, f"local rows {self.op.n_local}, local nnz {self.op.nnz}; "
                        f"applies so far {self._applies}")
        if self.fallback_events:
            lines.append(f"stagnation fallbacks: {len(self.fallback_events)} solve(s), last: "
                         f"{self.fallback_events[-1]}")
        if self.nonlinear:
            lines.append("nonlinear in the residual: valid under flexible Krylov methods "
                         "(fgmres, fcg, gcr, ...)")
        return lines
