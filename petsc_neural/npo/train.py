"""Training NPO: ``petsc-neural train npo --family F --size N ...``.

Data (seed 000 §5.1.2): recorded baseline Krylov solves from
:mod:`firedrake_problems.datasets` (an HDF5 file given with ``--dataset``, or
generated into the work directory from ``--family/--size/--samples``).  Each
step takes one system ``A_i`` and a batch of

- sampled residuals for the condition loss (eq. 9): white noise, smooth
  noise (a few Jacobi smoothing steps of ``A``), and recorded residuals;
- its right-hand side ``b_i`` for the residual loss (eq. 10);
- recorded pairs ``(r_k, x_final - x_k)`` for the data loss (§5.1.1),

and minimises the weighted sum (:mod:`petsc_neural.losses.npo`) with Adam.
Checkpoints (model, optimiser, step, RNG states) are written atomically every
``--checkpoint-every`` steps; ``--resume`` continues from the last one and
gives the same result as an uninterrupted run (the shared loop,
:mod:`petsc_neural.training.loop`).  The result is a TorchScript
model file with metadata (:func:`pcshell.save_model`, method ``"npo"``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch

from pcshell import ModelMetadata, save_model

from ..training.loop import LoopConfig, add_run_arguments, run_training
from .loss import LossWeights, npo_loss
from .network import NAMG, NAMGConfig

__all__ = [
    "TrainConfig",
    "TrainSample",
    "register_train",
    "train",
    "load_samples",
    "rigid_body_modes",
    "model_inputs",
    "export_model",
]

log = logging.getLogger("petsc_neural.training.npo")


@dataclass
class TrainConfig:
    """Everything a training run depends on (stored in the checkpoint and the model)."""

    family: str = "poisson"
    size: int = 32
    params: dict | None = None
    samples: int = 8
    data_seed: int = 0
    steps: int = 300
    lr: float = 2e-3
    batch: int = 8
    seed: int = 0
    network: dict | None = None
    weights: dict | None = None
    threads: int = 1


@dataclass
class TrainSample:
    """One system as tensors, with its recorded iterates."""

    A: torch.Tensor
    diag: torch.Tensor
    coords: torch.Tensor
    near_nullspace: torch.Tensor | None
    b: torch.Tensor
    R_rec: torch.Tensor  # (n, K) recorded residuals
    E_rec: torch.Tensor  # (n, K) their errors x_final - x_k


def rigid_body_modes(coords: np.ndarray) -> np.ndarray:
    """Translations and rotations at the nodes, interleaved by component (n*dim, k)."""
    n, dim = coords.shape
    modes = []
    for c in range(dim):
        v = np.zeros((n, dim))
        v[:, c] = 1.0
        modes.append(v.ravel())
    x = coords - coords.mean(axis=0)
    pairs = [(0, 1)] if dim == 2 else [(0, 1), (1, 2), (0, 2)]
    for i, j in pairs:
        v = np.zeros((n, dim))
        v[:, i], v[:, j] = -x[:, j], x[:, i]
        modes.append(v.ravel())
    return np.stack(modes, axis=1)


def _csr(indptr, indices, data, n: int) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        warnings.filterwarnings("ignore", message="Sparse invariant checks")
        return _csr_tensor(indptr, indices, data, n)


def _csr_tensor(indptr, indices, data, n: int) -> torch.Tensor:
    return torch.sparse_csr_tensor(
        torch.from_numpy(np.asarray(indptr, np.int64)),
        torch.from_numpy(np.asarray(indices, np.int64)),
        torch.from_numpy(np.asarray(data, np.float64)),
        (n, n),
    )


def load_samples(paths: list[str]) -> list[TrainSample]:
    """Read dataset files (:mod:`firedrake_problems.datasets`) into tensors."""
    from firedrake_problems.datasets import load_dataset

    out = []
    for path in paths:
        ds = load_dataset(path)
        for s in ds:
            n = s.shape[0]
            A = _csr(s.A_indptr, s.A_indices, s.A_data, n)
            diag = torch.from_numpy(s.A_scipy().diagonal().copy())
            bs = s.block_size
            nns = None
            if bs > 1:
                nns = torch.from_numpy(rigid_body_modes(s.coordinates))
            x_final = s.x[-1]
            errs = x_final[None, :] - s.x[:-1]
            keep = np.linalg.norm(errs, axis=1) > 1e-12 * max(np.linalg.norm(x_final), 1e-300)
            out.append(
                TrainSample(
                    A=A,
                    diag=diag,
                    coords=torch.from_numpy(np.asarray(s.coordinates, np.float64)),
                    near_nullspace=nns,
                    b=torch.from_numpy(s.b.copy()),
                    R_rec=torch.from_numpy(s.r[:-1][keep].T.copy()),
                    E_rec=torch.from_numpy(errs[keep].T.copy()),
                )
            )
    if not out:
        raise ValueError(f"no samples in {paths}")
    return out


def model_inputs(block_size: int) -> list[str]:
    """The forward arguments a model of this block size declares."""
    inputs = ["residual", "operator", "diagonal", "coordinates"]
    if block_size > 1:
        inputs.append("near_nullspace")
    return inputs


def _smooth_noise(A: torch.Tensor, diag: torch.Tensor, v: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` damped-Jacobi sweeps of ``A x = 0`` from ``v``: smooth error shapes."""
    dinv = (1.0 / torch.where(diag > 0, diag, torch.ones_like(diag))).unsqueeze(1)
    for _ in range(steps):
        v = v - (2.0 / 3.0) * dinv * torch.sparse.mm(A, v)
    return v


