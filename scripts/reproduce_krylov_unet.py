#!/usr/bin/env python
"""Reproduce seed 002 (KrylovUNet): iterations over unseen vessel networks, Figs. 2-4, Table 5.

Writes ``results/krylov_unet.md`` (``--out``), ``results/krylov_unet.json`` and
the PNGs ``krylov_unet_static.png`` (Fig. 2), ``krylov_unet_dynamic.png``
(Fig. 3), ``krylov_unet_sines.png`` (Fig. 4) and ``krylov_unet_iterations.png``.

Parts (``--parts``, default ``solves,curves,transfer,oned``; ``ranks`` runs
``mpiexec`` itself):

``solves``   FGMRES on ``--tests`` unseen ``mixed_3d1d`` problems (random vessel
             trees, seeds from ``TEST_SEED``, never used in training) at the
             training grid, relative tolerance ``--rtol`` (the paper's value is
             lost from the seed's text; 1e-8 gives 132 unpreconditioned
             iterations here, paper 147.5) and also 1e-6: no preconditioner,
             KrylovUNet static and dynamic, and in the same run ILU(0), GAMG on
             the whole coupled matrix (PETSc defaults, and tuned over
             ``GAMG_TUNING_GRID`` on 3 training problems), Schur fieldsplit
             with GAMG on the 3D block (and with KrylovUNet on it), LU.
             Iterations (mean, range) and time (setup + solve).
``curves``   From the model files' metadata: training/validation losses
             (Figs. 2-3), mean ``|sin theta_j|`` per iteration during fine-tuning
             (Fig. 4), its linear fit ``a + b j`` (Table 5) and the residual
             estimate ``prod_j sin theta_j`` (eq. 5).
``transfer`` The same models on a grid 2x finer per direction (``--transfer-tests``
             problems).
``oned``     The 1D unknowns: the chosen exact elimination against the rejected
             splat/read-back channel, both trained with the same budget at a
             small grid (``--oned-size``), FGMRES iterations on unseen problems.
``ranks``    One problem under ``mpiexec -n 1, 2, 4``: iterations, time, and the
             gather/scatter cost (the network runs on rank 0).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import textwrap
import time

import numpy as np
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")

from petsc4py import PETSc  # noqa: E402

from pcshell import load_model  # noqa: E402
from petsc_neural.bench.baselines import GAMG_TUNING_GRID, best_gamg  # noqa: E402
from petsc_neural.krylov_unet.train import TEST_SEED  # noqa: E402

#: Seed 002 §7.4 (means; its ranges are lost from the seed's text).
PAPER = {"none": 147.5, "static": 26.71, "dynamic": 12.86}
#: Seed 002 Table 5, rows as printed (epoch, then five unnamed columns).
PAPER_TABLE5 = [
    (0, 0.592766, 0.246203, -0.518429, 0.009823, 0.489628),
    (10, 0.399244, 0.346335, -0.119267, 0.006651, 0.362663),
    (20, 0.373864, 0.360928, -0.148762, 0.004453, 0.349371),
    (40, 0.342721, 0.402198, -0.127696, 0.005862, 0.310482),
    (60, 0.335581, 0.352728, -0.122402, 0.004203, 0.312462),
    (80, 0.328283, 0.382090, -0.114524, 0.006195, 0.294211),
    (150, 0.317659, 0.414758, -0.111201, 0.003036, 0.300960),
]


def fgmres_params(rtol: float, max_it: int = 1000) -> dict:
    return {"ksp_type": "fgmres", "ksp_rtol": rtol, "ksp_atol": 0.0, "ksp_max_it": max_it,
            "ksp_gmres_restart": max_it}


def pc_options(name: str, static: str, dynamic: str, gamg: dict) -> dict:
    kunet = {"pc_type": "python", "pc_python_type": "petsc_neural.KrylovUNet"}
    if name == "none":
        return {"pc_type": "none"}
    if name == "static":
        return {**kunet, "pc_neural_model": static}
    if name == "dynamic":
        return {**kunet, "pc_neural_model": dynamic}
    if name == "ilu":
        return {"pc_type": "ilu"}
    if name == "gamg0":
        return {"pc_type": "gamg"}
    if name == "gamg":
        return dict(gamg)
    if name == "lu":
        return {"pc_type": "lu"}
    if name.startswith("fieldsplit"):
        block = (dict(gamg) if name == "fieldsplit_gamg" else {**kunet,
                                                               "pc_neural_model": dynamic})
        return {"pc_type": "fieldsplit", "pc_fieldsplit_type": "schur",
                "pc_fieldsplit_schur_fact_type": "full",
                "pc_fieldsplit_schur_precondition": "selfp",
                "fieldsplit_3d": {"ksp_type": "preonly", **block},
                "fieldsplit_1d": {"ksp_type": "preonly", "pc_type": "lu"}}
    raise ValueError(name)


LABELS = {
    "none": "none", "static": "KrylovUNet static", "dynamic": "KrylovUNet dynamic",
    "ilu": "ILU(0)", "gamg0": "GAMG (defaults), whole matrix",
    "gamg": "GAMG (tuned), whole matrix", "fieldsplit_gamg": "Schur fieldsplit, GAMG on 3D",
    "fieldsplit_kunet": "Schur fieldsplit, KrylovUNet dynamic on 3D (A_33)", "lu": "LU",
}


def solve(problem, opts: dict, history: bool = False) -> dict:
    """Set up and solve once; iterations, reason, times, true relative residual.

    ``history``: also the preconditioned residual norms of every iteration
    (FGMRES: the ratios of successive ones are the sines ``|sin theta_j|``).
    """
    t0 = time.perf_counter()
    ksp = problem.make_ksp(opts)
    if history:
        ksp.setConvergenceHistory(length=opts.get("ksp_max_it", 1000) + 1)
    t1 = time.perf_counter()
    x = problem.A.createVecRight()
    x.set(0.0)
    ksp.solve(problem.b, x)
    t2 = time.perf_counter()
    r = problem.b.duplicate()
    problem.A.mult(x, r)
    r.aypx(-1.0, problem.b)
    out = {"iterations": ksp.getIterationNumber(), "reason": int(ksp.getConvergedReason()),
           "setup": t1 - t0, "solve": t2 - t1,
           "rel_residual": float(r.norm() / problem.b.norm())}
    if history:
        out["history"] = [float(v) for v in ksp.getConvergenceHistory()]
    ksp.destroy()
    for v in (x, r):
        v.destroy()
    return out


def build(size: int, seed: int, comm=None):
    from mpi4py import MPI

    from firedrake_problems.mixed_3d1d import mixed_3d1d

    return mixed_3d1d(size, seed, MPI.COMM_SELF if comm is None else comm)


def machine_line() -> str:
    load = os.getloadavg()[0]
    return (f"{platform.machine()} with {os.cpu_count()} cores (1-minute load average "
            f"{load:.2f} at the start; above ~1 means other jobs shared the machine and "
            f"times are indicative; iteration counts are not affected), "
            f"PETSc {'.'.join(map(str, PETSc.Sys.getVersion()))}, torch {torch.__version__} "
            f"(1 thread)")


def stats(values: list[float]) -> tuple[float, float, float]:
    return float(np.mean(values)), float(np.min(values)), float(np.max(values))


# ----------------------------------------------------------------------------- solves
def tune_gamg(size: int, rtol: float) -> tuple[str, dict]:
    probs = [build(size, s) for s in (0, 1, 2)]  # training seeds

    def evaluate(opts: dict) -> float | None:
        total = 0.0
        for p in probs:
            r = solve(p, {**fgmres_params(rtol), **opts})
            if r["reason"] <= 0:
                return None
            total += r["setup"] + r["solve"]
        return total

    name, opts, _ = best_gamg(evaluate, GAMG_TUNING_GRID)
    return name, opts


def save_results(path: str, updates: dict) -> None:
    """Merge ``updates`` into the JSON file at ``path`` (re-read first: parts may run in
    separate processes) and write it atomically."""
    res = json.load(open(path)) if os.path.exists(path) else {}
    res.update(updates)
    tmp = path + ".part"
    with open(tmp, "w") as f:
        json.dump(res, f, indent=1, default=float)
    os.replace(tmp, path)


#: Preconditioners whose residual histories are kept (for the sines per iteration).
HISTORY_PCS = ("none", "static", "dynamic")


def part_solves(args, res: dict, lines: list[str], size: int, n: int, tag: str,
                pcs: list[str], tols: tuple[float, ...] = ()) -> None:
    """Solve ``n`` unseen problems; resumable: each finished problem is saved at once."""
    gamg_name, gamg = res.get("gamg_tuned") or (None, None)
    if "gamg" in pcs and gamg is None:
        t0 = time.perf_counter()
        gamg_name, gamg = tune_gamg(args.size, args.rtol)
        res["gamg_tuned"] = (gamg_name, gamg)
        res["gamg_tuning_seconds"] = time.perf_counter() - t0
        save_results(args.json, {k: res[k] for k in ("gamg_tuned", "gamg_tuning_seconds")})
    tols = tols or (args.rtol, 1e-6)
    records = res.setdefault("records", {}).setdefault(tag, [])
    done = {rec["seed"] for rec in records}
    for i in range(n):
        seed = TEST_SEED + i
        if seed in done:
            continue
        t0 = time.perf_counter()
        p = build(size, seed)
        rec = {"seed": seed, "generation": time.perf_counter() - t0,
               "dofs": [p.A.getSize()[0], p.fields["3d"].getSize(), p.fields["1d"].getSize()],
               "results": {f"{rtol:g}": {} for rtol in tols}}
        sys.stdout.write(f"[{tag}] seed {seed}: generated in {rec['generation']:.1f} s, "
                         f"dofs {rec['dofs']}\n")
        for k, rtol in enumerate(tols):
            for pc in pcs:
                if pc == "lu" and (size > args.lu_max_size or k > 0 or i >= args.lu_tests):
                    # LU converges in 1 iteration at any tolerance: once, on the first
                    # --lu-tests problems (its factorisation dominates the run's time).
                    continue
                r = solve(p, {**fgmres_params(rtol), **pc_options(pc, args.static,
                                                                   args.dynamic, gamg or {})},
                          history=pc in HISTORY_PCS)
                rec["results"][f"{rtol:g}"][pc] = r
                sys.stdout.write(f"[{tag} rtol {rtol:g}] seed {seed} {pc}: "
                                 f"{r['iterations']} its, reason {r['reason']}, "
                                 f"{r['setup'] + r['solve']:.2f} s\n")
                sys.stdout.flush()
        p.A.destroy()
        records.append(rec)
        save_results(args.json, {"records": res["records"]})
    solves_section(res, lines, tag, pcs, gamg_name)


def solves_section(res: dict, lines: list[str], tag: str, pcs: list[str],
                   gamg_name: str | None) -> None:
    """The table of a ``records`` entry (all problems finished so far)."""
    records = res["records"][tag]
    rtols = list(records[0]["results"])
    rows = {rtol: {pc: [rec["results"][rtol][pc] for rec in records
                        if pc in rec["results"][rtol]] for pc in pcs} for rtol in rtols}
    res[tag] = rows
    n = len(records)
    gen = [rec["generation"] for rec in records]
    dofs = records[0]["dofs"]
    lines.append(f"## FGMRES iterations on {n} unseen vessel networks, {tag}\n")
    lines.append(f"{res.get('metadata', {}).get(tag, '')}: {dofs[0]:,} unknowns ({dofs[1]:,} "
                 f"3D, {min(r['dofs'][2] for r in records):,}-"
                 f"{max(r['dofs'][2] for r in records):,} 1D).  Test seeds "
                 f"{records[0]['seed']}..{records[-1]['seed']} (training uses seeds below "
                 f"{TEST_SEED}).  Generating a system with Firedrake (random tree, assembly, "
                 f"field index sets): {np.mean(gen):.1f} s mean ({min(gen):.1f}-{max(gen):.1f}"
                 f" s), {sum(gen):.0f} s for all {n}.\n")
    for rtol, out in rows.items():
        none = np.mean([r["iterations"] for r in out["none"]])
        lines.append(f"**Relative tolerance {rtol}** (FGMRES, no restart, zero initial "
                     "guess, rhs of the family's `source` problem).\n")
        lines.append("| preconditioner | its mean | min | max | ratio to none | paper its | "
                     "paper ratio | setup (s) | solve (s) | total (s) | converged |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for pc, rs in out.items():
            if not rs:
                continue
            its = [r["iterations"] for r in rs]
            mean, lo, hi = stats(its)
            conv = sum(r["reason"] > 0 for r in rs)
            paper = PAPER.get(pc)
            pr = f"{paper:g}" if paper else "-"
            pratio = f"{paper / PAPER['none']:.3f}" if paper else "-"
            lines.append(
                f"| {LABELS[pc]} | {mean:.2f} | {lo:.0f} | {hi:.0f} | {mean / none:.3f} | {pr} | "
                f"{pratio} | {np.median([r['setup'] for r in rs]):.3f} | "
                f"{np.median([r['solve'] for r in rs]):.3f} | "
                f"{np.median([r['setup'] + r['solve'] for r in rs]):.3f} | {conv}/{len(rs)} |")
        lines.append("")
    lines.append("Times are medians over the problems (setup includes the PC's setup: model "
                 "load and the 1D factorisation for KrylovUNet, the hierarchy for GAMG, the "
                 "factorisation for LU).\n")
    if gamg_name:
        lines.append(f"Tuned GAMG: {gamg_name} (fastest total time on 3 training problems"
                     f" over `GAMG_TUNING_GRID`, {res.get('gamg_tuning_seconds', 0):.0f} s of "
                     "tuning).\n")


def transfer_note(res: dict, lines: list[str]) -> None:
    """The ratios to none on the 2x finer grid beside those on the training grid."""
    rtol = next(iter(res["transfer grid"]))
    lines.append(f"Ratios to none at rtol {rtol}, training grid -> 2x finer grid (the models "
                 "were trained at the training grid only; nothing is retrained, and GAMG "
                 "keeps the setting tuned at the training grid):\n")
    for pc in ("static", "dynamic", "gamg"):
        ratio = []
        for tag in ("training grid", "transfer grid"):
            out = res[tag][rtol]
            ratio.append(np.mean([r["iterations"] for r in out[pc]])
                         / np.mean([r["iterations"] for r in out["none"]]))
        lines.append(f"- {LABELS[pc]}: {ratio[0]:.3f} -> {ratio[1]:.3f}")
    lines.append("")


def floor_check(res: dict, lines: list[str], tag: str) -> None:
    lines.append("## Floors (issue 14)\n")
    for rtol, out in res[tag].items():
        none = np.mean([r["iterations"] for r in out["none"]])
        st = np.mean([r["iterations"] for r in out["static"]])
        dy = np.mean([r["iterations"] for r in out["dynamic"]])
        gm = np.mean([r["iterations"] for r in out["gamg"]]) if out.get("gamg") else None
        checks = [
            (f"static <= 0.18 x none: {st:.2f} <= {0.18 * none:.2f}", st <= 0.18 * none),
            (f"dynamic <= 0.087 x none: {dy:.2f} <= {0.087 * none:.2f}", dy <= 0.087 * none),
            (f"dynamic < static: {dy:.2f} < {st:.2f}", dy < st),
            (f"goal: dynamic <= 0.5 x paper ratio (0.0436 x none = {0.0436 * none:.2f}): "
             f"{dy:.2f}", dy <= 0.0436 * none),
        ]
        if gm is not None:
            checks.append((f"goal: dynamic < GAMG (tuned) on the whole matrix: {dy:.2f} < "
                           f"{gm:.2f}", dy < gm))
        lines.append(f"rtol {rtol}:\n")
        for text, ok in checks:
            lines.append(f"- {'MET' if ok else 'NOT MET'}: {text}")
        lines.append("")


def plot_iterations(res: dict, out_dir: str, tag: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rtol = next(iter(res[tag]))
    out = res[tag][rtol]
    names = [pc for pc in out if out[pc]]
    fig, ax = plt.subplots(figsize=(10, 4.8))
    ax.boxplot([[r["iterations"] for r in out[pc]] for pc in names])
    ax.set_xticks(range(1, len(names) + 1),
                  [textwrap.fill(LABELS[n].replace(",", ""), 15) for n in names], fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("FGMRES iterations")
    ax.set_title(f"{len(out['none'])} unseen vessel networks, rtol {rtol}")
    fig.tight_layout()
    path = os.path.join(out_dir, "krylov_unet_iterations.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- sines
def test_sines(records: list[dict], rtol: str, pc: str, m: int) -> np.ndarray:
    """Mean over problems of ``|sin theta_j|``, j = 1..m, from FGMRES residual histories.

    For FGMRES (zero initial guess) ``|sin theta_j| = ||r_j|| / ||r_{j-1}||``
    (tested in ``tests/petsc_neural/krylov``); problems that converged before
    iteration j do not count at j.
    """
    rows = []
    for rec in records:
        h = np.asarray(rec["results"][rtol][pc]["history"])
        s = np.full(m, np.nan)
        k = min(m, len(h) - 1)
        s[:k] = h[1:k + 1] / h[:k]
        rows.append(s)
    rows = np.asarray(rows)
    counts = np.isfinite(rows).sum(axis=0)
    sums = np.nansum(rows, axis=0)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def part_sines(args, res: dict, lines: list[str]) -> None:
    """Mean |sin theta_j| per iteration on the test problems, before and after fine-tuning."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = res["records"]["training grid"]
    rtol = next(iter(records[0]["results"]))
    m, m_plot = 10, 40
    out = {}
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for pc in HISTORY_PCS:
        s = test_sines(records, rtol, pc, m_plot)
        a, b = linear_fit(list(s[:m]))
        rel = [np.asarray(rec["results"][rtol][pc]["history"]) for rec in records]
        rel_m = float(np.mean([h[min(m, len(h) - 1)] / h[0] for h in rel]))
        out[pc] = {"sines": [float(v) for v in s], "intercept": a, "slope": b,
                   "mean_sin_m": float(np.nanmean(s[:m])),
                   "prod_sin_m": float(np.nanprod(s[:m])),
                   "rel_residual_m": rel_m}
        j = np.arange(1, m_plot + 1)
        line, = ax.plot(j, s, "o", ms=3, label=f"{LABELS[pc]}: a = {a:.3f}, b = {b:.4f}")
        ax.plot(j[:m], a + b * j[:m], "-", color=line.get_color(), lw=1.2)
    ax.axvline(m + 0.5, color="grey", lw=0.6, ls=":")
    ax.set_xlabel("FGMRES iteration j")
    ax.set_ylabel("mean |sin theta_j| over the test networks")
    ax.set_title(f"{len(records)} unseen networks, rtol {rtol}; lines: fit over j <= {m}",
                 fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(args.out, "krylov_unet_test_sines.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    res["test_sines"] = out
    lines.append("## Mean |sin theta_j| per FGMRES iteration on the test networks, before and "
                 "after fine-tuning (paper Fig. 4, Table 5)\n")
    lines.append(f"From the PETSc FGMRES residual histories of the solves above (rtol {rtol}, "
                 f"{len(records)} unseen networks): `|sin theta_j| = ||r_j|| / ||r_(j-1)||`, "
                 f"averaged over the networks; linear fit `a + b j` over j = 1..{m} (the "
                 "paper's m); `prod sin` is eq. (5)'s estimate of the relative residual after "
                 f"m = {m} iterations, beside the measured mean.\n")
    lines.append(f"| preconditioner | intercept a | slope b | mean \\|sin\\| (j <= {m}) | "
                 "prod sin (eq. 5) | measured relative residual after m |")
    lines.append("|---|---|---|---|---|---|")
    for pc, r in out.items():
        lines.append(f"| {LABELS[pc]} | {r['intercept']:.4f} | {r['slope']:.5f} | "
                     f"{r['mean_sin_m']:.4f} | {r['prod_sin_m']:.3e} | "
                     f"{r['rel_residual_m']:.3e} |")
    lines.append("\nPaper Table 5 (its headings are lost; see the fine-tuning table below): "
                 "first column 0.593 at epoch 0 -> 0.318 after fine-tuning, last column (mean "
                 "|sin|) 0.490 -> 0.301; slope 'nearly constant'.\n")
    lines.append(f"Plot: `{path}`.\n")


# ----------------------------------------------------------------------------- curves
def linear_fit(sines: list[float]) -> tuple[float, float]:
    """``(a, b)`` of ``sines[j - 1] ~ a + b j`` (NaN entries, converged problems, skipped)."""
    j = np.arange(1, len(sines) + 1)
    s = np.asarray(sines, dtype=float)
    ok = np.isfinite(s)
    if ok.sum() < 2:
        return float("nan"), float("nan")
    b, a = np.polyfit(j[ok], s[ok], 1)
    return float(a), float(b)


def part_curves(args, res: dict, lines: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st = load_model(args.static, method="krylov_unet").metadata.training
    dy = load_model(args.dynamic, method="krylov_unet").metadata.training
    res["curves"] = {"static": st["validation"], "dynamic": dy["validation"]}
    scfg, dcfg = st["config"], dy["config"]

    def smooth(v, k=10):
        v = np.asarray(v)
        if len(v) < k:
            return np.arange(1, len(v) + 1), v
        return np.arange(k, len(v) + 1), np.convolve(v, np.ones(k) / k, mode="valid")

    # Fig. 2: static loss, and residual/sines at the start and the end of pretraining.
    fig, axs = plt.subplots(1, 3, figsize=(13, 3.6))
    x, y = smooth(st["loss"])
    axs[0].plot(x, y, label="train (10-step mean)")
    axs[0].plot([r["step"] for r in st["validation"]], [r["static"] for r in st["validation"]],
                "o-", label="validation")
    axs[0].set_xlabel("step")
    axs[0].set_ylabel("static loss ||S N(r) - r|| / ||r||")
    axs[0].legend()
    for ax, rec, title in ((axs[1], st["validation"][0], "start of pretraining"),
                           (axs[2], st["validation"][-1], "end of pretraining")):
        j = np.arange(1, len(rec["sines"]) + 1)
        ax.semilogy(j, rec["rel_residual"], "o-", label="mean relative residual")
        ax.plot(j, rec["sines"], "s--", label="mean |sin theta_j|")
        ax.set_xlabel("FGMRES iteration j")
        ax.set_title(f"{title} (step {rec['step']})")
        ax.legend(fontsize=8)
    fig.tight_layout()
    p2 = os.path.join(args.out, "krylov_unet_static.png")
    fig.savefig(p2, dpi=120)
    plt.close(fig)
    # Fig. 3: dynamic loss.
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    x, y = smooth(dy["loss"], 5)
    ax.plot(x, y, label="train (5-step mean)")
    ax.plot([r["step"] for r in dy["validation"]], [r["sin_mean"] for r in dy["validation"]],
            "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel(f"dynamic loss: mean |sin| over m = {dcfg['m']}")
    ax.legend()
    fig.tight_layout()
    p3 = os.path.join(args.out, "krylov_unet_dynamic.png")
    fig.savefig(p3, dpi=120)
    plt.close(fig)
    # Fig. 4: sines per iteration during fine-tuning, with the linear fits.
    fig, ax = plt.subplots(figsize=(6, 4))
    recs = dy["validation"]
    pick = sorted({0, len(recs) // 4, len(recs) // 2, 3 * len(recs) // 4, len(recs) - 1})
    for k in pick:
        rec = recs[k]
        j = np.arange(1, len(rec["sines"]) + 1)
        a, b = linear_fit(rec["sines"])
        line, = ax.plot(j, rec["sines"], "o", label=f"step {rec['step']}")
        ax.plot(j, a + b * j, "-", color=line.get_color(), lw=0.8)
    ax.set_xlabel("FGMRES iteration j")
    ax.set_ylabel("mean |sin theta_j| (validation)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    p4 = os.path.join(args.out, "krylov_unet_sines.png")
    fig.savefig(p4, dpi=120)
    plt.close(fig)

    lines.append("## Training (paper Figs. 2-3, Tables 2-3)\n")
    lines.append(
        f"Static stage: {scfg['train_graphs']} training / {scfg['val_graphs']} validation "
        f"vessel networks at n = {scfg['size']} (a {scfg['size'] + 1}^3 grid), {scfg['steps']} "
        f"steps of batch {scfg['batch']} (paper Table 2: 480 / 120 graphs, 2400 samples, batch "
        f"5, 250 epochs), Adam, lr {scfg['lr']:g} decaying to {scfg['lr_final']:g}; "
        f"{st.get('seconds') or 0:.0f} s.  Validation static loss "
        f"{st['validation'][0]['static']:.3f} -> {st['validation'][-1]['static']:.3f} "
        "(paper: about 0.4).")
    lines.append(
        f"Dynamic stage: {dcfg['steps']} steps of {dcfg['batch']} systems, m = {dcfg['m']} "
        f"(paper Table 3: 100 / 20 graphs, mini-batch 20, 150 epochs), lr {dcfg['lr']:g} -> "
        f"{dcfg['lr_final']:g}; {dy.get('seconds') or 0:.0f} s.  Validation mean |sin| "
        f"{recs[0]['sin_mean']:.3f} -> {recs[-1]['sin_mean']:.3f} (paper: 0.49 -> 0.30).\n")
    lines.append(f"Plots: `{p2}` (Fig. 2), `{p3}` (Fig. 3), `{p4}` (Fig. 4).\n")
    lines.append("## Linear fit of the mean |sin theta_j| during fine-tuning (paper Table 5)\n")
    lines.append("Fit `mean |sin theta_j| ~ a + b j` over j = 1..m on the validation networks; "
                 "`prod_j sin` is the residual estimate of eq. (5) (mean over networks of the "
                 "product of their sines = relative residual after m steps).\n")
    lines.append("| step | intercept a | slope b | mean \\|sin\\| | relative residual after m |")
    lines.append("|---|---|---|---|---|")
    for rec in recs:
        a, b = linear_fit(rec["sines"])
        lines.append(f"| {rec['step']} | {a:.4f} | {b:.5f} | {rec['sin_mean']:.4f} | "
                     f"{rec['rel_residual'][-1]:.3e} |")
    lines.append("\nPaper Table 5 as printed in the seed's text (its column headings and "
                 "symbols are lost; the last column is the mean |sin|, 0.49 -> 0.30 as its "
                 "text says; the first is read as the intercept, 0.59 -> 0.32):\n")
    lines.append("| epoch | col 1 | col 2 | col 3 | col 4 | col 5 |")
    lines.append("|---|---|---|---|---|---|")
    for row in PAPER_TABLE5:
        lines.append("| " + " | ".join(str(v) for v in row) + " |")
    lines.append("")


# ----------------------------------------------------------------------------- 1D handling
class SplatUNet(torch.nn.Module):
    """The rejected alternative: the 1D residual splatted onto the grid as a channel.

    ``W`` (n1 x n3) is ``|A_13|`` with unit row sums (the circle average ``Pi`` up
    to the 1D mass matrix, read off the operator); the channels are the 3D
    residual, ``W^T r_1`` and the geometry; the second output channel is read
    back onto the vessel by ``W``.  Everything else as :class:`KrylovUNet`.
    """

    def __init__(self, width: int, geometry_scale: float) -> None:
        super().__init__()
        from petsc_neural.krylov_unet.network import UNet3D

        self.unet = UNet3D(3, width, 2)
        self.geometry_scale = geometry_scale

    def forward(self, R3, R1, sysd):
        B, n = R3.shape
        G = round(n ** (1 / 3))
        g = G - 2
        P = ((g + 3) // 4) * 4
        pad = [0, P - g] * 3
        W = sysd["W"]
        S1 = (W.t() @ R1.t()).t()
        cube = lambda v: v.reshape(B, G, G, G)[:, 1:-1, 1:-1, 1:-1]  # noqa: E731
        r, s1 = cube(R3), cube(S1)
        rms = torch.sqrt(((r * r).sum((1, 2, 3)) + (R1 * R1).sum(1)) / (g**3 + R1.shape[1]))
        d_rms = sysd["d_rms"]
        geo = cube(sysd["geometry"].expand(B, -1)) * (self.geometry_scale / d_rms)
        x = torch.stack([r / rms[:, None, None, None], s1 / rms[:, None, None, None], geo], 1)
        y = self.unet(torch.nn.functional.pad(x, pad))[:, :, :g, :g, :g]
        z3 = (R3 / sysd["diagonal"]).reshape(B, G, G, G).clone()
        z3[:, 1:-1, 1:-1, 1:-1] = y[:, 0] * (rms / d_rms)[:, None, None, None]
        y1 = torch.zeros(B, G, G, G, dtype=R3.dtype)
        y1[:, 1:-1, 1:-1, 1:-1] = y[:, 1]
        z1 = (W @ y1.reshape(B, -1).t()).t() * (rms / sysd["d11_rms"])[:, None]
        return z3.reshape(B, n), z1


def _full_system(path: str, K3, dtype):
    """Blocks of a cached graph as torch tensors, plus its physics rhs (full)."""
    import scipy.sparse as sp

    from petsc_neural.krylov_unet.data import _load_csr
    from petsc_neural.krylov_unet.grid import geometry_field
    from petsc_neural.krylov_unet.system import CoupledSystem, torch_csr

    with np.load(path, allow_pickle=False) as z:
        A33 = (K3 + _load_csr(z, "D33")).tocsr()
        A31, A13, A11 = _load_csr(z, "A31"), _load_csr(z, "A13"), z["A11"]
        f = np.concatenate([z["f3"], z["f1"]])
    G = round(A33.shape[0] ** (1 / 3))
    W = abs(A13)
    W = sp.diags(1.0 / np.asarray(W.sum(axis=1)).ravel()) @ W
    d = A33.diagonal()
    return {
        "schur": CoupledSystem(A33, A31, A13, A11, dtype=dtype),
        "A": torch_csr(sp.bmat([[A33, A31], [A13, sp.csr_matrix(A11)]]), dtype),
        "W": torch_csr(W, dtype), "n3": A33.shape[0],
        "geometry": torch.from_numpy(geometry_field(A33, G)).to(dtype),
        "diagonal": torch.from_numpy(d).to(dtype),
        "d_rms": float(np.sqrt((d.reshape(G, G, G)[1:-1, 1:-1, 1:-1] ** 2).mean())),
        "d11_rms": float(np.sqrt((np.diag(A11) ** 2).mean())),
        "f": torch.from_numpy(f / np.linalg.norm(f)).to(dtype),
    }


def oned_compare(size: int, train: int, test: int, steps: int, cache: str,
                 rtol: float) -> dict:
    from petsc_neural.krylov import fgmres
    from petsc_neural.krylov_unet.data import generate_graphs, load_stiffness
    from petsc_neural.krylov_unet.loss import static_loss
    from petsc_neural.krylov_unet.network import KrylovUNet
    from petsc_neural.krylov_unet.train import GEOMETRY_SCALE, VAL_OFFSET

    tr_seeds = list(range(train))
    te_seeds = [TEST_SEED + VAL_OFFSET + i for i in range(test)]
    paths = generate_graphs(size, tr_seeds + te_seeds, cache)
    K3 = load_stiffness(cache, size)
    f32 = [_full_system(p, K3, torch.float32) for p in paths[:train]]
    f64 = [_full_system(p, K3, torch.float64) for p in paths[train:]]
    width, batch, lr = 16, 5, 2e-3

    def rand_full(sysd, gen):
        n = sysd["A"].shape[0]
        v = torch.randn(n, generator=gen, dtype=torch.float64)
        face = torch.from_numpy(__import__("petsc_neural.krylov_unet.grid", fromlist=["x"])
                                .dirichlet_faces(round(sysd["n3"] ** (1 / 3))))
        v[: sysd["n3"]][face] = 0.0
        return (v / torch.linalg.vector_norm(v)).float()

    def samples(gen):
        idx = torch.randint(len(f32), (batch,), generator=gen).tolist()
        kind = torch.randint(5, (batch,), generator=gen).tolist()
        return [(f32[i], f32[i]["f"] if k == 0 else rand_full(f32[i], gen))
                for i, k in zip(idx, kind, strict=True)]

    def run(net, loss_of) -> tuple[float, float]:
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, (0.1) ** (1 / steps))
        t0, hist = time.perf_counter(), []
        for _ in range(steps):
            opt.zero_grad()
            loss = loss_of(samples(gen))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            sched.step()
            hist.append(float(loss.detach()))
        return time.perf_counter() - t0, float(np.mean(hist[-20:]))

    def chosen_loss(batch_):
        systems = [s["schur"] for s, _ in batch_]
        R = torch.from_numpy(np.stack([
            s["schur"].reduce_rhs(r[: s["n3"]].double().numpy(), r[s["n3"]:].double().numpy())
            for s, r in batch_])).float()
        R = R / torch.linalg.vector_norm(R, dim=1, keepdim=True)
        return static_loss(chosen, systems, R)

    def splat_loss(batch_):
        out = []
        for s, r in batch_:
            n3 = s["n3"]
            z3, z1 = splat(r[None, :n3], r[None, n3:], s)
            z = torch.cat([z3[0], z1[0]])
            out.append(torch.linalg.vector_norm(torch.sparse.mm(s["A"], z[:, None])[:, 0] - r))
        return torch.stack(out).mean()

    torch.manual_seed(0)
    chosen = KrylovUNet(width=width, geometry_scale=GEOMETRY_SCALE)
    torch.manual_seed(0)
    splat = SplatUNet(width, GEOMETRY_SCALE)
    variants = {}
    for name, net, loss_of in (("exact 1D elimination (chosen)", chosen, chosen_loss),
                               ("splat channel + read-back (rejected)", splat, splat_loss)):
        seconds, final = run(net, loss_of)
        net.double().eval()
        its = []
        for s in f64:
            n3 = s["n3"]
            S = s["schur"]

            def mv(X, s=s):
                return torch.sparse.mm(s["A"], X.t()).t()

            if net is chosen:

                def prec(V, S=S, n3=n3, net=net):
                    r3, r1 = V[:, :n3], V[:, n3:]
                    r3p = r3 - torch.sparse.mm(S.A31, S.A11inv @ r1.t()).t()
                    z3 = net.apply_batch(r3p, S.geometry[None].expand(len(V), -1),
                                         S.diagonal[None].expand(len(V), -1))
                    z1 = (S.A11inv @ (r1.t() - torch.sparse.mm(S.A13, z3.t()))).t()
                    return torch.cat([z3, z1], dim=1)
            else:

                def prec(V, s=s, n3=n3, net=net):
                    z3, z1 = net(V[:, :n3], V[:, n3:], s)
                    return torch.cat([z3, z1], dim=1)

            with torch.no_grad():
                res = fgmres(mv, s["f"], prec, 400, rtol=rtol)
            its.append(int(res.iterations))
        variants[name] = {"parameters": sum(p.numel() for p in net.parameters()),
                          "seconds": seconds, "final_loss": final, "iterations": its}
        sys.stdout.write(f"[oned] {name}: {its}\n")
    desc = (f"Both variants: U-Net width {width}, {steps} static steps of batch {batch} "
            f"(Adam {lr:g}, decaying 10x), {train} training networks at n = {size} (a "
            f"{size + 1}^3 grid), samples 1/5 the physical rhs, 4/5 random unit vectors "
            "(the chosen variant sees them reduced to the 3D Schur complement, the "
            "rejected one whole); FGMRES (torch, float64) on the whole coupled system, "
            f"rtol {rtol:g}, on {test} unseen networks.  The chosen variant solves the 1D "
            "block exactly around the network (as the PC does); the rejected one reads the "
            "1D correction from a second output channel through the averaging weights.")
    return {"description": desc, "variants": variants}


def part_oned(args, res: dict, lines: list[str]) -> None:
    out = oned_compare(size=args.oned_size, train=args.oned_train, test=args.oned_test,
                       steps=args.oned_steps, cache=args.cache, rtol=args.rtol)
    res["oned"] = out
    lines.append("## The 1D unknowns: exact elimination (chosen) against a splat channel "
                 "(rejected)\n")
    lines.append(out["description"] + "\n")
    lines.append("| variant | parameters | training (s) | final static loss | FGMRES its mean "
                 "| min | max |")
    lines.append("|---|---|---|---|---|---|---|")
    for name, r in out["variants"].items():
        its = r["iterations"]
        lines.append(f"| {name} | {r['parameters']:,} | {r['seconds']:.0f} | "
                     f"{r['final_loss']:.3f} | {np.mean(its):.2f} | {min(its)} | {max(its)} |")
    lines.append("")


# ----------------------------------------------------------------------------- ranks
def ranks_worker(args) -> None:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    p = build(args.size, TEST_SEED, comm)
    ksp = p.make_ksp({**fgmres_params(args.rtol), **pc_options("dynamic", args.static,
                                                                args.dynamic, {})})
    x = p.A.createVecRight()
    x.set(0.0)
    t0 = time.perf_counter()
    ksp.solve(p.b, x)
    t1 = time.perf_counter()
    ctx = ksp.getPC().getPythonContext()
    if comm.rank == 0:
        print("RANKS_RESULT", json.dumps({"nprocs": comm.size, "iterations":
                                          ksp.getIterationNumber(), "solve": t1 - t0,
                                          "times": ctx._times}))


def part_ranks(args, res: dict, lines: list[str]) -> None:
    rows = []
    for n in (1, 2, 4):
        cmd = ["mpiexec", "-n", str(n), sys.executable, os.path.abspath(__file__),
               "--ranks-worker", "--size", str(args.size), "--rtol", str(args.rtol),
               "--static", args.static, "--dynamic", args.dynamic]
        # os.environ is Python's copy from before MPI_Init: a child mpiexec that inherits
        # Open MPI's singleton variables from this (MPI-initialised) process exits 1.
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        out = proc.stdout
        line = [ln for ln in out.splitlines() if ln.startswith("RANKS_RESULT")][0]
        rows.append(json.loads(line.split(" ", 1)[1]))
    res["ranks"] = rows
    lines.append("## MPI: the network on rank 0 (same iterations as serial)\n")
    lines.append("KrylovUNet dynamic on test network "
                 f"{TEST_SEED} at n = {args.size}; the residual is gathered to rank 0 at "
                 "every apply and the correction scattered back (`-ksp_view` says so).\n")
    lines.append("| ranks | iterations | solve (s) | network (s) | 1D elimination (s) | "
                 "gather/scatter (s) |")
    lines.append("|---|---|---|---|---|---|")
    for r in rows:
        t = r["times"]
        lines.append(f"| {r['nprocs']} | {r['iterations']} | {r['solve']:.2f} | "
                     f"{t['network']:.2f} | {t['oned']:.3f} | {t['gather']:.3f} |")
    lines.append("\n(On 2 shared cores more ranks only add the gather/scatter and idle "
                 "ranks: the network is not distributed.)\n")


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="solves,curves,transfer,oned")
    ap.add_argument("--out", default="results")
    ap.add_argument("--static", required=True, help="static-stage model file")
    ap.add_argument("--dynamic", required=True, help="dynamic-stage model file")
    ap.add_argument("--size", type=int, default=32, help="cells per edge of the test grid")
    ap.add_argument("--tests", type=int, default=20)
    ap.add_argument("--rtol", type=float, default=1e-8)
    ap.add_argument("--transfer-tests", type=int, default=5)
    ap.add_argument("--lu-max-size", type=int, default=32)
    ap.add_argument("--lu-tests", type=int, default=5, help="LU on the first N problems only")
    ap.add_argument("--oned-size", type=int, default=16)
    ap.add_argument("--oned-train", type=int, default=12)
    ap.add_argument("--oned-test", type=int, default=10)
    ap.add_argument("--oned-steps", type=int, default=300)
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/petsc-neural/krylov_data"))
    ap.add_argument("--ranks-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.ranks_worker:
        ranks_worker(args)
        return 0
    parts = args.parts.split(",")
    os.makedirs(args.out, exist_ok=True)
    args.json = os.path.join(args.out, "krylov_unet.json")
    res = json.load(open(args.json)) if os.path.exists(args.json) else {}
    res["metadata"] = {
        "training grid": f"n = {args.size}: a {args.size + 1}^3 tissue grid",
        "transfer grid": f"n = {2 * args.size}: a {2 * args.size + 1}^3 tissue grid"}
    pcs = ["none", "static", "dynamic", "ilu", "gamg0", "gamg", "fieldsplit_gamg",
           "fieldsplit_kunet", "lu"]

    def solves_part(args, res, lines):
        part_solves(args, res, lines, args.size, args.tests, "training grid", pcs)
        floor_check(res, lines, "training grid")
        lines.append(f"Plot: `{plot_iterations(res, args.out, 'training grid')}`.\n")

    def transfer_part(args, res, lines):
        # One tolerance only: a system at n = 64 takes minutes on 2 shared cores.
        part_solves(args, res, lines, 2 * args.size, args.transfer_tests, "transfer grid",
                    ["none", "static", "dynamic", "ilu", "gamg0", "gamg"], (args.rtol,))
        transfer_note(res, lines)

    runners = {"solves": solves_part, "sines": part_sines, "curves": part_curves,
               "transfer": transfer_part, "oned": part_oned, "ranks": part_ranks}
    #: The result keys each part writes (parts may run as separate processes).
    part_keys = {"solves": ["training grid", "gamg_tuned", "gamg_tuning_seconds", "records"],
                 "sines": ["test_sines"], "curves": ["curves"],
                 "transfer": ["transfer grid", "gamg_tuned", "records"], "oned": ["oned"],
                 "ranks": ["ranks"]}
    command = f"scripts/reproduce_krylov_unet.py {' '.join(argv or sys.argv[1:])}"
    for key, fn in runners.items():
        if key not in parts:
            continue
        t0 = time.perf_counter()
        started = f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC"
        machine = machine_line()
        lines: list[str] = []
        fn(args, res, lines)
        lines.append(f"_This section: `{command}`, started {started} on {machine}; "
                     f"{time.perf_counter() - t0:.0f} s._\n")
        disk = json.load(open(args.json)) if os.path.exists(args.json) else {}
        sections = disk.get("sections", {})
        sections[key] = lines
        save_results(args.json, {"sections": sections, "metadata": res["metadata"],
                                 **{k: res[k] for k in part_keys[key] if k in res}})
    disk = json.load(open(args.json))
    body = ["# KrylovUNet (seed 002) reproduced with petsc-neural\n",
            "Written by `scripts/reproduce_krylov_unet.py` (each section says the command "
            "and the machine state that produced it).  The paper's numbers are quoted beside "
            "ours where it reports the case.\n",
            f"Models: static `{args.static}`, dynamic `{args.dynamic}`.\n"]
    for key in runners:
        body += disk.get("sections", {}).get(key, [])
    with open(os.path.join(args.out, "krylov_unet.md"), "w") as f:
        f.write("\n".join(body) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
