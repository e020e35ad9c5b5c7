#!/usr/bin/env python
"""NeuraLSP's coarse solve on 3D Poisson: coarse size, iterations and setup split per choice.

    python benchmarks/neuralsp_coarse.py --sizes 32 64 --coarse lu mumps gamg auto

FGMRES rtol 1e-8 with the shipped local model; prints one line per (size,
coarse solve) with the coarse size, the coarse PC PETSc ended up with, the
iterations, the wall time of setup + solve and NeuraLSP's own setup split
(vectors, inference, prolongator, PCMG setup).  Extra PETSc options:
``--opt KEY=VALUE`` (repeatable, no leading dash).
"""

from __future__ import annotations

import argparse
import time

from petsc4py import PETSc

from firedrake_problems import make_problem


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32])
    ap.add_argument("--coarse", nargs="+", default=["auto"],
                    choices=["auto", "lu", "mumps", "gamg"])
    ap.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    extra = dict(o.split("=", 1) for o in args.opt)
    for size in args.sizes:
        p = make_problem("poisson", size, seed=1000, dim=3)
        for coarse in args.coarse:
            opts = {"ksp_type": "fgmres", "ksp_rtol": 1e-8, "ksp_max_it": 500,
                    "pc_type": "python", "pc_python_type": "petsc_neural.NeuraLSP",
                    "pc_neuralsp_coarse": coarse, **extra}
            t = time.perf_counter()
            _, ksp = p.solve(opts)
            wall = time.perf_counter() - t
            ctx = ksp.getPC().getPythonContext()
            cpc = ctx.inner.getMGCoarseSolve().getPC()
            solver = cpc.getType()
            if solver == "lu":
                solver += f" ({cpc.getFactorSolverType()})"
            PETSc.Sys.Print(
                f"{size}^3 n={p.A.getSize()[0]} coarse={coarse}: {ctx.coarse_size} rows, "
                f"{solver}, its={ksp.getIterationNumber()} "
                f"reason={ksp.getConvergedReason()} wall={wall:.2f}s ("
                + ", ".join(f"{k} {v:.2f}" for k, v in ctx.timings.items()) + ")")


if __name__ == "__main__":
    main()
