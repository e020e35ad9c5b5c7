"""The PETSc python-PC lifecycle shared by every petsc-neural preconditioner.

Modelled on Firedrake's ``firedrake.preconditioners.base.PCBase`` and
petsc4py's python-PC protocol: PETSc calls ``setFromOptions``, ``setUp`` (first
time: :meth:`PCBase.initialize`; later, same nonzero pattern:
:meth:`PCBase.update`, values only), ``apply``, ``view`` and ``reset`` on the
Python context created from ``-pc_python_type``.

:class:`NeuralPCBase` adds what a network applied per Krylov iteration needs:
the model file (:mod:`pcshell.modelfile`), the operator as tensors
(:mod:`pcshell.operator`), the DLPack bridge (:mod:`pcshell.bridge`), positive
homogeneity, the check of the Krylov method, the non-finite safeguard and a
classical fallback PC.  See its docstring for the options.
"""

from __future__ import annotations

import logging
import math
import weakref
from typing import Any, ClassVar

import numpy as np
import torch
from petsc4py import PETSc

from .bridge import is_device_vec, vec_to_tensor
from .errors import ModelFileError, ModelMismatchError, NeuralPCError, NonFiniteOutputError
from .modelfile import INPUT_NAMES, LoadedModel, load_model
from .operator import LocalOperator, enable_pc_set_coordinates, get_coordinates

__all__ = [
    "PCBase",
    "NeuralPCBase",
    "FLEXIBLE_KSP_TYPES",
    "FIXED_SPD_KSP_TYPES",
    "log_event",
    "read_option_table",
]

logger = logging.getLogger("petsc_neural.pcshell")

# Krylov methods that allow the preconditioner to change between iterations.
FLEXIBLE_KSP_TYPES = frozenset(
    {"fgmres", "fcg", "pipefcg", "gcr", "pipegcr", "pipefgmres", "fbcgs", "fbcgsr", "preonly"}
)
# Methods whose theory needs a fixed symmetric positive definite preconditioner.
FIXED_SPD_KSP_TYPES = frozenset(
    {"cg", "pipecg", "pipecgrr", "groppcg", "pipelcg", "cgne", "cr", "pipecr", "minres",
     "symmlq", "nash", "stcg", "gltr", "qcg", "chebyshev"}
)

_EVENTS: dict[str, PETSc.Log.Event] = {}


def log_event(name: str) -> PETSc.Log.Event:
    """A ``PETSc.Log.Event`` registered once per name (shown by ``-log_view``)."""
    ev = _EVENTS.get(name)
    if ev is None:
        ev = _EVENTS[name] = PETSc.Log.Event(name)
    return ev


def read_option_table(prefix: str, table: list[tuple[str, Any, str]]) -> dict[str, Any]:
    """Read ``(name, default, help)`` options under ``prefix``, typed by their defaults.

    Each read marks the option as used, so ``-options_left`` reports only typos.
    """
    opts = PETSc.Options(prefix)
    out: dict[str, Any] = {}
    for name, default, _ in table:
        if isinstance(default, bool):
            out[name] = opts.getBool(name, default)
        elif isinstance(default, int):
            out[name] = opts.getInt(name, default)
        elif isinstance(default, float):
            out[name] = opts.getReal(name, default)
        else:
            out[name] = opts.getString(name, default)
    return out


def _option_help(pc: PETSc.PC, prefix: str, options: list[tuple[str, Any, str]]) -> None:
    """Print options the way PETSc's ``-help`` does (rank 0 of the PC's comm)."""
    lines = [f"{type_name} options ({prefix}):" for type_name in ["Neural preconditioner"]]
    for name, value, text in options:
        lines.append(f"  -{prefix}{name} <{value}>: {text}")
    PETSc.Sys.Print("\n".join(lines), comm=pc.getComm())


