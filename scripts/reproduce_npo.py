#!/usr/bin/env python
"""Reproduce NPO's Tables 1-2 (seed 000), resolution generalization and a loss ablation.

    nice -n 10 .venv/bin/python scripts/reproduce_npo.py [--quick] [--out results]

Writes ``results/npo_tables.md`` and ``results/npo_results.json``.  Every
number comes from this run: the classical baselines (none, jacobi, sor, ilu,
GAMG tuned per problem in the same run by :func:`petsc_neural.bench.tune_gamg`)
and NPO (shipped models; the 1D model and the ablation models are trained
here).  Krylov: full GMRES (restart = max_it), right preconditioning, true
residual histories from a zero guess; NPO runs under FGMRES (it is nonlinear).
Iterations at 1e-6 and 1e-4 are read from the 1e-10 solve's history (GMRES
iterates do not depend on the tolerance).  Times: setup + solve, the minimum
over ``--repeat`` runs, measured on whatever machine runs this (the committed
table: a shared, loaded 2-core machine).  Test systems use seed 1000, which no
training set contains.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time

import numpy as np

PAPER_T1 = {  # seed 000 Table 1: time (s) at 1e-10, iterations at 1e-10, 1e-6, 1e-4
    "poisson1d": {"jacobi": (3.719, 513, 513, 510), "gauss-seidel": (3.536, 502, 495, 494),
                  "sor": (3.452, 502, 495, 494), "npo": (0.623, 184, 134, 93)},
    "poisson2d": {"jacobi": (2.7337, 113, 84, 62), "gauss-seidel": (1.7569, 81, 68, 57),
                  "sor": (2.2438, 81, 68, 57), "npo": (0.0751, 34, 19, 10)},
    "irregular": {"jacobi": (0.455, 153, 107, 73), "gauss-seidel": (0.379, 130, 99, 76),
                  "sor": (0.364, 130, 99, 76), "npo": (0.162, 82, 60, 13)},
    # Table 2 reports 1e-10 only.
    "diffusion": {"jacobi": (3.0544, 207, None, None), "gauss-seidel": (1.5750, 139, None, None),
                  "sor": (1.7898, 139, None, None), "npo": (0.1058, 38, None, None)},
    "elasticity": {"jacobi": (0.6042, 79, None, None), "gauss-seidel": (0.4875, 62, None, None),
                   "sor": (0.3139, 62, None, None), "npo": (0.0267, 31, None, None)},
}

CASES = [
    {"key": "poisson1d", "label": "1D Poisson, 512 cells (P1)", "family": "poisson",
     "size": 512, "params": {"dim": 1}, "model": "train:poisson1d"},
    {"key": "poisson2d", "label": "2D Poisson, 32x32 (P1)", "family": "poisson", "size": 32,
     "params": {"dim": 2}, "model": "shipped:poisson"},
    {"key": "irregular", "label": "2D Poisson, irregular (jittered Delaunay) mesh, N=32",
     "family": "poisson", "size": 32, "params": {"dim": 2, "mesh": "jittered"},
     "model": "shipped:poisson"},
    {"key": "diffusion", "label": "2D diffusion, lognormal coefficient (sigma 1.5), 32x32",
     "family": "diffusion", "size": 32, "params": {"mesh": "uniform"},
     "model": "shipped:diffusion"},
    {"key": "elasticity", "label": "2D linear elasticity, 32x32 (vector P1)",
     "family": "elasticity", "size": 32, "params": {}, "model": "shipped:elasticity"},
]
TOLS = (1e-10, 1e-6, 1e-4)
CLASSICAL = ("none", "jacobi", "sor", "ilu", "gamg")
TEST_SEED = 1000
GEN_MAX_IT = 1500  # generalization: full (F)GMRES beyond this costs O(its^2 dofs)
NONE_MAX_DOFS = 2100  # 1D 'none' beyond this is skipped in generalization()


def krylov(ksp: str, max_it: int) -> dict:
    from petsc_neural.bench import ksp_options

    opts = ksp_options(ksp, TOLS[0], max_it)
    opts["ksp_gmres_restart"] = max_it  # full (F)GMRES, as the paper's iteration counts suggest
    return opts


def its_at(history: list[float], tol: float) -> int | None:
    for k, h in enumerate(history):
        if h <= tol:
            return k
    return None


def solve_row(problem, pc: str, kopts: dict, repeat: int, model: str | None = None) -> dict:
    from petsc_neural.bench import PC_SPECS, run_case, tune_gamg

    if pc == "gamg":
        opts, res = tune_gamg(problem, kopts, repeat)
    else:
        opts = {**kopts, **PC_SPECS[pc](problem.comm.size)}
        if model:
            opts["pc_neural_model"] = model
        run_case(problem, opts, 1)  # warm-up (imports, first-touch)
        res = run_case(problem, opts, repeat)
    hist = res["history"]
    return {
        "pc": pc,
        "options": {k: v for k, v in opts.items() if not k.startswith("ksp_")},
        "converged": res["converged"],
        "iterations": res["iterations"],
        "its": {f"{t:g}": its_at(hist, t) for t in TOLS},
        "time": res["total_time"]["min"],
        "setup_time": res["setup_time"]["min"],
        "solve_time": res["solve_time"]["min"],
        "history": hist,
    }


def make(case: dict, size: int | None = None):
    from firedrake_problems import make_problem

    return make_problem(case["family"], size or case["size"], seed=TEST_SEED, rhs="grf",
                        **case["params"])


def train_model(name: str, family: str, size: int, params: dict, steps: int, workdir: str,
                dataset: str | None = None, **overrides) -> tuple[str, float]:
    """Train (or reuse) a model; returns its path and the training seconds."""
    from petsc_neural.npo.train import (
        TrainConfig,
        export_model,
        generate_data,
        load_samples,
        train,
    )

    out = os.path.join(workdir, f"{name}.pt")
    cfg = TrainConfig(family=family, size=size, params=params, samples=8, steps=steps,
                      **overrides)
    if dataset is None:
        tag = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
        dataset = os.path.join(workdir, f"data_{family}{size}_{tag}.h5")
        if not os.path.exists(dataset):
            generate_data(cfg, dataset + ".part")
            os.replace(dataset + ".part", dataset)
    t0 = time.perf_counter()
    net, hist = train(cfg, load_samples([dataset]))
    export_model(net, out, cfg, hist)
    return out, time.perf_counter() - t0


def shipped(family: str) -> str:
    from petsc_neural.npo.pc import shipped_model

    return shipped_model(family)


# ------------------------------------------------------------------------------ parts
def main_tables(args, workdir: str, log) -> dict:
    out = {}
    for case in CASES:
        if args.cases and case["key"] not in args.cases:
            continue
        log(f"== {case['label']}")
        kind, _, name = case["model"].partition(":")
        train_s = None
        if kind == "train":
            model, train_s = train_model(name, case["family"], case["size"], case["params"],
                                         args.steps_1d, workdir)
            log(f"   trained {model} in {train_s:.0f} s")
        else:
            model = shipped(name)
        p = make(case)
        dofs = p.A.getSize()[0]
        max_it = max(2000, 2 * dofs)
        rows = []
        for pc in CLASSICAL:
            rows.append(solve_row(p, pc, krylov("gmres", max_it), args.repeat))
            log(f"   {pc:7s} its {rows[-1]['its']} time {rows[-1]['time']:.4f}")
        rows.append(solve_row(p, "npo", krylov("fgmres", max_it), args.repeat, model))
        log(f"   npo     its {rows[-1]['its']} time {rows[-1]['time']:.4f}")
        out[case["key"]] = {"label": case["label"], "dofs": dofs, "nnz": p.metadata["nnz"],
                            "model": os.path.basename(model), "train_seconds": train_s,
                            "rows": rows, "model_path": model}
    return out


def generalization(args, tables: dict, workdir: str, log) -> dict:
    out = {}
    plans = [("poisson2d", [32, 64, 128]), ("poisson1d", [512, 1024, 2048, 4096, 8192])]
    for key, sizes in plans:
        if key not in tables:
            continue
        case = next(c for c in CASES if c["key"] == key)
        model = tables[key]["model_path"]
        rows = []
        for size in sizes[: (2 if args.quick else None)]:
            p = make(case, size)
            dofs = p.A.getSize()[0]
            max_it = GEN_MAX_IT
            row = {"size": size, "dofs": dofs}
            for pc in ("none", "ilu", "gamg", "npo"):
                if pc == "none" and case["params"].get("dim") == 1 and dofs > NONE_MAX_DOFS:
                    # Full GMRES without a preconditioner needs ~dofs iterations here,
                    # O(its^2 dofs) work: skipped to keep the script's runtime bounded.
                    row[pc] = {"its": None, "time": None, "converged": False}
                    continue
                ksp = "fgmres" if pc == "npo" else "gmres"
                r = solve_row(p, pc, krylov(ksp, max_it), 1, model if pc == "npo" else None)
                row[pc] = {"its": r["iterations"], "time": r["time"], "converged": r["converged"]}
            log(f"   {key} n={size}: " + ", ".join(f"{k} {row[k]['its']}" for k in
                                                     ("none", "ilu", "gamg", "npo")))
            rows.append(row)
        out[key] = {"trained_at": case["size"], "rows": rows}
    return out


ABLATION = [
    ("NPO (all losses)", {}),
    ("w/o residual loss", {"weights": {"condition": 1.0, "residual": 0.0, "data": 1.0}}),
    ("w/o data loss", {"weights": {"condition": 1.0, "residual": 1.0, "data": 0.0}}),
    ("w/o condition loss", {"weights": {"condition": 0.0, "residual": 1.0, "data": 1.0}}),
    ("w/o Galerkin coarse channel (attention-only coarse step)",
     {"network": {"galerkin": False}}),
    ("w/o pre/post relaxation", {"network": {"pre": 0, "post": 0}}),
    ("untrained (0 steps)", {"steps": 0}),
]


def ablation(args, workdir: str, log) -> list[dict]:
    case = next(c for c in CASES if c["key"] == "poisson2d")
    p = make(case)
    max_it = 2000
    rows = []
    for i, (label, over) in enumerate(ABLATION[: (3 if args.quick else None)]):
        steps = over.get("steps", args.steps_ablation)
        extra = {k: v for k, v in over.items() if k != "steps"}
        model, secs = train_model(f"ablation{i}", case["family"], case["size"], case["params"],
                                  steps, workdir, **extra)
        r = solve_row(p, "npo", krylov("fgmres", max_it), 1, model)
        rows.append({"label": label, "steps": steps, "train_seconds": secs,
                     "its": r["its"], "time": r["time"]})
        log(f"   ablation {label}: its {r['its']} ({secs:.0f} s training)")
    return rows


# ------------------------------------------------------------------------------ output
def _fmt_its(v) -> str:
    """Paper values: None is 'not reported'."""
    return "—" if v is None else str(v)


def _fmt_ours(v) -> str:
    """Our values: None is 'tolerance not reached within max_it'."""
    return "n.r." if v is None else str(v)


def markdown(res: dict) -> str:
    L = []
    L.append("# NPO (seed 000): Tables 1-2, resolution generalization, ablation\n")
    L.append(f"Produced by `{res['command']}` on {res['created']} "
             f"({res['machine']}); total runtime {res['runtime_s']:.0f} s.\n")
    L.append("**Timings were measured on a shared, loaded 2-core machine** (other jobs "
             "running); they are wall-clock setup + solve, minimum of the repeats, and "
             "comparable only within this run. The paper's times are from its own GPU "
             "machine and are shown only for reference.\n")
    L.append("Krylov: full GMRES (no restart), right preconditioning, zero initial guess, "
             "relative true residual; NPO under FGMRES (the network is nonlinear in the "
             "residual). Iterations at 1e-6/1e-4 are read from the 1e-10 run's residual "
             "history. Test systems: seed 1000, GRF right-hand side; NPO models were trained "
             "on seeds 0-7. `gamg` is GAMG tuned per problem in this run (threshold x "
             "prolongator smoothing grid, Chebyshev/Jacobi smoothers, near-nullspace and "
             "coordinates); `sor` is PETSc's SSOR with omega = 1 (symmetric Gauss-Seidel), "
             "shown beside the paper's Gauss-Seidel and SOR rows. `n.r.`: the tolerance was "
             "not reached within max_it (max(2000, 2 x dofs)); `—`: not reported.\n")
    L.append("## Tables 1-2: GMRES iterations and time\n")
    floor_lines = []
    for key, t in res["tables"].items():
        paper = PAPER_T1[key]
        L.append(f"### {t['label']} — {t['dofs']} dofs, {t['nnz']} nnz; NPO model "
                 f"`{t['model']}`\n")
        L.append("| method | time (s) | its 1e-10 | its 1e-6 | its 1e-4 | paper time (s) | "
                 "paper its 1e-10 | paper 1e-6 | paper 1e-4 |")
        L.append("|---|---|---|---|---|---|---|---|---|")
        gamg_t = next(r["time"] for r in t["rows"] if r["pc"] == "gamg")
        for r in t["rows"]:
            pk = {"sor": "sor", "jacobi": "jacobi", "npo": "npo"}.get(r["pc"])
            pv = paper.get(pk) if pk else None
            ps = (f"{pv[0]:g} | {_fmt_its(pv[1])} | {_fmt_its(pv[2])} | {_fmt_its(pv[3])}"
                  if pv else "— | — | — | —")
            name = r["pc"] + (" (tuned)" if r["pc"] == "gamg" else "")
            if r["pc"] == "sor":
                gs = paper["gauss-seidel"]
                ps += f" (paper GS: {gs[1]})"
            its = [r["its"][f"{x:g}"] for x in TOLS]
            L.append(f"| {name} | {r['time']:.4f} | " + " | ".join(_fmt_ours(i) for i in its)
                     + f" | {ps} |")
        npo = next(r for r in t["rows"] if r["pc"] == "npo")
        ratio = npo["time"] / gamg_t
        L.append("")
        L.append(f"NPO wall time / tuned GAMG wall time (same run): **{ratio:.1f}x**. ")
        pv = paper["npo"]
        checks = []
        for x, pit in zip(TOLS, pv[1:], strict=True):
            if pit is None:
                continue
            ours = npo["its"][f"{x:g}"]
            ok = ours is not None and ours <= pit
            checks.append(f"{x:g}: {ours} vs paper {pit} ({'met' if ok else 'NOT met'})")
        L.append("Floor (our NPO iterations <= paper NPO): " + "; ".join(checks) + ".\n")
        floor_lines.append((t["label"], checks, ratio))
    L.append("### Summary: floor and wall-time ratio\n")
    L.append("| case | floor checks (ours vs paper NPO) | NPO / tuned GAMG time |")
    L.append("|---|---|---|")
    for label, checks, ratio in floor_lines:
        L.append(f"| {label} | {'; '.join(checks)} | {ratio:.1f}x |")
    L.append("")
    if res.get("generalization"):
        L.append("## Resolution generalization (§5.3): trained at one size, applied to larger\n")
        for key, g in res["generalization"].items():
            L.append(f"### {key}: model trained at size {g['trained_at']}\n")
            L.append(f"Iteration cap {GEN_MAX_IT} (full (F)GMRES); `n.r.`: not converged "
                     "to 1e-10 within it.\n")
            if key == "poisson1d":
                L.append("`none` is skipped above 2100 dofs in 1D (full GMRES needs about as "
                         "many iterations as dofs there; its cost would dominate the script).\n")
            L.append("| size | dofs | dofs / training dofs | none its | ilu its | gamg its | "
                     "NPO its | NPO time (s) | gamg time (s) |")
            L.append("|---|---|---|---|---|---|---|---|---|")
            d0 = g["rows"][0]["dofs"]
            for r in g["rows"]:
                its = {k: (r[k]["its"] if r[k]["converged"] else
                           ("skipped" if r[k]["its"] is None else "n.r."))
                       for k in ("none", "ilu", "gamg", "npo")}
                L.append(f"| {r['size']} | {r['dofs']} | {r['dofs'] / d0:.1f} | "
                         f"{its['none']} | {its['ilu']} | {its['gamg']} | "
                         f"{its['npo']} | {r['npo']['time']:.3f} | "
                         f"{r['gamg']['time']:.3f} |")
            L.append("")
    if res.get("ablation"):
        L.append("## Ablation (Table 3 style), 2D Poisson 32x32, FGMRES to 1e-10\n")
        L.append(f"Each model trained for {res['steps_ablation']} steps on the same data "
                 "and seed; iterations on the seed-1000 test system.\n")
        L.append("| configuration | its 1e-10 | its 1e-6 | its 1e-4 | time (s) |")
        L.append("|---|---|---|---|---|")
        for r in res["ablation"]:
            L.append(f"| {r['label']} | {r['its']['1e-10']} | {r['its']['1e-06']} | "
                     f"{r['its']['0.0001']} | {r['time']:.4f} |")
        L.append("")
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results")
    ap.add_argument("--workdir", default=os.path.join("build", "npo_repro"))
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--steps-1d", type=int, default=200)
    ap.add_argument("--steps-ablation", type=int, default=150)
    ap.add_argument("--cases", nargs="*", default=None, help="subset of case keys")
    ap.add_argument("--skip", nargs="*", default=[], choices=["generalization", "ablation"])
    ap.add_argument("--quick", action="store_true", help="smoke run: fewer sizes and steps")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps_1d, args.steps_ablation, args.repeat = 10, 5, 1
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.workdir, exist_ok=True)
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f}s] {msg}", flush=True)

    res = {
        "command": "python scripts/reproduce_npo.py " + " ".join(argv or sys.argv[1:]),
        "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch "
                   f"{torch.__version__}, {torch.get_num_threads()} torch thread(s)",
        "steps_ablation": args.steps_ablation,
    }
    res["tables"] = main_tables(args, args.workdir, log)
    if "generalization" not in args.skip:
        log("== resolution generalization")
        res["generalization"] = generalization(args, res["tables"], args.workdir, log)
    if "ablation" not in args.skip:
        log("== ablation")
        res["ablation"] = ablation(args, args.workdir, log)
    res["runtime_s"] = time.perf_counter() - t0
    with open(os.path.join(args.out, "npo_results.json"), "w") as f:
        json.dump(res, f, indent=1, default=lambda o: None)
    md = markdown(res)
    with open(os.path.join(args.out, "npo_tables.md"), "w") as f:
        f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    sys.exit(main())
