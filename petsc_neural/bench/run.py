"""``petsc-neural bench``: every preconditioner against PETSc's classical ones.

Runs each combination of problem (family x size), Krylov method and
preconditioner, ``--repeat`` times, on the ranks it is started on (``--nprocs
N`` re-launches itself under ``mpiexec -n N``), and writes to ``--out DIR``:

- ``results.json``: every run (schema below, checked by :func:`validate`);
- ``results.md``: one markdown table per problem, minimum and median times,
  the time ratio to tuned GAMG *in the same run*, and the paper's figures
  where a seed paper reports the case (``--paper FILE``), marked as such;
- ``history_<family>_<size>_<ksp>.png``: relative residual per iteration, all
  preconditioners overlaid;
- ``scaling.png`` when a family has several sizes: iterations and time per
  dof against dofs.

Memory: ``peak_rss_mb`` is the peak resident set size during the case
(setup and solve of every repeat), summed over ranks, the Python process
itself included; ``rss_increase_mb`` is that peak minus the resident size
just before the case (what the case itself needed).  Linux only (the peak is
reset through ``/proc/self/clear_refs``); ``null`` elsewhere.  ``max_dofs``
(suite files: ``{"lu": 300000}``) skips a PC on larger problems, e.g. a
direct solver that would not fit in memory; skipped cases are listed under
the table.

Residual histories are true residuals ``||b - A x_k|| / ||b||`` for every
preconditioner: CG runs with ``-ksp_norm_type unpreconditioned``, GMRES with
right preconditioning (FGMRES is right-preconditioned anyway).

Preconditioners (``--pc``; ``NAME:key=value,key=value`` adds PETSc options):

========== ===============================================================
none       ``-pc_type none``
jacobi     ``-pc_type jacobi``
sor        ``-pc_type sor`` (SSOR; processor-local in parallel)
ilu, icc   ``-pc_type ilu|icc``; ``bjacobi`` + ``sub_pc_type ilu|icc`` in parallel
asm        additive Schwarz with ILU blocks
lu         direct solve (MUMPS in parallel)
gamg       GAMG, tuned per problem in the same run over
           :data:`~petsc_neural.bench.baselines.GAMG_TUNING_GRID` (threshold,
           prolongator smoothing, smoother), the problem's near-nullspace and
           coordinates; the fastest setting (total time) is used and reported
gamg0      GAMG with PETSc's defaults
pyamg      PyAMG smoothed aggregation, evolution strength (serial only)
<method>   every method of :data:`petsc_neural.registry.METHODS` (``npo``,
           ``neuralsp``, ``torchscript`` with ``:pc_neural_model=FILE``, ...)
========== ===============================================================

The classical baselines are defined once, in :mod:`petsc_neural.bench.baselines`.

JSON schema (``RESULTS_SCHEMA``, JSON Schema draft 2020-12)::

    {"schema": "petsc-neural-bench/1",
     "created": ISO date, "command": str, "machine": {...}, "nprocs": int,
     "config": {"rtol": float, "max_it": int, "repeat": int, "seed": int,
                "max_dofs": {pc: int}},
     "cases": [{"family": str, "size": int, "params": {...}, "dofs": int, "nnz": int,
                "ksp": str, "pc": str, "options": {...}, "status": "ok"|"error",
                "error": str|null, "iterations": int, "reason": int,
                "converged": bool, "rel_residual": float,
                "setup_time": {"min": float, "median": float, "all": [float]},
                "solve_time": {...}, "total_time": {...},
                "history": [float], "ratio_to_gamg": float|null,
                "peak_rss_mb": float|null, "rss_increase_mb": float|null}],
     "paper": [{"family", "size", "ksp", "pc", "iterations", "time", "source"}]}
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..registry import METHODS
from .baselines import CLASSICAL, best_gamg

__all__ = [
    "PC_SPECS",
    "RESULTS_SCHEMA",
    "BenchConfig",
    "run_bench",
    "validate",
    "write_outputs",
    "markdown",
    "plot_histories",
    "plot_scaling",
    "register",
]

log = logging.getLogger("petsc_neural.bench")


def neural_specs() -> dict[str, Callable[[int], dict[str, Any]]]:
    """One benchmark entry per registered method (:mod:`petsc_neural.registry`)."""
    return {name: (lambda n, spec=spec: spec.pc_options()) for name, spec in METHODS.items()}


# name -> options for the number of ranks.  ``gamg`` is tuned separately.
PC_SPECS: dict[str, Callable[[int], dict[str, Any]]] = {**CLASSICAL, **neural_specs()}

_TIME = {
    "type": "object",
    "required": ["min", "median", "all"],
    "properties": {
        "min": {"type": "number", "minimum": 0},
        "median": {"type": "number", "minimum": 0},
        "all": {"type": "array", "items": {"type": "number", "minimum": 0}},
    },
}

RESULTS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["schema", "created", "command", "machine", "nprocs", "config", "cases", "paper"],
    "properties": {
        "schema": {"const": "petsc-neural-bench/1"},
        "created": {"type": "string"},
        "command": {"type": "string"},
        "machine": {"type": "object"},
        "nprocs": {"type": "integer", "minimum": 1},
        "config": {
            "type": "object",
            "required": ["rtol", "max_it", "repeat", "seed"],
            "properties": {
                "rtol": {"type": "number", "exclusiveMinimum": 0},
                "max_it": {"type": "integer", "minimum": 1},
                "repeat": {"type": "integer", "minimum": 1},
                "seed": {"type": "integer"},
            },
        },
        "cases": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["family", "size", "params", "dofs", "nnz", "ksp", "pc", "options",
                             "status", "error", "iterations", "reason", "converged",
                             "rel_residual", "setup_time", "solve_time", "total_time",
                             "history", "ratio_to_gamg"],
                "properties": {
                    "family": {"type": "string"},
                    "size": {"type": "integer", "minimum": 1},
                    "params": {"type": "object"},
                    "dofs": {"type": "integer", "minimum": 1},
                    "nnz": {"type": "integer", "minimum": 1},
                    "ksp": {"type": "string"},
                    "pc": {"type": "string"},
                    "options": {"type": "object"},
                    "status": {"enum": ["ok", "error"]},
                    "error": {"type": ["string", "null"]},
                    "iterations": {"type": "integer", "minimum": -1},
                    "reason": {"type": "integer"},
                    "converged": {"type": "boolean"},
                    "rel_residual": {"type": ["number", "null"]},
                    "setup_time": _TIME,
                    "solve_time": _TIME,
                    "total_time": _TIME,
                    "history": {"type": "array", "items": {"type": "number"}},
                    "ratio_to_gamg": {"type": ["number", "null"]},
                    "peak_rss_mb": {"type": ["number", "null"]},
                    "rss_increase_mb": {"type": ["number", "null"]},
                },
            },
        },
        "paper": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["family", "size", "ksp", "pc", "iterations", "source"],
            },
        },
    },
}


def validate(results: Mapping[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` if ``results`` does not follow the schema."""
    import jsonschema

    jsonschema.validate(results, RESULTS_SCHEMA)


