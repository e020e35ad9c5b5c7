#!/usr/bin/env python
"""Reproduce seed 001 (NeuraLSP) Tables 1-3, Figs. 3-5 and the mesh transfer of our local variant.

Writes ``results/neuralsp_tables.md`` and ``results/neuralsp_energy.png``.

Parts (``--parts energy,tables,transfer``, the default; ``ranks`` under ``mpiexec``):

``energy``   Figs. 3-5: the paper's small setting (N = 9, n = 100, K = 32,
             one hidden layer of 128, GELU) trained to full rank 32 with the
             NLSS and with the subspace loss; captured energy (eq. 8) of the
             truncated bases minus that of the SVD, averaged over test
             matrices, for every rank.
``tables``   Tables 1-3: diffusion, anisotropic, screened Poisson on jittered
             Delaunay meshes, N = 64 (4,225 nodes), K = 72 smoothed vectors
             (s1 = 10), the paper's MLP (128-256-256-128, LayerNorm, GELU,
             78.3M parameters) trained to rank 72 with NLSS / subspace loss and
             truncated to n_c = 36, 48, 64; the exact SVD of the same S; PyAMG
             smoothed aggregation's P in the same two-level cycle; and PETSc
             GAMG tuned on training matrices.  Two-level cycle: PETSc PCMG,
             Galerkin, damped Jacobi omega = 0.66, nu1 = nu2 = 5, LU coarse; CG
             to ||r|| / ||b|| < 1e-6.  Median and quartiles over the test
             matrices of iterations and total time (S + inference + setup +
             solve); the paper's numbers beside ours.
``transfer`` The distributable local variant trained at N = 64 and applied at
             larger N: iterations and time per size.
``ranks``    ``mpiexec -n 2 python scripts/reproduce_neuralsp.py --parts ranks``:
             iterations on 1 rank and on 2 ranks (``--ranks-size``, 256).

Global models are large (313 MB each) and are kept in ``--model-dir``
(default ``~/.cache/petsc-neural/neuralsp-models``); missing ones are trained
here (``--steps``), existing ones are reused.  Timings are wall-clock on
whatever machine runs this; the committed table says which.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import platform
import sys
import time

import numpy as np
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")

from petsc4py import PETSc  # noqa: E402

from firedrake_problems import make_problem  # noqa: E402
from pcshell import to_scipy  # noqa: E402
from petsc_neural.bench.baselines import GAMG_TUNING_GRID, best_gamg  # noqa: E402
from petsc_neural.coarse import smoothed_vectors, svd_basis, two_level_mg  # noqa: E402
from petsc_neural.neuralsp.loss import captured_energy  # noqa: E402
from petsc_neural.neuralsp.train import TrainConfig, export, make_matrices, train  # noqa: E402

FAMILIES = ("diffusion", "anisotropic", "screened_poisson")
TITLES = {"diffusion": "DIFFUSION", "anisotropic": "ANISOTROPIC",
          "screened_poisson": "SCREENED POISSON"}
NCS = (36, 48, 64)

# The paper's Tables 1-3 (ms): solve, total median, total Q1, total Q3.
# Its SA-AMG row does not depend on n_c (median n_c 493).
PAPER = {
    "diffusion": {
        36: {"Subspace": (72.11, 137.55, 119.77, 156.53), "SVD": (91.07, 122.39, 109.11, 137.13),
             "NLSS": (38.94, 100.34, 92.05, 123.03)},
        48: {"Subspace": (73.24, 139.03, 121.15, 166.87), "SVD": (101.12, 131.20, 120.93, 149.92),
             "NLSS": (35.78, 99.35, 88.55, 112.79)},
        64: {"Subspace": (63.23, 130.31, 117.10, 147.10), "SVD": (110.70, 143.14, 126.43, 161.28),
             "NLSS": (42.54, 106.12, 94.41, 127.50)},
        "SA": (100.94, 157.90, 146.94, 174.08),
    },
    "anisotropic": {
        36: {"Subspace": (51.49, 117.85, 98.77, 131.38), "SVD": (61.67, 92.47, 81.10, 106.60),
             "NLSS": (26.02, 86.17, 77.19, 100.94)},
        48: {"Subspace": (52.52, 115.80, 99.34, 143.96), "SVD": (72.27, 106.23, 91.08, 123.64),
             "NLSS": (24.41, 85.87, 76.07, 103.95)},
        64: {"Subspace": (48.75, 109.36, 96.87, 129.73), "SVD": (86.74, 118.00, 106.35, 128.73),
             "NLSS": (29.18, 89.72, 81.32, 104.25)},
        "SA": (90.26, 151.09, 138.76, 180.21),
    },
    "screened_poisson": {
        36: {"Subspace": (48.87, 107.49, 94.07, 122.44), "SVD": (62.23, 93.14, 79.42, 112.55),
             "NLSS": (25.77, 79.78, 71.36, 94.03)},
        48: {"Subspace": (49.98, 108.24, 92.55, 121.82), "SVD": (68.57, 100.66, 84.25, 117.44),
             "NLSS": (28.68, 83.89, 73.22, 97.41)},
        64: {"Subspace": (45.51, 101.96, 94.76, 116.71), "SVD": (77.39, 109.44, 94.43, 133.04),
             "NLSS": (30.69, 84.97, 78.00, 92.90)},
        "SA": (71.63, 127.67, 117.97, 155.77),
    },
}

CG = {"ksp_type": "cg", "ksp_rtol": 1e-6, "ksp_norm_type": "unpreconditioned",
      "ksp_max_it": 5000}
NEURALSP = {**CG, "pc_type": "python", "pc_python_type": "petsc_neural.NeuraLSP"}
# Level smoothers of the lower-bound runs (the paper's Jacobi x 5 first).
BOUND_SMOOTHERS = (("jacobi", 5), ("jacobi", 2), ("chebyshev", 2), ("chebyshev", 3),
                   ("chebyshev", 5))

_counter = itertools.count()


# ----------------------------------------------------------------------------- solving
def run(A: PETSc.Mat, b: PETSc.Vec, opts: dict, pc: PETSc.PC | None = None,
        coords: np.ndarray | None = None) -> dict:
    """Set up and solve with ``opts`` (under a fresh prefix); times in seconds, iterations.

    ``coords`` are handed to the PC (``PCSetCoordinates``) as a Firedrake
    user's solver would (GAMG uses them; NeuraLSP keys its start vectors by them).
    """
    prefix = f"rnsp{next(_counter)}_"
    db = PETSc.Options()
    for k, v in opts.items():
        db[prefix + k] = v
    try:
        ksp = PETSc.KSP().create(comm=A.getComm())
        ksp.setOptionsPrefix(prefix)
        ksp.setOperators(A)
        if pc is not None:
            ksp.setPC(pc)
        ksp.setFromOptions()
        if coords is not None and pc is None:
            ksp.getPC().setCoordinates(coords)
        x = A.createVecRight()
        x.set(0.0)
        t0 = time.perf_counter()
        ksp.setUp()
        t1 = time.perf_counter()
        ksp.solve(b, x)
        t2 = time.perf_counter()
    finally:
        for k in opts:
            db.delValue(prefix + k)
    if ksp.getConvergedReason() <= 0:
        raise RuntimeError(f"{opts} did not converge: reason {ksp.getConvergedReason()}")
    out = {"setup": t1 - t0, "solve": t2 - t1, "its": ksp.getIterationNumber()}
    if ksp.getPC().getType() == "python":
        ctx = ksp.getPC().getPythonContext()
        out.update({k: v for k, v in ctx.timings.items()})
        out["nc"] = ctx.coarse_size
    ksp.destroy()
    return out


def run_pyamg(A: PETSc.Mat, b: PETSc.Vec) -> dict:
    """PyAMG smoothed aggregation's P (one coarsening) in the same two-level PCMG."""
    import pyamg
    t0 = time.perf_counter()
    As = to_scipy(A)
    ml = pyamg.smoothed_aggregation_solver(As, max_levels=2, max_coarse=1)
    Ps = ml.levels[0].P.tocsr()
    P = PETSc.Mat().createAIJ(Ps.shape, csr=(Ps.indptr.astype(PETSc.IntType),
                                             Ps.indices.astype(PETSc.IntType), Ps.data),
                              comm=PETSc.COMM_SELF)
    P.assemble()
    t1 = time.perf_counter()
    mg = two_level_mg(A, A, P, f"rnsa{next(_counter)}_")
    t2 = time.perf_counter()
    out = run(A, b, CG, pc=mg)
    out["inference"] = t1 - t0
    out["mg_setup"] = t2 - t1
    out["setup"] += t2 - t1
    out["nc"] = Ps.shape[1]
    return out


