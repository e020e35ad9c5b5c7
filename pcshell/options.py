"""PETSc options of python PCs: typed tables, validation, ``-help``, defaults pushed/popped.

Every option a petsc-neural PC reads is an :class:`Option` in a table; one
function reads a table (marking each option used, so ``-options_left`` reports
only typos), validates it with a clear error naming the option, and one
prints it the way PETSc's ``-help`` does.  :func:`pushed_options` is the one
place that puts defaults for an inner PETSc object into the options database
and removes them again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from petsc4py import PETSc

from .errors import NeuralPCError

__all__ = ["Option", "read_options", "option_help", "print_option_help", "pushed_options",
           "tristate"]


@dataclass(frozen=True)
class Option:
    """``-<prefix><name> <default>: help``; typed by the default's type.

    ``choices``: allowed string values.  ``low``/``high``: bounds of a number,
    inclusive unless ``open_low``/``open_high``.
    """

    name: str
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def check(self, prefix: str, value: Any) -> None:
        flag = f"-{prefix}{self.name}"
        if self.choices is not None and str(value) not in self.choices:
            raise NeuralPCError(
                f"{flag} must be one of {', '.join(self.choices)}; got {value!r}"
            )
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            rel = ">" if self.open_low else ">="
            raise NeuralPCError(f"{flag} must be {rel} {self.low:g}; got {value!r}")
        if self.high is not None and (
            value >= self.high if self.open_high else value > self.high
        ):
            rel = "<" if self.open_high else "<="
            raise NeuralPCError(f"{flag} must be {rel} {self.high:g}; got {value!r}")


def read_options(prefix: str, table: Sequence[Option]) -> dict[str, Any]:
    """Read and validate ``table`` under ``prefix``; returns ``name -> value``."""
    opts = PETSc.Options(prefix)
    out: dict[str, Any] = {}
    for o in table:
        try:
            if isinstance(o.default, bool):
                value = opts.getBool(o.name, o.default)
            elif isinstance(o.default, int):
                value = opts.getInt(o.name, o.default)
            elif isinstance(o.default, float):
                value = opts.getReal(o.name, o.default)
            else:
                value = opts.getString(o.name, o.default)
        except PETSc.Error:
            raise NeuralPCError(
                f"-{prefix}{o.name} {opts.getString(o.name, '')!r} is not a valid "
                f"{type(o.default).__name__}"
            ) from None
        o.check(prefix, value)
        out[o.name] = value
    return out


def tristate(value: str) -> bool | None:
    """``"auto"`` -> None, ``"true"/"1"/"yes"`` -> True, ``"false"/"0"/"no"`` -> False."""
    v = str(value).lower()
    if v == "auto":
        return None
    return v in ("true", "1", "yes", "on")


TRISTATE = ("auto", "true", "false", "1", "0", "yes", "no", "on", "off")


def option_help(title: str, prefix: str, table: Sequence[Option]) -> str:
    """The ``-help`` text of ``table`` (PETSc's layout: ``-name <default>: help``)."""
    lines = [f"{title} options:"]
    for o in table:
        default = str(o.default).lower() if isinstance(o.default, bool) else o.default
        extra = f" ({'|'.join(o.choices)})" if o.choices and o.choices != TRISTATE else ""
        lines.append(f"  -{prefix}{o.name} <{default}>: {o.help}{extra}")
    return "\n".join(lines)


def print_option_help(comm: PETSc.Comm, title: str, prefix: str, table: Sequence[Option]) -> None:
    """Print :func:`option_help` on rank 0 of ``comm`` (as PETSc's ``-help`` does)."""
    PETSc.Sys.Print(option_help(title, prefix, table), comm=comm)


@contextlib.contextmanager
def pushed_options(prefix: str, defaults: Mapping[str, Any]) -> Iterator[None]:
    """Put ``defaults`` under ``prefix`` into the options database unless the user set them.

    They are removed on exit, so that only the user's options stay behind
    (wrap the inner object's ``setFromOptions``/``setUp`` in it).
    """
    opts = PETSc.Options()
    added = []
    for key, value in defaults.items():
        if not opts.hasName(prefix + key):
            opts[prefix + key] = value
            added.append(prefix + key)
    try:
        yield
    finally:
        for key in added:
            opts.delValue(key)
