"""Training KrylovUNet: ``petsc-neural train krylov --stage static|dynamic ...`` (seed 002 §6).

Two stages, each a run of the shared loop (:mod:`petsc_neural.training.loop`:
seeding, checkpoints, ``--resume``, progress bar) ending in a TorchScript
model file with metadata:

1. ``--stage static``: residual minimisation (:func:`~.loss.static_loss`)
   over normalised right-hand sides of the 3D Schur complement: per draw the
   reduced physical right-hand side (``rhs="source"``), a reduced smooth
   random one (GRF), or a random unit vector (spectral enrichment), in the
   proportions 1 : 1 : 3 (seed 002 builds 5 samples per graph: its canonical
   forcing and random unit vectors).
2. ``--stage dynamic --init static.pt``: fine-tuning on the mean ``|sin|`` of
   the residual/Krylov angles over the first ``m = 10`` FGMRES iterations
   (:func:`~.loss.dynamic_loss`), batched over systems, right-hand side the
   reduced physical one (source or GRF).

Data: ``mixed_3d1d`` problems with random vessel trees, generated once into
the cache directory (:mod:`.data`, needs Firedrake) and read from there.
Training graphs are seeds ``data_seed + i``, validation graphs
``data_seed + VAL_OFFSET + i``; the reproduction script tests on seeds from
``TEST_SEED`` (never used in training).

CPU-sized defaults (the README states their wall time) and the paper's
configuration with ``--paper`` (Table 2: 480 + 120 graphs, 5 samples each,
batch 5, 250 epochs; Table 3: 100 + 20 graphs, mini-batch 20, 150 epochs).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from pcshell import ModelMetadata, load_model, save_model

from ..training.loop import LoopConfig, add_run_arguments, run_training
from .data import GraphData, generate_graphs, load_graph, load_stiffness
from .grid import dirichlet_faces
from .loss import dynamic_loss, static_loss
from .network import KrylovUNet

__all__ = ["TrainConfig", "train", "export_model", "register_train", "paper_config",
           "VAL_OFFSET", "TEST_SEED", "MODEL_INPUTS", "validate"]

log = logging.getLogger("petsc_neural.training.krylov_unet")

VAL_OFFSET = 10_000
TEST_SEED = 50_000
MODEL_INPUTS = ["residual", "geometry", "diagonal"]
#: Scale of the geometry channel: the coupling row sums are 1e-4 to 1e-2 of the RMS
#: diagonal for the family's defaults (R = 0.02, beta = 1).
GEOMETRY_SCALE = 100.0


@dataclass
class TrainConfig:
    """Everything a training run depends on (stored in the checkpoint and the model)."""

    stage: str = "static"
    size: int = 32
    params: dict = field(default_factory=dict)
    train_graphs: int = 40
    val_graphs: int = 6
    data_seed: int = 0
    steps: int = 400
    batch: int = 5
    lr: float = 1e-3
    lr_final: float = 1e-4
    m: int = 10
    width: int = 32
    seed: int = 0
    val_every: int = 25
    init: str | None = None
    init_hash: str | None = None
    threads: int = 1
    paper: bool = False
    #: precision of the systems and the Krylov recurrences (the network trains in float32)
    system_dtype: str = "float64"
    #: dynamic loss: "mean" |sin| (seed 002) or "log" (mean log |sin|, an option)
    dynamic_loss: str = "mean"


def paper_config(stage: str) -> dict:
    """Seed 002's Tables 2 and 3, as :class:`TrainConfig` fields (steps from epochs)."""
    if stage == "static":  # 480 graphs x 5 samples, batch 5, 250 epochs
        return dict(train_graphs=480, val_graphs=120, batch=5, steps=250 * 480 * 5 // 5,
                    val_every=480)
    return dict(train_graphs=100, val_graphs=20, batch=20, steps=150 * 100 // 20, val_every=5)


def default_config(stage: str) -> dict:
    """The CPU-sized defaults (README: about an hour of one core for both stages at n=32)."""
    if stage == "static":
        return dict(steps=400, batch=5, lr=1e-3, lr_final=1e-4, val_every=25)
    return dict(steps=100, batch=2, lr=2e-4, lr_final=2e-5, val_every=10)


class ValHistory:
    """Validation records (checkpointed with the run): step, static loss, sines per iteration."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def state_dict(self) -> dict:
        return {"records": self.records}

    def load_state_dict(self, state: dict) -> None:
        self.records = list(state["records"])


@torch.no_grad()
def validate(net: KrylovUNet, graphs: list[GraphData], m: int, seed: int = 1234) -> dict:
    """Static loss (physics + 2 fixed random rhs per graph) and FGMRES sines on the source rhs."""
    net.eval()
    gen = torch.Generator().manual_seed(seed)
    static, sines, rel = [], [], []
    for g in graphs:
        R = torch.cat([g.rhs, _random_unit(g.system.n3, 2, gen, g.rhs.dtype)], dim=0)
        static.append(float(static_loss(net, [g.system] * R.shape[0], R)))
        _, s = dynamic_loss(net, [g.system], g.rhs[:1], m)
        sines.append(s[0].double().numpy())
    S = np.stack(sines)
    rel = np.cumprod(S, axis=1).mean(axis=0)
    return {"static": float(np.mean(static)), "sin_mean": float(S.mean()),
            "sines": S.mean(axis=0).tolist(), "rel_residual": rel.tolist()}


def _random_unit(n3: int, k: int, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """Random unit vectors (uniform on the sphere of the interior nodes; zero on the faces)."""
    G = round(n3 ** (1 / 3))
    face = torch.from_numpy(dirichlet_faces(G))
    R = torch.randn(k, n3, generator=gen, dtype=torch.float64)
    R[:, face] = 0.0
    return (R / torch.linalg.vector_norm(R, dim=1, keepdim=True)).to(dtype)


def _static_batch(graphs: list[GraphData], batch: int, gen: torch.Generator):
    idx = torch.randint(len(graphs), (batch,), generator=gen).tolist()
    kind = torch.randint(5, (batch,), generator=gen).tolist()  # 0: source, 1: grf, else random
    rows = []
    for i, k in zip(idx, kind, strict=True):
        g = graphs[i]
        rows.append(g.rhs[k] if k < 2 else _random_unit(g.system.n3, 1, gen, g.rhs.dtype)[0])
    return [graphs[i].system for i in idx], torch.stack(rows)


def train(
    cfg: TrainConfig,
    train_set: list[GraphData],
    val_set: list[GraphData],
    *,
    checkpoint: str | None = None,
    resume: bool = False,
    checkpoint_every: int = 25,
    progress: bool = False,
    max_steps: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[KrylovUNet, list[float], list[dict]]:
    """Run one stage; returns the network, the per-step training loss and the validation records."""
    torch.manual_seed(cfg.seed)
    net = KrylovUNet(width=cfg.width, geometry_scale=GEOMETRY_SCALE)
    if cfg.init:
        init = load_model(cfg.init, method="krylov_unet")
        net = KrylovUNet(**init.metadata.training["network"])
        net.load_state_dict(init.module.state_dict())
    net = net.to(dtype)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    gamma = (cfg.lr_final / cfg.lr) ** (1.0 / max(cfg.steps, 1))
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=gamma)
    val = ValHistory()

    def step(i: int, gen: torch.Generator, rng: np.random.Generator):
        if cfg.stage == "static":
            systems, R = _static_batch(train_set, cfg.batch, gen)
            loss = static_loss(net, systems, R)
            return loss, {"static": float(loss.detach())}
        idx = torch.randint(len(train_set), (cfg.batch,), generator=gen).tolist()
        kind = torch.randint(2, (cfg.batch,), generator=gen).tolist()
        systems = [train_set[j].system for j in idx]
        b = torch.stack([train_set[j].rhs[k] for j, k in zip(idx, kind, strict=True)])
        loss, sines = dynamic_loss(net, systems, b, cfg.m, cfg.dynamic_loss)
        return loss, {"sin": float(sines.abs().mean()), "sin1": float(sines[:, 0].mean())}

    def callback(i: int, loss: float, parts) -> None:
        done = i + 1
        if val_set and (done % cfg.val_every == 0 or done == cfg.steps):
            rec = validate(net, val_set, cfg.m)
            rec["step"] = done
            val.records.append(rec)
            log.info("step %d: val static %.4f, mean |sin| %.4f", done, rec["static"],
                     rec["sin_mean"])
            net.train()

    if val_set and not (resume and checkpoint and os.path.exists(checkpoint)):
        rec = validate(net, val_set, cfg.m)
        rec["step"] = 0
        val.records.append(rec)
    loop = LoopConfig(steps=cfg.steps, seed=cfg.seed, clip_grad=1.0, checkpoint=checkpoint,
                      checkpoint_every=checkpoint_every, resume=resume, progress=progress,
                      desc=f"train krylov {cfg.stage}", threads=cfg.threads,
                      max_steps=max_steps, log_every=0 if progress else 10)
    result = run_training(net, opt, step, loop, scheduler=sched, identity=asdict(cfg),
                          extra={"val": val}, callback=callback)
    return net, result.history, val.records


def export_model(net: KrylovUNet, path: str, cfg: TrainConfig, history: list[float],
                 val_records: list[dict], seconds: float | None = None) -> ModelMetadata:
    """Script ``net`` and save it with KrylovUNet metadata (loss curves included)."""
    dtype = next(net.parameters()).dtype
    meta = ModelMetadata(
        method="krylov_unet",
        problem_family="mixed_3d1d",
        block_size=1,
        dtype="float32" if dtype == torch.float32 else "float64",
        n=None,
        inputs=list(MODEL_INPUTS),
        linear=False,
        training={
            "config": asdict(cfg),
            "network": net.config(),
            "grid": cfg.size + 1,
            "loss": [float(v) for v in history],
            "validation": val_records,
            "seconds": seconds,
        },
    )
    return save_model(net.eval(), path, meta)


def load_sets(cfg: TrainConfig, cache: str,
              progress: bool = False) -> tuple[list[GraphData], list[GraphData]]:
    """Generate (once) and load the training and validation graphs of ``cfg``."""
    tr = [cfg.data_seed + i for i in range(cfg.train_graphs)]
    va = [cfg.data_seed + VAL_OFFSET + i for i in range(cfg.val_graphs)]
    paths = generate_graphs(cfg.size, tr + va, cache, params=cfg.params, progress=progress)
    K3 = load_stiffness(cache, cfg.size)
    sdt = {"float32": torch.float32, "float64": torch.float64}[cfg.system_dtype]
    graphs = [load_graph(p, K3, sdt) for p in paths]
    return graphs[: len(tr)], graphs[len(tr):]


def register_train(subparsers: argparse._SubParsersAction) -> None:
    """Add ``krylov`` (alias ``krylov_unet``) to ``petsc-neural train``."""
    p = subparsers.add_parser(
        "krylov", aliases=["krylov_unet"],
        help="train KrylovUNet (3D U-Net; static residual loss, then Krylov-angle loss)",
        description="Train KrylovUNet (seed 002) on mixed_3d1d problems with random vessel "
        "trees: --stage static (residual loss), then --stage dynamic --init STATIC.pt "
        "(mean |sin| of the residual/Krylov angles over m FGMRES steps). Exports a "
        "TorchScript model with metadata.",
    )
    p.add_argument("--stage", choices=("static", "dynamic"), required=True)
    p.add_argument("--size", type=int, default=32, help="cells per cube edge (grid size+1)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="mixed_3d1d parameter (JSON value), e.g. generations=4")
    p.add_argument("--train-graphs", type=int, default=None,
                   help="training vessel networks (default 40; --paper: 480 static, 100 dynamic)")
    p.add_argument("--val-graphs", type=int, default=None,
                   help="validation networks (default 6; --paper: 120 static, 20 dynamic)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the first training graph")
    p.add_argument("--steps", type=int, default=None,
                   help="optimisation steps (default: static 400, dynamic 100; --paper: "
                   "250 and 150 epochs)")
    p.add_argument("--batch", type=int, default=None,
                   help="samples (static) or systems (dynamic) per step")
    p.add_argument("--lr", type=float, default=None,
                   help="initial Adam learning rate (default: static 1e-3, dynamic 2e-4)")
    p.add_argument("--lr-final", type=float, default=None,
                   help="end of the exponential decay (default: lr / 10)")
    p.add_argument("--m", type=int, default=10, help="FGMRES steps of the dynamic loss")
    p.add_argument("--dynamic-loss", choices=("mean", "log"), default="mean",
                   help="mean |sin| (seed 002) or mean log |sin| (the residual reduction)")
    p.add_argument("--system-dtype", choices=("float64", "float32"), default="float64",
                   help="precision of the systems and of the Krylov recurrences (the network "
                   "computes in float32 either way)")
    p.add_argument("--width", type=int, default=32,
                   help="channels of the first level (dynamic: taken from --init)")
    p.add_argument("--init", default=None, help="model to start from (dynamic: the static one)")
    p.add_argument("--paper", action="store_true",
                   help="seed 002's configuration (Table 2 static / Table 3 dynamic)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-every", type=int, default=None,
                   help="steps between validations (default: static 25, dynamic 10)")
    p.add_argument("--workdir", default=None,
                   help="checkpoints (default: next to --out)")
    p.add_argument("--cache", default=None,
                   help="generated systems (default: WORKDIR/krylov_data)")
    add_run_arguments(p, checkpoint_every=25)
    p.set_defaults(func=_main)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    from firedrake_problems.cli import parse_params

    values = default_config(args.stage)
    if args.paper:
        values.update(paper_config(args.stage))
    for name in ("train_graphs", "val_graphs", "steps", "batch", "lr", "lr_final", "val_every"):
        v = getattr(args, name)
        if v is not None:
            values[name] = v
    cfg = TrainConfig(stage=args.stage, size=args.size, params=parse_params(args.param),
                      data_seed=args.data_seed, m=args.m, width=args.width, seed=args.seed,
                      init=args.init, threads=args.threads, paper=args.paper,
                      system_dtype=args.system_dtype, dynamic_loss=args.dynamic_loss, **values)
    if cfg.stage == "dynamic" and not cfg.init:
        raise SystemExit("--stage dynamic needs --init STATIC_MODEL.pt (the static stage's output)")
    if cfg.init:
        init = load_model(cfg.init, method="krylov_unet").metadata
        cfg.init_hash = init.content_hash
        cfg.init = os.path.abspath(cfg.init)
        cfg.width = int(init.training["network"]["width"])
    return cfg


def _main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    workdir = args.workdir or os.path.dirname(os.path.abspath(args.out))
    cache = args.cache or os.path.join(workdir, "krylov_data")
    os.makedirs(workdir, exist_ok=True)
    t0 = time.perf_counter()
    sys.stdout.write(f"KrylovUNet {cfg.stage}: {cfg.train_graphs} + {cfg.val_graphs} graphs "
                     f"at n={cfg.size} (cache {cache}), {cfg.steps} steps of batch "
                     f"{cfg.batch}\n")
    torch.set_num_threads(cfg.threads)
    train_set, val_set = load_sets(cfg, cache, progress=not args.no_progress)
    t_data = time.perf_counter() - t0
    stem = os.path.splitext(os.path.basename(args.out))[0]
    ckpt = os.path.join(workdir, f"{stem}.ckpt")
    net, hist, val = train(cfg, train_set, val_set, checkpoint=ckpt, resume=args.resume,
                           checkpoint_every=args.checkpoint_every,
                           progress=not args.no_progress)
    seconds = time.perf_counter() - t0 - t_data
    meta = export_model(net, args.out, cfg, hist, val, seconds=seconds)
    last = val[-1] if val else {}
    sys.stdout.write(
        f"wrote {args.out} ({os.path.getsize(args.out) / 1024:.0f} KiB, "
        f"{meta.content_hash[:19]}...); loss {hist[0] if hist else float('nan'):.4g} -> "
        f"{np.mean(hist[-10:]) if hist else float('nan'):.4g}; validation static "
        f"{last.get('static', float('nan')):.4g}, mean |sin| "
        f"{last.get('sin_mean', float('nan')):.4g}; data {t_data:.0f} s, training "
        f"{seconds:.0f} s\n")
    return 0

