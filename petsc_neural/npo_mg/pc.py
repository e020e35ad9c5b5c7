"""``petsc_neural.NPOMultigrid``: NPO's attention operator building a PETSc multigrid hierarchy.

Use::

    -ksp_type cg -pc_type python -pc_python_type petsc_neural.NPOMultigrid
    [-pc_neural_model FILE] [-pc_npo_mg_weights model|nearest] ...

At setup, level by level until the operator has at most
``-pc_npo_mg_coarse_size`` rows:

1. roots: a maximal independent set of the strength graph of the local
   diagonal block (distance 2 on the first ``-pc_npo_mg_aggressive``
   levels, distance 1 below; priorities hashed from the node coordinates
   when the PC has them, else from the global rows), and every row's
   candidate roots within two edges (:mod:`petsc_neural.coarse.roots`);
2. the network (:class:`~petsc_neural.npo_mg.network.AttentionTransfer`,
   NAMG's restriction, coarse self-attention and prolongation, seed 000
   §3.4) maps the level's features (:mod:`petsc_neural.npo_mg.features`)
   to weights ``W`` over each row's candidates (rows sum to one);
3. PETSc: ``T`` (AIJ) from ``W``, ``P = (I - omega D^-1 A) T`` with
   ``omega = 4 / (3 rho)`` (Gershgorin), and ``A_c = MatPtAP(A, P)``.

The preconditioner is then PETSc's PCMG V-cycle over these levels
(Chebyshev/Jacobi smoothing by default, LU on the coarsest level, redundant
LU on several ranks): linear, symmetric, valid under CG; every apply is
PETSc's own, O(nnz) per level, and the network is never called after setup.

Deviations from the paper's NAMG operator (seed 000 §3.4), each measured
against the paper's per-apply variant (:class:`petsc_neural.NPO`) and
against ``-pc_npo_mg_weights nearest`` (the same hierarchy without the
network) in ``results/npo_scaling.md``:

- the network runs once per level at setup and outputs transfer weights,
  not a correction; the apply is a linear multigrid cycle (the paper's
  network is applied to every residual and is nonlinear, so needs FGMRES);
- tokens are local roots (a maximal independent set, about n/8 on the
  first level), not a fixed number m = 128 of global tokens: the coarse
  space grows with the mesh, which is what makes the iterations independent
  of h (a fixed m cannot capture the smooth modes of a finer mesh);
- the softmax of eq. 12 ranges over each row's candidate roots within two
  edges (not over all tokens), and the token self-attention (eqs. 13-14)
  over each token's neighbours in the coarse graph, so setup is O(n);
- the prolongation of eq. 15 ``P = A E^T`` becomes the damped-Jacobi
  smoothing ``(I - omega D^-1 A) W`` (the product with ``A`` itself would
  remove the constant), and restriction is ``P^T`` (Galerkin, symmetric);
- recursion: the same network builds every level (trained on fine and
  Galerkin coarse operators), and PETSc's Chebyshev/Jacobi smoother
  replaces the learned relaxation layers in the apply;
- training: NPO's condition and residual losses (eqs. 9-10) on the
  two-grid cycle the weights define, not on the network's output.

Options (prefix ``-[pc prefix]pc_npo_mg_``), besides the common
``-pc_neural_*`` options of :class:`pcshell.ModelPC`:

``-pc_npo_mg_weights model|nearest``
    Transfer weights from the network (default) or one-hot on the nearest
    candidate (plain aggregation around the roots: the ablation, no model).
``-pc_npo_mg_network_levels L``
    Levels whose weights come from the network (default -1: all); the
    coarser ones use the nearest root.
``-pc_npo_mg_levels L`` / ``-pc_npo_mg_coarse_size N``
    At most ``L`` levels (default 12); stop coarsening at ``N`` global rows
    (default 1000; smaller coarse levels would be coarsened rank by rank).
``-pc_npo_mg_aggressive k``
    Levels with distance-2 roots (default 1).
``-pc_npo_mg_threshold t`` / ``-pc_npo_mg_max_candidates K``
    Strength threshold on the aggressive levels (default 0.1; 0 below) and
    candidates per row (default 8).
``-pc_npo_mg_drop f``
    Drop weights below ``f`` times the row's largest and renormalise
    (default 0.02: a sparser prolongator, cheaper coarse operators).
``-pc_npo_mg_smoother chebyshev|jacobi`` / ``-pc_npo_mg_smooth_its nu``
    PCMG level smoother and its sweeps (defaults chebyshev, 3).
``-pc_npo_mg_seed s``
    Seed of the root priorities.

The inner PCMG has the prefix ``-[pc prefix]npo_mg_`` (e.g.
``-npo_mg_mg_levels_ksp_max_it 3``, ``-npo_mg_pc_mg_log``) and is shown by
``-ksp_view``.  Scalar operators (block size 1) only.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from petsc4py import PETSc

from pcshell import (
    ModelFileError,
    ModelMismatchError,
    NeuralPCError,
    Option,
    SetupNetworkPC,
    log_event,
    to_scipy,
)

from ..coarse import aij_operator, mg_hierarchy
from ..coarse.prolongation import jacobi_omega, smooth_prolongator, token_prolongator
from ..coarse.roots import nearest_weights
from ..npo.pc import CITATION
from ..registry import ShippedModel, get_method
from .features import FEATURES, coarsen, csr_row_statistics, level_graph
from .network import INPUTS, level_inputs

__all__ = ["NPOMultigrid", "drop_small", "whole_row_statistics", "interface_rows"]


def interface_rows(A: PETSc.Mat) -> np.ndarray:
    """Local rows with an entry in a column another rank owns."""
    indptr, cols, _ = A.getValuesCSR()
    rstart, rend = A.getOwnershipRange()
    ghost = (cols < rstart) | (cols >= rend)
    rows = np.repeat(np.arange(rend - rstart), np.diff(indptr))
    return np.bincount(rows, weights=ghost, minlength=rend - rstart) > 0


def whole_row_statistics(A: PETSc.Mat, threshold: float) -> tuple[np.ndarray, ...]:
    """:func:`~petsc_neural.npo_mg.features.csr_row_statistics` of the rank's whole rows.

    The diagonal block alone would make rows at a rank interface look like
    boundary rows; the diagonal of off-rank columns comes with one PETSc scatter.
    """
    indptr, cols, vals = A.getValuesCSR()
    rstart, rend = A.getOwnershipRange()
    diag = A.getDiagonal()
    d_local = diag.getArray(readonly=True).copy()
    ghost = (cols < rstart) | (cols >= rend)
    need = np.unique(cols[ghost]).astype(PETSc.IntType)
    d_ghost = PETSc.Vec().createSeq(len(need), comm=PETSc.COMM_SELF)
    index = PETSc.IS().createGeneral(need, comm=PETSc.COMM_SELF)
    scatter = PETSc.Scatter().create(diag, index, d_ghost, None)
    scatter.scatter(diag, d_ghost, mode=PETSc.ScatterMode.FORWARD)
    d_col = np.empty(cols.size)
    d_col[~ghost] = d_local[cols[~ghost] - rstart]
    d_col[ghost] = d_ghost.getArray(readonly=True)[np.searchsorted(need, cols[ghost])]
    rows = np.repeat(np.arange(rend - rstart), np.diff(indptr)) + rstart
    out = csr_row_statistics(np.asarray(indptr), np.asarray(vals), cols == rows, d_local,
                             d_col, threshold)
    for obj in (scatter, index, d_ghost, diag):
        obj.destroy()
    return out


def drop_small(W: np.ndarray, fraction: float) -> np.ndarray:
    """Zero the weights below ``fraction`` times their row's largest; rows renormalised."""
    if fraction <= 0 or W.size == 0:
        return W
    big = W.max(axis=1, keepdims=True)
    W = np.where(W >= fraction * big, W, 0.0)
    s = W.sum(axis=1, keepdims=True)
    return W / np.where(s > 0, s, 1.0)


