"""Training Algebraformer and its baselines: ``petsc-neural train algebraformer|lstm|gru``.

Data: :mod:`.data` (Chebyshev BVPs or Newton steps, generated from a seed
and cached in ``--workdir``).  Optimiser (appendix F): AdamW with betas
(0.9, 0.95) and cosine decay of the learning rate from ``--lr`` (1e-4) to
``--lr-min`` (1e-5) over the run, or a constant rate (the paper's fine-tuning:
5e-5, ``--schedule constant``); batches drawn without replacement, a new
permutation per epoch.  The loop is :func:`petsc_neural.training.loop.run_training`
(seeding, gradient clipping, checkpoints every ``--checkpoint-every`` steps,
``--resume``, a progress bar); the test relative MSE is measured every
``--eval-every`` epochs and kept in the checkpoint and in the model's
metadata.  ``--init MODEL`` starts from a trained model (fine-tuning).

Budgets (``--budget``): ``cpu`` (default) trains on 20 000 diffusion systems
for 10 epochs (6 250 steps of 32, peak learning rate 1e-3: 8 minutes for the
CPU-sized transformer on one core of a 2-core machine, 4-9 minutes for the
LSTM/GRU; 30 minutes while the machine was shared), 250 reaction systems for
150 epochs, 1 500 advection systems for 30 epochs (half when fine-tuning),
1 250 Newton trajectories for 10 epochs;
``paper`` uses the paper's set sizes, epochs and learning rate (diffusion
50 000 systems, 400 epochs; reaction 250 and advection 1 500 systems, 1 000
epochs from scratch or 500 when fine-tuned; Newton 1 250 trajectories, 50
epochs; peak 1e-4).  ``--config paper`` selects
the paper's networks (12 x 256 transformer, 4 x 384 LSTM/GRU) instead of the
CPU-sized ones (:data:`~.network.CPU_CONFIGS`).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from pcshell import ModelMetadata, load_model, save_model

from ..training.loop import LoopConfig, add_run_arguments, run_training
from .data import TASK_SIZES, TASKS, TEST_SEED_OFFSET, SystemSet, load_task, random_rhs
from .loss import relative_mse, relative_mse_each, relative_residual
from .network import (
    ARCHS,
    CPU_CONFIGS,
    PAPER_CONFIGS,
    ArchConfig,
    SystemSolver,
    build_solver,
    count_parameters,
    token_statistics,
)

__all__ = [
    "TrainConfig",
    "train",
    "evaluate",
    "export_model",
    "register_train",
    "budget_defaults",
    "resolve_device",
    "load_solver",
]

log = logging.getLogger("petsc_neural.training.algebraformer")

#: (train systems or trajectories, test, epochs) per task and budget.
_BUDGETS: dict[str, dict[str, tuple[int, int, int]]] = {
    "cpu": {"diffusion": (20_000, 1_000, 10), "reaction": (250, 1_000, 150),
            "advection": (1_500, 1_000, 30), "newton": (1_250, 125, 10)},
    "paper": {"diffusion": (50_000, 5_000, 400), "reaction": (250, 5_000, 1_000),
              "advection": (1_500, 5_000, 1_000), "newton": (1_250, 125, 50)},
}


#: Peak learning rate of a run from scratch per budget (cosine decay to 1e-5).  The
#: paper's 1e-4 is kept for its budget; the CPU budget has ~1/100 of the paper's
#: steps and takes a larger peak rate (a choice, not compared with 1e-4 in a recorded run).
_PEAK_LR = {"cpu": 1e-3, "paper": 1e-4}


def budget_defaults(budget: str, task: str, finetune: bool = False) -> tuple[int, int, int]:
    """``(train, test, epochs)`` of a budget; fine-tuning takes half the epochs (appendix F)."""
    train_n, test_n, epochs = _BUDGETS[budget][task]
    return train_n, test_n, max(epochs // 2, 1) if finetune else epochs


@dataclass
class TrainConfig:
    """Everything a run depends on (stored in the checkpoint and in the model)."""

    arch: str = "algebraformer"
    task: str = "diffusion"
    network: dict[str, Any] = field(default_factory=dict)
    train_samples: int = 8_000
    test_samples: int = 1_000
    data_seed: int = 0
    epochs: int = 6
    batch: int = 32
    lr: float = 1e-4
    lr_min: float = 1e-5
    schedule: str = "cosine"
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    seed: int = 0
    dtype: str = "float32"
    init: str | None = None
    #: right-hand sides: the set's own (``paper``) or half of them replaced by
    #: random residual-like ones each step (``mixed``, :func:`.data.random_rhs`)
    rhs: str = "paper"
    #: ``error`` (relative MSE of the solution, the paper's) or ``both`` (+ relative residual)
    loss: str = "error"
    eval_every: float = 1.0
    threads: int = 1

    def arch_config(self, n: int | None = None) -> ArchConfig:
        """The network of this run for systems of size ``n`` (default: the task's)."""
        base = dict(CPU_CONFIGS[self.arch])
        base.update(self.network)
        return ArchConfig(arch=self.arch, n=n or TASK_SIZES[self.task], **base)


class EvalHistory:
    """Test relative MSE during training (checkpointed with the model)."""

    def __init__(self) -> None:
        self.records: list[list[float]] = []  # [step, epoch, seconds, test relative MSE]

    def state_dict(self) -> dict[str, Any]:
        return {"records": [list(r) for r in self.records]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.records = [list(r) for r in state["records"]]


def resolve_device(device: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``; CUDA without a GPU is a clear error."""
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            why = ("this torch is a CPU-only build" if torch.version.cuda is None
                   else "no CUDA device is visible")
            raise RuntimeError(f"--device {device}: CUDA is not available ({why}); "
                               "use --device cpu")
    elif device != "cpu":
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {device!r}")
    return torch.device(device)


@torch.no_grad()
def evaluate(solver: SystemSolver, data: SystemSet, batch: int = 256) -> np.ndarray:
    """Relative squared error of every system of ``data`` (on the normalised systems)."""
    was_training = solver.training
    solver.eval()
    out = []
    for i in range(0, len(data), batch):
        pred = solver.solve_normalised(data.Ah[i:i + batch], data.bh[i:i + batch])
        out.append(relative_mse_each(pred.double(), data.xh[i:i + batch].double()))
    solver.train(was_training)
    return torch.cat(out).cpu().numpy() if out else np.zeros(0)


def load_solver(path: str, device: torch.device | str = "cpu") -> tuple[SystemSolver, dict]:
    """An eager (trainable) copy of a saved model, and its metadata's training record."""
    loaded = load_model(path, method="algebraformer")
    training = loaded.metadata.training
    net = training["network"]
    solver = build_solver(ArchConfig(**net))
    state = loaded.module.state_dict()
    # models saved before input standardisation existed have no in_mean/in_std
    result = solver.load_state_dict(state, strict=False)
    if set(result.missing_keys) - {"in_mean", "in_std"} or result.unexpected_keys:
        raise ValueError(f"model {path!r} does not match its network {net}: missing "
                         f"{result.missing_keys}, unexpected {result.unexpected_keys}")
    return solver.to(device=device, dtype=loaded.metadata.torch_dtype), training


def train(cfg: TrainConfig, train_set: SystemSet, test_set: SystemSet | None = None, *,
          device: torch.device | str = "cpu", checkpoint: str | None = None,
          resume: bool = False, checkpoint_every: int = 200, progress: bool = False,
          max_steps: int | None = None) -> tuple[SystemSolver, Any, EvalHistory]:
    """Train ``cfg`` on ``train_set``: the solver, the loop's result, the eval history."""
    device = torch.device(device)
    dtype = {"float32": torch.float32, "float64": torch.float64}[cfg.dtype]
    torch.manual_seed(cfg.seed)
    if cfg.init:
        solver, _ = load_solver(cfg.init)
        if solver.n != train_set.n:
            raise ValueError(f"--init model solves systems of size {solver.n}, the "
                             f"{cfg.task} systems have {train_set.n} unknowns")
    else:
        out_scale = float(train_set.xh.pow(2).mean().sqrt())
        arch = cfg.arch_config(train_set.n)
        solver = build_solver(arch, out_scale)
        if arch.standardize:
            mean, std = token_statistics(train_set.Ah, train_set.bh)
            solver.in_mean.copy_(mean)
            solver.in_std.copy_(std)
    solver = solver.to(device=device, dtype=dtype)
    tr = train_set.to(device, dtype)
    te = test_set.to(device, dtype) if test_set is not None else None
    n_train = len(tr)
    batch = min(cfg.batch, n_train)
    per_epoch = max(n_train // batch, 1)
    steps = cfg.epochs * per_epoch
    opt = torch.optim.AdamW(solver.parameters(), lr=cfg.lr, betas=tuple(cfg.betas),
                            weight_decay=cfg.weight_decay)
    if cfg.rhs not in ("paper", "mixed") or cfg.loss not in ("error", "both"):
        raise ValueError(f"rhs must be paper or mixed, loss error or both; got {cfg.rhs!r}, "
                         f"{cfg.loss!r}")
    if cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1),
                                                           eta_min=cfg.lr_min)
    elif cfg.schedule == "constant":
        sched = None
    else:
        raise ValueError(f"unknown schedule {cfg.schedule!r} (cosine or constant)")
    history = EvalHistory()
    eval_steps = max(int(round(cfg.eval_every * per_epoch)), 1)
    perms: dict[int, torch.Tensor] = {}
    t_start = time.perf_counter()

    def step(i: int, gen: torch.Generator, rng: np.random.Generator):
        epoch, j = divmod(i, per_epoch)
        if epoch not in perms:  # keyed by (seed, epoch): the same after a resume
            perms.clear()
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
            perms[epoch] = torch.randperm(n_train, generator=g).to(device)
        idx = perms[epoch][j * batch:(j + 1) * batch]
        Ah, bh, xh = tr.Ah[idx], tr.bh[idx], tr.xh[idx]
        if cfg.rhs == "mixed":
            half = len(idx) // 2
            bh_r, xh_r = random_rhs(Ah[half:], gen)
            bh = torch.cat([bh[:half], bh_r])
            xh = torch.cat([xh[:half], xh_r])
        pred = solver.solve_normalised(Ah, bh)
        err = relative_mse(pred, xh)
        if cfg.loss == "error":
            return err, {"lr": opt.param_groups[0]["lr"]}
        res = relative_residual(Ah, pred, bh)
        return err + res, {"error": float(err.detach()), "residual": float(res.detach()),
                           "lr": opt.param_groups[0]["lr"]}

    def callback(i: int, loss: float, parts: Any) -> None:
        done = i + 1
        if te is not None and (done % eval_steps == 0 or done == steps):
            err = float(np.mean(evaluate(solver, te)))
            history.records.append([done, done / per_epoch,
                                    time.perf_counter() - t_start, err])
            log.info("step %d (epoch %.2f): test relative MSE %.4g", done, done / per_epoch,
                     err)

    loop = LoopConfig(steps=steps, seed=cfg.seed, clip_grad=1.0, checkpoint=checkpoint,
                      checkpoint_every=checkpoint_every, resume=resume, progress=progress,
                      desc=f"train {cfg.arch} {cfg.task}", threads=cfg.threads,
                      max_steps=max_steps)
    ident = asdict(cfg)
    ident["betas"] = list(cfg.betas)
    result = run_training(solver, opt, step, loop, scheduler=sched, identity=ident,
                          extra={"eval": history}, callback=callback)
    return solver, result, history


def export_model(solver: SystemSolver, path: str, cfg: TrainConfig, result: Any,
                 history: EvalHistory, extra: dict | None = None) -> ModelMetadata:
    """Script the solver (on CPU) and save it with Algebraformer metadata."""
    solver = solver.to("cpu").eval()
    dtype = "float32" if next(solver.parameters()).dtype == torch.float32 else "float64"
    if cfg.init:
        network = load_model(cfg.init, method="algebraformer").metadata.training["network"]
    else:
        network = cfg.arch_config(solver.n).to_dict()
    tail = result.history[-50:] if result.history else []
    meta = ModelMetadata(
        method="algebraformer",
        problem_family=cfg.task,
        block_size=1,
        dtype=dtype,
        n=None,  # the model solves blocks of up to network["n"] rows, not a fixed local size
        inputs=["residual", "blocks", "rowscale", "gather", "scatter"],
        linear=False,
        training={
            "arch": cfg.arch,
            "network": network,
            "parameters": count_parameters(solver),
            "config": {**asdict(cfg), "betas": list(cfg.betas)},
            "steps": result.steps_done,
            "seconds": result.seconds,
            "final_loss_mean50": float(np.mean(tail)) if tail else None,
            "eval": history.records,
            **(extra or {}),
        },
    )
    return save_model(solver, path, meta)


# -- command line ------------------------------------------------------------------------
def register_train(subparsers: argparse._SubParsersAction) -> None:
    """Add ``algebraformer``, ``lstm`` and ``gru`` to ``petsc-neural train``."""
    helps = {"algebraformer": "train Algebraformer (transformer solving small dense systems)",
             "lstm": "train the bidirectional-LSTM baseline of Algebraformer",
             "gru": "train the bidirectional-GRU baseline of Algebraformer"}
    for arch in ARCHS:
        p = subparsers.add_parser(arch, help=helps[arch], description=__doc__.split("\n\n")[0])
        p.set_defaults(arch=arch, func=_main)
        _add_arguments(p)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=TASKS, default="diffusion")
    p.add_argument("--config", choices=("cpu", "paper"), default="cpu",
                   help="network size: CPU-sized (default) or the paper's")
    p.add_argument("--budget", choices=("cpu", "paper"), default="cpu",
                   help="set sizes and epochs: CPU-sized (default) or the paper's")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--heads", type=int, default=None)
    p.add_argument("--standardize", action=argparse.BooleanOptionalAction, default=None,
                   help="standardise token features with training-set statistics "
                        "(default: on for --task newton, off otherwise)")
    p.add_argument("--train-samples", type=int, default=None,
                   help="training systems (newton: trajectories); default from --budget")
    p.add_argument("--test-samples", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None, help="default from --budget")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default: 1e-3 with --budget cpu, the paper's "
                        "1e-4 with --budget paper; 5e-5 constant with --init)")
    p.add_argument("--lr-min", type=float, default=1e-5)
    p.add_argument("--schedule", choices=("cosine", "constant"), default=None,
                   help="default cosine; constant with --init (the paper's fine-tuning)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--init", default=None, help="model file to start from (fine-tuning)")
    p.add_argument("--rhs", choices=("paper", "mixed"), default="paper",
                   help="right-hand sides: the paper's, or half replaced by random "
                        "residual-like ones (for a Krylov preconditioner)")
    p.add_argument("--loss", choices=("error", "both"), default="error",
                   help="relative MSE of the solution (the paper's), or + relative residual")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--eval-every", type=float, default=None,
                   help="epochs between test evaluations (default: every epoch, at most 20 "
                        "evaluations per run)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-seed", type=int, default=0,
                   help=f"seed of the training set (test set: + {TEST_SEED_OFFSET})")
    p.add_argument("--workdir", default=None, help="data and checkpoint directory "
                   "(default: next to --out)")
    add_run_arguments(p, checkpoint_every=200)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    finetune = args.init is not None
    n_train, n_test, epochs = budget_defaults(args.budget, args.task, finetune)
    network = dict(PAPER_CONFIGS[args.arch]) if args.config == "paper" else {}
    for key in ("width", "layers", "heads"):
        if getattr(args, key) is not None:
            network[key] = getattr(args, key)
    standardize = args.task == "newton" if args.standardize is None else args.standardize
    if standardize:
        network["standardize"] = True
    return TrainConfig(
        arch=args.arch, task=args.task, network=network,
        train_samples=args.train_samples or n_train,
        test_samples=args.test_samples if args.test_samples is not None else n_test,
        data_seed=args.data_seed, epochs=args.epochs or epochs, batch=args.batch,
        lr=args.lr if args.lr is not None else (5e-5 if finetune else _PEAK_LR[args.budget]),
        lr_min=args.lr_min,
        schedule=args.schedule or ("constant" if finetune else "cosine"),
        weight_decay=args.weight_decay, seed=args.seed, dtype=args.dtype,
        init=os.path.abspath(args.init) if args.init else None,
        rhs=args.rhs, loss=args.loss, threads=args.threads,
        eval_every=args.eval_every or max(1.0, (args.epochs or epochs) / 20),
    )


