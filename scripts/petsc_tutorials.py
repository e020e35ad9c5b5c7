#!/usr/bin/env python
"""Build PETSc's own C tutorials and run them, unmodified, with a neural PC beside GAMG.

``ksp/ex2`` (a 2D Laplacian assembled by hand, also ``-m 1 -n 1`` on two
ranks: one rank owns no row), ``ex29`` (2D variable-coefficient DMDA problem,
``KSPSetComputeOperators``), ``ex45`` (3D DMDA Laplacian) and ``ex50`` (2D
Neumann problem with a null space) are compiled from the PETSc sources that
``scripts/setup_env.sh`` installed (``$PETSC_DIR/src/ksp/ksp/tutorials``) with
PETSc's ``Makefile.basic.user``, into ``build/petsc-tutorials``, and run with
nothing but::

    -ksp_type fgmres -pc_type python -pc_python_type petsc_neural.NPO -python <venv python>

The table printed (markdown) gives iterations, the converged reason and the
wall time for NPO and for GAMG (same KSP, ``-pc_type gamg``).  ``--quick``
runs small sizes (the test suite uses it); ``--out FILE`` also writes the table.

    python scripts/petsc_tutorials.py [--quick] [--pc petsc_neural.NPO] [--out results/...]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, "build", "petsc-tutorials")
TUTORIALS = ("ex2", "ex29", "ex45", "ex50")

# (tutorial, ranks, arguments) -- quick sizes, then the sizes.
QUICK = [
    ("ex2", 1, "-m 32 -n 32"),
    ("ex2", 2, "-m 32 -n 32"),
    ("ex2", 2, "-m 1 -n 1"),
    ("ex29", 1, "-da_grid_x 33 -da_grid_y 33"),
    ("ex45", 1, "-da_grid_x 9 -da_grid_y 9 -da_grid_z 9"),
    ("ex50", 1, "-da_grid_x 33 -da_grid_y 33"),
]
FULL = [
    ("ex2", 1, "-m 32 -n 32"),
    ("ex2", 2, "-m 32 -n 32"),
    ("ex2", 2, "-m 1 -n 1"),
    ("ex2", 1, "-m 200 -n 200"),
    ("ex2", 2, "-m 200 -n 200"),
    ("ex29", 1, "-da_grid_x 129 -da_grid_y 129"),
    ("ex29", 2, "-da_grid_x 129 -da_grid_y 129"),
    ("ex45", 1, "-da_grid_x 33 -da_grid_y 33 -da_grid_z 33"),
    ("ex45", 2, "-da_grid_x 33 -da_grid_y 33 -da_grid_z 33"),
    ("ex50", 1, "-da_grid_x 129 -da_grid_y 129"),
    ("ex50", 2, "-da_grid_x 129 -da_grid_y 129"),
]

_REASON = re.compile(r"Linear solve (converged|did not converge) due to (\S+) iterations (\d+)")


def petsc_env() -> dict[str, str]:
    import petsc4py

    cfg = petsc4py.get_config()
    env = dict(os.environ, PETSC_DIR=cfg["PETSC_DIR"], PETSC_ARCH=cfg["PETSC_ARCH"])
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    # The embedded interpreter imports petsc_neural from this checkout.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    return env


def build(env: dict[str, str]) -> None:
    """Compile the tutorials (skipped when the binaries are newer than the sources)."""
    src = os.path.join(env["PETSC_DIR"], "src", "ksp", "ksp", "tutorials")
    makefile = os.path.join(env["PETSC_DIR"], "share", "petsc", "Makefile.basic.user")
    os.makedirs(BUILD, exist_ok=True)
    for name in TUTORIALS:
        c = os.path.join(BUILD, name + ".c")
        exe = os.path.join(BUILD, name)
        if os.path.exists(exe) and os.path.getmtime(exe) >= os.path.getmtime(
                os.path.join(src, name + ".c")):
            continue
        shutil.copy(os.path.join(src, name + ".c"), c)
        out = subprocess.run(["make", "-s", "-f", makefile, name], cwd=BUILD, env=env,
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"building {name} failed:\n{out.stdout}\n{out.stderr}")


def run(env: dict[str, str], name: str, nprocs: int, args: str, pc: list[str]) -> dict:
    cmd = ["mpiexec", "-n", str(nprocs), os.path.join(BUILD, name), *args.split(),
           "-ksp_type", "fgmres", "-ksp_converged_reason", *pc]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    m = _REASON.search(out.stdout)
    return {
        "ok": out.returncode == 0 and m is not None and m.group(1) == "converged",
        "its": int(m.group(3)) if m else -1,
        "reason": m.group(2) if m else f"exit {out.returncode}",
        "wall": wall,
        "tail": (out.stdout + out.stderr)[-1500:],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (the test suite's)")
    p.add_argument("--pc", default="petsc_neural.NPO", help="the python PC to run")
    p.add_argument("--out", help="also write the markdown table here")
    args = p.parse_args(argv)
    env = petsc_env()
    build(env)
    neural = ["-pc_type", "python", "-pc_python_type", args.pc, "-python", sys.executable]
    gamg = ["-pc_type", "gamg"]
    lines = [
        f"PETSc C tutorials, unmodified, with `-ksp_type fgmres -pc_type python "
        f"-pc_python_type {args.pc}` beside `-pc_type gamg` (rtol: each tutorial's default; "
        "wall time of the whole program, start-up included).",
        "",
        "| tutorial | ranks | arguments | neural its | neural reason | neural wall (s) | "
        "GAMG its | GAMG wall (s) |",
        "|---|---:|---|---:|---|---:|---:|---:|",
    ]
    failed = []
    for name, nprocs, targs in (QUICK if args.quick else FULL):
        r = run(env, name, nprocs, targs, neural)
        g = run(env, name, nprocs, targs, gamg)
        status = "" if r["ok"] else " FAILED"
        if not r["ok"]:
            failed.append((name, nprocs, targs, r["tail"]))
        lines.append(f"| {name} | {nprocs} | `{targs}` | {r['its']} | {r['reason']}{status} | "
                     f"{r['wall']:.2f} | {g['its']} | {g['wall']:.2f} |")
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    for name, nprocs, targs, tail in failed:
        sys.stdout.write(f"\n--- {name} on {nprocs} rank(s) {targs}:\n{tail}\n")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(f"Command: `python scripts/petsc_tutorials.py"
                    f"{' --quick' if args.quick else ''}`\n\n" + text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