class PCBase:
    """Lifecycle of a python PC: ``initialize`` on the first ``setUp``, ``update`` after.

    Subclasses set ``_prefix`` (appended to the PC's options prefix, e.g.
    ``"pc_neural_"``) and implement :meth:`initialize`, :meth:`update`,
    :meth:`apply` and :meth:`view_details`.
    """

    _prefix: ClassVar[str] = "pc_neural_"
    #: Does apply() depend nonlinearly on its input?  Checked against the KSP.
    nonlinear: bool = False

    def __init__(self) -> None:
        self.initialized = False

    # -- petsc4py python-PC protocol -------------------------------------------------
    def create(self, pc: PETSc.PC) -> None:
        # The context must not keep a petsc4py reference to its PC: that is a
        # reference cycle through PETSc's refcount (PC -> context -> PC) that
        # Python's collector cannot see, so the PC and everything set up on it
        # would never be destroyed.
        # PCSetCoordinates on a python PC is a no-op unless we compose it.
        self.pc_coordinates: np.ndarray | None = None
        ref = weakref.ref(self)

        def store(coords: np.ndarray) -> None:
            ctx = ref()
            if ctx is not None:
                ctx.pc_coordinates = coords

        self._setcoords_cb = enable_pc_set_coordinates(pc, store)

    def node_coordinates(self, pc: PETSc.PC, P: PETSc.Mat | None = None) -> np.ndarray | None:
        """Coordinates given by ``PCSetCoordinates``, else composed on ``pc`` or ``P``."""
        coords = getattr(self, "pc_coordinates", None)
        return coords if coords is not None else get_coordinates(pc, P)

    def setUp(self, pc: PETSc.PC) -> None:  # noqa: N802 (petsc4py's name)
        with log_event("PCNeuralSetUp"):
            error: Exception | None = None
            try:
                if not self.initialized:
                    self.initialize(pc)
                else:
                    self.update(pc)
            except Exception as exc:
                error = exc
            comm = pc.getComm()
            if comm.getSize() > 1:
                # A setup error can be rank-local (a size mismatch, a failing probe):
                # agree on it so that every rank raises instead of some hanging.
                msgs = comm.tompi4py().allgather(
                    None if error is None else f"{type(error).__name__}: {error}"
                )
                failed = [r for r, m in enumerate(msgs) if m]
                if failed and error is None:
                    raise NeuralPCError(
                        f"{type(self).__name__} setup failed on rank(s) {failed}: "
                        f"{msgs[failed[0]]}"
                    )
            if error is not None:
                raise error
            self.initialized = True

    def reset(self, pc: PETSc.PC) -> None:
        self.initialized = False

    def destroy(self, pc: PETSc.PC) -> None:
        self.reset(pc)

    def preSolve(self, pc: PETSc.PC, ksp: PETSc.KSP, b: PETSc.Vec, x: PETSc.Vec) -> None:  # noqa: N802
        """Called by KSPSolve: the one place a PC sees its Krylov method."""
        self.check_ksp(ksp.getType())

    def applyTranspose(self, pc: PETSc.PC, x: PETSc.Vec, y: PETSc.Vec) -> None:  # noqa: N802
        raise NeuralPCError(f"{type(self).__name__} has no transpose apply")

    def view(self, pc: PETSc.PC, viewer: PETSc.Viewer | None = None) -> None:
        if viewer is None or viewer.getType() != PETSc.Viewer.Type.ASCII:
            return
        viewer.pushASCIITab()
        viewer.printfASCII(f"petsc_neural {type(self).__name__}\n")
        viewer.pushASCIITab()
        for line in self.view_details(pc):
            viewer.printfASCII(line + "\n")
        self.view_inner(pc, viewer)
        viewer.popASCIITab()
        viewer.popASCIITab()

    # -- for subclasses --------------------------------------------------------------
    def options_prefix(self, pc: PETSc.PC, prefix: str | None = None) -> str:
        return (pc.getOptionsPrefix() or "") + (self._prefix if prefix is None else prefix)

    def check_ksp(self, ksp_type: str | None) -> None:
        """Refuse a nonlinear PC under a method that needs a fixed SPD preconditioner."""

    def initialize(self, pc: PETSc.PC) -> None:
        raise NotImplementedError

    def update(self, pc: PETSc.PC) -> None:
        raise NotImplementedError

    def view_details(self, pc: PETSc.PC) -> list[str]:
        return []

    def view_inner(self, pc: PETSc.PC, viewer: PETSc.Viewer) -> None:
        """View inner PETSc objects (e.g. a fallback or multigrid PC)."""


