"""The ``petsc-neural`` command line.

Subcommands are registered by the modules that implement them, so this file
stays a thin dispatcher:

``petsc-neural demo``
    The main job (see :mod:`petsc_neural.demo`).
``petsc-neural train METHOD ...``
    Train and export a model (:mod:`petsc_neural.train_cli`).
``petsc-neural bench ...``
    Compare preconditioners (:mod:`petsc_neural.bench`).
``petsc-neural problems ...`` / ``petsc-neural data ...``
    PDE families and datasets (:mod:`firedrake_problems.cli`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings

__all__ = ["main", "build_parser"]

# (module, attribute) pairs; each attribute is ``register(subparsers)`` and adds
# one or more subcommands whose parsers set ``func``.  Imported lazily so that
# ``petsc-neural --help`` does not import Firedrake.
_SUBCOMMAND_MODULES: tuple[str, ...] = (
    "petsc_neural.demo",
    "petsc_neural.train_cli",
    "petsc_neural.bench",
    "firedrake_problems.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="petsc-neural",
        description="Neural preconditioners served inside PETSc.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for modname in _SUBCOMMAND_MODULES:
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as exc:  # a package not installed in this tree
            if exc.name and modname.startswith(exc.name):
                continue
            raise
        mod.register(sub)
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
