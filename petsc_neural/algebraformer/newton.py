"""Newton's method for l_p regression with PETSc SNES (seed 004, §6 and appendix G).

The problem: ``min_x f(x) = ||A x - b||_p^p`` with ``p = 6``, ``A`` of
``10^4 x 60`` with uniform ``U[0, 1)`` entries and rows scaled to unit norm,
``b`` uniform and scaled to unit norm (:func:`lp_problem`).  With
``r = A x - b``::

    grad f = p A^T (|r|^(p-1) sign(r)),    H = p (p-1) A^T diag(|r|^(p-2)) A.

:func:`solve_snes` solves ``grad f = 0`` with PETSc's ``newtonls`` (the
objective set with ``SNESSetObjective``, so the backtracking line search
decreases ``f`` itself) and any KSP/PC for the 60 x 60 Newton system:

- classical Newton: ``-ksp_type preonly -pc_type lu``;
- Algebraformer steps: ``-ksp_type preonly -pc_type python -pc_python_type
  petsc_neural.Algebraformer`` (the network gives the step), or FGMRES with
  the network as its preconditioner.

Training data (:func:`newton_steps`): exact Newton trajectories (Algorithm 1,
full steps, LU solves, numpy) from ``x_0 = 0`` until the relative decrease
of ``f`` falls below ``1e-12`` (or 40 steps); every step gives one system
``H_k p_k = g_k``.  ``CHOICE``: the paper feeds the network ``A^T b`` and
``x_k`` and predicts ``p_k``; here the network solves the Newton system
itself (it is served as the linear solver of SNES), tokens ``[column i of
H_k, g_k,i]`` as for every Algebraformer system.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "LpProblem",
    "lp_problem",
    "newton_steps",
    "cached_newton_steps",
    "solve_snes",
    "SnesRun",
    "ROWS",
    "COLS",
    "P",
]

ROWS, COLS, P = 10_000, 60, 6


@dataclass
class LpProblem:
    """``min ||A x - b||_p^p`` and its derivatives (numpy, float64)."""

    A: np.ndarray
    b: np.ndarray
    p: int = P

    def residual(self, x: np.ndarray) -> np.ndarray:
        return self.A @ x - self.b

    def objective(self, x: np.ndarray) -> float:
        return float(np.sum(np.abs(self.residual(x)) ** self.p))

    def gradient(self, x: np.ndarray) -> np.ndarray:
        r = self.residual(x)
        return self.p * (self.A.T @ (np.abs(r) ** (self.p - 1) * np.sign(r)))

    def hessian(self, x: np.ndarray) -> np.ndarray:
        w = self.p * (self.p - 1) * np.abs(self.residual(x)) ** (self.p - 2)
        return self.A.T @ (w[:, None] * self.A)


def lp_problem(seed: int, index: int, rows: int = ROWS, cols: int = COLS, p: int = P
               ) -> LpProblem:
    """Problem ``index`` of the set with ``seed`` (``default_rng([seed, index])``)."""
    rng = np.random.default_rng([int(seed), int(index)])
    A = rng.random((rows, cols))
    A /= np.linalg.norm(A, axis=1, keepdims=True)
    b = rng.random(rows)
    b /= np.linalg.norm(b)
    return LpProblem(A, b, p)


def newton_steps(prob: LpProblem, max_it: int = 40, rtol: float = 1e-12
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[float]]:
    """Exact Newton from ``x = 0``: ``(H_k, g_k, p_k)`` stacked, and the objectives."""
    x = np.zeros(prob.A.shape[1])
    Hs, gs, ps, fs = [], [], [], [prob.objective(x)]
    for _ in range(max_it):
        g, H = prob.gradient(x), prob.hessian(x)
        step = np.linalg.solve(H, g)
        Hs.append(H)
        gs.append(g)
        ps.append(step)
        x = x - step
        fs.append(prob.objective(x))
        if abs(fs[-2] - fs[-1]) <= rtol * abs(fs[-2]):
            break
    return np.array(Hs), np.array(gs), np.array(ps), fs


def cached_newton_steps(trajectories: int, seed: int, workdir: str | os.PathLike,
                        progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Newton systems of ``trajectories`` problems of ``seed``, cached as ``.npz``."""
    path = os.path.join(os.fspath(workdir), f"newton_p{P}_s{seed}_t{trajectories}.npz")
    if os.path.exists(path):
        with np.load(path) as z:
            return z["H"], z["g"], z["p"]
    it: Any = range(trajectories)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="newton trajectories", unit="traj", leave=False)
    Hs, gs, ps = [], [], []
    for i in it:
        H, g, p, _ = newton_steps(lp_problem(seed, i))
        Hs.append(H)
        gs.append(g)
        ps.append(p)
    H, g, p = np.concatenate(Hs), np.concatenate(gs), np.concatenate(ps)
    tmp = f"{path}.part{os.getpid()}.npz"
    np.savez(tmp, H=H, g=g, p=p)
    os.replace(tmp, path)
    return H, g, p


