"""Agreement across ranks: a failure on one rank becomes the same error on every rank.

A step of setup or apply that can fail on one rank only (a model that does
not fit its local rows, a non-finite network output, a rank with no rows) is
run inside :func:`agreed`; before the next collective every rank learns
whether any rank failed, and all raise the same error.  Without it the
healthy ranks wait forever in the next collective (a hang).

>>> with agreed(comm, "NeuraLSP network"):
...     Q = run_network(S)          # may raise on one rank
>>> offset = mpi.exscan(n_local)    # reached by every rank, or by none
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from petsc4py import PETSc

from . import errors
from .errors import NeuralPCError

__all__ = ["agree", "agreed", "all_true", "mpi_op"]


def mpi_op(name: str):
    """``MPI.LAND``, ``MPI.MAX``, ... by name (mpi4py imported on first use)."""
    from mpi4py import MPI

    return getattr(MPI, name)


def all_true(comm: PETSc.Comm, flag: bool) -> bool:
    """Logical AND of ``flag`` over ``comm`` (no communication on one rank)."""
    if comm.getSize() == 1:
        return bool(flag)
    return bool(comm.tompi4py().allreduce(bool(flag), op=mpi_op("LAND")))


def _error_class(name: str) -> type[Exception]:
    cls = getattr(errors, name, None)
    return cls if isinstance(cls, type) and issubclass(cls, NeuralPCError) else NeuralPCError


def agree(comm: PETSc.Comm, error: BaseException | None, what: str) -> None:
    """Raise on every rank if ``error`` is set on any rank of ``comm``.

    One process: ``error`` is re-raised as it is.  Several: every rank raises
    the same exception (the first failing rank's pcshell error class, else
    :class:`~pcshell.errors.NeuralPCError`) with the same message, naming the
    failing ranks and the first failure.  An error that was already agreed
    on is passed through without a second round.
    """
    if comm.getSize() == 1:
        if error is not None:
            raise error
        return
    if error is not None and getattr(error, "agreed", False):
        raise error
    mine = None if error is None else (type(error).__name__, str(error))
    msgs = comm.tompi4py().allgather(mine)
    failed = [r for r, m in enumerate(msgs) if m is not None]
    if not failed:
        return
    name, text = msgs[failed[0]]
    exc = _error_class(name)(f"{what} failed on rank(s) {failed}: {name}: {text}")
    exc.agreed = True  # type: ignore[attr-defined]
    if error is not None:
        raise exc from error
    raise exc


@contextlib.contextmanager
def agreed(comm: PETSc.Comm, what: str) -> Iterator[None]:
    """Run the block; then every rank raises if it failed on any rank (see :func:`agree`)."""
    error: Exception | None = None
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - every error is agreed on, then re-raised
        error = exc
    agree(comm, error, what)
