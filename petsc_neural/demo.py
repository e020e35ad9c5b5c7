"""``petsc-neural demo``: the project's main job.

A Firedrake problem (default: 2D Poisson with a Gaussian-random-field source
on an unstructured jittered Delaunay mesh of 48x48 cells, a mesh and size the
shipped models were not trained on) solved by PETSc with the neural PCs
that ship a model, NPO (:class:`petsc_neural.NPO`, the shipped model of the
family, under FGMRES), NPO-MG (:class:`petsc_neural.NPOMultigrid`) and
NeuraLSP (:class:`petsc_neural.NeuraLSP`, its local model), the last two
scalar problems only, beside GMRES with no preconditioner, Jacobi, SOR, ILU
and GAMG tuned in the same run.  Prints a table of iterations and times, checks every solution's
true residual, and writes a convergence plot (relative true residual against
iteration) to ``--plot``.  Runs under ``mpiexec -n N`` (NPO then works on each
rank's diagonal block; ILU becomes block-Jacobi ILU).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

__all__ = ["register", "run_demo", "compare"]

METHODS = ("none", "jacobi", "sor", "ilu", "gamg", "npo", "npo_mg", "neuralsp")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="solve a Firedrake problem with NPO beside classical preconditioners",
        description=__doc__.split("\n\n")[1],
    )
    p.add_argument("--family", default="poisson",
                   choices=["poisson", "diffusion", "elasticity"])
    p.add_argument("--size", type=int, default=48, help="cells per direction")
    p.add_argument("--mesh", default="jittered", choices=["uniform", "jittered"])
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--rtol", type=float, default=1e-10)
    p.add_argument("--model", default=None, help="NPO model file (default: the shipped one)")
    p.add_argument("--plot", default="npo_demo.png", help="convergence plot (PNG)")
    p.add_argument("--json", default=None, help="also write the results as JSON")
    p.set_defaults(func=run_demo)


def compare(problem, rtol: float = 1e-10, max_it: int = 2000, model: str | None = None,
            methods: tuple[str, ...] = METHODS) -> list[dict]:
    """Solve ``problem`` with each method; iterations, times and residual histories."""
    from .bench import PC_SPECS, ksp_options, run_case, tune_gamg

    rows = []
    scalar_only = ("npo_mg", "neuralsp")
    for name in methods:
        if name in scalar_only and problem.block_size > 1:
            continue
        ksp = "fgmres" if name == "npo" else "gmres"
        kopts = ksp_options(ksp, rtol, max_it)
        kopts["ksp_gmres_restart"] = max_it
        if name == "gamg":
            opts, res = tune_gamg(problem, kopts, 1)
        else:
            opts = {**kopts, **PC_SPECS[name](problem.comm.size)}
            if name == "npo" and model:
                opts["pc_neural_model"] = model
            run_case(problem, opts, 1)  # warm-up: imports, model load, first touch
            res = run_case(problem, opts, 1)
        rows.append({
            "method": name + (" (tuned)" if name == "gamg" else ""),
            "ksp": ksp,
            "iterations": res["iterations"],
            "converged": res["converged"],
            "rel_residual": res["rel_residual"],
            "setup_time": res["setup_time"]["min"],
            "solve_time": res["solve_time"]["min"],
            "total_time": res["total_time"]["min"],
            "history": res["history"],
        })
    return rows


def _plot(rows: list[dict], title: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        style = dict(lw=2.5, color="black") if r["method"] == "npo" else dict(lw=1.3)
        ax.semilogy(range(len(r["history"])), r["history"],
                    label=f"{r['method']} ({r['iterations']} its)", **style)
    ax.set_xlabel("iteration")
    ax.set_ylabel(r"relative true residual $\|b - Ax_k\| / \|b\|$")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_demo(args: argparse.Namespace) -> int:
    from firedrake_problems import make_problem

    params = {"rhs": "grf"}
    if args.family in ("poisson", "diffusion"):
        params["mesh"] = args.mesh
    elif args.mesh != "uniform":
        params["mesh"] = args.mesh
    t0 = time.perf_counter()
    problem = make_problem(args.family, args.size, seed=args.seed, **params)
    comm = problem.comm
    rows = compare(problem, rtol=args.rtol, model=args.model)
    n = problem.A.getSize()[0]
    title = (f"{args.family} on a {args.mesh} mesh, {args.size} cells/side: {n} dofs, "
             f"{comm.size} rank(s)")
    ok = all(r["converged"] and r["rel_residual"] <= 10 * args.rtol for r in rows)
    if comm.rank == 0:
        out = sys.stdout
        out.write(f"{title}\nGMRES (NPO: FGMRES), rtol {args.rtol:g}, zero initial guess, "
                  "true residual\n\n")
        out.write(f"{'method':<14}{'its':>6}{'setup (s)':>11}{'solve (s)':>11}"
                  f"{'total (s)':>11}{'rel. residual':>15}\n")
        for r in rows:
            out.write(f"{r['method']:<14}{r['iterations']:>6}{r['setup_time']:>11.4f}"
                      f"{r['solve_time']:>11.4f}{r['total_time']:>11.4f}"
                      f"{r['rel_residual']:>15.2e}\n")
        gamg = next(r for r in rows if r["method"].startswith("gamg"))
        out.write("\n")
        for r in rows:
            if r["method"] in ("npo", "npo_mg", "neuralsp"):
                out.write(f"{r['method']} / tuned GAMG: "
                          f"{r['iterations'] / max(gamg['iterations'], 1):.2f}x the iterations, "
                          f"{r['total_time'] / gamg['total_time']:.1f}x the time\n")
        out.write("(times on this machine, this run)\n")
        if args.plot:
            _plot(rows, title, args.plot)
            out.write(f"convergence plot: {os.path.abspath(args.plot)}\n")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"title": title, "rows": rows}, f, indent=1)
        out.write(f"demo done in {time.perf_counter() - t0:.1f} s"
                  f"{'' if ok else ' -- SOME SOLVES DID NOT CONVERGE'}\n")
    return 0 if ok else 1
