"""``petsc-neural problems ...`` and ``petsc-neural data ...`` subcommands.

petsc-neural problems list
petsc-neural problems show FAMILY [--size N] [--seed S] [--param KEY=VALUE ...] [--out PNG]
petsc-neural problems table [--families F ...] [--rtol R]
petsc-neural data generate --family F --size N --count K --seed S --out FILE
                           [--param KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import sys
import time

__all__ = ["register", "TABLE_CASES", "FAMILY_NAMES", "parse_params", "run_table"]

log = logging.getLogger("petsc_neural.problems")

# (label, family, params, three sizes) of `problems table`.
TABLE_CASES: list[tuple[str, str, dict, tuple[int, int, int]]] = [
    ("poisson 1D", "poisson", {"dim": 1}, (1024, 4096, 16384)),
    ("poisson 2D uniform", "poisson", {"dim": 2}, (32, 64, 128)),
    ("poisson 2D jittered", "poisson", {"dim": 2, "mesh": "jittered"}, (32, 64, 128)),
    ("poisson 2D gmsh", "poisson", {"dim": 2, "mesh": "gmsh"}, (16, 32, 64)),
    ("poisson 3D uniform", "poisson", {"dim": 3}, (8, 16, 24)),
    ("diffusion piecewise", "diffusion", {}, (32, 64, 128)),
    ("diffusion grf", "diffusion", {"coefficient": "grf"}, (32, 64, 128)),
    ("diffusion M+dtK", "diffusion", {"time_step": 1e-3}, (32, 64, 128)),
    ("anisotropic eps=1e-5", "anisotropic", {}, (32, 64, 128)),
    ("rotated laplacian", "anisotropic", {"preset": "rotated_laplacian"}, (32, 64, 128)),
    ("screened_poisson", "screened_poisson", {}, (32, 64, 128)),
    ("elasticity 2D P1", "elasticity", {"dim": 2}, (16, 32, 64)),
    (
        "elasticity 2D P2 het.",
        "elasticity",
        {"dim": 2, "degree": 2, "lame": "heterogeneous"},
        (8, 16, 32),
    ),
    ("elasticity 3D P1", "elasticity", {"dim": 3}, (4, 8, 12)),
    ("cdr 1D convection", "cdr", {"dim": 1, "regime": "convection"}, (256, 1024, 4096)),
    ("cdr 1D reaction", "cdr", {"dim": 1, "regime": "reaction"}, (256, 1024, 4096)),
    ("cdr 2D convection", "cdr", {"dim": 2, "regime": "convection"}, (32, 64, 128)),
    ("cdr 2D reaction", "cdr", {"dim": 2, "regime": "reaction"}, (32, 64, 128)),
    ("mixed_3d1d", "mixed_3d1d", {}, (8, 12, 16)),
    ("FD 1D convection (upwind)", "fd_cdr", {"dim": 1, "regime": "convection"}, (256, 1024, 2048)),
    ("FD 1D reaction", "fd_cdr", {"dim": 1, "regime": "reaction"}, (256, 1024, 2048)),
    ("FD 2D convection (upwind)", "fd_cdr", {"dim": 2, "regime": "convection"}, (32, 64, 128)),
    ("FD 2D reaction", "fd_cdr", {"dim": 2, "regime": "reaction"}, (32, 64, 128)),
    ("FD rotated Laplacian", "fd_rotated", {"theta": 0.5}, (32, 64, 98)),
]


def parse_params(items: list[str] | None) -> dict:
    """``["dim=3", "mesh=gmsh"]`` -> ``{"dim": 3, "mesh": "gmsh"}`` (Python literals or strings)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"--param wants KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def _rank() -> int:
    from mpi4py import MPI

    return MPI.COMM_WORLD.rank


class _Null:
    def write(self, _):
        pass

    def flush(self):
        pass


def _cmd_list(args) -> int:
    from .registry import DEFAULT_SIZES, FAMILIES

    for name, builder in FAMILIES.items():
        doc = (builder.__doc__ or "").strip().splitlines()[0]
        sys.stdout.write(f"{name:18s} sizes {DEFAULT_SIZES[name]}  {doc}\n")
    return 0


def _solve_baseline(problem, rtol: float = 1e-10, max_it: int = 500):
    from .datasets import baseline_solver_parameters

    params = baseline_solver_parameters(problem, rtol=rtol, max_it=max_it)
    t0 = time.perf_counter()
    x, ksp = problem.solve(params)
    return x, ksp, time.perf_counter() - t0, params["ksp_type"]


def _cmd_show(args) -> int:
    from mpi4py import MPI

    from .plotting import plot_problem
    from .registry import DEFAULT_SIZES, make_problem

    if MPI.COMM_WORLD.size > 1:
        raise SystemExit("petsc-neural problems show runs on one MPI rank")
    params = parse_params(args.param)
    size = args.size or DEFAULT_SIZES[args.family][0]
    problem = make_problem(args.family, size, args.seed, **params)
    x, ksp, seconds, kind = _solve_baseline(problem)
    out = args.out or f"{args.family}.png"
    if hasattr(problem, "dm"):  # a finite-difference (DMDA) family: no mesh to draw
        problem.plot(x, out)
    else:
        plot_problem(problem, x, out)
    md = problem.metadata
    sys.stdout.write(
        f"{args.family}: {md['dofs']} dofs, {md['nnz']} nnz, assembly {md['assembly_time']:.3f}s, "
        f"{kind}+GAMG {ksp.getIterationNumber()} its (reason {ksp.getConvergedReason()}) -> {out}\n"
    )
    return 0