@dataclass
class BenchConfig:
    """What to run: every (family, size) x ksp x pc, ``repeat`` times."""

    families: list[tuple[str, dict[str, Any]]]
    sizes: list[int]
    pcs: list[str]
    ksps: list[str] = field(default_factory=lambda: ["cg"])
    rtol: float = 1e-8
    max_it: int = 1000
    repeat: int = 3
    seed: int = 0
    paper: list[dict[str, Any]] = field(default_factory=list)
    max_dofs: dict[str, int] = field(default_factory=dict)
    #: Sizes per family (same order as ``families``; ``None``: ``sizes``).
    family_sizes: list[list[int] | None] = field(default_factory=list)


def parse_pc(spec: str, nprocs: int) -> tuple[str, dict[str, Any]]:
    """``"gamg0:pc_gamg_threshold=0.02"`` -> ("gamg0", {pc options})."""
    name, _, extra = spec.partition(":")
    if name not in PC_SPECS:
        raise ValueError(f"unknown preconditioner {name!r}; known: {', '.join(PC_SPECS)}")
    opts = dict(PC_SPECS[name](nprocs))
    for item in filter(None, extra.split(",")):
        key, _, value = item.partition("=")
        opts[key.lstrip("-")] = value
    return spec, opts


def ksp_options(ksp: str, rtol: float, max_it: int) -> dict[str, Any]:
    """Krylov options with true-residual histories for every method."""
    opts: dict[str, Any] = {"ksp_type": ksp, "ksp_rtol": rtol, "ksp_atol": 0.0,
                            "ksp_max_it": max_it}
    if ksp in ("cg", "fcg", "pipecg"):
        opts["ksp_norm_type"] = "unpreconditioned"
    elif ksp == "gmres":
        opts["ksp_pc_side"] = "right"
        opts["ksp_gmres_restart"] = 100
    elif ksp == "fgmres":
        opts["ksp_gmres_restart"] = 100
    return opts