class NeuralPCBase(PCBase):
    """A network applied to the residual at every Krylov iteration.

    Options (common to every method, prefix ``-[ksp prefix]pc_neural_``):

    ``-pc_neural_model FILE``
        Model file (TorchScript + metadata, see :mod:`pcshell.modelfile`).
        Default: the method's shipped model, if it has one.
    ``-pc_neural_device cpu|cuda``
        Where the network runs (default ``cpu``).  ``cuda`` without a GPU is an
        error.  A CUDA Vec (``-vec_type cuda``) is used without a copy;
        otherwise each apply makes one host->device and one device->host copy
        into buffers allocated once at setup.
    ``-pc_neural_dtype auto|float64|float32``
        Compute dtype; must match the model's (``auto``, the default, takes
        it).  PETSc vectors are float64: a float32 model costs exactly one cast
        each way per apply (residual into a float32 buffer, output into the
        output Vec).
    ``-pc_neural_on_failure error|fallback``
        What a non-finite network output does: raise a PETSc error naming the
        cause (default), or switch to a classical PC for the rest of this
        setup, logging a warning once.  The fallback PC has prefix
        ``-pc_neural_fallback_`` (default ``-pc_neural_fallback_pc_type
        jacobi``).
    ``-pc_neural_scale true|false``
        Scale the residual to unit 2-norm before a nonlinear network and back
        after (default ``true``): the applied map is then positively
        homogeneous and maps zero to zero, as Krylov methods assume.  (A model
        whose metadata says ``linear`` is homogeneous already and is called
        on the Vec's memory directly.)
    ``-pc_neural_allow_nonlinear_cg true|false``
        Let a network that is nonlinear in the residual run under CG-type
        methods (default ``false``: refused with a pointer to ``fgmres``/``fcg``).

    Under MPI each rank applies the network to its own rows with the local
    diagonal block of the operator (a neural block Jacobi); the safeguard
    agrees across ranks with one small allreduce per apply so that a failure
    on one rank never leaves the others waiting.
    """

    #: The ``method`` a model file must declare to be served by this class.
    method: ClassVar[str] = "torchscript"

    def __init__(self) -> None:
        super().__init__()
        self.model: LoadedModel | None = None
        self.op: LocalOperator | None = None
        self.fallback: PETSc.PC | None = None
        self._fallback_active = False
        self._warned_fallback = False
        self._applies = 0
        self.opts: dict[str, Any] = {}

    # -- options ---------------------------------------------------------------------
    def option_table(self) -> list[tuple[str, Any, str]]:
        """(name, default, help) of this class's options under ``_prefix``."""
        return [
            ("model", self.default_model() or "", "model file (TorchScript with metadata)"),
            ("device", "cpu", "where the network runs: cpu or cuda"),
            ("dtype", "auto", "compute dtype: auto (the model's), float64 or float32"),
            ("on_failure", "error", "non-finite network output: error or fallback"),
            ("scale", True, "scale the residual to unit norm (positive homogeneity)"),
            ("allow_nonlinear_cg", False, "allow a nonlinear network under CG-type methods"),
        ]

    def default_model(self) -> str | None:
        """Path of a shipped model used when ``-pc_neural_model`` is not given."""
        return None

    def load_model(self, path: str, device: torch.device) -> LoadedModel:
        """Load and validate the model file (a subclass may cache it)."""
        return load_model(path, device=device, method=self.method)

    def read_options(self, pc: PETSc.PC) -> dict[str, Any]:
        """Read (and mark as used) this class's options; never called per apply."""
        prefix = self.options_prefix(pc)
        out = read_option_table(prefix, self.option_table())
        if out["device"] not in ("cpu", "cuda") and not str(out["device"]).startswith("cuda:"):
            raise NeuralPCError(f"-{prefix}device must be cpu or cuda, got {out['device']!r}")
        if out["dtype"] not in ("auto", "float64", "float32"):
            raise NeuralPCError(
                f"-{prefix}dtype must be auto, float64 or float32, got {out['dtype']!r}"
            )
        if out["on_failure"] not in ("error", "fallback"):
            raise NeuralPCError(
                f"-{prefix}on_failure must be error or fallback, got {out['on_failure']!r}"
            )
        return out

    def setFromOptions(self, pc: PETSc.PC) -> None:  # noqa: N802
        if PETSc.Options().hasName("help"):
            _option_help(pc, self.options_prefix(pc), self.option_table())
        self.opts = self.read_options(pc)

    # -- setup -----------------------------------------------------------------------
    def _device(self) -> torch.device:
        device = str(self.opts["device"])
        if device.startswith("cuda") and not torch.cuda.is_available():
            why = (
                "this torch is a CPU-only build" if torch.version.cuda is None
                else "no CUDA device is visible"
            )
            raise NeuralPCError(
                f"-{self._prefix}device {device} was asked for, but CUDA is not available "
                f"({why}); use -{self._prefix}device cpu"
            )
        return torch.device(device)

    def initialize(self, pc: PETSc.PC) -> None:
        self.opts = self.read_options(pc)
        prefix = self.options_prefix(pc)
        if PETSc.ScalarType().dtype.kind != "f":
            raise NeuralPCError("petsc-neural needs a real-valued PETSc build (PetscScalar real)")
        device = self._device()
        path = self.opts["model"]
        if not path:
            raise NeuralPCError(
                f"no model given: set -{prefix}model FILE ({type(self).__name__} ships none)"
            )
        model = self.load_model(path, device)
        meta = model.metadata
        dtype = meta.torch_dtype
        if self.opts["dtype"] != "auto" and self.opts["dtype"] != meta.dtype:
            raise ModelMismatchError(
                f"model {path!r} computes in {meta.dtype}, but -{prefix}dtype "
                f"{self.opts['dtype']} was asked for: drop the option or export the model "
                f"in {self.opts['dtype']}"
            )
        for name, t in model.module.state_dict().items():
            if t.is_floating_point() and t.dtype != dtype:
                raise ModelMismatchError(
                    f"model {path!r} declares dtype {meta.dtype}, but its tensor {name!r} "
                    f"is {t.dtype}: the file is inconsistent"
                )
        _, P = pc.getOperators()
        rank = pc.getComm().getRank()
        bs = P.getBlockSize()
        if meta.block_size != bs:
            raise ModelMismatchError(
                f"model {path!r} was made for block size {meta.block_size}, "
                f"the operator has block size {bs}"
            )
        n_local = P.getLocalSize()[0]
        if meta.n is not None and meta.n != n_local:
            raise ModelMismatchError(
                f"model {path!r} was made for {meta.n} local rows, the operator has "
                f"{n_local} on rank {rank} (of {P.getSize()[0]} rows in all)"
            )
        self.model = model
        self.device = device
        self.dtype = dtype
        self.nonlinear = not meta.linear
        self.check_inputs(path, meta.inputs)
        self.op = LocalOperator(P, dtype=dtype, device=device, pc=pc,
                                coordinates=self.node_coordinates(pc, P))
        self._static = self.static_inputs()
        self._alloc_buffers(n_local)
        # A linear network is positively homogeneous already: scaling it is a no-op
        # that would cost a pass over the residual, so only nonlinear ones are scaled.
        self._scale = bool(self.opts["scale"]) and self.nonlinear
        self._parallel = pc.getComm().getSize() > 1
        self._cuda = device.type == "cuda"
        self._mpi_comm = pc.getComm().tompi4py() if self._parallel else None
        self.build(pc)
        self._setup_fallback(pc)
        self.probe(path, n_local, rank)
        # A ksp_type set in the options database is checked here already; a
        # programmatic KSPSetType is checked in preSolve.
        self.check_ksp(PETSc.Options(pc.getOptionsPrefix()).getString("ksp_type", ""))

    def update(self, pc: PETSc.PC) -> None:
        _, P = pc.getOperators()
        if self.op is None or not self.op.same_pattern(P):
            logger.info("operator pattern changed: rebuilding %s", type(self).__name__)
            self.initialize(pc)
            return
        self.op.refresh(P)
        self._static = self.static_inputs()
        self._fallback_active = False
        if self.fallback is not None:
            self.fallback.setOperators(*pc.getOperators())
        self.build(pc)

    def static_inputs(self) -> tuple[torch.Tensor, ...]:
        """The network's inputs after the residual, built at setup (not per apply)."""
        return self.op.inputs(self.model.metadata.inputs[1:])

    def build(self, pc: PETSc.PC) -> None:
        """Method-specific setup after the model and operator are ready."""

    def _alloc_buffers(self, n: int) -> None:
        # One input buffer in the model's dtype/device: the scaled (and, for
        # float32 or CUDA, cast/copied) residual.  Allocated once.
        self._in = torch.empty(n, dtype=self.dtype, device=self.device)
        self._host_out = (
            torch.empty(n, dtype=torch.float64, pin_memory=True)
            if self.device.type == "cuda" else None
        )

    def _setup_fallback(self, pc: PETSc.PC) -> None:
        if self.opts["on_failure"] != "fallback":
            self.fallback = None
            return
        if self.fallback is None:
            self.fallback = PETSc.PC().create(comm=pc.getComm())
            self.fallback.setOptionsPrefix(self.options_prefix(pc) + "fallback_")
            self.fallback.setType("jacobi")
        self.fallback.setOperators(*pc.getOperators())
        self.fallback.setFromOptions()
        self.fallback.setUp()
        self._fallback_active = False

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

    def probe(self, path: str, n_local: int, rank: int) -> None:
        """Run the network once at setup so a shape mismatch is caught here."""
        r = torch.ones(n_local, dtype=self.dtype, device=self.device)
        if n_local:
            r /= n_local**0.5
        out = self.call_model(r, *self._static, where=f"{n_local} local rows on rank {rank}")
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (n_local,):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ModelMismatchError(
                f"model {path!r} returns shape {shape} for a residual of {n_local} "
                f"local rows on rank {rank}; expected ({n_local},)"
            )

    def check_ksp(self, ksp_type: str | None) -> None:
        if not ksp_type or not self.nonlinear:
            return
        if ksp_type in FLEXIBLE_KSP_TYPES:
            return
        prefix = self._prefix
        if ksp_type in FIXED_SPD_KSP_TYPES:
            if self.opts.get("allow_nonlinear_cg"):
                if not getattr(self, "_warned_cg", False):
                    logger.warning(
                        "%s is nonlinear in the residual but runs under -ksp_type %s "
                        "(-%sallow_nonlinear_cg): convergence is not guaranteed",
                        type(self).__name__, ksp_type, prefix)
                    self._warned_cg = True
                return
            raise NeuralPCError(
                f"{type(self).__name__} is nonlinear in the residual (model declares "
                f"linear=false), so -ksp_type {ksp_type} (which needs a fixed SPD "
                "preconditioner) may fail silently: use -ksp_type fgmres or fcg, or "
                f"-{prefix}allow_nonlinear_cg to run it anyway"
            )
        if not getattr(self, "_warned_ksp", False):
            logger.warning(
                "%s is nonlinear in the residual; -ksp_type %s assumes a fixed "
                "preconditioner: prefer fgmres or fcg", type(self).__name__, ksp_type)
            self._warned_ksp = True

    # -- apply (the hot path: no option reads, no allocations but the network's) -----
    def apply(self, pc: PETSc.PC, x: PETSc.Vec, y: PETSc.Vec) -> None:
        with log_event("PCNeuralApply"):
            self._applies += 1
            if self._fallback_active:
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
            if self._scale:
                scale = float(torch.linalg.vector_norm(r))
                if scale == 0.0:  # zero in, zero out
                    out_t.zero_()
                    return
                if not math.isfinite(scale):
                    # Non-finite residual: not the network's fault; let KSP see it.
                    out_t.copy_(r)
                    return
                if inp is r:
                    torch.div(r, scale, out=self._in)  # never write into x
                    inp = self._in
                else:
                    inp.div_(scale)
            with log_event("PCNeuralInfer"), torch.inference_mode():
                z = self.model.module(inp, *self._static)
            # One read pass and no allocation: the sum is finite iff every entry is
            # (barring overflow of entries near 1e308, which is no usable output).
            ok = math.isfinite(float(z.sum()))
            if self._parallel:
                ok = self._mpi_comm.allreduce(ok, op=_mpi_land())
            if not ok:
                self._on_failure(pc, x, y, z)
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

    def _on_failure(self, pc: PETSc.PC, x: PETSc.Vec, y: PETSc.Vec, z: torch.Tensor) -> None:
        bad = int((~torch.isfinite(z)).sum())
        comm = pc.getComm().tompi4py()
        ranks = [r for r, b in enumerate(comm.allgather(bad)) if b] if comm.size > 1 else [0]
        where = f"on rank(s) {ranks}" if comm.size > 1 else ""
        cause = (
            f"{type(self).__name__}: the network returned non-finite values (NaN/Inf) "
            f"{where} for a finite residual at apply {self._applies} (model "
            f"{self.model.path!r})"
        ).replace("  ", " ")
        if self.opts["on_failure"] == "fallback":
            self._fallback_active = True
            if not self._warned_fallback:
                logger.warning("%s; falling back to -%sfallback_pc_type %s until the next setup",
                               cause, self._prefix, self.fallback.getType())
                self._warned_fallback = True
            self.fallback.apply(x, y)
            return
        raise NonFiniteOutputError(
            cause + f"; -{self._prefix}on_failure fallback switches to a classical PC instead"
        )

    # -- view ------------------------------------------------------------------------
    def view_details(self, pc: PETSc.PC) -> list[str]:
        if self.model is None:
            return ["(not set up)"]
        m = self.model.metadata
        lines = [
            f"method: {m.method}; model: {self.model.path}",
            f"model hash {m.content_hash[:23]}..., torch {m.torch_version}, created {m.created}",
            f"problem family: {m.problem_family}; block size {m.block_size}; "
            f"inputs {m.inputs}; {'linear' if m.linear else 'nonlinear'} in the residual",
            f"device {self.device}; dtype {m.dtype}; local rows {self.op.n_local}, "
            f"local nnz {self.op.nnz}",
            "options: " + ", ".join(f"{k}={v}" for k, v in self.opts.items() if k != "model"),
        ]
        if self.fallback is not None:
            state = "ACTIVE" if self._fallback_active else "standby"
            lines.append(f"fallback PC ({state}): {self.fallback.getType()}")
        return lines


def _mpi_land():
    from mpi4py import MPI

    return MPI.LAND
