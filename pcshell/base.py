"""The PETSc python-PC lifecycle and what every model-serving PC shares.

Modelled on Firedrake's ``firedrake.preconditioners.base.PCBase`` and
petsc4py's python-PC protocol: PETSc calls ``setFromOptions``, ``setUp``
(first time: :meth:`PCBase.initialize`; later: :meth:`PCBase.update`),
``apply``/``matApply``, ``preSolve``/``postSolve``, ``view`` and ``reset`` on
the Python context created from ``-pc_python_type``.

:class:`ModelPC` is the common base of every petsc-neural preconditioner:
options under a prefix (validated, listed by ``-help``), the model file
(:mod:`pcshell.modelfile`), device and dtype, ``view``, log events, the
method's citation, the classical fallback PC, warnings that reach the user,
and agreement of every setup failure across ranks (:mod:`pcshell.mpi`).  Two
kinds build on it:

- :class:`pcshell.residual.ResidualNetworkPC`: the network runs at every apply
  (NPO, KrylovUNet, Algebraformer);
- :class:`pcshell.setup_network.SetupNetworkPC`: the network runs at setup and
  PETSc applies what it built (NeuraLSP, GreenInverse).
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import Any, ClassVar

import numpy as np
import torch
from petsc4py import PETSc

from .errors import ModelMismatchError, NeuralPCError
from .mats import check_operator
from .messages import warn_user
from .modelfile import LoadedModel, load_model
from .mpi import agreed
from .operator import dm_coordinates, enable_pc_set_coordinates, get_coordinates
from .options import Option, option_help, pushed_options, read_options

__all__ = ["PCBase", "ModelPC", "log_event", "FLEXIBLE_KSP_TYPES"]

logger = logging.getLogger("petsc_neural.pcshell")

#: Krylov methods that allow the preconditioner to change from one iteration to the
#: next (a nonlinear PC is valid only inside these); ``preonly`` applies it once.
FLEXIBLE_KSP_ORDER = ("fgmres", "fcg", "gcr", "pipefgmres", "pipefcg", "pipegcr", "fbcgs",
                      "fbcgsr")
FLEXIBLE_KSP_TYPES = frozenset(FLEXIBLE_KSP_ORDER + ("preonly",))

_EVENTS: dict[str, PETSc.Log.Event] = {}


def log_event(name: str) -> PETSc.Log.Event:
    """A ``PETSc.Log.Event`` registered once per name (shown by ``-log_view``)."""
    ev = _EVENTS.get(name)
    if ev is None:
        ev = _EVENTS[name] = PETSc.Log.Event(name)
    return ev


_CITED: set[str] = set()


def register_citation(text: str | None) -> None:
    """Register a BibTeX entry with PETSc's ``-citations`` (once per process)."""
    if not text or text in _CITED:
        return
    _CITED.add(text)
    reg = getattr(PETSc.Sys, "registerCitation", None)
    if reg is not None:
        reg(text)


