#!/usr/bin/env python
"""NPO at scale (issue 13): h-independence, time against tuned GAMG, ranks, per-apply breakdown.

    nice -n 10 .venv/bin/python scripts/npo_scaling.py [--quick] [--out results]

Writes ``results/npo_scaling.md`` and ``results/npo_scaling.json``; prints the
markdown and a floor check.  Every number comes from this run; test systems
use seed 1000 (no training set contains it).  Parts (``--parts``):

``h``       FGMRES (rtol 1e-8, restart 100) iterations and times on 2D Poisson
            (uniform mesh), Poisson on a jittered Delaunay mesh and lognormal
            diffusion (sigma 1.5 per cell, jittered mesh) at 32^2 .. 256^2, for
            NPO-MG (:class:`petsc_neural.NPOMultigrid`, shipped model, trained
            on 32^2 and 48^2 only), the same hierarchy without the network
            (``-pc_npo_mg_weights nearest``), the paper's per-apply attention
            variant (:class:`petsc_neural.NPO`, shipped model) and GAMG tuned
            per problem in the same run.  Floor: NPO-MG its at 256^2 <= 1.5x
            its at 32^2 on each family; NPO-MG time <= 10x tuned GAMG at 256^2.
``apply``   Per-apply time breakdown at 256^2 from PETSc log events (the
            ``-log_view`` events): NPO-MG's V-cycle per level (smoothing,
            residual, interpolation, coarse solve) and its setup stages; NPO's
            network (``PCNeuralInfer``) and the rest of its apply.
``ranks``   Iterations on 1, 2 and 4 ranks: 2D Poisson 128^2 (FGMRES, rtol
            1e-8) and PETSc's ``ksp/ex2`` 200x200 (its own rtol), NPO-MG beside
            NPO and GAMG.  Floor: its on 2 and 4 ranks <= 1.2x serial.

Timings are wall-clock on whatever machine runs this (the header records the
load); ratios to GAMG are within this run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

FAMILIES = [
    ("poisson", {"dim": 2}, "2D Poisson, uniform mesh", "poisson"),
    ("poisson", {"dim": 2, "mesh": "jittered"}, "2D Poisson, jittered Delaunay mesh", "poisson"),
    ("diffusion", {}, "2D lognormal diffusion (sigma 1.5 per cell), jittered mesh", "diffusion"),
]
TEST_SEED = 1000
RTOL = 1e-8
MAX_IT = 500


def pcs(npo_family: str, model: str | None) -> dict[str, dict]:
    """The preconditioners compared, as PETSc options (GAMG is tuned separately)."""
    from petsc_neural.npo.pc import shipped_model

    mg = {"pc_type": "python", "pc_python_type": "petsc_neural.NPOMultigrid"}
    if model:
        mg["pc_neural_model"] = model
    return {
        "npo_mg": mg,
        "npo_mg (nearest, no network)": {**mg, "pc_npo_mg_weights": "nearest"},
        "npo (attention, per apply)": {"pc_type": "python",
                                       "pc_python_type": "petsc_neural.NPO",
                                       "pc_neural_model": shipped_model(npo_family)},
    }


def kopts() -> dict:
    from petsc_neural.bench import ksp_options

    return ksp_options("fgmres", RTOL, MAX_IT)


def solve(problem, opts: dict, repeat: int) -> dict:
    from petsc_neural.bench import run_case

    run_case(problem, opts, 1)  # warm: imports, model load, first touch
    r = run_case(problem, opts, repeat)
    return {"iterations": r["iterations"], "converged": r["converged"],
            "setup": r["setup_time"]["min"], "solve": r["solve_time"]["min"],
            "total": r["total_time"]["min"]}


# ----------------------------------------------------------------------------- part h
def part_h(args, out: dict) -> None:
    from firedrake_problems import make_problem
    from petsc_neural.bench import tune_gamg

    rows = []
    for family, params, label, npo_family in FAMILIES:
        for size in args.sizes:
            problem = make_problem(family, size, seed=TEST_SEED, **params)
            dofs = problem.A.getSize()[0]
            gopts, _ = tune_gamg(problem, kopts(), 1)
            entries = {"gamg (tuned)": solve(problem, gopts, args.repeat)}
            for name, popts in pcs(npo_family, args.model).items():
                if name.startswith("npo (") and size > args.attention_max:
                    continue
                entries[name] = solve(problem, {**kopts(), **popts}, args.repeat)
            for name, e in entries.items():
                rows.append({"family": family, "params": params, "label": label, "size": size,
                             "dofs": dofs, "pc": name, **e})
                log(f"{label} {size}: {name} its {e['iterations']} total {e['total']:.3f}")
            problem = None
    out["h"] = rows


def _h_tables(rows: list[dict], sizes: list[int], floor_size: int) -> list[str]:
    lines = []
    sizes = [s for s in sizes if any(r["size"] == s for r in rows)]
    last = floor_size if floor_size in sizes else sizes[-1]
    names = list(dict.fromkeys(r["pc"] for r in rows))
    for label in dict.fromkeys(r["label"] for r in rows):
        sub = [r for r in rows if r["label"] == label]
        lines += [f"### {label}", "",
                  "| PC | " + " | ".join(f"{s}^2 its (total s)" for s in sizes)
                  + f" | its {last}^2 / {sizes[0]}^2 | total / tuned GAMG at {last}^2 |",
                  "|---|" + "---:|" * (len(sizes) + 2)]
        gamg_last = next((r for r in sub if r["pc"] == "gamg (tuned)" and r["size"] == last),
                         None)
        for name in names:
            cells, its = [], {}
            for s in sizes:
                r = next((r for r in sub if r["pc"] == name and r["size"] == s), None)
                if r is None:
                    cells.append("-")
                    continue
                its[s] = r["iterations"] if r["converged"] else None
                cells.append(f"{r['iterations']}{'' if r['converged'] else ' (n.c.)'} "
                             f"({r['total']:.3f})")
            ratio = (f"{its[last] / its[sizes[0]]:.2f}"
                     if its.get(last) and its.get(sizes[0]) else "-")
            at = next((r for r in sub if r["pc"] == name and r["size"] == last), None)
            tr = (f"{at['total'] / gamg_last['total']:.2f}" if at and gamg_last else "-")
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {ratio} | {tr} |")
        lines.append("")
    return lines


# ----------------------------------------------------------------------------- part apply
MG_EVENTS = ("MGSmooth", "MGResid", "MGInterp")


def _event_info(names: list[str], stages: int = 8) -> dict[str, dict]:
    """Time and count of each event, summed over log stages (PCMG's level events run
    in its own "MG Apply" stage)."""
    from petsc4py import PETSc

    out = {}
    for name in names:
        ev = PETSc.Log.Event(name)
        t, c = 0.0, 0
        for st in range(stages):
            try:
                info = ev.getPerfInfo(stage=st)
            except PETSc.Error:
                break
            t, c = t + float(info["time"]), c + int(info["count"])
        out[name] = {"time": t, "count": c}
    return out


def _delta(after: dict, before: dict) -> dict:
    return {k: {"time": after[k]["time"] - before[k]["time"],
                "count": after[k]["count"] - before[k]["count"]} for k in after}


def part_apply(args, out: dict) -> None:
    from petsc4py import PETSc

    from firedrake_problems import make_problem
    from petsc_neural.bench import run_case, tune_gamg

    PETSc.Log.begin()
    size = args.floor_size
    problem = make_problem("poisson", size, seed=TEST_SEED, dim=2)
    gopts, _ = tune_gamg(problem, kopts(), 1)
    options = {"gamg (tuned)": gopts, **{k: {**kopts(), **v}
                                         for k, v in pcs("poisson", args.model).items()}}
    options["npo_mg"]["npo_mg_pc_mg_log"] = None
    options["npo_mg (nearest, no network)"]["npo_mg_pc_mg_log"] = None
    mg_names = [f"{e} Level {k}" for e in MG_EVENTS for k in range(8)] + \
        [f"MGSetup Level {k}" for k in range(8)]
    base = ["PCApply", "PCSetUp", "KSPSolve", "PCNeuralApply", "PCNeuralInfer",
            "PCNeuralSetUp", "NPOMGGraph", "NPOMGFeatures", "NPOMGProlongator", "NPOMGPtAP",
            "MatPtAPSymbolic", "MatPtAPNumeric"]
    res = {}
    for name, opts in options.items():
        if name.startswith("npo (") and size > args.attention_max:
            continue
        run_case(problem, opts, 1)  # warm (registers the MG level events too)
        before = _event_info(base + mg_names)
        r = run_case(problem, opts, 1)
        ev = _delta(_event_info(base + mg_names), before)
        res[name] = {"iterations": r["iterations"], "setup": r["setup_time"]["min"],
                     "solve": r["solve_time"]["min"],
                     "events": {k: v for k, v in ev.items() if v["count"] > 0}}
        log(f"apply breakdown {name}: {r['iterations']} its")
    out["apply"] = {"size": size, "dofs": problem.A.getSize()[0], "pcs": res}


def _apply_tables(a: dict) -> list[str]:
    lines = [f"Per-apply breakdown at {a['size']}^2 ({a['dofs']:,} dofs), PETSc log events of "
             "one solve (the `-log_view` events; NPO-MG with `-npo_mg_pc_mg_log`, PCMG levels "
             "numbered from the coarsest, 0).  Milliseconds per apply of the preconditioner "
             "(`PCNeuralApply` time / count; GAMG: solve time / iterations, Krylov work "
             "included).  Setup stages in seconds.", "",
             "| PC | its | applies | ms per apply | of which (ms per apply) | setup (s) | "
             "of which (s) |",
             "|---|---:|---:|---:|---|---:|---|"]
    for name, r in a["pcs"].items():
        ev = r["events"]
        if "PCNeuralApply" in ev:
            napp = ev["PCNeuralApply"]["count"]
            per = ev["PCNeuralApply"]["time"] / max(napp, 1) * 1e3
        else:
            napp = r["iterations"]
            per = r["solve"] / max(napp, 1) * 1e3
        parts = [f"{k} {v['time'] / max(napp, 1) * 1e3:.2f}" for k, v in sorted(ev.items())
                 if k.startswith(MG_EVENTS)]
        if "PCNeuralInfer" in ev and name.startswith("npo ("):
            net = ev["PCNeuralInfer"]["time"] / max(napp, 1) * 1e3
            parts.append(f"network (PCNeuralInfer) {net:.2f}")
            parts.append(f"rest: copies, scaling, checks {per - net:.2f}")
        setup = [f"{k} {ev[k]['time']:.3f}" for k in
                 ("NPOMGGraph", "NPOMGFeatures", "PCNeuralInfer", "NPOMGProlongator",
                  "NPOMGPtAP") if k in ev and not name.startswith("npo (")]
        lines.append(f"| {name} | {r['iterations']} | {napp} | {per:.2f} | "
                     f"{'; '.join(parts) or '-'} | {r['setup']:.3f} | {'; '.join(setup) or '-'} |")
    lines.append("")
    return lines


# ----------------------------------------------------------------------------- part ranks
RANK_PCS = ("npo_mg", "npo (attention, per apply)", "gamg")


def ranks_child(args) -> None:
    """Under mpiexec: Poisson at --ranks-size, one line of JSON on rank 0."""
    from mpi4py import MPI

    from firedrake_problems import make_problem
    from petsc_neural.bench import gamg_options

    problem = make_problem("poisson", args.ranks_size, seed=TEST_SEED, dim=2)
    all_pcs = {**pcs("poisson", args.model), "gamg": gamg_options(0.0, 1)}
    res = {}
    for name in RANK_PCS:
        r = solve(problem, {**kopts(), **all_pcs[name]}, 1)
        res[name] = r
    if MPI.COMM_WORLD.rank == 0:
        sys.stdout.write("RESULT " + json.dumps(res) + "\n")


def part_ranks(args, out: dict) -> None:
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import petsc_tutorials as tut

    env = tut.petsc_env()
    tut.build(env)
    poisson, ex2 = {}, {}
    for n in args.ranks:
        cmd = ["mpiexec", "-n", str(n), sys.executable, os.path.abspath(__file__),
               "--child-ranks", "--ranks-size", str(args.ranks_size)]
        if args.model:
            cmd += ["--model", args.model]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            raise RuntimeError(f"ranks child on {n} failed:\n{proc.stdout[-2000:]}"
                               f"\n{proc.stderr[-2000:]}")
        poisson[n] = json.loads(line[len("RESULT "):])
        mg = ["-pc_type", "python", "-pc_python_type", "petsc_neural.NPOMultigrid", "-python",
              sys.executable] + (["-pc_neural_model", args.model] if args.model else [])
        npo = ["-pc_type", "python", "-pc_python_type", "petsc_neural.NPO", "-python",
               sys.executable]
        ex2[n] = {name: tut.run(env, "ex2", n, f"-m {args.ex2_size} -n {args.ex2_size}", o)
                  for name, o in (("npo_mg", mg), ("npo (attention, per apply)", npo),
                                  ("gamg", ["-pc_type", "gamg"]))}
        for r in ex2[n].values():
            r.pop("tail", None)
        log(f"ranks {n}: poisson {[(k, v['iterations']) for k, v in poisson[n].items()]}, "
            f"ex2 {[(k, v['its']) for k, v in ex2[n].items()]}")
    out["ranks"] = {"poisson": poisson, "ex2": ex2, "poisson_size": args.ranks_size,
                    "ex2_size": args.ex2_size}


def _ranks_tables(r: dict) -> list[str]:
    ranks = sorted(int(k) for k in r["poisson"])
    lines = [r["note"], ""] if r.get("note") else []
    lines += ["| problem | PC | " + " | ".join(f"{n} rank(s): its" for n in ranks)
             + " | worst its / serial |", "|---|---|" + "---:|" * (len(ranks) + 1)]
    for label, data, key in ((f"2D Poisson {r['poisson_size']}^2 (FGMRES, rtol 1e-8)",
                              r["poisson"], "iterations"),
                             (f"ksp/ex2 {r['ex2_size']}x{r['ex2_size']} (FGMRES, ex2's rtol)",
                              r["ex2"], "its")):
        names = list(next(iter(data.values())).keys())
        for name in names:
            its = {n: data[n if n in data else str(n)][name][key] for n in ranks}
            worst = max(its[n] for n in ranks[1:]) / its[ranks[0]] if len(ranks) > 1 else 1.0
            lines.append(f"| {label} | {name} | " + " | ".join(str(its[n]) for n in ranks)
                         + f" | {worst:.2f} |")
    lines.append("")
    return lines


# ----------------------------------------------------------------------------- report
def floors(out: dict, sizes: list[int], floor_size: int) -> list[str]:
    """The issue's floors at ``floor_size`` (256^2); larger sizes are reported beside them."""
    checks = []
    for label in dict.fromkeys(r["label"] for r in out.get("h", [])):
        rows = {r["size"]: r for r in out["h"] if r["label"] == label and r["pc"] == "npo_mg"}
        for size in (s for s in sizes if s >= floor_size and s in rows):
            if sizes[0] not in rows:
                break
            a, b = rows[sizes[0]]["iterations"], rows[size]["iterations"]
            ok = b <= 1.5 * a and rows[size]["converged"]
            extra = "" if size == floor_size else " (beyond the floor's size)"
            checks.append((f"h-independence, {label}: its {size}^2 / {sizes[0]}^2 = "
                           f"{b}/{a} = {b / a:.2f} <= 1.5{extra}", ok))
        g = next((r for r in out["h"] if r["label"] == label and r["pc"] == "gamg (tuned)"
                  and r["size"] == floor_size), None)
        m = rows.get(floor_size)
        if g and m:
            ratio = m["total"] / g["total"]
            checks.append((f"time, {label} {floor_size}^2: NPO-MG / tuned GAMG = {ratio:.2f} "
                           f"<= 10 (goal 3: {'met' if ratio <= 3 else 'not met'})", ratio <= 10))
    if "ranks" in out:
        r = out["ranks"]
        for label, data, key in (("Poisson", r["poisson"], "iterations"), ("ex2", r["ex2"], "its")):
            data = {int(k): v for k, v in data.items()}  # str keys after a JSON round trip
            ns = sorted(data)
            serial = data[ns[0]]["npo_mg"][key]
            for n in ns[1:]:
                its = data[n]["npo_mg"][key]
                checks.append((f"ranks, {label}: {n} ranks {its} vs serial {serial} "
                               f"(<= 1.2x)", its <= 1.2 * serial))
    return [f"- {'met' if ok else 'NOT met'}: {text}" for text, ok in checks]