def _batch(
    s: TrainSample, batch: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Condition-loss residuals (n, batch) and data pairs (n, k), (n, k)."""
    n = s.b.shape[0]
    n_white = max(batch // 4, 1)
    n_smooth = max(batch // 4, 1)
    white = torch.randn(n, n_white, generator=gen, dtype=torch.float64)
    smooth = torch.randn(n, n_smooth, generator=gen, dtype=torch.float64)
    steps = int(torch.randint(5, 60, (1,), generator=gen))
    smooth = _smooth_noise(s.A, s.diag, smooth, steps)
    # A smooth error e gives the residual A e: condition loss on both kinds.
    smooth = torch.sparse.mm(s.A, smooth)
    K = s.R_rec.shape[1]
    k = min(batch - n_white - n_smooth, K)
    idx = torch.randperm(K, generator=gen)[:k] if K else torch.zeros(0, dtype=torch.long)
    R_cond = torch.cat([white, smooth, s.R_rec[:, idx]], dim=1)
    kd = min(batch // 2, K)
    jdx = torch.randperm(K, generator=gen)[:kd] if K else torch.zeros(0, dtype=torch.long)
    return R_cond, s.R_rec[:, jdx], s.E_rec[:, jdx]


def _step_loss(
    net: NAMG, s: TrainSample, weights: LossWeights, batch: int, gen: torch.Generator
) -> tuple[torch.Tensor, dict[str, float]]:
    R_cond, R_data, E_data = _batch(s, batch, gen)
    cols = [R_cond, s.b.unsqueeze(1), R_data]
    Z = net.forward_batch(torch.cat(cols, dim=1), s.A, s.diag, s.coords, s.near_nullspace)
    a, b = R_cond.shape[1], R_cond.shape[1] + 1
    return npo_loss(
        s.A,
        weights,
        R_cond=R_cond,
        Z_cond=Z[:, :a],
        b=s.b.unsqueeze(1),
        z_b=Z[:, a:b],
        Z_data=Z[:, b:],
        E_data=E_data,
    )


def train(
    cfg: TrainConfig,
    samples: list[TrainSample],
    *,
    checkpoint: str | None = None,
    resume: bool = False,
    checkpoint_every: int = 50,
    progress: bool = False,
    max_steps: int | None = None,
) -> tuple[NAMG, list[float]]:
    """Train a NAMG network on ``samples``; returns it and the per-step total loss.

    The loop is :func:`petsc_neural.training.loop.run_training` (seeding,
    clipping, checkpoints, resume); ``max_steps`` stops after that many steps
    of this call (to test resuming).
    """
    torch.manual_seed(cfg.seed)
    netcfg = NAMGConfig(**(cfg.network or {}))
    netcfg.block_size = int(samples[0].A.shape[0] // max(samples[0].coords.shape[0], 1)) \
        if samples[0].coords.numel() else netcfg.block_size
    net = NAMG(netcfg).double()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.steps, 1),
                                                       eta_min=cfg.lr * 0.05)
    weights = LossWeights(**(cfg.weights or {}))

    def step(i: int, gen: torch.Generator, rng: np.random.Generator):
        return _step_loss(net, samples[i % len(samples)], weights, cfg.batch, gen)

    loop = LoopConfig(steps=cfg.steps, seed=cfg.seed, clip_grad=1.0, checkpoint=checkpoint,
                      checkpoint_every=checkpoint_every, resume=resume, progress=progress,
                      desc=f"train npo {cfg.family}", threads=cfg.threads, max_steps=max_steps)
    result = run_training(net, opt, step, loop, scheduler=sched, identity=asdict(cfg))
    return net, result.history


def export_model(net: NAMG, path: str, cfg: TrainConfig, history: list[float],
                 extra: dict | None = None) -> ModelMetadata:
    """Script ``net`` and save it with NPO metadata."""
    bs = int(net.block_size)
    tail = history[-20:] if history else []
    meta = ModelMetadata(
        method="npo",
        problem_family=cfg.family,
        block_size=bs,
        dtype="float64",
        n=None,
        inputs=model_inputs(bs),
        linear=False,
        training={
            "config": cfg.__dict__,
            "network": net.config_dict,
            "final_loss_mean20": float(np.mean(tail)) if tail else None,
            "first_loss": history[0] if history else None,
            **(extra or {}),
        },
    )
    return save_model(net, path, meta)


def generate_data(cfg: TrainConfig, out: str, progress: bool = False) -> str:
    """Record the baseline solves of ``cfg`` into ``out`` (serial, COMM_SELF)."""
    from mpi4py import MPI

    from firedrake_problems.datasets import generate_dataset

    params = {"rhs": "grf", **(cfg.params or {})}
    return generate_dataset(cfg.family, cfg.size, cfg.samples, cfg.data_seed, out,
                            params=params, comm=MPI.COMM_SELF, progress=progress)


def register_train(subparsers: argparse._SubParsersAction) -> None:
    """Add ``npo`` to ``petsc-neural train``."""
    p = subparsers.add_parser(
        "npo", help="train the Neural Preconditioning Operator (NAMG network)",
        description="Train NPO on recorded Krylov solves of a Firedrake problem family "
        "and export a TorchScript model with metadata.",
    )
    p.add_argument("--family", default="poisson", help="problem family (firedrake_problems)")
    p.add_argument("--size", type=int, default=32, help="cells per direction")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="family parameter (JSON value), e.g. dim=1, mesh=jittered")
    p.add_argument("--samples", type=int, default=8, help="recorded systems to generate")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the first system")
    p.add_argument("--dataset", action="append", default=[],
                   help="existing dataset file(s) (petsc-neural data generate); skips generation")
    p.add_argument("--workdir", default=None, help="where data and checkpoints go "
                   "(default: next to --out)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch", type=int, default=8, help="residuals per step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--coarse", type=int, default=128, help="coarse tokens")
    p.add_argument("--pre", type=int, default=1)
    p.add_argument("--post", type=int, default=1)
    p.add_argument("--no-galerkin", action="store_true",
                   help="attention-only coarse step (the paper's text)")
    p.add_argument("--w-condition", type=float, default=1.0)
    p.add_argument("--w-residual", type=float, default=1.0)
    p.add_argument("--w-data", type=float, default=1.0)
    add_run_arguments(p, checkpoint_every=50)
    p.set_defaults(func=_main)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    from firedrake_problems.cli import parse_params

    return TrainConfig(
        family=args.family,
        size=args.size,
        params=parse_params(args.param),
        samples=args.samples,
        data_seed=args.data_seed,
        steps=args.steps,
        lr=args.lr,
        batch=args.batch,
        seed=args.seed,
        network={
            "width": args.width,
            "heads": args.heads,
            "n_coarse": args.coarse,
            "pre": args.pre,
            "post": args.post,
            "galerkin": not args.no_galerkin,
        },
        weights={"condition": args.w_condition, "residual": args.w_residual,
                 "data": args.w_data},
        threads=args.threads,
    )


def _main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    workdir = args.workdir or (os.path.dirname(os.path.abspath(args.out)))
    os.makedirs(workdir, exist_ok=True)
    stem = os.path.splitext(os.path.basename(args.out))[0]
    datasets = list(args.dataset)
    t0 = time.perf_counter()
    if not datasets:
        path = os.path.join(workdir, f"{stem}.data.h5")
        if not os.path.exists(path):
            sys.stdout.write(f"recording {cfg.samples} baseline solves of {cfg.family} "
                             f"n={cfg.size} -> {path}\n")
            generate_data(cfg, path + ".part", progress=not args.no_progress)
            os.replace(path + ".part", path)
        datasets = [path]
    samples = load_samples(datasets)
    ckpt = os.path.join(workdir, f"{stem}.ckpt")
    net, hist = train(cfg, samples, checkpoint=ckpt, resume=args.resume,
                      checkpoint_every=args.checkpoint_every, progress=not args.no_progress)
    meta = export_model(net, args.out, cfg, hist, extra={"datasets": [os.path.basename(d)
                                                                       for d in datasets]})
    sys.stdout.write(f"wrote {args.out} ({os.path.getsize(args.out) / 1024:.0f} KiB, "
                     f"{meta.content_hash[:19]}...); loss {hist[0]:.3g} -> "
                     f"{np.mean(hist[-20:]):.3g} in {len(hist)} steps, "
                     f"{time.perf_counter() - t0:.0f} s\n")
    return 0