class PCBase:
    """Lifecycle of a python PC: ``initialize`` on the first ``setUp``, ``update`` after.

    A failure in ``initialize``/``update`` on any rank raises the same error
    on every rank.  Inner PETSc objects listed in ``self.inner_objects`` are
    destroyed by :meth:`reset` (and so with the outer PC).
    """

    #: Prefix of the common options, appended to the PC's own prefix.
    _prefix: ClassVar[str] = "pc_neural_"
    #: Does apply() depend nonlinearly on its input?  Checked against the KSP.
    nonlinear: bool = False

    def __init__(self) -> None:
        self.initialized = False
        self.pc_coordinates: np.ndarray | None = None
        self.inner_objects: list[Any] = []

    # -- petsc4py python-PC protocol -------------------------------------------------
    def create(self, pc: PETSc.PC) -> None:
        # The context must not keep a petsc4py reference to its PC: that is a
        # reference cycle through PETSc's refcount (PC -> context -> PC) that
        # Python's collector cannot see, so nothing set up on it would be freed.
        # PCSetCoordinates on a python PC is a no-op unless we compose it.
        ref = weakref.ref(self)

        def store(coords: np.ndarray) -> None:
            ctx = ref()
            if ctx is not None:
                ctx.pc_coordinates = coords

        self._setcoords_cb = enable_pc_set_coordinates(pc, store)

    def node_coordinates(self, pc: PETSc.PC, P: PETSc.Mat | None = None) -> np.ndarray | None:
        """The one route of node coordinates into a PC, ``(n_local_nodes, dim)`` or ``None``.

        In order: ``PCSetCoordinates`` (GAMG's API; Firedrake users and
        ``firedrake_problems`` call it), a ``Vec`` composed on the PC or the
        operator (:func:`pcshell.set_coordinates`), the coordinates of a DMDA
        attached to the PC (uniform on the unit cube when the DMDA has none).
        """
        if self.pc_coordinates is not None:
            return self.pc_coordinates
        coords = get_coordinates(pc, P)
        if coords is None:
            coords = dm_coordinates(pc)
        return coords

    def setUp(self, pc: PETSc.PC) -> None:  # noqa: N802 (petsc4py's name)
        with log_event("PCNeuralSetUp"), agreed(pc.getComm(), f"{type(self).__name__} setup"):
            if not self.initialized:
                self.initialize(pc)
            else:
                self.update(pc)
        self.initialized = True

    def reset(self, pc: PETSc.PC) -> None:
        self.initialized = False
        for obj in self.inner_objects:
            if obj is not None:
                obj.destroy()
        self.inner_objects = []

    def destroy(self, pc: PETSc.PC) -> None:
        self.reset(pc)

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

    def initialize(self, pc: PETSc.PC) -> None:
        raise NotImplementedError

    def update(self, pc: PETSc.PC) -> None:
        self.reset(pc)
        self.initialize(pc)

    def view_details(self, pc: PETSc.PC) -> list[str]:
        return []

    def view_inner(self, pc: PETSc.PC, viewer: PETSc.Viewer) -> None:
        """View inner PETSc objects (a fallback, a multigrid PC, ...)."""


# Loaded models by (path, mtime, size, device): a process that sets up many
# solvers with the same file (a time loop, a benchmark) reads and hashes it once.
# Networks only run under inference_mode, so sharing one is safe.
_MODEL_CACHE: dict[tuple[str, int, int, str, str], LoadedModel] = {}
_MODEL_CACHE_SIZE = 8


def cached_load_model(path: str, device: torch.device, method: str) -> LoadedModel:
    """:func:`pcshell.load_model`, read once per process while the file is unchanged."""
    st = os.stat(path) if os.path.exists(path) else None
    if st is None:
        return load_model(path, device=device, method=method)
    key = (os.path.abspath(path), st.st_mtime_ns, st.st_size, str(device), method)
    model = _MODEL_CACHE.get(key)
    if model is None:
        model = load_model(path, device=device, method=method)
        while len(_MODEL_CACHE) >= _MODEL_CACHE_SIZE:
            _MODEL_CACHE.pop(next(iter(_MODEL_CACHE)))
        _MODEL_CACHE[key] = model
    return model


