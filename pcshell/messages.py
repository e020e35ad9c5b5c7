"""Warnings that reach the user: stderr on rank 0, once per solve, silenceable.

Messages go through the ``petsc_neural`` loggers, which have no handler of
their own: with no logging configured, Python's last-resort handler writes
warnings to stderr (so a PETSc C program or a plain script shows them); a
program that configures :mod:`logging` routes or silences them as it likes
(``logging.getLogger("petsc_neural").setLevel(logging.ERROR)``), and
``-pc_neural_warnings false`` silences one PC.  Only rank 0 of the PC's
communicator logs, so ``mpiexec -n 64`` prints a warning once, not 64 times.
"""

from __future__ import annotations

import logging

from petsc4py import PETSc

__all__ = ["warn_user", "PREFIX"]

PREFIX = "petsc-neural"


def warn_user(comm: PETSc.Comm, message: str, logger: str = "petsc_neural.pcshell") -> None:
    """Log ``message`` as a warning on rank 0 of ``comm`` (debug level elsewhere)."""
    log = logging.getLogger(logger)
    if comm.getRank() == 0:
        log.warning("%s: %s", PREFIX, message)
    else:
        log.debug("%s: %s", PREFIX, message)
