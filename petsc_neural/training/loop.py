"""The one training loop every method uses: seeding, steps, clipping, progress, checkpoints.

A method supplies a *step function* that computes the loss of one step from
the two generators the loop owns (a ``torch.Generator`` and a numpy
``Generator``), and the loop does the rest::

    def step(i, gen, rng):
        R = torch.randn(n, 8, generator=gen, dtype=torch.float64)
        loss = my_loss(net, R)
        return loss, {"residual": float(loss)}

    result = run_training(net, torch.optim.Adam(net.parameters(), 1e-3), step,
                          LoopConfig(steps=300, seed=0, checkpoint="run.ckpt"),
                          identity=asdict(cfg))

- **Seeding.**  ``torch.manual_seed(seed)`` (parameter initialisation is
  the caller's, before the call) and the two generators are created from
  ``seed``; a step function that draws only from them is reproducible.
- **Checkpoints** (``checkpoint``, every ``checkpoint_every`` steps and at the
  end) hold the model, optimiser, scheduler, history, step, both generators
  and torch's global RNG, plus ``extra`` objects with ``state_dict`` /
  ``load_state_dict``; written atomically (:func:`pcshell.atomic_write_bytes`)
  and read with ``torch.load(weights_only=True)`` (no pickled code).
- **Resume** (``resume=True``) continues from the checkpoint and gives the same
  weights and history as an uninterrupted run; a checkpoint written for
  another ``identity`` (the training configuration) is refused.
- **Progress**: a tqdm bar on stderr with the loss parts, or a log line every
  ``log_every`` steps.
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from pcshell import atomic_write_bytes

__all__ = [
    "add_run_arguments",
    "LoopConfig",
    "TrainResult",
    "StepFn",
    "run_training",
    "seed_everything",
    "save_checkpoint",
    "load_checkpoint",
    "CheckpointMismatchError",
]

log = logging.getLogger("petsc_neural.training")


class StepFn(Protocol):
    def __call__(
        self, step: int, gen: torch.Generator, rng: np.random.Generator
    ) -> tuple[torch.Tensor, Mapping[str, float]]: ...


class _Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


class CheckpointMismatchError(ValueError):
    """A checkpoint written by another training configuration."""


@dataclass
class LoopConfig:
    """How to run the loop (what to learn is the step function's business)."""

    steps: int
    seed: int = 0
    clip_grad: float | None = 1.0
    checkpoint: str | None = None
    checkpoint_every: int = 50
    resume: bool = False
    progress: bool = True
    desc: str = "train"
    log_every: int = 0
    threads: int | None = 1
    #: stop after this many steps of this call (tests of resume); None: run to ``steps``
    max_steps: int | None = None


@dataclass
class TrainResult:
    """What the loop returns: per-step total loss and parts, timing, where it started."""

    history: list[float]
    parts: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    steps_done: int = 0
    resumed_from: int = 0



def add_run_arguments(p: argparse.ArgumentParser, *, checkpoint_every: int,
                      out: tuple[str, ...] = ("--out",)) -> None:
    """The command-line options every ``petsc-neural train METHOD`` shares.

    ``--threads``, ``--checkpoint-every`` (the method's default period),
    ``--resume``, ``--no-progress`` and the model file to write (``out``: the
    method's flag names for it).
    """
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--checkpoint-every", type=int, default=checkpoint_every,
                   help="steps between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(*out, required=True, help="model file to write")

def seed_everything(seed: int) -> tuple[torch.Generator, np.random.Generator]:
    """Seed torch's global RNG and return the loop's two generators for ``seed``."""
    torch.manual_seed(int(seed))
    return torch.Generator().manual_seed(int(seed)), np.random.default_rng(int(seed))


def _plain(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays turned into Python values (safe for weights_only)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


def save_checkpoint(path: str, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` with ``torch.save``, atomically (the old file stays until then)."""
    buf = io.BytesIO()
    torch.save(dict(payload), buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str, identity: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read a checkpoint (tensors and plain data only) and check its ``identity``."""
    state = torch.load(path, weights_only=True, map_location="cpu")
    if identity is not None and state.get("identity") != _plain(identity):
        raise CheckpointMismatchError(
            f"checkpoint {path!r} was written by another training configuration; "
            "remove it or train with the same options"
        )
    return state


def run_training(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step_fn: StepFn,
    loop: LoopConfig,
    *,
    scheduler: Any | None = None,
    identity: Mapping[str, Any] | None = None,
    extra: Mapping[str, _Stateful] | None = None,
    callback: Callable[[int, float, Mapping[str, float]], None] | None = None,
) -> TrainResult:
    """Run ``loop.steps`` optimisation steps of ``step_fn`` on ``model``.

    ``identity`` (the training configuration, JSON-like) is stored in the
    checkpoint and must match on resume.  ``extra`` objects are checkpointed
    with the model.  ``callback(step, loss, parts)`` runs after each step.
    The model is left in eval mode.
    """
    if loop.threads:
        torch.set_num_threads(int(loop.threads))
    gen, rng = seed_everything(loop.seed)
    history: list[float] = []
    parts_hist: list[dict[str, float]] = []
    start, seconds = 0, 0.0
    ident = _plain(dict(identity or {}))
    if loop.resume and loop.checkpoint and os.path.exists(loop.checkpoint):
        state = load_checkpoint(loop.checkpoint, ident)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        for name, obj in (extra or {}).items():
            obj.load_state_dict(state["extra"][name])
        history = list(state["history"])
        parts_hist = [dict(p) for p in state["parts"]]
        start = int(state["step"])
        seconds = float(state.get("seconds", 0.0))
        gen.set_state(state["rng"]["gen"])
        rng.bit_generator.state = state["rng"]["numpy"]
        torch.set_rng_state(state["rng"]["torch"])
        log.info("resumed from %s at step %d", loop.checkpoint, start)
    stop = loop.steps if loop.max_steps is None else min(loop.steps, start + loop.max_steps)
    bar = None
    if loop.progress and stop > start:
        from tqdm import tqdm

        bar = tqdm(total=loop.steps, initial=start, desc=loop.desc, unit="step", leave=False)

    def checkpoint(done: int) -> None:
        save_checkpoint(loop.checkpoint, {
            "identity": ident,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "extra": {k: v.state_dict() for k, v in (extra or {}).items()},
            "history": history,
            "parts": parts_hist,
            "step": done,
            "seconds": seconds + time.perf_counter() - t0,
            "rng": {"gen": gen.get_state(), "numpy": _plain(rng.bit_generator.state),
                    "torch": torch.get_rng_state()},
        })

    model.train()
    t0 = time.perf_counter()
    try:
        for step in range(start, stop):
            optimizer.zero_grad(set_to_none=True)
            loss, parts = step_fn(step, gen, rng)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"non-finite loss {value} at step {step}: {dict(parts)}")
            loss.backward()
            if loop.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), loop.clip_grad)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            history.append(value)
            parts_hist.append({k: float(v) for k, v in parts.items()})
            if callback is not None:
                callback(step, value, parts)
            if bar is not None:
                bar.update(1)
                bar.set_postfix({"loss": f"{value:.3g}",
                                 **{k: f"{float(v):.3g}" for k, v in parts.items()}})
            elif loop.log_every and ((step + 1) % loop.log_every == 0 or step == start):
                log.info("%s step %d/%d loss %.6g", loop.desc, step + 1, loop.steps, value)
            done = step + 1
            if loop.checkpoint and (done % max(loop.checkpoint_every, 1) == 0 or done == stop):
                checkpoint(done)
    finally:
        if bar is not None:
            bar.close()
    seconds += time.perf_counter() - t0
    model.eval()
    return TrainResult(history=history, parts=parts_hist, seconds=seconds,
                       steps_done=len(history), resumed_from=start)
