#!/usr/bin/env python
"""The scaling suite: every neural PC with a shipped model beside PETSc's classical ones.

    nice -n 10 .venv/bin/python scripts/scaling_suite.py [--nprocs 1 2] [--out DIR]

Runs ``petsc-neural bench --config benchmarks/suites/scaling_large.json``
(2D Poisson 64^2 .. 512^2 and 3D Poisson 16^3 .. 64^3, up to 274,625 dofs;
NPO-MG, NeuraLSP and NPO with their shipped models, GAMG tuned per problem
in the same run, ILU, ASM, SOR and MUMPS LU; FGMRES, rtol 1e-8) once per
``--nprocs``, each into ``DIR/np<N>/`` (results.json, results.md, plots), then
writes ``DIR/summary.md`` (iterations, setup, solve, peak memory per PC and
size, 1 and 2 ranks side by side) and ``DIR/time_vs_dofs.png`` (total time
against dofs, log-log, one line per PC).  ``--summarize`` only rebuilds the
summary and plot from the existing results.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITE = os.path.join(ROOT, "benchmarks", "suites", "scaling_large.json")
OUT = os.path.join(ROOT, "benchmarks", "results", "scaling_large")


def run(nprocs: int, config: str, out: str) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT,
                                                                   os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "petsc_neural.cli", "bench", "--config", config,
           "--nprocs", str(nprocs), "--out", out]
    sys.stderr.write("running: " + " ".join(cmd) + "\n")
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)


def _label(case: dict) -> str:
    dim = case["params"].get("dim", 2)
    return f"{case['family']} {dim}D"


def load(out: str, nprocs: list[int]) -> dict[int, dict]:
    res = {}
    for n in nprocs:
        path = os.path.join(out, f"np{n}", "results.json")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                res[n] = json.load(f)
    return res


def summary(res: dict[int, dict], config: str = SUITE) -> str:
    ns = sorted(res)
    first = res[ns[0]]
    suite = os.path.relpath(os.path.abspath(config), ROOT)
    opt = "" if os.path.abspath(config) == SUITE else f" --config {suite}"
    lines = [
        "# Scaling suite", "",
        f"`python scripts/scaling_suite.py --nprocs {' '.join(map(str, ns))}{opt}` (suite "
        f"`{suite}`), machine "
        f"{first['machine'].get('node')} ({first['machine'].get('cpus')} cores, shared with "
        f"other jobs), PETSc {first['machine'].get('petsc')}; FGMRES, rtol "
        f"{first['config']['rtol']:g}, max_it {first['config']['max_it']}; times are the minimum "
        f"of {first['config']['repeat']} runs; peak memory: the peak resident set size of all "
        "ranks during the case, the Python process (Firedrake, torch) included, and in brackets "
        "its increase over the RSS before the case (freed memory handed back to the OS first, "
        "so earlier cases do not count).  `n.c.`: not converged within max_it; "
        "`-`: not run (see max_dofs in the suite).", "",
        "Cells: iterations / setup s / solve s / peak MB (+ increase MB).", "",
    ]
    cases = {}
    for n, r in res.items():
        for c in r["cases"]:
            cases[(_label(c), c["size"], c["pc"], n)] = c
    for label in dict.fromkeys(k[0] for k in cases):
        sizes = sorted({k[1] for k in cases if k[0] == label})
        pcs = list(dict.fromkeys(k[2] for k in cases if k[0] == label))
        dofs = {s: next(c["dofs"] for k, c in cases.items() if k[0] == label and k[1] == s)
                for s in sizes}
        lines += [f"## {label}", "",
                  "| PC | ranks | " + " | ".join(f"{s} ({dofs[s]:,} dofs)" for s in sizes)
                  + " |", "|---|---:|" + "---|" * len(sizes)]
        for pc in pcs:
            for n in ns:
                cells = []
                for s in sizes:
                    c = cases.get((label, s, pc, n))
                    if c is None:
                        cells.append("-")
                    elif c["status"] != "ok":
                        cells.append(f"error: {c['error'][:60]}")
                    else:
                        mem, inc = c.get("peak_rss_mb"), c.get("rss_increase_mb")
                        mem_s = "n/a" if mem is None else f"{mem:.0f}"
                        if inc is not None:
                            mem_s += f" (+{inc:.0f})"
                        cells.append(
                            f"{c['iterations']}{'' if c['converged'] else ' n.c.'} / "
                            f"{c['setup_time']['min']:.2f} / {c['solve_time']['min']:.2f} / "
                            f"{mem_s}")
                lines.append(f"| {pc} | {n} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def _pc_name(pc: str) -> str:
    """A short legend name: ``lu:pc_factor_mat_solver_type=mumps`` -> ``lu (mumps)``."""
    name, _, opts = pc.partition(":")
    return f"{name} ({opts.split('=')[-1]})" if opts else name


def plot(res: dict[int, dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(_label(c) for r in res.values() for c in r["cases"]))
    fig, axes = plt.subplots(1, len(labels), figsize=(6.5 * len(labels), 6.2), squeeze=False)
    colors: dict[str, str] = {}
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, label in zip(axes[0], labels, strict=True):
        for n, r in sorted(res.items()):
            series: dict[str, list] = {}
            for c in r["cases"]:
                if _label(c) == label and c["status"] == "ok" and c["converged"]:
                    series.setdefault(c["pc"], []).append((c["dofs"], c["total_time"]["min"]))
            for pc, pts in series.items():
                pts.sort()
                color = colors.setdefault(pc, cycle[len(colors) % len(cycle)])
                ax.loglog([p[0] for p in pts], [p[1] for p in pts], "o-" if n == 1 else "s--",
                          color=color, label=f"{_pc_name(pc)} ({n} rank{'s' if n > 1 else ''})")
        ax.set_xlabel("dofs")
        ax.set_ylabel("setup + solve time (s)")
        ax.set_title(f"{label}: time to solution (rtol 1e-8)")
        ax.grid(True, which="both", alpha=0.3)
    # one legend under the panels, so no line is hidden behind it
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.17, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nprocs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--config", default=SUITE)
    p.add_argument("--out", default=OUT)
    p.add_argument("--summarize", action="store_true", help="only rebuild summary and plot")
    args = p.parse_args(argv)
    if not args.summarize:
        for n in args.nprocs:
            run(n, args.config, os.path.join(args.out, f"np{n}"))
    res = load(args.out, args.nprocs)
    if not res:
        sys.stderr.write(f"no results under {args.out}\n")
        return 1
    text = summary(res, args.config)
    with open(os.path.join(args.out, "summary.md"), "w", encoding="utf-8") as f:
        f.write(text)
    plot(res, os.path.join(args.out, "time_vs_dofs.png"))
    sys.stdout.write(text)
    sys.stdout.write(f"wrote {args.out}/summary.md and time_vs_dofs.png\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