def eigen_basis(A: PETSc.Mat, nc: int) -> PETSc.Mat:
    """The ``nc`` lowest eigenvectors of ``A v = lambda D v`` as a dense ``P`` (serial).

    The coarse space a Jacobi-smoothed two-level cycle wants most: the modes
    the smoother damps least.  Used only as a bound; its cost is not counted.
    """
    import scipy.sparse as sp
    import scipy.sparse.linalg as sla

    M = to_scipy(A)
    n = M.shape[0]
    dinv_sqrt = sp.diags(1.0 / np.sqrt(M.diagonal()))
    _, V = sla.eigsh(dinv_sqrt @ M @ dinv_sqrt, k=nc, sigma=0.0, which="LM")
    U = np.linalg.qr(dinv_sqrt @ V)[0]
    P = PETSc.Mat().createDense((n, nc), array=np.asfortranarray(U), comm=PETSc.COMM_SELF)
    P.assemble()
    return P


def run_given_basis(A: PETSc.Mat, b: PETSc.Vec, P: PETSc.Mat, smoother: str, nu: int) -> dict:
    """The same two-level PCMG with a given ``P``: PCMG setup and solve times."""
    t0 = time.perf_counter()
    mg = two_level_mg(A, A, P, f"rnse{next(_counter)}_", smoother=smoother, smooth_its=nu)
    out = run(A, b, CG, pc=mg)
    out["mg_setup"] = time.perf_counter() - t0
    mg.destroy()
    return out