class ModelPC(PCBase):
    """What every petsc-neural preconditioner shares (see the module docstring).

    Common options (prefix ``-[pc prefix]pc_neural_``):

    ``-pc_neural_model FILE``
        Model file (TorchScript + metadata, :mod:`pcshell.modelfile`); default:
        the method's shipped model, if it has one.
    ``-pc_neural_device cpu|cuda``
        Where the network runs (default ``cpu``); ``cuda`` without a GPU is an error.
    ``-pc_neural_dtype auto|float64|float32``
        Compute dtype; must match the model's (``auto`` takes it).
    ``-pc_neural_on_failure error|fallback``
        A non-finite network output raises a PETSc error naming the cause
        (default) or switches to the fallback PC, with one warning.
    ``-pc_neural_fallback_pc_type jacobi`` (and any PC option under ``-pc_neural_fallback_``)
        The classical fallback PC, created only when it is needed.
    ``-pc_neural_warnings true|false``
        Print warnings (stderr, rank 0; default true).

    Subclasses set ``method`` (what a model file must declare), ``title``,
    ``method_prefix`` and :meth:`method_options` for their own options,
    ``citation`` (BibTeX), and implement :meth:`setup`.
    """

    #: The ``method`` a model file must declare to be served by this class.
    method: ClassVar[str] = "torchscript"
    title: ClassVar[str] = "Neural preconditioner"
    #: Prefix of the method's own options (``None``: it has none).
    method_prefix: ClassVar[str | None] = None
    citation: ClassVar[str | None] = None

    def __init__(self) -> None:
        super().__init__()
        self.model: LoadedModel | None = None
        self.opts: dict[str, Any] = {}
        self.device = torch.device("cpu")
        self.dtype = torch.float64
        self.fallback: PETSc.PC | None = None
        self.fallback_reason: str | None = None
        self._warned: set[str] = set()
        self._applies = 0

    # -- options ---------------------------------------------------------------------
    def common_options(self) -> list[Option]:
        return [
            Option("model", self.default_model() or "", "model file (TorchScript with metadata)"),
            Option("device", "cpu", "where the network runs: cpu, cuda or cuda:N"),
            Option("dtype", "auto", "compute dtype (must match the model)",
                   choices=("auto", "float64", "float32")),
            Option("on_failure", "error", "non-finite network output: error or fallback",
                   choices=("error", "fallback")),
            Option("fallback_pc_type", "jacobi",
                   "classical PC used on failure (any option under -pc_neural_fallback_)"),
            Option("warnings", True, "print warnings on stderr (rank 0)"),
        ]

    def method_options(self) -> list[Option]:
        """The method's own options, read under ``method_prefix``."""
        return []

    def default_model(self) -> str | None:
        """Path of a shipped model used when ``-pc_neural_model`` is not given."""
        return None

    def read_options(self, pc: PETSc.PC) -> dict[str, Any]:
        """Read and validate every option; never touches the operator (it may not exist yet)."""
        self._full_prefix = self.options_prefix(pc)
        out = read_options(self._full_prefix, self.common_options())
        dev = str(out["device"])
        if dev not in ("cpu", "cuda") and not (dev.startswith("cuda:") and dev[5:].isdigit()):
            raise NeuralPCError(
                f"-{self.options_prefix(pc)}device must be cpu, cuda or cuda:N, got {dev!r}"
            )
        if self.method_prefix:
            out.update(read_options(self.options_prefix(pc, self.method_prefix),
                                    self.method_options()))
        return out

    def help_text(self, pc: PETSc.PC) -> str:
        text = option_help(f"{self.title} ({type(self).__name__}), common",
                           self.options_prefix(pc), self.common_options())
        if self.method_prefix and self.method_options():
            text += "\n" + option_help(f"{type(self).__name__}",
                                       self.options_prefix(pc, self.method_prefix),
                                       self.method_options())
        return text

    def setFromOptions(self, pc: PETSc.PC) -> None:  # noqa: N802
        if PETSc.Options().hasName("help"):
            PETSc.Sys.Print(self.help_text(pc), comm=pc.getComm())
        self.opts = self.read_options(pc)

    # -- setup -----------------------------------------------------------------------
    def torch_device(self) -> torch.device:
        device = str(self.opts["device"])
        if device.startswith("cuda") and not torch.cuda.is_available():
            why = ("this torch is a CPU-only build" if torch.version.cuda is None
                   else "no CUDA device is visible")
            prefix = getattr(self, "_full_prefix", self._prefix)
            raise NeuralPCError(
                f"-{prefix}device {device} was asked for, but CUDA is not available "
                f"({why}); use -{prefix}device cpu"
            )
        return torch.device(device)

    @property
    def needs_model(self) -> bool:
        """Does this configuration load a model file?  (Baselines of a method may not.)"""
        return True

    def initialize(self, pc: PETSc.PC) -> None:
        self.opts = self.read_options(pc)
        register_citation(self.citation)
        if PETSc.ScalarType().dtype.kind != "f":
            raise NeuralPCError("petsc-neural needs a real-valued PETSc build (PetscScalar real)")
        _, P = pc.getOperators()
        check_operator(P, type(self).__name__)
        self.device = self.torch_device()
        self.fallback_reason = None
        self._warned.clear()
        if self.needs_model:
            self.model = self.load_model(pc)
            self.dtype = self.model.metadata.torch_dtype
            self.check_model(pc, P)
        self.setup(pc)

    def load_model(self, pc: PETSc.PC) -> LoadedModel:
        path = self.opts["model"]
        if not path:
            raise NeuralPCError(
                f"no model given: set -{self.options_prefix(pc)}model FILE "
                f"({type(self).__name__} ships none for this problem)"
            )
        return cached_load_model(path, self.device, self.method)

    def check_model(self, pc: PETSc.PC, P: PETSc.Mat) -> None:
        """Dtype, block size and size of the model against the options and the operator."""
        meta, path = self.model.metadata, self.model.path
        if self.opts["dtype"] != "auto" and self.opts["dtype"] != meta.dtype:
            raise ModelMismatchError(
                f"model {path!r} computes in {meta.dtype}, but -{self.options_prefix(pc)}dtype "
                f"{self.opts['dtype']} was asked for: drop the option or export the model "
                f"in {self.opts['dtype']}"
            )
        for name, t in self.model.module.state_dict().items():
            if t.is_floating_point() and t.dtype != meta.torch_dtype:
                raise ModelMismatchError(
                    f"model {path!r} declares dtype {meta.dtype}, but its tensor {name!r} "
                    f"is {t.dtype}: the file is inconsistent"
                )
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
                f"{n_local} on rank {pc.getComm().getRank()} (of {P.getSize()[0]} rows in all)"
            )

    def setup(self, pc: PETSc.PC) -> None:
        """Method-specific setup once options, operator and model are checked."""
        raise NotImplementedError

    def reset(self, pc: PETSc.PC) -> None:
        super().reset(pc)  # destroys the fallback PC with the other inner objects
        self.fallback = None
        self.fallback_reason = None

    # -- fallback and warnings -------------------------------------------------------
    def make_fallback(self, pc: PETSc.PC) -> PETSc.PC:
        """The classical fallback PC on the same operators (collective on the PC's comm)."""
        fb = PETSc.PC().create(comm=pc.getComm())
        fb.setOptionsPrefix(self.options_prefix(pc) + "fallback_")
        fb.incrementTabLevel(1, parent=pc)
        fb.setOperators(*pc.getOperators())
        with pushed_options(self.options_prefix(pc) + "fallback_",
                            {"pc_type": self.opts.get("fallback_pc_type", "jacobi")}):
            fb.setFromOptions()
        fb.setUp()
        return fb

    def activate_fallback(self, pc: PETSc.PC, reason: str,
                          until: str = "until the next setup") -> None:
        """Switch to the fallback PC (every rank calls this, with the same reason)."""
        if self.fallback is None:
            self.fallback = self.make_fallback(pc)
            self.inner_objects.append(self.fallback)
        if self.fallback_reason is None:
            self.fallback_reason = f"{reason} (at apply {self._applies})"
            self.warn(pc, f"{type(self).__name__}: {reason}; switching to -{self._prefix}"
                          f"fallback_pc_type {self.fallback.getType()} {until}")

    def warn(self, pc: PETSc.PC, message: str, key: str | None = None) -> None:
        """A warning on stderr (rank 0), once per ``key`` until the next solve."""
        key = key or message
        if key in self._warned or not self.opts.get("warnings", True):
            return
        self._warned.add(key)
        warn_user(pc.getComm(), message)

    # -- view ------------------------------------------------------------------------
    def view_details(self, pc: PETSc.PC) -> list[str]:
        lines = []
        if self.model is not None:
            m = self.model.metadata
            lines += [
                f"method: {m.method}; model: {self.model.path}",
                f"model hash {m.content_hash[:23]}..., torch {m.torch_version}, "
                f"created {m.created}",
                f"problem family: {m.problem_family}; block size {m.block_size}; "
                f"inputs {m.inputs}; {'linear' if m.linear else 'nonlinear'} in the residual",
            ]
        lines.append(f"device {self.device}; dtype {str(self.dtype).replace('torch.', '')}; "
                     f"{'nonlinear' if self.nonlinear else 'linear'} preconditioner")
        lines.append("options: " + ", ".join(
            f"{k}={v}" for k, v in self.opts.items() if k != "model"))
        if self.fallback_reason is not None:
            lines.append(f"fallback ACTIVE: {self.fallback.getType()} since: "
                         f"{self.fallback_reason}")
        else:
            lines.append(f"fallback (standby, on {self.opts.get('on_failure')}): "
                         f"{self.opts.get('fallback_pc_type')}")
        return lines

    def view_inner(self, pc: PETSc.PC, viewer: PETSc.Viewer) -> None:
        if self.fallback is not None and self.fallback_reason is not None:
            viewer.printfASCII("fallback PC:\n")
            self.fallback.view(viewer)
