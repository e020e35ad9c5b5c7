#!/usr/bin/env python
"""Robustness sweep: every neural PC with a shipped model on random instances of its families.

For each method of the registry that ships models, and each family it ships
a model for, ``--instances`` random problems (size, seed, mesh and
coefficients drawn from a fixed generator) are solved with FGMRES to
``--rtol`` (restart 100, at most ``--max-it`` iterations), twice:

- **plain**: the shipped model, no safeguard;
- **safeguarded**: ``-pc_neural_on_failure fallback -pc_neural_stagnation 10``
  with ``-pc_neural_fallback_pc_type gamg`` (the safeguard of
  :mod:`pcshell.residual`: a non-finite output or a residual that falls by
  less than half over 10 iterations switches the rest of the solve to GAMG).

For every solve the true residual ``||b - A x|| / ||b||`` of the returned
solution is compared with what the KSP reported; a *false convergence* is a
solve that reports convergence while its true residual exceeds ``10 rtol``.
The table (markdown) goes to stdout and to ``--out``::

    python benchmarks/robustness_sweep.py --instances 200 --out results/robustness_sweep.md
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SAFEGUARD = {"pc_neural_on_failure": "fallback", "pc_neural_stagnation": 10,
             "pc_neural_stagnation_factor": 0.5, "pc_neural_fallback_pc_type": "gamg"}


def random_instance(family: str, rng: np.random.Generator) -> tuple[int, int, dict[str, Any]]:
    """(size, seed, params) of one random problem of ``family``."""
    seed = int(rng.integers(1 << 30))
    mesh = str(rng.choice(["uniform", "jittered"]))
    if family == "elasticity":
        size = int(rng.integers(8, 33))
        params = {"mesh": mesh, "rhs": str(rng.choice(["source", "grf"])),
                  "poisson_ratio": float(rng.uniform(0.1, 0.4)),
                  "lame": str(rng.choice(["constant", "heterogeneous"]))}
    elif family == "diffusion":
        size = int(rng.integers(12, 65))
        params = {"mesh": mesh, "coefficient": str(rng.choice(["piecewise", "grf", "constant"])),
                  "sigma": float(rng.uniform(0.5, 2.0)), "rhs": "grf"}
    else:
        size = int(rng.integers(12, 65))
        params = {"mesh": mesh, "rhs": str(rng.choice(["source", "grf"]))}
    return size, seed, params


# Off-distribution cases: a shipped model on problems it was not trained for
# (nonsymmetric, indefinite), where the safeguard has something to do.
STRESS = [("npo", "poisson", "cdr", {"regime": "convection"}),
          ("npo", "poisson", "cdr", {"regime": "reaction"})]


def solve(problem, options: dict[str, Any]) -> dict[str, Any]:
    x, ksp = problem.solve(options)
    r = problem.b.duplicate()
    problem.A.mult(x, r)
    r.aypx(-1.0, problem.b)
    bnorm = problem.b.norm()
    out = {
        "reason": int(ksp.getConvergedReason()),
        "its": ksp.getIterationNumber(),
        "true": r.norm() / bnorm,
        "reported": ksp.getResidualNorm() / bnorm,
        "fallback": bool(getattr(ksp.getPC().getPythonContext(), "fallback_events", [])),
    }
    ksp.destroy()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--instances", type=int, default=200)
    p.add_argument("--rtol", type=float, default=1e-8)
    p.add_argument("--max-it", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", nargs="*", help="registry methods (default: all with models)")
    p.add_argument("--stress", type=int, default=0,
                   help="also this many off-distribution instances per stress case")
    p.add_argument("--out", help="also write the markdown table here")
    args = p.parse_args(argv)
    import petsc4py

    petsc4py.init([])  # the script's own arguments are not PETSc options
    from firedrake_problems import make_problem
    from petsc_neural.registry import METHODS

    base = {"ksp_type": "fgmres", "ksp_rtol": args.rtol, "ksp_atol": 0.0,
            "ksp_max_it": args.max_it, "ksp_gmres_restart": 100}
    rows = []
    t_start = time.perf_counter()

    def sweep(spec, model_key: str, family: str, label: str, n: int, draw) -> None:
        rng = np.random.default_rng([args.seed, sum(map(ord, spec.name + label))])
        stats = {"plain": [], "safeguarded": []}
        for _ in range(n):
            size, seed, params = draw(rng)
            problem = make_problem(family, size, seed=seed, **params)
            opts = {**base, **spec.pc_options(), "pc_neural_model": spec.model_path(model_key)}
            stats["plain"].append(solve(problem, opts))
            stats["safeguarded"].append(solve(problem, {**opts, **SAFEGUARD}))
        for mode, runs in stats.items():
            conv = [r for r in runs if r["reason"] > 0]
            false = [r for r in conv if r["true"] > 10 * args.rtol]
            rows.append({
                "method": spec.name, "family": label, "mode": mode, "n": len(runs),
                "converged": len(conv), "false": len(false),
                "fallbacks": sum(r["fallback"] for r in runs),
                "median_its": float(np.median([r["its"] for r in conv])) if conv else -1,
                "max_ratio": max(r["true"] / max(r["reported"], 1e-300) for r in runs),
            })
            sys.stderr.write(f"{spec.name} {label} {mode}: {len(conv)}/{len(runs)} "
                             f"converged, {len(false)} false\n")

    for spec in METHODS.values():
        if not spec.models or (args.methods and spec.name not in args.methods):
            continue
        for family in spec.models:
            if args.instances:
                sweep(spec, family, family, family, args.instances,
                      lambda rng, f=family: random_instance(f, rng))
    for name, model_key, family, params in STRESS if args.stress else []:
        label = f"{family} {params} ({model_key} model)"
        sweep(METHODS[name], model_key, family, label, args.stress,
              lambda rng, p=params: (int(rng.integers(12, 65)), int(rng.integers(1 << 30)),
                                     {**p, "mesh": str(rng.choice(["uniform", "jittered"]))}))
    lines = [
        f"Robustness sweep: {args.instances} random instances per family (sizes, seeds, "
        f"meshes, coefficients), FGMRES(100) rtol {args.rtol:g}, at most {args.max_it} "
        f"iterations; {time.perf_counter() - t_start:.0f} s.",
        "",
        f"Command: `python benchmarks/robustness_sweep.py --instances {args.instances}"
        f"{f' --stress {args.stress}' if args.stress else ''}`",
        "",
        "| method | family | mode | instances | converged | false convergences | "
        "solves with a stagnation fallback | median its (converged) | "
        "max true / reported residual |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['method']} | {r['family']} | {r['mode']} | {r['n']} | "
                     f"{r['converged']} ({100 * r['converged'] / r['n']:.1f}%) | {r['false']} | "
                     f"{r['fallbacks']} | {r['median_its']:g} | {r['max_ratio']:.4f} |")
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    bad = any(r["false"] for r in rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
