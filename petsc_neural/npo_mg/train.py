"""Training NPO-MG: ``petsc-neural train npo_mg [--steps N] --out FILE``.

Data: operators of ``firedrake_problems`` families (default: 2D Poisson on
uniform and jittered meshes and lognormal diffusion, 32x32 and 48x48, two
seeds each, with their GRF right-hand sides), and for each the first
Galerkin coarse operator of the nearest-root hierarchy (so the network also
learns the coarse levels it will be applied to).  Every step takes one
level, the network's weights on it, the two-grid cycle they define, and
NPO's condition and residual losses (:mod:`petsc_neural.npo_mg.loss`);
half the steps hide the coordinates (the model then serves operators
without any, e.g. PETSc's ``ksp/ex2``).  Adam with cosine decay, in the
shared loop (:mod:`petsc_neural.training.loop`: seeding, checkpoints,
``--resume``).  The model is exported in float32 (its weights only need a
few digits) as a pcshell model file with method ``npo_mg``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from pcshell import ModelMetadata, save_model

from ..coarse.roots import nearest_weights
from ..npo.loss import LossWeights
from ..training.loop import LoopConfig, add_run_arguments, run_training
from .features import FEATURES, coarsen, level_graph
from .loss import dense_prolongator, transfer_loss
from .network import INPUTS, AttentionTransfer, TransferConfig, csr_tensor, level_inputs

__all__ = ["TrainConfig", "Level", "make_levels", "train", "export_model", "register_train",
           "gershgorin_omega"]

log = logging.getLogger("petsc_neural.training.npo_mg")

DEFAULT_PROBLEMS: list[list[Any]] = [
    ["poisson", {"dim": 2, "mesh": "uniform"}],
    ["poisson", {"dim": 2, "mesh": "jittered"}],
    ["diffusion", {"mesh": "uniform"}],
    ["diffusion", {"mesh": "jittered"}],
]


@dataclass
class TrainConfig:
    """Everything a training run depends on (stored in the checkpoint and the model)."""

    problems: list[list[Any]] = field(default_factory=lambda: [list(p) for p in
                                                               DEFAULT_PROBLEMS])
    sizes: list[int] = field(default_factory=lambda: [32, 48])
    seeds: int = 2
    coarse_levels: int = 1
    steps: int = 400
    lr: float = 2e-3
    batch: int = 8
    nu: int = 2
    seed: int = 0
    threshold: float = 0.1
    max_candidates: int = 8
    coordinate_dropout: float = 0.5
    network: dict = field(default_factory=dict)
    weights: dict = field(default_factory=lambda: {"condition": 1.0, "residual": 1.0,
                                                   "data": 0.0})
    threads: int = 1


def gershgorin_omega(A: sp.csr_matrix) -> float:
    """``4 / (3 rho)``, ``rho`` Gershgorin's bound on ``D^-1 A`` (as the PC computes it)."""
    d = np.abs(A.diagonal())
    rows = np.asarray(abs(A).sum(axis=1)).ravel()
    rho = float(np.max(np.where(d > 0, rows / np.where(d > 0, d, 1.0), 0.0)))
    return 4.0 / (3.0 * rho) if rho > 0 else 2.0 / 3.0


@dataclass
class Level:
    """One training level: the operator, its graph inputs (with and without coordinates)."""

    A: torch.Tensor
    dinv: torch.Tensor
    omega: float
    n_tokens: int
    cand: torch.Tensor
    inputs: tuple[torch.Tensor, ...]
    inputs_nox: tuple[torch.Tensor, ...]
    b: torch.Tensor | None
    name: str


def _torch_csr(A: sp.csr_matrix) -> torch.Tensor:
    A = sp.csr_matrix(A, dtype=np.float64)
    A.sort_indices()
    return csr_tensor(A, torch.float64)


