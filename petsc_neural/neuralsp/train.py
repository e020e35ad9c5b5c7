"""Training and export of NeuraLSP models (``petsc-neural train neuralsp``).

Data (seed 001 §5.1): matrices of a ``firedrake_problems`` family on jittered
Delaunay meshes, a fresh set of ``K`` random start vectors smoothed with
PETSc (:func:`petsc_neural.coarse.smoothed_vectors`) at every step, and a
random permutation of the columns of ``S`` (the left singular subspace does
not depend on their order, and the network must not either).  Loss: the
nested NLSS loss (eq. 4) or the plain subspace loss (eq. 3); Adam, constant
learning rate 1e-3, default PyTorch (He-uniform) initialisation.

``variant="global"`` trains the paper's flattened MLP for one mesh size;
``variant="local"`` trains the shared-weight aggregate network of the
distributable variant on the aggregates of the training matrices (any mesh
size).  Models are written with :func:`pcshell.save_model` (atomic), with
the problem family, block size, dtype and the training configuration in the
metadata; training runs in the shared loop (:mod:`petsc_neural.training.loop`),
with checkpoints and ``--resume``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from petsc4py import PETSc

from pcshell import ModelMetadata, save_model, to_scipy

from ..coarse import aggregate, pad_aggregates, project_out_constant, smoothed_vectors
from ..training.loop import LoopConfig, add_run_arguments, run_training
from .loss import nlss_loss, subspace_loss
from .network import LocalSubspaceNet, NeuraLSPMLP, count_parameters
from .pc import GLOBAL_INPUTS, LOCAL_INPUTS

__all__ = [
    "TrainConfig",
    "make_matrices",
    "train",
    "export",
    "register_train",
    "LOSSES",
]

logger = logging.getLogger("petsc_neural.training.neuralsp")

LOSSES = {"nlss": nlss_loss, "subspace": subspace_loss}
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in the model's metadata)."""

    family: str = "diffusion"
    variant: str = "global"  # "global" (the paper's MLP) or "local" (distributable)
    size: int = 64  # mesh cells per direction; n = (size+1)^2 nodes
    n_vectors: int = 72  # K
    rank: int = 72  # columns trained (global) / per aggregate (local)
    sweeps: int = 10  # s1
    omega: float = 0.66
    loss: str = "nlss"
    steps: int = 300
    lr: float = 1e-3
    train_problems: int = 16  # distinct matrices in the training pool
    seed: int = 0
    widths: tuple[int, ...] = (128, 256, 256, 128)
    layer_norm: bool = True
    hidden: int = 32  # local network
    layers: int = 3
    power_steps: int = 2
    batch_aggregates: int = 512
    threshold: float = 0.0
    constant: bool = True  # local: keep the aggregate constant, learn its complement
    dtype: str = "float32"
    problem_params: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.variant not in ("global", "local"):
            raise ValueError(f"variant must be 'global' or 'local', got {self.variant!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {self.loss!r}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype!r}")
        if self.variant == "global":
            self.constant = False
        if self.variant == "global" and self.rank > self.n_vectors:
            raise ValueError(
                f"rank {self.rank} > K = {self.n_vectors}: S has at most K singular vectors"
            )


def make_matrices(
    family: str, size: int, seeds: list[int], **params: Any
) -> list[PETSc.Mat]:
    """Operators of ``family`` on one process for the given seeds (``firedrake_problems``)."""
    from firedrake_problems import make_problem  # training may use Firedrake; the PC never does

    mats = []
    for s in seeds:
        p = make_problem(family, size, seed=int(s), comm=PETSc.COMM_SELF.tompi4py(), **params)
        mats.append(p.A)
    return mats


def _sample_S(A: PETSc.Mat, cfg: TrainConfig, rng: np.random.Generator) -> np.ndarray:
    S = smoothed_vectors(A, cfg.n_vectors, cfg.sweeps, cfg.omega, seed=int(rng.integers(2**31)))
    return S[:, rng.permutation(S.shape[1])]