@dataclass
class SnesRun:
    """One SNES solve: per-iteration objective and wall time (from the start of the solve)."""

    objective: list[float] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    iterations: int = 0
    reason: int = 0
    seconds: float = 0.0
    x: np.ndarray | None = None
    linear_iterations: int = 0

    def time_to(self, target: float) -> tuple[int, float] | None:
        """First (iteration, seconds) with ``objective <= target``, or ``None``."""
        for k, (f, t) in enumerate(zip(self.objective, self.times, strict=True)):
            if f <= target:
                return k, t
        return None


def solve_snes(prob: LpProblem, options: Mapping[str, Any], *, max_it: int = 50,
               rtol: float = 1e-10, prefix: str = "lp_", mat_type: str = "aij") -> SnesRun:
    """Minimise ``prob`` with SNES ``newtonls`` from ``x = 0``; ``options`` go under ``prefix``.

    Times exclude the monitor's own objective evaluations.  The Jacobian
    (Hessian) is a 60 x 60 ``mat_type`` matrix (AIJ with a full
    pattern by default: the neural PC reads it without a conversion, and
    PETSc's LU on it is as fast as LAPACK's on a dense one); the objective is
    set (``SNESSetObjective``) so the line search works on ``f``.  A monitor
    records ``f`` and the wall time at every iteration (iteration 0 at time 0).
    """
    from petsc4py import PETSc

    from pcshell import pushed_options

    comm = PETSc.COMM_SELF
    n = prob.A.shape[1]
    run = SnesRun()
    J = PETSc.Mat().create(comm=comm)
    J.setSizes(((n, n), (n, n)))
    J.setType(mat_type)
    if mat_type == "aij":
        J.setPreallocationNNZ((n, 0))
    J.setUp()
    idx = np.arange(n, dtype=PETSc.IntType)

    def residual(snes, X, F):
        F.setArray(prob.gradient(X.getArray(readonly=True)))

    def jacobian(snes, X, Jm, Pm):
        H = prob.hessian(X.getArray(readonly=True))
        Pm.setValues(idx, idx, H.ravel(), addv=PETSc.InsertMode.INSERT_VALUES)
        Pm.assemble()
        if Jm.handle != Pm.handle:
            Jm.assemble()

    def objective(snes, X):
        return prob.objective(X.getArray(readonly=True))

    t0 = [0.0, 0.0]  # start of the solve, time spent in the monitor (not counted)

    def monitor(snes, its, fnorm):
        t = time.perf_counter()
        run.times.append(t - t0[0] - t0[1])
        run.objective.append(prob.objective(snes.getSolution().getArray(readonly=True)))
        t0[1] += time.perf_counter() - t

    snes = PETSc.SNES().create(comm=comm)
    snes.setOptionsPrefix(prefix)
    F = J.createVecLeft()
    snes.setFunction(residual, F)
    snes.setJacobian(jacobian, J, J)
    snes.setObjective(objective)
    snes.setMonitor(monitor)
    defaults = {"snes_type": "newtonls", "snes_linesearch_type": "bt",
                "snes_rtol": rtol, "snes_atol": 0.0, "snes_stol": 0.0, "snes_max_it": max_it,
                "snes_max_linear_solve_fail": max_it, "ksp_type": "preonly", "pc_type": "lu",
                **dict(options)}
    x = J.createVecRight()
    x.set(0.0)
    # The options stay in the database through the solve: a python PC reads its
    # own at setup, which SNES calls inside the solve.
    with pushed_options(prefix, defaults):
        snes.setFromOptions()
        t0[0] = time.perf_counter()
        snes.solve(None, x)
        run.seconds = time.perf_counter() - t0[0] - t0[1]
    run.iterations = snes.getIterationNumber()
    run.reason = int(snes.getConvergedReason())
    run.linear_iterations = snes.getLinearSolveIterations()
    run.x = x.getArray().copy()
    for obj in (snes, x, F, J):
        obj.destroy()
    return run