def _rss_kib(field: str) -> int | None:
    """``VmHWM`` (peak) or ``VmRSS`` (now) of this process in KiB, from /proc (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _release_free_memory() -> None:
    """Hand freed heap back to the OS, so the RSS before a case is what is still live.

    Without it a case's peak RSS includes what earlier cases freed but glibc
    kept (a direct solve after a large neural setup reads as using no memory).
    """
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the RSS keeps what malloc holds
        pass


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (``echo 5 > /proc/self/clear_refs``); False if refused."""
    _release_free_memory()
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _timing(values: list[float]) -> dict[str, Any]:
    return {"min": min(values), "median": statistics.median(values), "all": values}


def run_case(problem, options: Mapping[str, Any], repeat: int) -> dict[str, Any]:
    """Solve ``problem`` ``repeat`` times with fresh KSPs; times are max over ranks."""
    comm = problem.comm
    setups, solves = [], []
    out: dict[str, Any] = {}
    bnorm = problem.b.norm()
    reset = _reset_peak_rss()
    before = _rss_kib("VmRSS")
    tracked = reset and before is not None
    for _ in range(repeat):
        comm.Barrier()
        t0 = time.perf_counter()
        ksp = problem.make_ksp(options)  # KSP + PC setup
        t1 = time.perf_counter()
        ksp.setConvergenceHistory(length=int(options.get("ksp_max_it", 1000)) + 1)
        x = problem.A.createVecRight()
        x.set(0.0)
        comm.Barrier()
        t2 = time.perf_counter()
        ksp.solve(problem.b, x)
        t3 = time.perf_counter()
        setups.append(comm.allreduce(t1 - t0, op=_mpi_max()))
        solves.append(comm.allreduce(t3 - t2, op=_mpi_max()))
        r = problem.b.duplicate()
        problem.A.mult(x, r)
        r.aypx(-1.0, problem.b)
        hist = ksp.getConvergenceHistory()
        out = {
            "iterations": ksp.getIterationNumber(),
            "reason": int(ksp.getConvergedReason()),
            "converged": ksp.getConvergedReason() > 0,
            "rel_residual": r.norm() / bnorm if bnorm > 0 else r.norm(),
            "history": [float(h) / bnorm if bnorm > 0 else float(h) for h in hist],
        }
        ksp.destroy()
    peak = _rss_kib("VmHWM") if tracked else None
    ok = comm.allreduce(peak is not None, op=_mpi_land())
    out["peak_rss_mb"] = comm.allreduce(peak) / 1024.0 if ok else None
    out["rss_increase_mb"] = comm.allreduce(peak - before) / 1024.0 if ok else None
    out["setup_time"] = _timing(setups)
    out["solve_time"] = _timing(solves)
    out["total_time"] = _timing([s + v for s, v in zip(setups, solves, strict=True)])
    return out


def _mpi_max():
    from mpi4py import MPI

    return MPI.MAX


def _mpi_land():
    from mpi4py import MPI

    return MPI.LAND


def tune_gamg(problem, kopts: Mapping[str, Any], repeat: int) -> tuple[dict[str, Any], dict]:
    """The fastest setting of :data:`~.baselines.GAMG_TUNING_GRID` (by total time)."""
    results: dict[str, dict] = {}

    def evaluate(opts: dict[str, Any]) -> float | None:
        try:
            res = run_case(problem, {**kopts, **opts}, repeat)
        except Exception as exc:  # a setting PETSc rejects is skipped, not fatal
            log.info("GAMG setting %s failed: %s", opts, exc)
            return None
        results[repr(sorted(opts.items()))] = res
        return res["total_time"]["min"] if res["converged"] else None

    _, opts, _ = best_gamg(evaluate)
    return {**kopts, **opts}, results[repr(sorted(opts.items()))]