def _level(A: sp.csr_matrix, X: np.ndarray | None, distance: int, cfg: TrainConfig,
           b: np.ndarray | None, name: str):
    # The threshold applies on the aggressive (distance-2) level only, as in the PC.
    threshold = cfg.threshold if distance == 2 else 0.0
    G, c = coarsen(A, X, distance=distance, threshold=threshold,
                   max_candidates=cfg.max_candidates)
    g = level_graph(A, X, G, c, threshold=threshold)
    # Without coordinates a PC keys the roots by row; the features are what matter here.
    g_nox = g if X is None else _without_coordinates(g)
    d = A.diagonal()
    lev = Level(
        A=_torch_csr(A), dinv=torch.from_numpy(1.0 / np.where(d != 0, d, 1.0)),
        omega=gershgorin_omega(A), n_tokens=g.n_tokens,
        cand=torch.from_numpy(g.candidates.index),
        inputs=level_inputs(g, torch.float64), inputs_nox=level_inputs(g_nox, torch.float64),
        b=None if b is None else torch.from_numpy(np.asarray(b, np.float64)), name=name)
    return lev, g


def _without_coordinates(g):
    """``g`` with its coordinate features zeroed (what a PC without coordinates computes)."""
    from copy import copy

    from .features import EDGE_FEATURES, NODE_FEATURES

    h = copy(g)
    h.node = g.node.copy()
    h.node[:, NODE_FEATURES.index("has_coordinates")] = 0.0
    h.edge = g.edge.copy()
    h.edge[..., EDGE_FEATURES.index("dx"):] = 0.0
    return h


def make_levels(cfg: TrainConfig, progress: bool = False) -> list[Level]:
    """The training levels of ``cfg`` (problems x sizes x seeds, and their coarse levels)."""
    from mpi4py import MPI

    from firedrake_problems import make_problem
    from pcshell import to_scipy

    levels = []
    for family, params in cfg.problems:
        for size in cfg.sizes:
            for s in range(cfg.seeds):
                p = make_problem(family, int(size), seed=s, comm=MPI.COMM_SELF,
                                 **{"rhs": "grf", **params})
                A = to_scipy(p.A)
                X = np.asarray(p.coordinates, np.float64)
                name = f"{family}{json.dumps(params, sort_keys=True)}/{size}/{s}"
                lev, g = _level(A, X, 2, cfg, p.b.getArray(readonly=True).copy(), name)
                levels.append(lev)
                for k in range(cfg.coarse_levels):  # Galerkin coarse levels, nearest roots
                    c = g.candidates
                    r, q = np.nonzero(c.mask)
                    T = sp.csr_matrix((nearest_weights(c)[r, q], (r, c.index[r, q])),
                                      shape=(A.shape[0], c.n_tokens))
                    dinv = 1.0 / np.where(A.diagonal() != 0, A.diagonal(), 1.0)
                    P = T - gershgorin_omega(A) * sp.diags(dinv) @ (A @ T)
                    A = sp.csr_matrix(P.T @ A @ P)
                    X = X[c.roots]
                    if A.shape[0] < 50:
                        break
                    lev, g = _level(A, X, 1, cfg, None, f"{name}/level{k + 1}")
                    levels.append(lev)
                if progress:
                    sys.stderr.write(f"levels of {name}: {len(levels)} so far\n")
    return levels


def _residuals(lev: Level, batch: int, gen: torch.Generator) -> torch.Tensor:
    """White-noise residuals and residuals of smooth errors (A e, e Jacobi-smoothed noise)."""
    n = lev.A.shape[0]
    k = max(batch // 2, 1)
    white = torch.randn(n, batch - k, generator=gen, dtype=torch.float64)
    e = torch.randn(n, k, generator=gen, dtype=torch.float64)
    steps = int(torch.randint(5, 40, (1,), generator=gen))
    for _ in range(steps):
        e = e - lev.omega * lev.dinv.unsqueeze(1) * torch.sparse.mm(lev.A, e)
    return torch.cat([white, torch.sparse.mm(lev.A, e)], dim=1)


def train(cfg: TrainConfig, levels: list[Level], *, checkpoint: str | None = None,
          resume: bool = False, checkpoint_every: int = 50, progress: bool = False,
          max_steps: int | None = None) -> tuple[AttentionTransfer, list[float]]:
    """Train the transfer network on ``levels``; returns it (float64, eval mode) and the losses."""
    torch.manual_seed(cfg.seed)
    net = AttentionTransfer(TransferConfig(**cfg.network)).double()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.steps, 1),
                                                       eta_min=cfg.lr * 0.05)
    weights = LossWeights(**cfg.weights)

    def step(i: int, gen: torch.Generator, rng: np.random.Generator):
        lev = levels[int(rng.integers(len(levels)))]
        hide = rng.random() < cfg.coordinate_dropout
        W = net(*(lev.inputs_nox if hide else lev.inputs))
        P = dense_prolongator(W, lev.cand, lev.n_tokens, lev.A, lev.dinv, lev.omega)
        R = _residuals(lev, cfg.batch, gen)
        return transfer_loss(lev.A, lev.dinv, P, R, lev.b, cfg.nu, lev.omega, weights)

    loop = LoopConfig(steps=cfg.steps, seed=cfg.seed, clip_grad=1.0, checkpoint=checkpoint,
                      checkpoint_every=checkpoint_every, resume=resume, progress=progress,
                      desc="train npo_mg", threads=cfg.threads, max_steps=max_steps)
    result = run_training(net, opt, step, loop, scheduler=sched, identity=asdict(cfg))
    return net, result.history