def run_table(cases=None, rtol: float = 1e-10, max_it: int = 500, stream=None) -> list[dict]:
    """Build and solve every case at its three sizes; print a Markdown table."""
    from .registry import make_problem

    stream = stream or (sys.stdout if _rank() == 0 else _Null())
    rows = []
    stream.write(
        f"| case | family | size | dofs | nnz | assembly (s) | Krylov+GAMG its "
        f"(rtol {rtol:g}) |\n|---|---|---|---|---|---|---|\n"
    )
    for label, family, params, sizes in cases or TABLE_CASES:
        # Warm-up build (not reported): compiles the form kernels, so the
        # assembly times below measure assembly, not code generation.
        make_problem(family, sizes[0], 0, **params)
        for size in sizes:
            problem = make_problem(family, size, 0, **params)
            x, ksp, seconds, kind = _solve_baseline(problem, rtol=rtol, max_it=max_it)
            md = problem.metadata
            its = ksp.getIterationNumber()
            reason = ksp.getConvergedReason()
            its_txt = f"{its}" if reason > 0 else f"{its} (not converged, reason {reason})"
            row = dict(
                case=label,
                family=family,
                size=size,
                dofs=md["dofs"],
                nnz=md["nnz"],
                assembly=md["assembly_time"],
                its=its,
                reason=reason,
                ksp=kind,
            )
            rows.append(row)
            stream.write(
                f"| {label} | {family} | {size} | {md['dofs']} | {md['nnz']} | "
                f"{md['assembly_time']:.3f} | {kind.upper()} {its_txt} |\n"
            )
            stream.flush()
            ksp.destroy()
    return rows


def _cmd_table(args) -> int:
    cases = TABLE_CASES
    if args.families:
        cases = [c for c in TABLE_CASES if c[1] in args.families]
    rows = run_table(cases, rtol=args.rtol)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


def _cmd_generate(args) -> int:
    from .datasets import generate_dataset

    params = parse_params(args.param)
    if "rhs" not in params:
        params["rhs"] = "grf"
    generate_dataset(
        args.family,
        args.size,
        args.count,
        args.seed,
        args.out,
        params=params,
        rtol=args.rtol,
        max_it=args.max_it,
        progress=not args.no_progress,
    )
    if _rank() == 0:
        sys.stdout.write(
            f"wrote {args.count} samples of {args.family} (size {args.size}) to {args.out}\n"
        )
    return 0


# The registry's family names, listed here so that building the parser (and
# ``petsc-neural --help``) does not import Firedrake; a test keeps them equal.
FAMILY_NAMES: tuple[str, ...] = (
    "poisson",
    "diffusion",
    "anisotropic",
    "screened_poisson",
    "elasticity",
    "cdr",
    "mixed_3d1d",
    "fd_cdr",
    "fd_rotated",
)


def register(subparsers) -> None:
    """Add the ``problems`` and ``data`` subcommands to the top-level CLI."""
    families = list(FAMILY_NAMES)
    p = subparsers.add_parser("problems", help="PDE problem families (list, show, table)")
    sub = p.add_subparsers(dest="problems_command", metavar="ACTION")
    sub.required = True

    s = sub.add_parser("list", help="list the families")
    s.set_defaults(func=_cmd_list)

    s = sub.add_parser("show", help="PNG of a problem's mesh, coefficient and solution")
    s.add_argument("family", choices=families)
    s.add_argument("--size", type=int, default=None, help="cells per direction")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--param",
        action="append",
        metavar="KEY=VALUE",
        help="builder parameter (repeatable), e.g. --param dim=3",
    )
    s.add_argument("--out", default=None, help="PNG path (default FAMILY.png)")
    s.set_defaults(func=_cmd_show)

    s = sub.add_parser("table", help="dofs / nnz / assembly time / CG+GAMG iterations at 3 sizes")
    s.add_argument("--families", nargs="*", choices=families, default=None)
    s.add_argument("--rtol", type=float, default=1e-10)
    s.add_argument("--json", default=None, help="also write the rows as JSON")
    s.set_defaults(func=_cmd_table)

    d = subparsers.add_parser("data", help="datasets of recorded Krylov solves")
    dsub = d.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True
    g = dsub.add_parser("generate", help="HDF5 dataset of baseline CG+GAMG solves (seed 000)")
    g.add_argument("--family", required=True, choices=families)
    g.add_argument("--size", type=int, required=True)
    g.add_argument("--count", type=int, required=True)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", required=True)
    g.add_argument("--param", action="append", metavar="KEY=VALUE")
    g.add_argument("--rtol", type=float, default=1e-10)
    g.add_argument("--max-it", type=int, default=100)
    g.add_argument("--no-progress", action="store_true")
    g.set_defaults(func=_cmd_generate)
