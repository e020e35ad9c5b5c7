"""The GPU path, measured: NPO's apply on the GPU with and without host copies.

Issue 17's proof, prepared to run in one go on a machine with a GPU::

    python benchmarks/gpu_proof.py --size 1000 --out results/gpu_proof.md   # 1M unknowns

It solves one 2D Poisson problem (``firedrake_problems``' ``poisson`` family,
``size x size`` P1 cells, the shipped NPO model) with FGMRES three ways:

``cpu``
    ``-pc_neural_device cpu``: the reference iterations.
``cuda-host``
    ``-pc_neural_device cuda`` on PETSc's host vectors: one host->device and
    one device->host copy per apply (the ``PCNeuralHtoD`` / ``PCNeuralDtoH``
    events).
``cuda-dlpack``
    the same with the operator converted to ``aijcusparse`` (so the Krylov
    vectors are CUDA vectors): the network reads and writes PETSc's device
    memory through DLPack, no host copy (both copy events must stay at 0).
    Needs a PETSc configured with CUDA; otherwise the row says so.

For each: iterations, reason, solve time, and per-apply times from PETSc's
log events (apply, inference, copies).  The CUDA rows are skipped, and the
table says why, where torch has no CUDA; the script exits non-zero if a run
that ran does not converge, if a CUDA run's iterations differ from the CPU
run's by more than one, or if the DLPack run made a host copy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from petsc4py import PETSc

EVENTS = ("PCNeuralApply", "PCNeuralInfer", "PCNeuralHtoD", "PCNeuralDtoH")


def petsc_has_cuda() -> bool:
    """Whether this PETSc was configured with CUDA (``aijcusparse`` exists)."""
    try:
        return bool(PETSc.Sys.hasExternalPackage("cuda"))
    except Exception:  # noqa: BLE001 - an old petsc4py: try the type itself
        try:
            m = PETSc.Mat().create(comm=PETSc.COMM_SELF)
            m.setType("aijcusparse")
            m.destroy()
            return True
        except PETSc.Error:
            return False


def event_totals() -> dict[str, dict[str, float]]:
    """Count and time (s) of each neural-PC event so far on this rank."""
    out = {}
    for name in EVENTS:
        info = PETSc.Log.Event(name).getPerfInfo()
        out[name] = {"count": int(info["count"]), "time": float(info["time"])}
    return out


def run_case(problem: Any, device: str, on_device_vectors: bool, rtol: float,
             max_it: int) -> dict[str, Any]:
    """One FGMRES solve with NPO on ``device``; events measured around the solve only."""
    from firedrake_problems.petsc_util import configured_ksp

    A, b = problem.A, problem.b
    if on_device_vectors:
        A = A.convert("aijcusparse")  # a copy: the problem's Mat is untouched
        b_dev = A.createVecLeft()
        problem.b.copy(b_dev)
        b = b_dev
    params = {"ksp_type": "fgmres", "ksp_rtol": rtol, "ksp_max_it": max_it,
              "ksp_gmres_restart": 100, "ksp_norm_type": "unpreconditioned",
              "pc_type": "python", "pc_python_type": "petsc_neural.NPO",
              "pc_neural_device": device}
    t0 = time.perf_counter()
    ksp = configured_ksp(A, params, coordinates=problem.coordinates)
    setup = time.perf_counter() - t0
    x = A.createVecRight()
    x.set(0.0)
    before = event_totals()
    t0 = time.perf_counter()
    ksp.solve(b, x)
    solve = time.perf_counter() - t0
    after = event_totals()
    ev = {k: {"count": after[k]["count"] - before[k]["count"],
              "time": after[k]["time"] - before[k]["time"]} for k in EVENTS}
    r = b.duplicate()
    A.mult(x, r)
    r.aypx(-1.0, b)
    applies = max(ev["PCNeuralApply"]["count"], 1)
    return {
        "vectors": x.getType(),
        "iterations": ksp.getIterationNumber(),
        "reason": int(ksp.getConvergedReason()),
        "true_relative_residual": r.norm() / b.norm(),
        "setup_s": setup,
        "solve_s": solve,
        "applies": ev["PCNeuralApply"]["count"],
        "apply_ms": 1e3 * ev["PCNeuralApply"]["time"] / applies,
        "infer_ms": 1e3 * ev["PCNeuralInfer"]["time"] / applies,
        "htod_ms": 1e3 * ev["PCNeuralHtoD"]["time"] / applies,
        "dtoh_ms": 1e3 * ev["PCNeuralDtoH"]["time"] / applies,
        "host_copies": ev["PCNeuralHtoD"]["count"] + ev["PCNeuralDtoH"]["count"],
    }


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# The GPU path: NPO apply with and without host copies",
        "",
        f"`python benchmarks/gpu_proof.py --size {results['size']}`: 2D Poisson, "
        f"{results['dofs']:,} unknowns, FGMRES(100) rtol {results['rtol']:g}, the shipped "
        f"NPO model; torch {results['torch']}, CUDA device: {results['gpu'] or 'none'}.",
        "",
        "| run | vectors | its | reason | true rel. residual | solve (s) | apply (ms) | "
        "network (ms) | HtoD (ms) | DtoH (ms) | host copies |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, c in results["runs"].items():
        if "skipped" in c:
            lines.append(f"| {name} | - | - | - | - | - | - | - | - | - | {c['skipped']} |")
            continue
        lines.append(
            f"| {name} | {c['vectors']} | {c['iterations']} | {c['reason']} | "
            f"{c['true_relative_residual']:.1e} | {c['solve_s']:.2f} | {c['apply_ms']:.2f} | "
            f"{c['infer_ms']:.2f} | {c['htod_ms']:.3f} | {c['dtoh_ms']:.3f} | "
            f"{c['host_copies']} |")
    lines += ["", "Verdict: " + results["verdict"], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=1000,
                    help="cells per direction (1000: about 1M unknowns)")
    ap.add_argument("--rtol", type=float, default=1e-8)
    ap.add_argument("--max-it", type=int, default=300)
    ap.add_argument("--out", default=None, help="markdown file (and .json beside it)")
    args = ap.parse_args(argv)

    import torch

    from firedrake_problems import make_problem

    PETSc.Log.begin()
    problem = make_problem("poisson", args.size, dim=2)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    results: dict[str, Any] = {"size": args.size, "dofs": problem.A.getSize()[0],
                               "rtol": args.rtol, "torch": torch.__version__, "gpu": gpu,
                               "runs": {}}
    runs = results["runs"]
    runs["cpu"] = run_case(problem, "cpu", False, args.rtol, args.max_it)
    if gpu is None:
        why = ("no CUDA in this torch build" if torch.version.cuda is None
               else "torch sees no CUDA device")
        runs["cuda-host"] = runs["cuda-dlpack"] = {"skipped": why}
    else:
        runs["cuda-host"] = run_case(problem, "cuda", False, args.rtol, args.max_it)
        runs["cuda-dlpack"] = (run_case(problem, "cuda", True, args.rtol, args.max_it)
                               if petsc_has_cuda() else
                               {"skipped": "PETSc configured without CUDA"})
    problems = []
    ref = runs["cpu"]["iterations"]
    for name, c in runs.items():
        if "skipped" in c:
            continue
        if c["reason"] <= 0:
            problems.append(f"{name} did not converge (reason {c['reason']})")
        if abs(c["iterations"] - ref) > 1:
            problems.append(f"{name}: {c['iterations']} iterations vs {ref} on the CPU")
    dl = runs["cuda-dlpack"]
    if "skipped" not in dl and dl["host_copies"]:
        problems.append(f"cuda-dlpack made {dl['host_copies']} host copies")
    ran = [n for n, c in runs.items() if "skipped" not in c]
    results["verdict"] = ("; ".join(problems) if problems else
                          f"{', '.join(ran)} converged with the same iterations "
                          f"(within one)" + ("" if len(ran) == 3 else
                                             "; the CUDA runs did not run here"))
    text = markdown(results)
    sys.stdout.write(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        with open(args.out.rsplit(".", 1)[0] + ".json", "w") as f:
            json.dump(results, f, indent=1)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
