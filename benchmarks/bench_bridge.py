"""Cost of the pcshell bridge per apply, against the bare network call.

For each size (2D 5-point Laplacian, 1e4 / 1e5 / 1e6 dofs) and model, prints:
the bare ``module(r, ...)`` time on preallocated tensors, the full
``PCApply`` through the bridge (DLPack export of x and y, scaling for
nonlinear models, finite check, the write into y), the overhead as a
percentage of the bare call, and PETSc's own ``-pc_type jacobi`` apply for
scale.  Bare call and PCApply are timed alternately (so load from other
processes hits both alike); minimum and median over the repeats.

    .venv/bin/python benchmarks/bench_bridge.py [--sizes 100 317 1000] [--repeat 30]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import numpy as np
import scipy.sparse as sp
import torch
from petsc4py import PETSc

from pcshell import vec_to_tensor
from petsc_neural import TorchScriptPC


class Jacobi(torch.nn.Module):
    """Cheapest possible network: one pass over r (linear)."""

    def forward(self, r: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return r / d


class SmallGNN(torch.nn.Module):
    """A nonlinear per-node MLP with one message-passing step, width 16."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp = torch.nn.Linear(3, 16, dtype=torch.float64)
        self.out = torch.nn.Linear(16, 1, dtype=torch.float64)

    def forward(self, r: torch.Tensor, A: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        feats = torch.stack([r / d, torch.mv(A, r) / d, r], dim=1)
        return self.out(torch.relu(self.inp(feats))).squeeze(1) + r / d


def laplacian(m: int) -> PETSc.Mat:
    T = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(m, m))
    A = (sp.kron(sp.eye(m), T) + sp.kron(T, sp.eye(m))).tocsr()
    A.sort_indices()
    return PETSc.Mat().createAIJ(A.shape, csr=(A.indptr.astype(PETSc.IntType),
                                               A.indices.astype(PETSc.IntType), A.data),
                                 comm=PETSc.COMM_SELF)


def paired_times(fa, fb, repeat: int) -> tuple[list[float], list[float]]:
    """Time ``fa`` and ``fb`` alternately, so load from other processes hits both alike."""
    fa(), fb()  # warm up
    ta, tb = [], []
    for _ in range(repeat):
        for f, ts in ((fa, ta), (fb, tb)):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
    return ta, tb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 317, 1000])
    ap.add_argument("--repeat", type=int, default=50)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    models = {
        "jacobi (linear)": (Jacobi(), ["residual", "diagonal"], True),
        "gnn16 (nonlinear)": (SmallGNN(), ["residual", "operator", "diagonal"], False),
    }
    print(f"# pcshell bridge overhead; {platform.node()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"PETSc {'.'.join(map(str, PETSc.Sys.getVersion()))}")
    print("| dofs | model | min: bare / PCApply (ms) / overhead | median: bare / PCApply (ms) "
          "/ overhead | PETSc jacobi PCApply, min (ms) | zero-copy x |")
    print("|---:|---|---:|---:|---:|---|")
    for m in args.sizes:
        A = laplacian(m)
        n = A.getSize()[0]
        x = A.createVecLeft()
        x.setArray(np.random.default_rng(0).standard_normal(n))
        y = x.duplicate()
        jac = PETSc.PC().create(comm=PETSc.COMM_SELF)
        jac.setType("jacobi")
        jac.setOperators(A)
        jac.setUp()
        jac_times, _ = paired_times(lambda jac=jac, x=x, y=y: jac.apply(x, y), lambda: None,
                                    args.repeat)
        t_jac = min(jac_times)
        for name, (module, inputs, linear) in models.items():
            path = os.path.join(tmp, f"{name.split()[0]}.pt")
            TorchScriptPC.export(module, path, inputs=inputs, linear=linear)
            pc = PETSc.PC().create(comm=PETSc.COMM_SELF)
            pc.setOptionsPrefix("bench_")
            PETSc.Options().setValue("bench_pc_neural_model", path)
            pc.setType("python")
            pc.setPythonContext(TorchScriptPC())
            pc.setOperators(A)
            pc.setFromOptions()
            pc.setUp()
            ctx = pc.getPythonContext()
            r = vec_to_tensor(x, "r")
            zero_copy = r.data_ptr() == x.getArray(readonly=True).__array_interface__["data"][0]
            inp = r.clone() / float(torch.linalg.vector_norm(r))

            def bare(ctx=ctx, inp=inp):
                with torch.inference_mode():
                    ctx.model.module(inp, *ctx._static)

            tb, ta = paired_times(bare, lambda pc=pc, x=x, y=y: pc.apply(x, y), args.repeat)
            cells = []
            for stat in (min, statistics.median):
                b, a = stat(tb), stat(ta)
                cells.append(f"{1e3 * b:.3f} / {1e3 * a:.3f} / {100.0 * (a - b) / b:+.1f}%")
            print(f"| {n:,} | {name} | {cells[0]} | {cells[1]} | {1e3 * t_jac:.3f} | "
                  f"{'yes' if zero_copy else 'NO'} |")
            pc.destroy()
        jac.destroy()


if __name__ == "__main__":
    main()