class NPOMultigrid(ShippedModel, SetupNetworkPC):
    """NPO's attention operator building a PCMG hierarchy at setup (see the module docstring).

    Options ``-pc_npo_mg_``: ``weights`` (model|nearest), ``network_levels``,
    ``levels``, ``coarse_size``, ``aggressive``, ``threshold``,
    ``max_candidates``, ``drop``, ``smoother`` (chebyshev|jacobi),
    ``smooth_its``, ``seed``.  Inner PCMG prefix ``npo_mg_``.  Linear: valid
    under CG.
    """

    method = "npo_mg"
    title = "NPO-MG: NAMG attention transfers, PETSc multigrid (seed 000)"
    method_prefix = get_method("npo_mg").prefix
    inner_prefix = "npo_mg_"
    citation = CITATION
    model_option = ("weights", "model")

    def __init__(self) -> None:
        super().__init__()
        self.levels: list[dict[str, Any]] = []
        self.mats: list[PETSc.Mat] = []
        self.converted = ""
        self.keyed_by = ""

    def method_options(self) -> list[Option]:
        return [
            Option("weights", "model", "transfer weights: the network, or the nearest root",
                   choices=("model", "nearest")),
            Option("network_levels", -1, "levels built by the network (-1: all)", low=-1),
            Option("levels", 12, "largest number of levels", low=1),
            Option("coarse_size", 1000, "stop coarsening at this many global rows", low=1),
            Option("aggressive", 1, "levels with distance-2 roots", low=0),
            Option("threshold", 0.1, "strength-of-connection threshold (aggressive levels)",
                   low=0.0),
            Option("min_coarsening", 2.0, "stop when a level shrinks by less than this factor",
                   low=1.0, open_low=True),
            Option("max_candidates", 8, "candidate tokens per row", low=1),
            Option("drop", 0.02, "drop weights below this fraction of the row's largest",
                   low=0.0, high=1.0, open_high=True),
            Option("smoother", "chebyshev", "PCMG level smoother",
                   choices=("chebyshev", "jacobi")),
            Option("smooth_its", 3, "smoother sweeps before and after the coarse correction",
                   low=1),
            Option("seed", 0, "seed of the root priorities"),
        ]

    def check_model(self, pc: PETSc.PC, P: PETSc.Mat) -> None:
        super().check_model(pc, P)
        meta, path = self.model.metadata, self.model.path
        if meta.inputs != INPUTS:
            raise ModelFileError(f"model {path!r}: an NPO-MG model takes {INPUTS}, "
                                 f"got {meta.inputs}")
        if meta.training.get("features") != FEATURES:
            raise ModelMismatchError(
                f"model {path!r} was trained on features {meta.training.get('features')!r}; "
                f"this version computes {FEATURES!r}: retrain it (petsc-neural train npo_mg)")
        if not meta.linear:
            raise ModelFileError(f"model {path!r}: NPO-MG models are declared linear=true")

    # -- setup -----------------------------------------------------------------------
    def build(self, pc: PETSc.PC) -> PETSc.PC:
        A, Pmat = pc.getOperators()
        same = A.handle == Pmat.handle
        Pmat, self.converted = aij_operator(Pmat)
        if self.converted:
            self.inner_objects.append(Pmat)
            A = Pmat if same else A
        if Pmat.getBlockSize() != 1:
            raise NeuralPCError(f"NPOMultigrid serves scalar operators (block size 1); this "
                                f"one has block size {Pmat.getBlockSize()}")
        o = self.opts
        comm = Pmat.getComm()
        X = self.node_coordinates(pc, Pmat)
        if X is not None and X.shape[0] != Pmat.getLocalSize()[0]:
            X = None
        self.keyed_by = "node coordinates" if X is not None else "global rows"
        self.levels, self.mats = [], []
        interps: list[PETSc.Mat] = []
        Al = Pmat
        net_levels = o["network_levels"] if o["network_levels"] >= 0 else o["levels"]
        for k in range(o["levels"] - 1):
            N = Al.getSize()[0]
            if N <= o["coarse_size"]:
                break
            info: dict[str, Any] = {"rows": N}
            t0 = time.perf_counter()
            with log_event("NPOMGGraph"):
                S = to_scipy(Al)
                first = k < o["aggressive"]
                threshold = o["threshold"] if first else 0.0
                G, c = coarsen(S, X, distance=2 if first else 1, threshold=threshold,
                               max_candidates=o["max_candidates"],
                               seed=o["seed"], rstart=Al.getOwnershipRange()[0],
                               demote=interface_rows(Al) if comm.getSize() > 1 else None)
            t1 = time.perf_counter()
            use_net = o["weights"] == "model" and k < net_levels
            if use_net:
                with log_event("NPOMGFeatures"):
                    stats = whole_row_statistics(Al, threshold) if comm.getSize() > 1 else None
                    g = level_graph(S, X, G, c, threshold=threshold, stats=stats)
                W = self._weights(pc, g, k)
            else:
                W = nearest_weights(c)
            W = drop_small(W, o["drop"])
            t2 = time.perf_counter()
            with log_event("NPOMGProlongator"):
                T = token_prolongator(c.index, W, c.n_tokens, comm)
                P = smooth_prolongator(Al, T, jacobi_omega(Al))
                T.destroy()
            with log_event("NPOMGPtAP"):
                Ac = Al.ptap(P)
            t3 = time.perf_counter()
            self.mats += [P, Ac]
            interps.append(P)
            nc = Ac.getSize()[0]
            info.update(tokens=nc, weights="network" if use_net else "nearest",
                        candidates=float(comm.tompi4py().allreduce(
                            float((W > 0).sum())) / max(N, 1)),
                        graph_s=t1 - t0, weights_s=t2 - t1, galerkin_s=t3 - t2)
            self.levels.append(info)
            Al = Ac
            X = X[c.roots] if X is not None else None
            if nc > o["min_coarsening"] ** -1 * N or nc == 0:  # coarsening has stalled
                break
        t4 = time.perf_counter()
        mg = mg_hierarchy(A, Pmat, interps, self.inner_options_prefix(pc),
                          operators=self.mats[1::2], smoother=o["smoother"],
                          smooth_its=o["smooth_its"], omega=0.66)
        self.levels.append({"rows": Al.getSize()[0], "mg_setup_s": time.perf_counter() - t4})
        return mg

    def _weights(self, pc: PETSc.PC, g: Any, level: int) -> np.ndarray:
        n, K = g.candidates.index.shape

        def check(W: Any) -> None:
            if not isinstance(W, torch.Tensor) or tuple(W.shape) != (n, K):
                shape = tuple(W.shape) if isinstance(W, torch.Tensor) else type(W).__name__
                raise ModelMismatchError(f"model {self.model.path!r} returned shape {shape} "
                                         f"for {n} rows with {K} candidates; expected {(n, K)}")

        inputs = level_inputs(g, self.dtype, self.device)
        # One call per level, each with new shapes: TorchScript's profiling executor
        # would re-specialise the graph at every call (measured 2x slower at setup).
        with torch.jit.optimized_execution(False):
            W = self.run_network(pc, *inputs, where=f"level {level}, {n} local rows",
                                 local_skip=n == 0, check=check)
        if n == 0:
            return np.zeros((0, K))
        return W.to(torch.float64).cpu().numpy()

    def reset(self, pc: PETSc.PC) -> None:
        super().reset(pc)
        for M in self.mats:
            M.destroy()
        self.mats = []

    # -- view ------------------------------------------------------------------------
    def view_details(self, pc: PETSc.PC) -> list[str]:
        if not self.levels:
            return ["(not set up)"]
        lines = super().view_details(pc)
        o = self.opts
        lines.append(f"weights {o['weights']}; roots keyed by {self.keyed_by} (seed {o['seed']});"
                     f" smoother {o['smoother']}({o['smooth_its']}); drop {o['drop']}")
        for k, lev in enumerate(self.levels[:-1]):
            lines.append(
                f"level {k}: {lev['rows']} rows -> {lev['tokens']} tokens ({lev['weights']}, "
                f"{lev['candidates']:.2f} weights per row); setup s: graph "
                f"{lev['graph_s']:.4f}, weights {lev['weights_s']:.4f}, P and PtAP "
                f"{lev['galerkin_s']:.4f}")
        last = self.levels[-1]
        lines.append(f"coarsest: {last['rows']} rows; PCMG setup {last['mg_setup_s']:.4f} s")
        if self.converted:
            lines.append(f"operator converted at setup: {self.converted}")
        return lines