def export_model(net: AttentionTransfer, path: str, cfg: TrainConfig, history: list[float],
                 extra: dict | None = None, dtype: str = "float32") -> ModelMetadata:
    """Script ``net`` (cast to ``dtype``) and save it with NPO-MG metadata."""
    net = net.to(torch.float32 if dtype == "float32" else torch.float64).eval()
    tail = history[-20:] if history else []
    meta = ModelMetadata(
        method="npo_mg",
        problem_family="scalar",
        block_size=1,
        dtype=dtype,
        n=None,
        inputs=list(INPUTS),
        linear=True,  # the network runs at setup; the PC is PETSc's V-cycle
        training={
            "features": FEATURES,
            "config": asdict(cfg),
            "network": net.config_dict,
            "first_loss": history[0] if history else None,
            "final_loss_mean20": float(np.mean(tail)) if tail else None,
            **(extra or {}),
        },
    )
    return save_model(net, path, meta)


def register_train(subparsers: argparse._SubParsersAction) -> None:
    """Add ``npo_mg`` to ``petsc-neural train``."""
    d = TrainConfig()
    p = subparsers.add_parser(
        "npo_mg", help="train NPO-MG (NAMG attention transfer weights for a PETSc PCMG)",
        description="Train the NPO-MG transfer network on operators of the scalar "
        "problem families and export a TorchScript model with metadata.",
    )
    p.add_argument("--problems", default=None,
                   help='JSON list of [family, params] (default: Poisson uniform/jittered, '
                        'diffusion uniform/jittered)')
    p.add_argument("--sizes", type=int, nargs="+", default=d.sizes)
    p.add_argument("--seeds", type=int, default=d.seeds, help="systems per family and size")
    p.add_argument("--coarse-levels", type=int, default=d.coarse_levels)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--nu", type=int, default=d.nu, help="Jacobi sweeps of the training cycle")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threshold", type=float, default=d.threshold,
                   help="strength threshold of the first (aggressive) level")
    p.add_argument("--width", type=int, default=d.network.get("width", 32))
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=2)
    add_run_arguments(p, checkpoint_every=50)
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    cfg = TrainConfig(
        problems=json.loads(args.problems) if args.problems else TrainConfig().problems,
        sizes=list(args.sizes), seeds=args.seeds, coarse_levels=args.coarse_levels,
        steps=args.steps, lr=args.lr, batch=args.batch, nu=args.nu, seed=args.seed,
        threshold=args.threshold,
        network={"width": args.width, "heads": args.heads, "layers": args.layers},
        threads=args.threads,
    )
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    levels = make_levels(cfg, progress=not args.no_progress)
    net, hist = train(cfg, levels, checkpoint=args.out + ".ckpt", resume=args.resume,
                      checkpoint_every=args.checkpoint_every, progress=not args.no_progress)
    seconds = time.perf_counter() - t0
    meta = export_model(net, args.out, cfg, hist, extra={"train_seconds": round(seconds, 1)})
    sys.stdout.write(f"wrote {args.out} ({os.path.getsize(args.out) / 1024:.0f} KiB, "
                     f"{meta.content_hash[:19]}...); loss {hist[0]:.3g} -> "
                     f"{np.mean(hist[-20:]):.3g} in {len(hist)} steps, {seconds:.0f} s\n")
    return 0
