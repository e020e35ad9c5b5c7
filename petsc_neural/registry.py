"""One entry per method: what the CLI, the benchmark, ``-help`` and the model zoo read.

Adding a method means adding its :class:`MethodSpec` to :data:`METHODS`;
nothing else lists methods.  Everything is named by import path and loaded
on first use, so reading the registry imports neither torch models nor
Firedrake.

>>> from petsc_neural.registry import METHODS
>>> METHODS["npo"].pc_python_type
'petsc_neural.NPO'
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MethodSpec", "METHODS", "get_method", "MODELS_DIR", "pc_classes", "ShippedModel"]

MODELS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")


@dataclass(frozen=True)
class MethodSpec:
    """A method of petsc-neural: its PC class, options prefix, trainer, bench entry and models.

    ``pc``: ``"module:Class"`` of the PETSc python PC; ``class_name`` is what
    ``-pc_python_type petsc_neural.<class_name>`` names.  ``prefix``: the
    method's own option prefix (the common options are ``-pc_neural_*``).
    ``trainer``: module with ``register_train(subparsers)`` (``petsc-neural
    train <name>``), or ``None``.  ``bench``: extra PETSc options the benchmark
    adds when it runs this PC (beside ``pc_type python``).  ``models``: shipped
    model files by key (file names in ``petsc_neural/models``); ``default_model``
    is the key used when no ``-pc_neural_model`` is given.
    """

    name: str
    title: str
    seed: str
    pc: str
    prefix: str
    trainer: str | None = None
    bench: dict[str, Any] = field(default_factory=dict)
    ksp: str = "fgmres"
    models: dict[str, str] = field(default_factory=dict)
    default_model: str | None = None

    @property
    def class_name(self) -> str:
        return self.pc.split(":")[1]

    @property
    def pc_python_type(self) -> str:
        return f"petsc_neural.{self.class_name}"

    def load_pc_class(self) -> type:
        module, cls = self.pc.split(":")
        return getattr(importlib.import_module(module), cls)

    def model_path(self, key: str | None = None) -> str | None:
        """Path of shipped model ``key`` (default: ``default_model``), ``None`` if not shipped."""
        key = key or self.default_model
        if key is None or key not in self.models:
            return None
        return os.path.join(MODELS_DIR, self.models[key])

    def pc_options(self) -> dict[str, Any]:
        """PETSc options that select this PC (for the benchmark and the demo)."""
        return {"pc_type": "python", "pc_python_type": self.pc_python_type, **self.bench}


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            name="torchscript",
            title="any TorchScript module applied to the residual",
            seed="-",
            pc="petsc_neural.torchscript_pc:TorchScriptPC",
            prefix="pc_neural_",
        ),
        MethodSpec(
            name="npo",
            title="Neural Preconditioning Operator (neural AMG transformer)",
            seed="000",
            pc="petsc_neural.npo.pc:NPO",
            prefix="pc_npo_",
            trainer="petsc_neural.npo.train",
            models={"poisson": "npo_poisson2d.pt", "diffusion": "npo_diffusion2d.pt",
                    "elasticity": "npo_elasticity2d.pt"},
            default_model="poisson",
        ),
        MethodSpec(
            name="npo_mg",
            title="NPO-MG: NAMG attention transfer weights at setup, PETSc multigrid apply",
            seed="000",
            pc="petsc_neural.npo_mg.pc:NPOMultigrid",
            prefix="pc_npo_mg_",
            trainer="petsc_neural.npo_mg.train",
            ksp="cg",
            # One model serves every scalar family (keys: the families it was trained on).
            models={"poisson": "npo_mg_scalar.pt", "diffusion": "npo_mg_scalar.pt"},
            default_model="poisson",
        ),
        MethodSpec(
            name="neuralsp",
            title="NeuraLSP learned two-level coarse space (PCMG)",
            seed="001",
            pc="petsc_neural.neuralsp.pc:NeuraLSP",
            prefix="pc_neuralsp_",
            trainer="petsc_neural.neuralsp.train",
            ksp="cg",
            models={"diffusion": "neuralsp_local.pt"},  # the local variant
            default_model="diffusion",
        ),
        MethodSpec(
            name="algebraformer",
            title="Algebraformer: a transformer solving small dense systems (block solver)",
            seed="004",
            pc="petsc_neural.algebraformer.pc:Algebraformer",
            prefix="pc_algebraformer_",
            trainer="petsc_neural.algebraformer.train",
            models={"diffusion": "algebraformer_diffusion.pt",
                    "newton": "algebraformer_newton.pt"},
            default_model="diffusion",
        ),
        MethodSpec(
            name="krylov_unet",
            title="KrylovUNet: 3D U-Net trained through a differentiable FGMRES on Krylov angles",
            seed="002",
            pc="petsc_neural.krylov_unet.pc:KrylovUNet",
            prefix="pc_kunet_",
            trainer="petsc_neural.krylov_unet.train",
            models={"mixed_3d1d": "krylov_unet_mixed3d1d.pt"},
            default_model="mixed_3d1d",
        ),
        MethodSpec(
            name="green",
            title="GreenInverse: learned Green's function as a sparse / H-matrix approximate "
                  "inverse",
            seed="003",
            pc="petsc_neural.green.pc:GreenInverse",
            prefix="pc_green_",
            trainer="petsc_neural.green.train",
            # only shipped models; the others are trained by
            # `petsc-neural train green --problem ...` (petsc_neural/models/README.md)
            models={"convection1d": "green_convection1d.pt", "reaction1d": "green_reaction1d.pt",
                    "convection2d": "green_convection2d.pt", "reaction2d": "green_reaction2d.pt",
                    "rotated": "green_rotated.pt"},
        ),
    )
}


def get_method(name: str) -> MethodSpec:
    """The spec of method ``name``, with a clear error naming the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(METHODS)}") from None


def pc_classes() -> dict[str, str]:
    """``class_name -> method name`` for ``-pc_python_type petsc_neural.<class_name>``."""
    return {spec.class_name: spec.name for spec in METHODS.values()}


class ShippedModel:
    """Mixin for a :class:`pcshell.ModelPC` of a registered method that ships a model.

    ``default_model()`` is the method's default shipped model (the registry's
    ``models[default_model]``); ``needs_model`` is false when the option
    named by ``model_option = (name, value)`` is set to anything but ``value``
    (a baseline of the method served without a model).
    """

    method: str
    opts: dict[str, Any]
    model_option: tuple[str, str] | None = None

    def default_model(self) -> str | None:
        return get_method(self.method).model_path()

    @property
    def needs_model(self) -> bool:
        if self.model_option is None:
            return True
        name, value = self.model_option
        return self.opts.get(name, value) == value