def run_bench(config: BenchConfig, comm=None) -> dict[str, Any]:
    """Run every case of ``config``; returns the results document (see the schema)."""
    from petsc4py import PETSc

    from firedrake_problems import make_problem
    from firedrake_problems.core import global_nnz

    comm = comm or PETSc.COMM_WORLD
    nprocs = comm.getSize()
    cases: list[dict[str, Any]] = []
    for k, (family, params) in enumerate(config.families):
        own = config.family_sizes[k] if k < len(config.family_sizes) else None
        for size in own or config.sizes:
            problem = make_problem(family, size, seed=config.seed, comm=comm.tompi4py(),
                                   **params)
            dofs, nnz = problem.A.getSize()[0], global_nnz(problem.A)
            log.info("%s size %d: %d dofs", family, size, dofs)
            for ksp in config.ksps:
                kopts = ksp_options(ksp, config.rtol, config.max_it)
                gamg_total = None
                rows = []
                for spec in config.pcs:
                    name, popts = parse_pc(spec, nprocs)
                    limit = config.max_dofs.get(name)
                    if limit is not None and dofs > limit:
                        log.info("%s/%d: %s skipped (%d dofs > max_dofs %d)", family, size,
                                 name, dofs, limit)
                        continue
                    row: dict[str, Any] = {
                        "family": family, "size": size, "params": dict(params), "dofs": dofs,
                        "nnz": nnz, "ksp": ksp, "pc": name, "error": None,
                        "ratio_to_gamg": None,
                    }
                    try:
                        if spec == "gamg":
                            opts, res = tune_gamg(problem, kopts, config.repeat)
                        else:
                            opts = {**kopts, **popts}
                            res = run_case(problem, opts, config.repeat)
                        row.update(res, status="ok", options=opts)
                        if spec == "gamg":
                            gamg_total = res["total_time"]["min"]
                    except Exception as exc:
                        msg = str(getattr(exc, "__cause__", None) or exc).strip().splitlines()
                        row.update(
                            status="error", error=msg[0] if msg else type(exc).__name__,
                            options={**kopts, **popts}, iterations=-1, reason=0,
                            converged=False, rel_residual=None, history=[],
                            setup_time=_timing([0.0]), solve_time=_timing([0.0]),
                            total_time=_timing([0.0]),
                        )
                        log.warning("%s/%d %s %s: %s", family, size, ksp, name, row["error"])
                    rows.append(row)
                for row in rows:
                    if gamg_total and row["status"] == "ok":
                        row["ratio_to_gamg"] = row["total_time"]["min"] / gamg_total
                cases.extend(rows)
    return {
        "schema": "petsc-neural-bench/1",
        "created": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "",
        "machine": {
            "node": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "petsc": ".".join(map(str, PETSc.Sys.getVersion())), "platform": platform.platform(),
        },
        "nprocs": nprocs,
        "config": {"rtol": config.rtol, "max_it": config.max_it, "repeat": config.repeat,
                   "max_dofs": dict(config.max_dofs),
                   "seed": config.seed},
        "cases": cases,
        "paper": list(config.paper),
    }


def _fmt_mb(mb: float | None) -> str:
    return "n/a" if mb is None else f"{mb:.0f}"