def total(r: dict) -> float:
    """Per-instance total (s): everything from the operator to the solution."""
    return r["setup"] + r["solve"] + (r["inference"] if "vectors" not in r and "inference" in r
                                      else 0.0)


def quart(x) -> tuple[float, float, float]:
    q1, med, q3 = np.percentile(np.asarray(x, dtype=float), [25, 50, 75])
    return med, q1, q3


# ----------------------------------------------------------------------------- energy (Figs 3-5)
def part_energy(args, lines: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    lines += ["## Captured energy versus rank (paper Figs. 3-5)", "",
              f"Setting of §5.1: N = 9 (n = 100), K = 32 smoothed vectors (s1 = 10), one hidden "
              f"layer of 128 with GELU, trained to rank 32 for {args.energy_steps} steps (Adam, "
              f"1e-3, {args.energy_train} training matrices, fresh random S each step, random "
              f"column permutations), evaluated on {args.energy_test} test matrices.  Entries: "
              "mean captured energy (eq. 8) of the first r columns minus that of the first r left "
              "singular vectors of S (0 is the optimum; higher is better).", "",
              "| family | loss | r=1 | r=2 | r=4 | r=8 | r=16 | r=24 | r=32 | final train loss |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for ax, fam in zip(axes, FAMILIES, strict=False):
        test = make_matrices(fam, 9, [70000 + i for i in range(args.energy_test)])
        curves = {}
        for loss in ("nlss", "subspace"):
            cfg = TrainConfig(family=fam, variant="global", size=9, n_vectors=32, rank=32,
                              steps=args.energy_steps, train_problems=args.energy_train,
                              widths=(128,), layer_norm=False, loss=loss, seed=0)
            net, hist = train(cfg, log_every=0)
            gaps = []
            for i, A in enumerate(test):
                S = smoothed_vectors(A, 32, 10, 0.66, seed=90000 + i)
                St = torch.from_numpy(S).float()
                with torch.no_grad():
                    Q = net(St)
                U = torch.from_numpy(svd_basis(S, 32, PETSc.COMM_SELF)).float()
                gaps.append((captured_energy(Q, St) - captured_energy(U, St)).numpy())
            g = np.mean(gaps, axis=0)
            curves[loss] = g
            lines.append(f"| {fam} | {loss} | " + " | ".join(
                f"{g[r - 1]:+.3f}" for r in (1, 2, 4, 8, 16, 24, 32)) +
                f" | {np.mean(hist[-50:]):.4f} |")
            print(f"energy {fam} {loss}: gap r=1..32 {np.round(g, 3)}", flush=True)
        r = np.arange(1, 33)
        ax.plot(r, curves["nlss"], "o-", ms=3, label="NLSS (nested, eq. 4)")
        ax.plot(r, curves["subspace"], "s-", ms=3, label="subspace loss (eq. 3)")
        ax.axhline(0.0, color="k", lw=0.8, label="SVD")
        ax.set_title(f"{TITLES[fam].title()} (N = 9, K = 32)")
        ax.set_xlabel("rank r (truncation of the learned basis)")
        ax.set_ylabel("captured energy minus SVD's")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "neuralsp_energy.png"), dpi=110)
    lines += ["", "Plot: `results/neuralsp_energy.png`.", ""]