def _main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    device = resolve_device(args.device)
    workdir = args.workdir or os.path.dirname(os.path.abspath(args.out))
    os.makedirs(workdir, exist_ok=True)
    out = sys.stdout
    t0 = time.perf_counter()
    progress = not args.no_progress
    train_set = load_task(cfg.task, cfg.train_samples, cfg.data_seed, workdir, progress,
                          keep_raw=False)
    test_set = (load_task(cfg.task, cfg.test_samples, cfg.data_seed + TEST_SEED_OFFSET,
                          workdir, progress) if cfg.test_samples else None)
    t_data = time.perf_counter() - t0
    stem = os.path.splitext(os.path.basename(args.out))[0]
    ckpt = os.path.join(workdir, f"{stem}.ckpt")
    out.write(f"{cfg.arch} on {cfg.task}: {len(train_set)} training systems of size "
              f"{train_set.n}, {cfg.epochs} epochs of batch {cfg.batch}, {cfg.schedule} lr "
              f"{cfg.lr:g} (data {t_data:.0f} s)\n")
    out.flush()
    solver, result, history = train(cfg, train_set, test_set, device=device, checkpoint=ckpt,
                                    resume=args.resume, checkpoint_every=args.checkpoint_every,
                                    progress=progress)
    test = float(np.mean(evaluate(solver, test_set.to(device, next(solver.parameters()).dtype))
                         )) if test_set is not None else math.nan
    meta = export_model(solver, args.out, cfg, result, history,
                        extra={"test_relative_mse": test, "test_systems": len(test_set or []),
                               "train_systems": len(train_set), "data_seconds": t_data})
    out.write(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB, "
              f"{meta.training['parameters']} parameters, {meta.content_hash[:19]}...); "
              f"{result.steps_done} steps in {result.seconds:.0f} s; test relative MSE "
              f"{test:.4g}\n")
    return 0
