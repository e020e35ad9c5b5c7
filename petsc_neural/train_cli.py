"""``petsc-neural train METHOD ...``: one sub-subcommand per method.

Each method's training module provides ``register_train(subparsers)`` adding
its parser (which sets ``func``); listed here so ``petsc-neural train --help``
shows every method that is installed.
"""

from __future__ import annotations

import argparse
import importlib

__all__ = ["register", "TRAINING_MODULES"]

TRAINING_MODULES: tuple[str, ...] = (
    "petsc_neural.training.npo",
    "petsc_neural.training.neuralsp",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a neural preconditioner and export it")
    sub = p.add_subparsers(dest="method", metavar="METHOD")
    sub.required = True
    for modname in TRAINING_MODULES:
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name and modname.startswith(exc.name):
                continue  # that method is not written yet
            raise
        mod.register_train(sub)