def build_network(cfg: TrainConfig, n: int | None) -> torch.nn.Module:
    if cfg.variant == "global":
        net = NeuraLSPMLP(n, cfg.n_vectors, cfg.rank, tuple(cfg.widths), cfg.layer_norm)
    else:
        net = LocalSubspaceNet(cfg.rank, cfg.hidden, cfg.layers, cfg.power_steps)
    return net.to(_DTYPES[cfg.dtype])


def train(
    cfg: TrainConfig,
    matrices: list[PETSc.Mat] | None = None,
    *,
    log_every: int = 50,
    checkpoint: str | None = None,
    checkpoint_every: int = 50,
    resume: bool = False,
    progress: bool = False,
    max_steps: int | None = None,
) -> tuple[torch.nn.Module, list[float]]:
    """Train a network as ``cfg`` says; returns it (eval mode) and the loss per step.

    The loop is :func:`petsc_neural.training.loop.run_training`: ``checkpoint``
    (written every ``checkpoint_every`` steps, atomically) and ``resume``
    continue an interrupted run with the same result.
    """
    cfg.validate()
    torch.manual_seed(cfg.seed)
    # Data draws (matrices, the aggregate pool) use their own stream; the steps
    # use the loop's generators, which the checkpoint restores.
    data_rng = np.random.default_rng([cfg.seed, 1])
    if matrices is None:
        seeds = [1000 + cfg.seed * 10007 + i for i in range(cfg.train_problems)]
        matrices = make_matrices(cfg.family, cfg.size, seeds, **cfg.problem_params)
    dtype = _DTYPES[cfg.dtype]
    n = matrices[0].getSize()[0]
    net = build_network(cfg, n)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    loss_fn = LOSSES[cfg.loss]
    logger.info("training %s NeuraLSP (%s, %s loss): %d parameters",
                cfg.variant, cfg.family, cfg.loss, count_parameters(net))
    pool: tuple[torch.Tensor, torch.Tensor] | None = None
    if cfg.variant == "local":
        # Aggregates of every training matrix, a few draws of S each, padded to one size.
        parts = []
        for A in matrices:
            agg, n_agg = aggregate(to_scipy(A), cfg.threshold)
            for _ in range(4):
                S_pad, mask, _ = pad_aggregates(_sample_S(A, cfg, data_rng), agg, n_agg)
                if cfg.constant:
                    S_pad = project_out_constant(S_pad, mask)
                parts.append((S_pad, mask))
        m = max(p[0].shape[1] for p in parts)
        S_all = np.concatenate(
            [np.pad(s, ((0, 0), (0, m - s.shape[1]), (0, 0))) for s, _ in parts])
        M_all = np.concatenate([np.pad(k, ((0, 0), (0, m - k.shape[1]))) for _, k in parts])
        # QR has no derivative at rank-deficient input: train on aggregates with more
        # than `rank` nodes (smaller ones are served with fewer columns).
        keep = M_all.sum(1) >= cfg.rank + (1 if cfg.constant else 0) + 1
        pool = (torch.from_numpy(S_all[keep]).to(dtype), torch.from_numpy(M_all[keep]).to(dtype))

    def step(i: int, gen: torch.Generator, rng: np.random.Generator):
        if pool is None:
            A = matrices[int(rng.integers(len(matrices)))]
            S = torch.from_numpy(_sample_S(A, cfg, rng)).to(dtype)
            return loss_fn(net(S), S), {}
        S_all, M_all = pool
        idx = torch.from_numpy(rng.integers(0, S_all.shape[0], cfg.batch_aggregates))
        S = S_all[idx][:, :, torch.from_numpy(rng.permutation(S_all.shape[2]))]
        Mk = M_all[idx]
        # Scale each aggregate to unit Frobenius norm: every aggregate counts alike.
        S = S / (S * S).sum((1, 2), keepdim=True).clamp_min(1e-30).sqrt()
        return loss_fn(net(S, Mk), S), {}

    loop = LoopConfig(steps=cfg.steps, seed=cfg.seed, clip_grad=None, checkpoint=checkpoint,
                      checkpoint_every=checkpoint_every, resume=resume, progress=progress,
                      desc=f"train neuralsp {cfg.variant}", log_every=log_every, threads=None,
                      max_steps=max_steps)
    result = run_training(net, opt, step, loop, identity=asdict(cfg))
    cfg.__dict__["_train_seconds"] = result.seconds
    return net, result.history


