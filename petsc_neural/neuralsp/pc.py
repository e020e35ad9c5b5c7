"""``petsc_neural.NeuraLSP``: a learned two-level coarse space served as PETSc's own PCMG.

Seed 001 (Benanti, Han, Qin, *NeuraLSP*).  At setup, and only then:

1. ``K`` random vectors (keyed by the node coordinates when the PC has
   them, else by the global row) are smoothed with damped Jacobi,
   ``S = (I - omega D^-1 A)^s1 S0`` (§3.3), with PETSc (``MatMatMult`` of the
   operator with a dense ``n x K`` matrix), and each column scaled to unit norm;
2. a network maps ``S`` to an orthonormal basis ``Q`` (QR inside the network)
   whose first ``r`` columns are the prolongation ``P`` (rank-agnostic
   truncation: models are trained with the nested NLSS loss);
3. ``P`` becomes a PETSc ``Mat`` and the preconditioner is a two-level
   ``PCMG``: Galerkin coarse operator ``P^T A P`` (``-pc_mg_galerkin both``),
   damped Jacobi smoothing (``omega = 0.66``, ``nu1 = nu2 = 5``, Algorithm 1)
   or Chebyshev/Jacobi, and a direct coarse solve (MUMPS; a few GAMG V-cycles
   for a large coarse space without MUMPS or on request: a deviation, see
   ``-pc_neuralsp_coarse``).  Every apply is PETSc's V-cycle, so the
   preconditioner is linear, symmetric, and valid for CG.

Two kinds of model (``pcshell`` model files with method ``"neuralsp"``):

``variant = "global"`` (the paper)
    :class:`~petsc_neural.networks.neuralsp.NeuraLSPMLP`: flattens all of
    ``S`` into an MLP, so the model is tied to one mesh size (metadata ``n``)
    and to one process; ``P`` is dense ``n x r``.
``variant = "local"`` (ours: distributable and mesh-size independent)
    :class:`~petsc_neural.networks.neuralsp.LocalSubspaceNet`: the nodes each
    rank owns are grouped into aggregates (greedy graph aggregation of the
    local diagonal block, as smoothed aggregation does; nodes visited in
    coordinate order when the PC has coordinates, so the aggregates do not
    depend on the dof numbering), each aggregate keeps
    its constant vector (smoothed aggregation's tentative prolongator; without
    it the two-level iteration counts grow with N, because 10 Jacobi sweeps do
    not make ``S`` smooth at the aggregate scale), one shared-weight network
    maps each aggregate's rows of ``S`` (mean removed) to an orthonormal local
    basis whose first ``r - 1`` columns complement the constant, and the
    block-diagonal tentative prolongator is smoothed once,
    ``P = (I - omega D^-1 A) T``.  This is Chow (2006)'s local-SVD coarse
    space with the SVD replaced by a learned map trained with the NLSS loss
    per aggregate.  How it differs from the paper: the paper learns one
    global, dense ``n x r`` basis of the leading left singular subspace of all
    of ``S`` with a fixed coarse size ``n_c = r``; this variant learns local
    bases, its coarse space grows with the mesh (``r`` per aggregate, a
    block-sparse ``P``), the network never sees global indices (any mesh size,
    any number of ranks, no communication but PETSc's own in ``MatMatMult``
    and ``PtAP``), and it needs one extra Jacobi smoothing of ``P``.

Baselines served by the same class (no model needed): ``-pc_neuralsp_basis
svd`` (the exact leading left singular vectors of ``S``, computed by the
method of snapshots: eigen-decomposition of the ``K x K`` Gram matrix
``S^T S`` summed over ranks) and ``-pc_neuralsp_basis local_svd`` (Chow's
local SVD per aggregate, smoothed like the local variant).

Options (prefix ``-[pc prefix]pc_neuralsp_``), besides the common
``-pc_neural_*`` options of :class:`pcshell.ModelPC` (``model``,
``device``, ``dtype``, ``on_failure``, ``fallback_pc_type``, ...):

``-pc_neuralsp_basis model|svd|local_svd``
    Where ``P`` comes from (default ``model``; the others need no model).
``-pc_neuralsp_rank R``
    Columns kept: the coarse size ``n_c`` for a global basis, the columns per
    aggregate for a local one, the constant included (default: the model's
    trained rank; 48 for ``svd``, 2 for ``local_svd``).  At most the model's
    rank.
``-pc_neuralsp_vectors K`` / ``-pc_neuralsp_sweeps s1``
    Number of smoothed vectors and Jacobi sweeps (default: the model's
    training values; otherwise 72 / 10 for ``svd``, 12 / 10 for ``local_svd``).
``-pc_neuralsp_omega w``
    Jacobi damping for the vectors, the smoother and the prolongator smoothing
    (default 0.66; must lie in (0, 2)).
``-pc_neuralsp_smoother jacobi|chebyshev`` / ``-pc_neuralsp_smooth_its nu``
    The PCMG level smoother (default damped Jacobi) and its sweeps (default 5).
``-pc_neuralsp_smooth_p true|false``
    Smooth the prolongator once with damped Jacobi (default: true for local
    bases, false for global ones).
``-pc_neuralsp_constant true|false``
    Keep each aggregate's constant in a local basis (default: true for
    ``local_svd``; a model's own training setting).
``-pc_neuralsp_threshold t``
    Strength-of-connection threshold of the aggregation (default 0).
``-pc_neuralsp_max_aggregate m``
    Largest aggregate, in rows (default 64; bounds the memory of a local basis
    on 3D meshes).
``-pc_neuralsp_coarse auto|lu|mumps|gamg``, ``-pc_neuralsp_coarse_direct_max m``,
``-pc_neuralsp_coarse_cycles c``
    The coarse solve.  Default ``auto``: MUMPS's LU when PETSc has MUMPS (any
    size); without it PETSc's LU (redundant on several ranks) up to ``m`` =
    20000 coarse rows and ``c`` = 4 GAMG V-cycles above (a fixed number of
    Richardson steps: linear and valid under CG).  The paper solves its coarse
    problem (n_c = r <= 64) exactly; a local coarse space on a 3D mesh has tens
    of thousands of rows and a dense-ish Galerkin operator whose PETSc LU
    dominated the setup (65^3 Poisson, 60,010 coarse rows: PETSc LU 490 s,
    MUMPS 27 s and 7 iterations, ``gamg`` 5.6 s and 10 iterations; on 2D
    meshes ``gamg`` costs far more iterations: 29 against 6 at 257^2).
``-pc_neuralsp_seed s``
    Seed of the random start vectors ``S0`` (default 0).  When the PC has
    node coordinates (``PCSetCoordinates``, which ``firedrake_problems`` and
    GAMG users already call), ``S0`` is keyed by the coordinates, so a mesh
    gets the same ``S0`` whatever its numbering and number of ranks;
    otherwise by the global row.

The inner PCMG has the options prefix ``-[pc prefix]neuralsp_`` (e.g.
``-neuralsp_mg_levels_ksp_max_it 3``, ``-neuralsp_mg_coarse_pc_type cholesky``)
and is shown by ``-ksp_view``.  The operator must be an assembled square
matrix; BAIJ/SBAIJ operators are converted to AIJ once at setup.  A network
output with NaN/Inf raises on every rank, or with ``-pc_neural_on_failure
fallback`` switches every rank to ``-pc_neural_fallback_pc_type``.
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
    tristate,
)
from pcshell.options import TRISTATE

from ..coarse import (
    COARSE_SOLVES,
    aggregate,
    aij_operator,
    block_prolongator,
    coordinate_order,
    dense_prolongator,
    local_svd_bases,
    pad_aggregates,
    prepend_constant,
    project_out_constant,
    smooth_prolongator,
    smoothed_vectors,
    svd_basis,
    two_level_mg,
)
from ..coarse.aggregation import MAX_AGGREGATE
from ..registry import ShippedModel, get_method

__all__ = ["NeuraLSP", "GLOBAL_INPUTS", "LOCAL_INPUTS", "CITATION"]

GLOBAL_INPUTS = ["smoothed_vectors"]
LOCAL_INPUTS = ["aggregate_vectors", "aggregate_mask"]

CITATION = """@article{neuralsp2025,
  title   = {{NeuraLSP}: neural left singular subspace preconditioners},
  author  = {Benanti and Han and Qin},
  journal = {arXiv preprint},
  year    = {2025}
}
"""


class NeuraLSP(ShippedModel, SetupNetworkPC):
    """NeuraLSP two-level preconditioner: learned coarse space, PETSc PCMG apply.

    Use::

        -ksp_type cg -pc_type python -pc_python_type petsc_neural.NeuraLSP
        [-pc_neural_model model.pt] [-pc_neuralsp_rank R]

    Without ``-pc_neural_model`` the shipped local model is used
    (``petsc_neural/models/neuralsp_local.pt``, see its README).

    Options ``-pc_neuralsp_``: ``basis`` (model|svd|local_svd), ``rank``,
    ``vectors``, ``sweeps``, ``omega``, ``smoother`` (jacobi|chebyshev),
    ``smooth_its``, ``smooth_p``, ``constant``, ``threshold``,
    ``max_aggregate``, ``seed``; see :mod:`petsc_neural.neuralsp.pc`.  The
    inner PCMG has the prefix ``neuralsp_``.  Linear: valid under CG.
    """

    method = "neuralsp"
    title = "NeuraLSP learned coarse space (seed 001)"
    method_prefix = get_method("neuralsp").prefix
    inner_prefix = "neuralsp_"
    citation = CITATION
    model_option = ("basis", "model")  # svd and local_svd need no model

    def __init__(self) -> None:
        super().__init__()
        self.P: PETSc.Mat | None = None
        self.timings: dict[str, float] = {}
        self.coarse_size = 0
        self.variant = ""
        self.settings: dict[str, Any] = {}
        self.start_keyed_by = "global rows"
        self.converted = ""

    # -- options ---------------------------------------------------------------------
    def method_options(self) -> list[Option]:
        return [
            Option("basis", "model", "where P comes from", choices=("model", "svd", "local_svd")),
            Option("rank", 0, "coarse columns (global) or columns per aggregate (local); "
                   "0: default", low=0),
            Option("vectors", 0, "number K of smoothed vectors; 0: the model's", low=0),
            Option("sweeps", -1, "Jacobi sweeps s1 on the vectors; -1: the model's", low=-1),
            Option("omega", 0.66, "Jacobi damping (vectors, smoother, prolongator smoothing)",
                   low=0.0, high=2.0, open_low=True, open_high=True),
            Option("smoother", "jacobi", "PCMG level smoother", choices=("jacobi", "chebyshev")),
            Option("smooth_its", 5, "smoother sweeps before and after the coarse correction",
                   low=1),
            Option("smooth_p", "auto", "smooth the prolongator (auto: local bases only)",
                   choices=TRISTATE),
            Option("constant", "auto", "keep the constant on each aggregate (local; auto: "
                   "the model's)", choices=TRISTATE),
            Option("threshold", 0.0, "strength-of-connection threshold of the aggregation",
                   low=0.0),
            Option("max_aggregate", MAX_AGGREGATE, "largest aggregate (rows)", low=2),
            Option("seed", 0, "seed of the random start vectors"),
            Option("coarse", "auto", "coarse solve: auto (MUMPS where PETSc has it; else "
                   "LU up to coarse_direct_max rows, GAMG cycles above), lu, mumps, gamg",
                   choices=COARSE_SOLVES),
            Option("coarse_direct_max", 20000, "largest coarse size auto solves by PETSc's LU "
                   "when there is no MUMPS",
                   low=1),
            Option("coarse_cycles", 4, "GAMG V-cycles of a gamg coarse solve", low=1),
        ]

    def check_model(self, pc: PETSc.PC, P: PETSc.Mat) -> None:
        super().check_model(pc, P)
        meta, path = self.model.metadata, self.model.path
        variant = meta.training.get("variant")
        expected = {"global": GLOBAL_INPUTS, "local": LOCAL_INPUTS}.get(variant)
        if expected is None:
            raise ModelFileError(
                f"model {path!r}: training.variant must be 'global' or 'local', got {variant!r}"
            )
        if meta.inputs != expected:
            raise ModelFileError(
                f"model {path!r}: a {variant} NeuraLSP model takes {expected}, got {meta.inputs}"
            )
        if not meta.linear:
            raise ModelFileError(f"model {path!r}: NeuraLSP models are declared linear=true")

    def _settings(self) -> dict[str, Any]:
        """Rank, K, s1 and variant from the options and, where not given, the model."""
        o = self.opts
        train = self.model.metadata.training if self.needs_model else {}
        basis = o["basis"]
        variant = train.get("variant") if basis == "model" else (
            "global" if basis == "svd" else "local")
        model_rank = int(train.get("rank", 0)) if basis == "model" else None
        rank = o["rank"] or model_rank or (48 if variant == "global" else 2)
        # A model trained with the constant kept learns the columns after it.
        extra = 1 if basis == "model" and train.get("constant", False) else 0
        if model_rank is not None and rank > model_rank + extra:
            raise NeuralPCError(
                f"-pc_neuralsp_rank {rank} exceeds the rank the model was trained to "
                f"({model_rank + extra})"
            )
        K = o["vectors"] or int(train.get("n_vectors", 72 if variant == "global" else 12))
        sweeps = o["sweeps"] if o["sweeps"] >= 0 else int(train.get("sweeps", 10))
        if basis == "model" and variant == "global" and K != int(train["n_vectors"]):
            raise ModelMismatchError(
                f"model {self.model.path!r} takes K = {train['n_vectors']} vectors, "
                f"-pc_neuralsp_vectors {K} was given"
            )
        if variant == "global" and rank > K:
            raise NeuralPCError(f"-pc_neuralsp_rank {rank} exceeds the number of vectors "
                                f"K = {K}")
        c_opt = tristate(o["constant"])
        constant = (bool(train.get("constant", False)) if basis == "model"
                    else variant == "local") if c_opt is None else c_opt
        if variant == "global" and constant:
            raise NeuralPCError("-pc_neuralsp_constant applies to local bases only")
        if basis == "model" and constant != bool(train.get("constant", False)):
            raise ModelMismatchError(
                f"model {self.model.path!r} was trained with constant={train.get('constant')}, "
                f"-pc_neuralsp_constant {o['constant']} was given"
            )
        sp_opt = tristate(o["smooth_p"])
        smooth_p = variant == "local" if sp_opt is None else sp_opt
        return dict(variant=variant, rank=int(rank), K=int(K), sweeps=int(sweeps),
                    smooth_p=smooth_p, constant=constant)

    # -- setup -----------------------------------------------------------------------
    def build(self, pc: PETSc.PC) -> PETSc.PC:
        A, Pmat = pc.getOperators()
        same = A.handle == Pmat.handle
        Pmat, self.converted = aij_operator(Pmat)  # BAIJ/SBAIJ/dense: MatPtAP needs AIJ
        if self.converted:
            self.inner_objects.append(Pmat)
            A = Pmat if same else A
        comm = Pmat.getComm()
        s = self.settings = self._settings()
        self.variant = s["variant"]
        t: dict[str, float] = {}
        t0 = time.perf_counter()
        coords = self.node_coordinates(pc, Pmat)
        self.start_keyed_by = "global rows" if coords is None else "node coordinates"
        with log_event("NeuraLSPVectors"):
            S = smoothed_vectors(Pmat, s["K"], s["sweeps"], self.opts["omega"],
                                 self.opts["seed"], coordinates=coords)
        t1 = time.perf_counter()
        t["vectors"] = t1 - t0
        if self.variant == "global":
            U = self._global_basis(pc, S, s["rank"], comm)
            t2 = time.perf_counter()
            T = dense_prolongator(U, comm)
        else:
            A_local = to_scipy(Pmat)
            order = None if coords is None else coordinate_order(coords, A_local.shape[0])
            agg, n_agg = aggregate(A_local, self.opts["threshold"], order,
                                   max_size=self.opts["max_aggregate"])
            S_pad, mask, rows = pad_aggregates(S, agg, n_agg)
            if s["constant"]:
                S_pad = project_out_constant(S_pad, mask)
            Q = self._local_bases(pc, S_pad, mask)
            if s["constant"]:
                Q = prepend_constant(Q, mask)
            t2 = time.perf_counter()
            T = block_prolongator(Q, mask, rows, s["rank"], S.shape[0], comm)
        t["inference"] = t2 - t1
        with log_event("NeuraLSPProlongator"):
            if s["smooth_p"]:
                P = smooth_prolongator(Pmat, T, self.opts["omega"])
                T.destroy()
            else:
                P = T
        t3 = time.perf_counter()
        t["prolongator"] = t3 - t2
        if self.P is not None:
            self.P.destroy()
        self.P = P
        self.coarse_size = P.getSize()[1]
        mg = two_level_mg(
            A, Pmat, P, self.inner_options_prefix(pc),
            smoother=self.opts["smoother"], smooth_its=self.opts["smooth_its"],
            omega=self.opts["omega"], coarse=self.opts["coarse"],
            coarse_direct_max=self.opts["coarse_direct_max"],
            coarse_cycles=self.opts["coarse_cycles"],
        )
        t["mg_setup"] = time.perf_counter() - t3
        self.timings = t
        return mg

    def _global_basis(self, pc: PETSc.PC, S: np.ndarray, rank: int,
                      comm: PETSc.Comm) -> np.ndarray:
        if self.opts["basis"] == "svd":
            return svd_basis(S, rank, comm)
        if comm.getSize() > 1:
            raise NeuralPCError(
                "a global (paper) NeuraLSP model flattens all of S and runs on one process; "
                "on several ranks use a local model (variant 'local') or -pc_neuralsp_basis svd"
            )
        x = torch.from_numpy(S).to(device=self.device, dtype=self.dtype)
        want = (S.shape[0], int(self.model.metadata.training["rank"]))

        def check(Q: Any) -> None:
            if not isinstance(Q, torch.Tensor) or tuple(Q.shape) != want:
                shape = tuple(Q.shape) if isinstance(Q, torch.Tensor) else type(Q).__name__
                raise ModelMismatchError(
                    f"model {self.model.path!r} returned shape {shape} for S of shape "
                    f"{S.shape}; expected {want}")

        Q = self.run_network(pc, x, where=f"S of shape {S.shape}", check=check)
        return Q[:, :rank].to(torch.float64).cpu().numpy()

    def _local_bases(self, pc: PETSc.PC, S_pad: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self.opts["basis"] == "local_svd":
            return local_svd_bases(S_pad, mask)
        # Collective: a rank without aggregates takes part in the agreement only.
        skip = S_pad.shape[0] == 0
        x = torch.from_numpy(S_pad).to(device=self.device, dtype=self.dtype)
        m = torch.from_numpy(mask).to(device=self.device, dtype=self.dtype)

        def check(Q: Any) -> None:
            if (not isinstance(Q, torch.Tensor) or Q.dim() != 3
                    or tuple(Q.shape[:2]) != tuple(S_pad.shape[:2])):
                shape = tuple(Q.shape) if isinstance(Q, torch.Tensor) else type(Q).__name__
                raise ModelMismatchError(
                    f"model {self.model.path!r} returned shape {shape} for aggregates of "
                    f"shape {S_pad.shape}")

        Q = self.run_network(pc, x, m, where=f"{S_pad.shape[0]} aggregates",
                             local_skip=skip, check=check)
        if skip:
            return np.zeros(S_pad.shape[:2] + (0,), dtype=np.float64)
        return Q.to(torch.float64).cpu().numpy()

    def reset(self, pc: PETSc.PC) -> None:
        super().reset(pc)
        if self.P is not None:
            self.P.destroy()
            self.P = None

    # -- view ------------------------------------------------------------------------
    def view_details(self, pc: PETSc.PC) -> list[str]:
        if not self.settings:
            return ["(not set up)"]
        lines = super().view_details(pc)
        s = self.settings
        lines.append(
            f"NeuraLSP basis {self.opts['basis']} ({s['variant']}): rank {s['rank']}, "
            f"K = {s['K']} vectors, s1 = {s['sweeps']} Jacobi sweeps (omega "
            f"{self.opts['omega']}), smoothed P: {s['smooth_p']}, coarse size {self.coarse_size}"
        )
        lines.append(f"coarse solve: {self.opts['coarse']} (gamg: "
                     f"{self.opts['coarse_cycles']} cycles; the inner PCMG below "
                     "shows the solver chosen)")
        lines.append(f"random start vectors keyed by {self.start_keyed_by} (seed "
                     f"{self.opts['seed']})")
        if self.converted:
            lines.append(f"operator converted at setup: {self.converted}")
        lines.append("setup seconds: " + ", ".join(f"{k} {v:.4f}" for k, v in self.timings.items()))
        return lines
