"""The ``petsc-neural`` command line.

Subcommands:

``petsc-neural demo``
    The main job (see :mod:`petsc_neural.demo`).
``petsc-neural train METHOD ...``
    Train and export a model; one sub-subcommand per method of the registry
    (:mod:`petsc_neural.registry`) that has a trainer.
``petsc-neural models``
    The model zoo: every method, its PC, option prefix and shipped models.
``petsc-neural bench ...``
    Compare preconditioners (:mod:`petsc_neural.bench`).
``petsc-neural problems ...`` / ``petsc-neural data ...``
    PDE families and datasets (:mod:`firedrake_problems.cli`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings

from .registry import METHODS

__all__ = ["main", "build_parser"]

# Modules with ``register(subparsers)``; imported when the parser is built.
# ``firedrake_problems.cli`` does not import Firedrake until a command runs.
_SUBCOMMAND_MODULES: tuple[str, ...] = (
    "petsc_neural.demo",
    "petsc_neural.bench",
    "firedrake_problems.cli",
)


def _register_train(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a neural preconditioner and export it")
    sub = p.add_subparsers(dest="method", metavar="METHOD")
    sub.required = True
    for spec in METHODS.values():
        if spec.trainer:
            importlib.import_module(spec.trainer).register_train(sub)


def _models(args: argparse.Namespace) -> int:
    """Print the registry: methods, PCs, option prefixes, shipped models and their metadata."""
    from pcshell import load_model

    out = sys.stdout
    for spec in METHODS.values():
        out.write(f"{spec.name}: {spec.title} (seed {spec.seed})\n"
                  f"  -pc_type python -pc_python_type {spec.pc_python_type}  "
                  f"(options -{spec.prefix}*, KSP {spec.ksp}"
                  f"{', trainer: petsc-neural train ' + spec.name if spec.trainer else ''})\n")
        for key in spec.models:
            path = spec.model_path(key)
            if not os.path.exists(path):
                out.write(f"  {key}: {path} MISSING\n")
                continue
            m = load_model(path, method=spec.name).metadata
            default = " (default)" if key == spec.default_model else ""
            out.write(f"  {key}{default}: {os.path.basename(path)}, "
                      f"{os.path.getsize(path) / 1024:.0f} KiB, family {m.problem_family}, "
                      f"block size {m.block_size}, {m.dtype}, "
                      f"{'linear' if m.linear else 'nonlinear'}\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="petsc-neural",
        description="Neural preconditioners served inside PETSc.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _register_train(sub)
    p = sub.add_parser("models", help="list the methods and their shipped models")
    p.set_defaults(func=_models)
    for modname in _SUBCOMMAND_MODULES:
        importlib.import_module(modname).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # petsc4py is initialised (by pcshell) before Firedrake imports; Firedrake then
    # warns that its own PETSc initialisation options are ignored.  Harmless here.
    warnings.filterwarnings("ignore", message="Calling petsctools.init but PETSc")
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