def log(msg: str) -> None:
    sys.stderr.write(f"[npo_scaling {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(ROOT, "results"))
    p.add_argument("--parts", default="h,apply,ranks")
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 256])
    p.add_argument("--floor-size", type=int, default=256,
                   help="size the floors are checked at (and the apply breakdown runs at)")
    p.add_argument("--update", action="store_true",
                   help="keep the parts of an earlier run's JSON in --out that this run skips")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--ranks-size", type=int, default=128)
    p.add_argument("--ex2-size", type=int, default=200)
    p.add_argument("--attention-max", type=int, default=256,
                   help="largest size the per-apply NPO runs at")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--model", default=None, help="NPO-MG model (default: the shipped one)")
    p.add_argument("--quick", action="store_true", help="sizes 32 48, ranks 1 2, ex2 60x60")
    p.add_argument("--child-ranks", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.ranks, args.ranks_size, args.ex2_size, args.repeat = \
            [32, 48], [1, 2], 48, 60, 1
        args.floor_size = 48
    if args.child_ranks:
        ranks_child(args)
        return 0
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    out: dict = {"args": vars(args)}
    suffix = "_quick" if args.quick else ""
    json_path = os.path.join(args.out, f"npo_scaling{suffix}.json")
    if args.update and os.path.exists(json_path):
        with open(json_path, encoding="utf-8") as f:
            out = {**json.load(f), "args": vars(args)}
        log(f"kept parts {[k for k in out if k != 'args']} of {json_path}")
    parts = args.parts.split(",")
    given = argv if argv is not None else sys.argv[1:]
    command = "python scripts/npo_scaling.py " + " ".join(given)
    ran = [p for p in parts if p in ("h", "apply", "ranks")]
    if ran:  # (no part: only the report is rendered again from the JSON)
        out["commands"] = [*out.get("commands", []), f"{command.strip()} (parts {args.parts})"]
        out["last_run"] = (f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, 1-minute "
                           f"load average {load0:.1f} at the start")
    os.makedirs(args.out, exist_ok=True)
    for name, part in (("h", part_h), ("apply", part_apply), ("ranks", part_ranks)):
        if name in parts:
            part(args, out)
            with open(json_path, "w", encoding="utf-8") as f:  # a part done is kept
                json.dump(out, f, indent=1, default=str)
    from petsc4py import PETSc

    hsizes = sorted({r["size"] for r in out.get("h", [])}) or args.sizes
    lines = [
        "# NPO at scale (issue 13)", "",
        "Produced by " + ", then ".join(f"`{c}`" for c in out["commands"])
        + f"; the last part started {out.get('last_run', '?')} ({platform.machine()}, "
        f"{os.cpu_count()} cores: other jobs shared the machine, so times are "
        f"indicative and comparable only within a run; iteration counts are not affected), "
        f"PETSc {'.'.join(map(str, PETSc.Sys.getVersion()))}, torch "
        f"{torch.__version__} (1 thread).", "",
        "Test systems: seed 1000, GRF right-hand side where the family has one; FGMRES "
        "(restart 100), rtol 1e-8, zero initial guess, true residual.  Times: setup + solve, "
        "minimum of the repeats after a warm-up solve.  NPO-MG: the shipped model "
        "(`petsc_neural/models/npo_mg_scalar.pt`, trained on 32^2 and 48^2 only); "
        "NPO: the paper's per-apply NAMG network (shipped models of the family).", "",
        "## Floors", "", *floors(out, hsizes, args.floor_size), ""]
    if "h" in out:
        lines += ["## Iterations against mesh size (h-independence)", "",
                  *_h_tables(out["h"], hsizes, args.floor_size)]
    if "apply" in out:
        lines += ["## Per-apply time breakdown", "", *_apply_tables(out["apply"])]
    if "ranks" in out:
        lines += ["## Ranks", "", *_ranks_tables(out["ranks"])]
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"npo_scaling{suffix}.md"), "w", encoding="utf-8") as f:
        f.write(text)
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1, default=str)
    log(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