def _fmt_params(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def markdown(results: Mapping[str, Any]) -> str:
    """One table per (problem, ksp): iterations, times (min/median), ratio to tuned GAMG."""
    lines = [
        f"Benchmark run {results['created']} on {results['machine'].get('node')} "
        f"({results['machine'].get('cpus')} cores), {results['nprocs']} MPI rank(s), "
        f"PETSc {results['machine'].get('petsc')}; rtol {results['config']['rtol']:g}, "
        f"{results['config']['repeat']} repeats (min / median seconds).",
        "",
        f"Command: `{results['command']}`" if results["command"] else "",
        "",
    ]
    groups: dict[tuple, list[dict]] = {}
    for c in results["cases"]:
        key = (c["family"], json.dumps(c["params"], sort_keys=True), c["size"], c["ksp"])
        groups.setdefault(key, []).append(c)
    for (family, _, size, ksp), rows in groups.items():
        first = rows[0]
        lines += [
            f"### {family} ({_fmt_params(first['params']) or 'defaults'}), size {size}: "
            f"{first['dofs']:,} dofs, {first['nnz']:,} nnz, KSP {ksp}",
            "",
            "| PC | iterations | setup (s) | solve (s) | total (s) | total / tuned GAMG "
            "| peak RSS (MB) "
            "| rel. residual | reason |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for c in rows:
            if c["status"] != "ok":
                lines.append(f"| {c['pc']} | error: {c['error']} | | | | | | | |")
                continue
            t = {k: c[k] for k in ("setup_time", "solve_time", "total_time")}
            ratio = f"{c['ratio_to_gamg']:.2f}" if c["ratio_to_gamg"] is not None else "n/a"
            lines.append(
                f"| {c['pc']} | {c['iterations']} | "
                + " | ".join(f"{t[k]['min']:.4f} / {t[k]['median']:.4f}" for k in t)
                + f" | {ratio} | {_fmt_mb(c.get('peak_rss_mb'))} | {c['rel_residual']:.2e} "
                f"| {c['reason']} |"
            )
        for p in results["paper"]:
            same_rtol = p.get("rtol") in (None, results["config"]["rtol"])
            if p["family"] == family and p["size"] == size and p["ksp"] == ksp and same_rtol:
                tcell = f"{p['time']}" if p.get("time") is not None else ""
                lines.append(f"| {p['pc']} (paper: {p['source']}) | {p['iterations']} | | | "
                             f"{tcell} | | | | |")
        skipped = [f"{pc} (max_dofs {lim:,})" for pc, lim in
                   results["config"].get("max_dofs", {}).items() if first["dofs"] > lim]
        if skipped:
            lines.append("")
            lines.append("Not run at this size: " + ", ".join(skipped) + ".")
        gamg = [c for c in rows if c["pc"] == "gamg" and c["status"] == "ok"]
        if gamg:
            o = gamg[0]["options"]
            lines.append("")
            lines.append(f"Tuned GAMG setting: threshold {o['pc_gamg_threshold']}, "
                         f"{o['pc_gamg_agg_nsmooths']} prolongator smoothing step(s), "
                         f"{o['mg_levels_ksp_type']}({o['mg_levels_ksp_max_it']})/Jacobi "
                         "level smoothers.")
        lines.append("")
    return "\n".join(lines)


def _fkey(case: Mapping[str, Any]) -> tuple[str, str]:
    return case["family"], json.dumps(case["params"], sort_keys=True)


def _family_tags(results: Mapping[str, Any]) -> dict[tuple[str, str], str]:
    """A short name per (family, params): the family, with the params where a family
    appears with several (``poisson_dim3``), for plot labels and file names."""
    keys = list(dict.fromkeys(_fkey(c) for c in results["cases"]))
    tags = {}
    for fam, params in keys:
        if sum(1 for f, _ in keys if f == fam) == 1:
            tags[(fam, params)] = fam
        else:
            p = json.loads(params)
            tags[(fam, params)] = fam + "".join(f"_{k}{v}" for k, v in sorted(p.items()))
    return tags


def plot_histories(results: Mapping[str, Any], outdir: str) -> dict[str, list[str]]:
    """One PNG per (problem, ksp) with every PC's residual history; returns file -> labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tags = _family_tags(results)
    groups: dict[tuple, list[dict]] = {}
    for c in results["cases"]:
        groups.setdefault((tags[_fkey(c)], c["size"], c["ksp"]), []).append(c)
    written: dict[str, list[str]] = {}
    for (family, size, ksp), rows in groups.items():
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        labels = []
        for c in rows:
            if c["status"] != "ok" or not c["history"]:
                continue
            ax.semilogy(range(len(c["history"])), c["history"], label=c["pc"])
            labels.append(c["pc"])
        ax.set_xlabel("iteration")
        ax.set_ylabel(r"$\|b - A x_k\| / \|b\|$")
        ax.set_title(f"{family}, size {size} ({rows[0]['dofs']:,} dofs), {ksp}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        path = os.path.join(outdir, f"history_{family}_{size}_{ksp}.png")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written[path] = [t.get_text() for t in ax.get_legend().get_texts()]
    return written


def plot_scaling(results: Mapping[str, Any], outdir: str) -> str | None:
    """Iterations and time per dof against dofs, one line per PC (families with >1 size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tags = _family_tags(results)
    series: dict[tuple, list[tuple[int, int, float]]] = {}
    for c in results["cases"]:
        if c["status"] == "ok" and c["converged"]:
            series.setdefault((tags[_fkey(c)], c["ksp"], c["pc"]), []).append(
                (c["dofs"], c["iterations"], c["total_time"]["min"] / c["dofs"]))
    series = {k: sorted(v) for k, v in series.items() if len(v) > 1}
    if not series:
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for (family, ksp, pc), pts in series.items():
        d = [p[0] for p in pts]
        a1.semilogx(d, [p[1] for p in pts], "o-", label=f"{pc} ({family}, {ksp})")
        a2.loglog(d, [p[2] for p in pts], "o-", label=f"{pc} ({family}, {ksp})")
    a1.set_xlabel("dofs")
    a1.set_ylabel("iterations")
    a2.set_xlabel("dofs")
    a2.set_ylabel("total time per dof (s)")
    for a in (a1, a2):
        a.grid(True, which="both", alpha=0.3)
    a2.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(outdir, "scaling.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(results: dict[str, Any], outdir: str) -> None:
    """results.json (validated), results.md and the plots; rank 0 only."""
    from pcshell import atomic_write_bytes

    validate(results)
    os.makedirs(outdir, exist_ok=True)
    atomic_write_bytes(os.path.join(outdir, "results.json"),
                       json.dumps(results, indent=1).encode())
    atomic_write_bytes(os.path.join(outdir, "results.md"), markdown(results).encode())
    plot_histories(results, outdir)
    plot_scaling(results, outdir)


def _load_config_file(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Command-line arguments, optionally on top of a JSON suite file (``--config``)."""
    from firedrake_problems.cli import parse_params

    base: dict[str, Any] = _load_config_file(args.config) if args.config else {}
    # A suite's family is "name", [name, params] or [name, params, sizes].
    raw = base.get("families") or [[f, {}] for f in (args.family or ["poisson"])]
    families = [(f[0], dict(f[1])) if isinstance(f, list) else (f, {}) for f in raw]
    family_sizes = [None if args.sizes or not isinstance(f, list) or len(f) < 3
                    else [int(x) for x in f[2]] for f in raw]
    if args.param:
        families = [(f, {**p, **parse_params(args.param)}) for f, p in families]
    paper = base.get("paper", [])
    if args.paper:
        paper = paper + _load_config_file(args.paper)
    return BenchConfig(
        families=families,
        sizes=args.sizes or base.get("sizes") or [32],
        pcs=args.pc or base.get("pcs") or ["none", "jacobi", "sor", "ilu", "gamg", "pyamg"],
        ksps=args.ksp or base.get("ksps") or ["cg"],
        rtol=args.rtol if args.rtol is not None else base.get("rtol", 1e-8),
        max_it=args.max_it if args.max_it is not None else base.get("max_it", 1000),
        repeat=args.repeat if args.repeat is not None else base.get("repeat", 3),
        max_dofs={str(k): int(v) for k, v in base.get("max_dofs", {}).items()},
        family_sizes=family_sizes,
        seed=args.seed if args.seed is not None else base.get("seed", 0),
        paper=paper,
    )


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.nprocs > 1 and not os.environ.get("PETSC_NEURAL_BENCH_CHILD"):
        argv = [a for a in sys.argv[1:]]
        i = argv.index("--nprocs")
        del argv[i : i + 2]
        env = dict(os.environ, PETSC_NEURAL_BENCH_CHILD="1")  # Python's copy: no MPI singleton
        cmd = ["mpiexec", "-n", str(args.nprocs), sys.executable, "-m", "petsc_neural.cli", *argv]
        return subprocess.run(cmd, env=env).returncode
    from petsc4py import PETSc

    config = config_from_args(args)
    results = run_bench(config)
    results["command"] = "petsc-neural " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if PETSc.COMM_WORLD.getRank() == 0:
        write_outputs(results, args.out)
        sys.stdout.write(markdown(results) + "\n")
        sys.stdout.write(f"wrote {args.out}/results.json, results.md and plots\n")
    failed = [c for c in results["cases"] if c["status"] != "ok"]
    return 1 if failed and args.strict else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench", help="compare preconditioners on the problem families",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("--config", help="JSON suite file (families, sizes, pcs, ksps, ...)")
    p.add_argument("--family", nargs="+", help="problem families (default poisson)")
    p.add_argument("--param", nargs="*", metavar="KEY=VALUE", help="family parameters")
    p.add_argument("--sizes", type=int, nargs="+", help="problem sizes (cells per side)")
    p.add_argument("--pc", nargs="+", help=f"preconditioners: {', '.join(PC_SPECS)}")
    p.add_argument("--ksp", nargs="+", help="Krylov methods (default cg)")
    p.add_argument("--rtol", type=float)
    p.add_argument("--max-it", dest="max_it", type=int)
    p.add_argument("--repeat", type=int, help="runs per case (min and median reported)")
    p.add_argument("--seed", type=int)
    p.add_argument("--paper", help="JSON list of the seed papers' figures to show beside ours")
    p.add_argument("--nprocs", type=int, default=1, help="run under mpiexec -n N")
    p.add_argument("--out", default="bench-results", help="output directory")
    p.add_argument("--strict", action="store_true", help="exit 1 if any case failed")
    p.set_defaults(func=_cmd_bench)