def export(
    net: torch.nn.Module,
    path: str,
    cfg: TrainConfig,
    n: int | None,
    history: list[float],
    seconds: float | None = None,
) -> ModelMetadata:
    """Write ``net`` as a pcshell model file (method ``neuralsp``), atomically."""
    training = {k: v for k, v in asdict(cfg).items()}
    training["widths"] = list(cfg.widths)
    training["final_loss"] = float(np.mean(history[-20:])) if history else None
    training["steps_done"] = len(history)
    training["train_seconds"] = seconds if seconds is not None else cfg.__dict__.get(
        "_train_seconds")
    training["parameters"] = count_parameters(net)
    meta = ModelMetadata(
        method="neuralsp",
        problem_family=cfg.family,
        block_size=1,
        dtype=cfg.dtype,
        n=n if cfg.variant == "global" else None,
        inputs=list(GLOBAL_INPUTS if cfg.variant == "global" else LOCAL_INPUTS),
        linear=True,  # the PC (a V-cycle) is linear in the residual; the net runs at setup
        training=training,
    )
    return save_model(net, path, meta)


# ----------------------------------------------------------------------------- CLI
def register_train(subparsers: argparse._SubParsersAction) -> None:
    """Add ``petsc-neural train neuralsp``."""
    d = TrainConfig()
    p = subparsers.add_parser(
        "neuralsp",
        help="NeuraLSP coarse-space network (seed 001)",
        description="Train a NeuraLSP network (paper MLP or distributable local variant) "
        "and export it as a pcshell model file for petsc_neural.NeuraLSP.",
    )
    p.add_argument("--family", default=d.family,
                   help="firedrake_problems family (diffusion, anisotropic, screened_poisson)")
    p.add_argument("--variant", choices=["global", "local"], default=d.variant)
    p.add_argument("--size", type=int, default=d.size, help="mesh cells per direction N")
    p.add_argument("--vectors", type=int, default=None, help="K (default 72 global, 12 local)")
    p.add_argument(
        "--rank", type=int, default=None, help="trained rank (default: K global, 3 local)"
    )
    p.add_argument("--sweeps", type=int, default=d.sweeps)
    p.add_argument("--loss", choices=sorted(LOSSES), default=d.loss)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--train-problems", type=int, default=d.train_problems)
    p.add_argument("--widths", default="128,256,256,128", help="global MLP hidden widths")
    p.add_argument("--no-layer-norm", action="store_true")
    p.add_argument("--dtype", choices=sorted(_DTYPES), default=d.dtype)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--checkpoint", default=None,
                   help="training checkpoint (default: OUTPUT.ckpt)")
    add_run_arguments(p, checkpoint_every=50, out=("-o", "--output"))
    p.set_defaults(func=_cli_train)


def _cli_train(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    local = args.variant == "local"
    K = args.vectors or (12 if local else 72)
    cfg = TrainConfig(
        family=args.family, variant=args.variant, size=args.size, n_vectors=K,
        rank=args.rank or (3 if local else K), sweeps=args.sweeps, loss=args.loss,
        steps=args.steps, lr=args.lr, train_problems=args.train_problems, seed=args.seed,
        widths=tuple(int(w) for w in args.widths.split(",") if w),
        layer_norm=not args.no_layer_norm, dtype=args.dtype,
    )
    logging.getLogger("petsc_neural").setLevel(logging.INFO)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(message)s")
    net, hist = train(cfg, checkpoint=args.checkpoint or args.output + ".ckpt",
                      checkpoint_every=args.checkpoint_every, resume=args.resume,
                      progress=not args.no_progress)
    n = int(net.n) if cfg.variant == "global" else None
    meta = export(net, args.output, cfg, n, hist)
    sys.stdout.write(f"wrote {args.output}: {meta.training['parameters']} parameters, "
                     f"final loss {meta.training['final_loss']:.5f}, "
                     f"{meta.content_hash[:19]}...\n")
    return 0