# ----------------------------------------------------------------------------- tables 1-3
def global_model(args, fam: str, loss: str) -> str:
    path = os.path.join(args.model_dir,
                        f"neuralsp_{fam}_{loss}_N64_K72_r72_s{args.steps}.pt")
    if not os.path.exists(path):
        print(f"training {fam} {loss} ({args.steps} steps) -> {path}", flush=True)
        cfg = TrainConfig(family=fam, variant="global", size=64, n_vectors=72, rank=72,
                          steps=args.steps, train_problems=32, loss=loss, seed=0)
        net, hist = train(cfg, log_every=50)
        export(net, path, cfg, net.n, hist)
    return path


def tune_gamg(fam: str, mats: list) -> tuple[str, dict]:
    """The bench's GAMG tuning grid, timed by the median total over ``mats``."""

    def evaluate(cfg: dict) -> float:
        t = []
        for A, b in mats:
            run(A, b, {**CG, **cfg})  # warm
            t.append(np.median([total(run(A, b, {**CG, **cfg})) for _ in range(2)]))
        return float(np.median(t))

    name, cfg, med = best_gamg(evaluate)
    print(f"  gamg {fam}: best [{name}] {med * 1e3:.2f} ms", flush=True)
    return name, cfg


def part_tables(args, lines: list[str]) -> None:
    from pcshell import load_model

    lines += ["## Tables 1-3: two-level PCG on N = 64 jittered Delaunay meshes", ""]
    for fam in FAMILIES:
        models = {lab: global_model(args, fam, loss)
                  for lab, loss in (("NLSS", "nlss"), ("Subspace", "subspace"))}
        train_info = {lab: load_model(p).metadata.training for lab, p in models.items()}
        problems = [make_problem(fam, 64, seed=50000 + i) for i in range(args.n_test)]
        tune = [(p.A, p.b) for p in (make_problem(fam, 64, seed=60000 + i) for i in range(3))]
        gname, gcfg = tune_gamg(fam, tune)
        A0, b0 = tune[0]
        for path in models.values():  # warm: load the model once (cached), JIT paths
            run(A0, b0, {**NEURALSP, "pc_neural_model": path, "pc_neuralsp_rank": 48})
        run(A0, b0, {**NEURALSP, "pc_neuralsp_basis": "svd", "pc_neuralsp_rank": 48})
        run_pyamg(A0, b0)
        res: dict = {}
        for i, p in enumerate(problems):
            for nc in NCS:
                Pe = eigen_basis(p.A, nc)
                for sm, nu in BOUND_SMOOTHERS:
                    r = run(p.A, p.b, {**NEURALSP, "pc_neuralsp_basis": "svd",
                                       "pc_neuralsp_rank": nc, "pc_neuralsp_smoother": sm,
                                       "pc_neuralsp_smooth_its": nu}, coords=p.coordinates)
                    res.setdefault(("bound", nc, sm, nu), []).append(r)
                    res.setdefault(("eigen", nc, sm, nu), []).append(
                        run_given_basis(p.A, p.b, Pe, sm, nu))
                Pe.destroy()
                for lab, path in models.items():
                    res.setdefault((lab, nc), []).append(run(
                        p.A, p.b, {**NEURALSP, "pc_neural_model": path, "pc_neuralsp_rank": nc},
                        coords=p.coordinates))
                res.setdefault(("SVD", nc), []).append(run(
                    p.A, p.b, {**NEURALSP, "pc_neuralsp_basis": "svd", "pc_neuralsp_rank": nc},
                    coords=p.coordinates))
            res.setdefault("SA", []).append(run_pyamg(p.A, p.b))
            res.setdefault("GAMG", []).append(run(p.A, p.b, {**CG, "pc_type": "gamg", **gcfg},
                                                  coords=p.coordinates))
            print(f"  {fam} instance {i + 1}/{len(problems)}", flush=True)
        ti = train_info["NLSS"]
        lines += [f"### {TITLES[fam]} (paper Table {list(TITLES).index(fam) + 1})", "",
                  f"{len(problems)} test matrices (paper: 100).  MLP: "
                  f"{ti['parameters']:,} parameters, trained {ti['steps_done']} steps on "
                  f"{ti['train_problems']} matrices (paper: 1000 steps/samples); final train "
                  f"loss NLSS {ti['final_loss']:.4f}, subspace "
                  f"{train_info['Subspace']['final_loss']:.4f}.  Tuned GAMG: {gname} "
                  f"(best of {len(GAMG_TUNING_GRID)} settings on 3 training matrices).  "
                  f"PyAMG SA median n_c {int(np.median([r['nc'] for r in res['SA']]))}.", ""]
        for nc in NCS:
            lines += [f"**n_c = {nc}**", "",
                      "| method | n_c | its median [Q1, Q3] | S (ms) | inference (ms) | "
                      "setup (ms) | solve (ms) | total median (ms) | total Q1 | total Q3 | "
                      "paper solve | paper total median | paper Q1 | paper Q3 |",
                      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
            rows = [(lab, res[(lab, nc)]) for lab in ("Subspace", "SVD")]
            rows += [("PyAMG SA", res["SA"]), ("NLSS (ours)", res[("NLSS", nc)]),
                     ("GAMG (tuned)", res["GAMG"])]
            for lab, rs in rows:
                its = quart([r["its"] for r in rs])
                tot = quart([total(r) * 1e3 for r in rs])
                vec = (f"{np.median([r['vectors'] * 1e3 for r in rs]):.2f}"
                       if "vectors" in rs[0] else "-")
                inf = np.median([(r.get("inference", 0.0) + r.get("prolongator", 0.0)) * 1e3
                                 for r in rs])
                setup = np.median([r.get("mg_setup", r["setup"]) * 1e3 for r in rs])
                solve = np.median([r["solve"] * 1e3 for r in rs])
                ncs = int(np.median([r.get("nc", 0) for r in rs])) if "nc" in rs[0] else "-"
                key = {"NLSS (ours)": "NLSS", "PyAMG SA": "SA"}.get(lab, lab)
                pap = PAPER[fam]["SA"] if key == "SA" else PAPER[fam][nc].get(key)
                pcols = " | ".join(f"{v:.2f}" for v in pap) if pap else "- | - | - | -"
                lines.append(
                    f"| {lab} | {ncs} | {its[0]:.0f} [{its[1]:.0f}, {its[2]:.0f}] | "
                    f"{vec} | {inf:.2f} | {setup:.2f} | {solve:.2f} | {tot[0]:.2f} | "
                    f"{tot[1]:.2f} | "
                    f"{tot[2]:.2f} | {pcols} |")
            lines.append("")
        floor_check(fam, res, lines)
        with open(os.path.join(args.out, "neuralsp_tables.md.partial"), "w") as f:
            f.write("\n".join(lines) + "\n")


def floor_check(fam: str, res: dict, lines: list[str]) -> None:
    """The issue's floor (NLSS total <= tuned GAMG total) against two bounds.

    Both bounds count only the PCMG setup and the solve, with ``S`` and the
    network free, and take the best of several level smoothers: (a) the
    basis NLSS is trained to reproduce (the exact leading left singular
    vectors of ``S``); (b) the ``n_c`` lowest eigenvectors of ``D^-1 A``, the
    modes a Jacobi-smoothed two-level cycle most wants in its coarse space.
    """
    gamg = float(np.median([total(r) * 1e3 for r in res["GAMG"]]))

    def best(kind: str, nc: int) -> tuple[float, float, str]:
        out = None
        for sm, nu in BOUND_SMOOTHERS:
            rs = res[(kind, nc, sm, nu)]
            t = float(np.median([(r["mg_setup"] + r["solve"]) * 1e3 for r in rs]))
            if out is None or t < out[0]:
                out = (t, float(np.median([r["its"] for r in rs])), f"{sm} x {nu}")
        return out

    lines += [f"**Floor check ({fam})**: our NLSS total versus tuned GAMG in this run, and what "
              "this two-level cycle takes at the same n_c with S and inference counted as free "
              "(median of PCMG setup + solve, best of the level smoothers "
              + ", ".join(f"{sm} x {nu}" for sm, nu in BOUND_SMOOTHERS) + ") with (a) the exact "
              "SVD basis of S, which NLSS is trained to reproduce, and (b) the n_c lowest "
              "eigenvectors of D^-1 A.  Cells of the bounds: ms (iterations, smoother).", "",
              "| n_c | NLSS total median (ms) | of which S | of which inference | tuned GAMG "
              "total median (ms) | floor met | bound (a): exact SVD | bound (b): eigenvectors |",
              "|---|---|---|---|---|---|---|---|"]
    for nc in NCS:
        rs = res[("NLSS", nc)]
        nlss = float(np.median([total(r) * 1e3 for r in rs]))
        vec = float(np.median([r["vectors"] * 1e3 for r in rs]))
        inf = float(np.median([(r["inference"] + r["prolongator"]) * 1e3 for r in rs]))
        cells = [f"{t:.2f} ({its:.0f}, {sm})" for t, its, sm in (best("bound", nc),
                                                                 best("eigen", nc))]
        lines.append(f"| {nc} | {nlss:.2f} | {vec:.2f} | {inf:.2f} | {gamg:.2f} | "
                     f"{'yes' if nlss <= gamg else 'no'} | "
                     + " | ".join(cells) + " |")
    lines.append("")


# ----------------------------------------------------------------------------- transfer
def local_model(args, fam: str) -> str:
    path = os.path.join(args.model_dir, f"neuralsp_{fam}_local_N64_K12_r3.pt")
    if not os.path.exists(path):
        cfg = TrainConfig(family=fam, variant="local", size=64, n_vectors=12, rank=3,
                          steps=400, train_problems=8, loss="nlss", seed=0)
        net, hist = train(cfg, log_every=100)
        export(net, path, cfg, None, hist)
    return path


def part_transfer(args, lines: list[str]) -> None:
    from pcshell import load_model

    sizes = [int(s) for s in args.transfer_sizes.split(",")]
    lines += ["## Mesh transfer of the distributable (local) variant", "",
              "Shared-weight aggregate network (7.6k parameters) trained with the NLSS loss on "
              "the aggregates of N = 64 matrices (K = 12, s1 = 10, rank 3 after the aggregate "
              "constant), applied unchanged at larger N.  Two-level PCMG as above (smoothed "
              "block-sparse P, Jacobi 0.66 x 5, exact LU coarse solve: the coarse size grows "
              "with N, about 2/7 or 3/7 of n, so at large N the coarse LU dominates the time; "
              "a two-level method, not a multigrid hierarchy).  One matrix per size (seed 7); "
              "above N = 256 only the rank-2 cases and GAMG are run.  Cells: iterations "
              "(total ms).", "",
              "| family | method | " + " | ".join(f"N = {n} ({(n + 1) ** 2:,} dofs)"
                                                   for n in sizes) + " |",
              "|---|---|" + "---|" * len(sizes)]
    for fam in FAMILIES:
        path = local_model(args, fam)
        info = load_model(path).metadata.training
        rows: dict = {}
        for n in sizes:
            p = make_problem(fam, n, seed=7)
            coarse: dict = {}
            cases = {
                "learned local, rank 2": {**NEURALSP, "pc_neural_model": path,
                                          "pc_neuralsp_rank": 2, **coarse},
                "learned local, rank 3": {**NEURALSP, "pc_neural_model": path,
                                          "pc_neuralsp_rank": 3, **coarse},
                "local SVD (Chow), rank 2": {**NEURALSP, "pc_neuralsp_basis": "local_svd",
                                             "pc_neuralsp_rank": 2, **coarse},
                "local SVD (Chow), rank 3": {**NEURALSP, "pc_neuralsp_basis": "local_svd",
                                             "pc_neuralsp_rank": 3, **coarse},
                "SA constant only (rank 1)": {**NEURALSP, "pc_neuralsp_basis": "local_svd",
                                              "pc_neuralsp_rank": 1, **coarse},
                "GAMG (default)": {**CG, "pc_type": "gamg"},
            }
            for lab, o in cases.items():
                if n > 256 and "rank 2" not in lab and "GAMG" not in lab:
                    rows.setdefault(lab, []).append("-")
                    continue
                r = run(p.A, p.b, o, coords=p.coordinates)
                rows.setdefault(lab, []).append(f"{r['its']} ({total(r) * 1e3:.0f})")
                print(f"  transfer {fam} N={n} {lab}: {r['its']} its, "
                      f"{total(r) * 1e3:.0f} ms", flush=True)
            del p
        for lab, cells in rows.items():
            lines.append(f"| {fam} | {lab} | " + " | ".join(cells) + " |")
        lines.append(f"| {fam} | (local model final NLSS loss {info['final_loss']:.4f}) |"
                     + " |" * len(sizes))
    lines.append("")


# ----------------------------------------------------------------------------- 1 vs P ranks
def part_ranks(args, lines: list[str]) -> None:
    """Iterations on one rank and on all ranks of COMM_WORLD (run under ``mpiexec -n P``)."""
    world = PETSc.COMM_WORLD.tompi4py()
    n = args.ranks_size
    seeds = list(range(7, 7 + args.ranks_instances))
    lines += [f"## 1 rank versus {world.size} ranks (N = {n}, {(n + 1) ** 2:,} dofs, "
              f"{len(seeds)} meshes)", "",
              f"`mpiexec -n {world.size} python scripts/reproduce_neuralsp.py --parts ranks`: "
              "every rank also solves the whole problem alone (COMM_SELF) for the serial count.  "
              "The PC gets the node coordinates (as `Problem.solve` gives them), so the random "
              "start vectors are the same on 1 and 2 ranks although Firedrake numbers the dofs "
              "differently; local bases use each rank's own aggregates (greedy, visited in "
              "coordinate order, so a rank's interior gets the serial aggregates; they differ "
              "along the partition boundary).  Cells: iterations per mesh "
              f"(seeds {seeds[0]}-{seeds[-1]}); differences of the medians and of the means "
              "(with fewer than 10 iterations, 10% is less than one iteration).", "",
              f"| family | method | its, 1 rank | its, {world.size} ranks | median difference | "
              "mean difference |",
              "|---|---|---|---|---|---|"]
    for fam in FAMILIES:
        path = local_model(args, fam)
        cases = {
            "learned local, rank 2": {"pc_neural_model": path, "pc_neuralsp_rank": 2},
            "learned local, rank 3": {"pc_neural_model": path, "pc_neuralsp_rank": 3},
            "local SVD (Chow), rank 2": {"pc_neuralsp_basis": "local_svd", "pc_neuralsp_rank": 2},
            "exact SVD, n_c = 48": {"pc_neuralsp_basis": "svd", "pc_neuralsp_rank": 48},
        }
        its: dict = {lab: ([], []) for lab in cases}
        for seed in seeds:
            probs = [make_problem(fam, n, seed=seed, comm=c)
                     for c in (PETSc.COMM_SELF.tompi4py(), world)]
            for lab, o in cases.items():
                for k, p in enumerate(probs):
                    its[lab][k].append(run(p.A, p.b, {**NEURALSP, **o},
                                           coords=p.coordinates)["its"])
            del probs
        for lab, (one, many) in its.items():
            m1, m2 = float(np.median(one)), float(np.median(many))
            a1, a2 = float(np.mean(one)), float(np.mean(many))
            lines.append(f"| {fam} | {lab} | {', '.join(map(str, one))} | "
                         f"{', '.join(map(str, many))} | {100.0 * (m2 - m1) / m1:+.1f}% | "
                         f"{100.0 * (a2 - a1) / a1:+.1f}% |")
            PETSc.Sys.Print(f"  ranks {fam} {lab}: {one} {many}", comm=PETSc.COMM_WORLD)
    lines.append("")


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    global FAMILIES
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="energy,tables,transfer")
    ap.add_argument("--out", default="results")
    ap.add_argument("--model-dir",
                    default=os.path.expanduser("~/.cache/petsc-neural/neuralsp-models"))
    ap.add_argument("--steps", type=int, default=400, help="training steps of the N=64 MLPs")
    ap.add_argument("--n-test", type=int, default=20)
    ap.add_argument("--energy-steps", type=int, default=1000)
    ap.add_argument("--energy-train", type=int, default=100)
    ap.add_argument("--energy-test", type=int, default=100)
    ap.add_argument("--transfer-sizes", default="64,256,1024")
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--ranks-size", type=int, default=256, help="N of the 1-vs-P-ranks part")
    ap.add_argument("--ranks-instances", type=int, default=5,
                    help="meshes (seeds 7, 8, ...) of the 1-vs-P-ranks part")
    args = ap.parse_args(argv)
    FAMILIES = tuple(args.families.split(","))
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.model_dir, exist_ok=True)
    parts = args.parts.split(",")
    t0 = time.perf_counter()
    lines = ["# NeuraLSP (seed 001) reproduced with petsc-neural", "",
             f"Generated by `scripts/reproduce_neuralsp.py {' '.join(argv or sys.argv[1:])}` on "
             f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
             f"{platform.machine()} with {os.cpu_count()} cores (1-minute load average "
             f"{os.getloadavg()[0]:.2f} at the start, {{END_LOAD}} at the end, this script's "
             "own process included: well above 1 per rank means other jobs shared the machine "
             "and timings are indicative; iteration counts are not affected), "
             f"PETSc {'.'.join(map(str, PETSc.Sys.getVersion()))}, torch {torch.__version__} "
             "(1 thread).  The paper's figures are from an Apple M1 CPU.  The paper reports no "
             "iteration counts, so ours have nothing to be compared with there.", ""]
    if "energy" in parts:
        part_energy(args, lines)
    if "tables" in parts:
        part_tables(args, lines)
    if "transfer" in parts:
        part_transfer(args, lines)
    if "ranks" in parts:
        part_ranks(args, lines)
    lines.append(f"Run time of this script: {time.perf_counter() - t0:.0f} s.")
    lines = [ln.replace("{END_LOAD}", f"{os.getloadavg()[0]:.2f}") for ln in lines]
    name = "neuralsp_tables.md" if parts == ["energy", "tables", "transfer"] else (
        "neuralsp_" + "_".join(parts) + ".md")
    if PETSc.COMM_WORLD.getRank() == 0:
        with open(os.path.join(args.out, name), "w") as f:
            f.write("\n".join(lines) + "\n")
        partial = os.path.join(args.out, "neuralsp_tables.md.partial")
        if os.path.exists(partial):
            os.unlink(partial)
        print(f"wrote {os.path.join(args.out, name)} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
