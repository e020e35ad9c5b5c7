"""``petsc_neural.GreenInverse``: a learned Green's function as an approximate inverse.

Seed 003 (Xu, Li, Xi, *Neural approximate inverse preconditioners*).  At
setup, and only then, the alpha-MSNN kernel ``G(x, y)`` of the model file is
evaluated on the operator's nodes (``PCSetCoordinates``, a vector composed on
the PC, or a DMDA's coordinates: :meth:`pcshell.PCBase.node_coordinates`) and
discretised as ``M^-1_ij = w G(x_i, x_j)`` (eqs. 7-13; ``w = h^d`` on a
uniform grid, the operator being the difference operator) in batches of pairs,
never as a dense ``n x n`` matrix unless asked.  It is compressed (§4) to

``sparse``
    the ``p`` largest entries within radius ``r`` of each row, a distributed
    PETSc AIJ matrix applied by PETSc itself (no Python in the apply);
``hmatrix``
    a hierarchical matrix (:mod:`.hmatrix`: ``2^d`` cluster tree, admissibility
    ``eta``, low-rank blocks by adaptive cross approximation recompressed to
    the tolerance ``tau`` (or the paper's fixed-rank Nystrom blocks), an a
    posteriori check on random entries against ``tau`` and a memory budget),
    applied by a python ``Mat`` in O(n log n) batched per tree level.  Under
    MPI the blocks are shared out among the ranks; an apply gathers the input
    on every rank (``VecScatter`` to all), each rank multiplies its blocks,
    and a reverse scatter sums the partial products onto the owned rows
    (``-ksp_view`` says so);
``dense``
    every entry (``-pc_green_format dense`` only; the reference).

``auto`` (the default) runs the paper's decay test: on sampled rows, the
largest ``|G(x_i, x_j)|`` with ``|x_i - x_j| > r`` relative to the row's
largest entry; below ``tau_loc`` on every sampled row the kernel is local and
``sparse`` is used, otherwise ``hmatrix``.  The preconditioner is a fixed
matrix (PCMAT around it), linear in the residual: GMRES and FGMRES alike.

Rows with a single unit-like diagonal entry (Dirichlet rows as Firedrake
assembles them) are left out of the kernel and preconditioned by ``1/a_ii``.

Options (prefix ``-[pc prefix]pc_green_``), besides the common
``-pc_neural_*`` options of :class:`pcshell.ModelPC` (``model``, ``device``,
``dtype``, ``on_failure``, ``fallback_pc_type``, ...):

``-pc_green_problem convection1d|reaction1d|convection2d|reaction2d|rotated``
    The shipped model to use when ``-pc_neural_model`` is not given (shipped:
    the problems in ``METHODS["green"].models``; any other gives an error naming
    the ``petsc-neural train green`` command that trains it).
``-pc_green_theta T``
    The rotation angle for a parametric (rotated Laplacian) model (required there).
``-pc_green_format auto|sparse|hmatrix|dense``
    The compression (default ``auto``: the decay test).
``-pc_green_weight auto|fit|W``
    ``M^-1 = W G``: ``auto`` is ``h^d`` on a uniform grid (the paper's
    discretisation) and ``fit`` otherwise; ``fit`` is the least-squares
    scalar for ``A M^-1 v = v`` on a random ``v``.
``-pc_green_tau_loc t`` / ``-pc_green_radius r`` / ``-pc_green_sparse_p p`` /
``-pc_green_decay_rows s``
    Decay test threshold (default 1e-2), radius in units of the mesh size
    (default 4), entries kept per row (default 0: all within the radius), rows
    sampled by the test (default 32).
``-pc_green_leaf n`` / ``-pc_green_eta e``
    H-matrix leaf size and admissibility ``max(diam I, diam J) <= eta dist(I, J)``
    (seed 003 eq. 43; 0: the paper's rules: 1D leaf ``min(sqrt(N), 128)``,
    ``eta = 1``; 2D leaf 64 (128 above 64^2 points), ``eta = 0.7``).
``-pc_green_compression aca|nystrom``
    How the admissible blocks are compressed.  ``aca`` (default): adaptive cross
    approximation with partial pivoting, recompressed by QR + SVD to a relative
    Frobenius error ``tau`` per block (so at most ``tau`` relative on the whole
    admissible part); each block gets the rank it needs, and a block that would
    need more than the break-even rank ``m n / (m + n)`` (or ``-pc_green_max_rank``)
    is stored dense.  ``nystrom``: the paper's fixed ranks (§5.3; skeleton rows and
    columns spread evenly through each cluster, ``C W^+ R`` truncated to rank ``k``),
    kept to reproduce the paper: its skeletons are not pivoted, so a block can be far
    worse than the best rank-``k`` one (measured on the shipped 2D reaction kernel at
    N = 48, rank 24: a block error of 8.3 against 1.1e-3 for the truncated SVD, a
    matvec error of 5%), and the sampled check can miss such blocks.
``-pc_green_rank k`` / ``-pc_green_max_rank k``
    ``nystrom``: base rank (0: the paper's rule, 1 in 1D, 10 in 2D (20 above 64^2
    points), grown by ``log(n_b) / log(n_leaf)`` above the leaf size).  ``aca``: the
    largest rank of a low-rank block (0: the break-even rank).
``-pc_green_tau t`` / ``-pc_green_check_samples s`` / ``-pc_green_max_memory MB`` /
``-pc_green_max_refine m``
    ``aca``: the relative block tolerance.  The a posteriori check estimates the
    relative error of the admissible part on ``s`` random entries (default 1000):
    root mean square error over root mean square entry for ``aca`` (the norm the
    tolerance controls), mean absolute error over mean absolute entry for
    ``nystrom`` (the paper's); above ``tau`` (default 0: 1e-3 in 2D, 1e-5 in 1D,
    where at 1e-3 the H-matrix needed 26 iterations against dense's 12 on the 1D
    reaction kernel at N = 2048, and 9 = dense at 1e-5; for ``aca`` with a factor 2
    of sampling slack) ``aca`` divides its tolerance by 4 and ``nystrom`` doubles
    the base rank, at most ``m`` times (default 3), while the H-matrix stays within
    ``MB`` megabytes, summed over the ranks (default: half the physical memory of
    the machine, the smallest over the ranks; also the limit of ``dense``).
    ``aca`` checks the budget at every step of the construction too, against the
    bytes the step's peak will hold (near field, float64 factors before
    recompression, blocks evaluated whole, the boundary blend's tables, and the
    step's largest temporary), so an H-matrix that will not fit stops with this
    error instead of exhausting the machine (at N = 256 in 2D, 65,536 points, a
    construction that counted only its stored entries exhausted 24 GB).  The kernel
    is evaluated in pieces of at most 2^21 pairs and the ACA state is dropped after
    the a posteriori check.  Why 1e-3 although the learned kernels are only 6-33% accurate: the
    preconditioner is the kernel, the compression error is a perturbation of it that
    the operator amplifies (by ``1/h^2``-like factors across block edges: a 4e-3
    matvec error became 8e-2 in ``A M^-1`` on the 2D reaction kernel at N = 48);
    with the paper's rank 1 in 1D the iterations grew with N (16 against 10 dense at
    N = 512, reaction-dominated) and at 1e-3 they matched.
``-pc_green_batch b``
    Pairs per network call (default 16384).
``-pc_green_boundary auto|blend|none`` / ``-pc_green_skew_max s`` / ``-pc_green_boundary_table f``
    ``blend``: the kernel is ``G - P_x G``, ``P_x`` the transfinite
    interpolation in ``x`` of its values on the faces of the unit cube, so the
    Dirichlet condition holds exactly (:mod:`.boundary`: without it the learned
    kernel's boundary error, amplified by ``1/h^2``, made the iterations grow with
    ``N``: reaction2d 16 / 18 / 20 at N = 32 / 48 / 64 became 16 / 15.3 / 14.3).
    ``auto`` (default) blends unless the operator is convection-dominated,
    ``||A - A^T||_F / ||A + A^T||_F > s`` (default 0.1): there the kernel has an
    outflow layer thinner than the mesh and the blend made things worse (convection2d
    23.3 -> 33.3 iterations at N = 32).  The face values are tabulated while the
    tables hold at most ``f n^2`` entries (default 0.25; a tensor grid needs
    ``2 d N n``), else evaluated per pair.
    Formats ``hmatrix`` and ``dense`` only (and the decay test sees the raw kernel):
    the linear blend of a local kernel's boundary values is not local.

The inner PC (PCMAT) has the prefix ``-[pc prefix]green_``.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np
import torch
from petsc4py import PETSc

from pcshell import ModelFileError, ModelMismatchError, NeuralPCError, Option, SetupNetworkPC
from pcshell.base import log_event

from ..registry import METHODS
from .boundary import BoundaryBlend, Pairs
from .hmatrix import PIECE, ClusterTree, HMatrix, evaluate_pieces
from .train import PROBLEMS

__all__ = ["GreenInverse", "CITATION", "uniform_spacing"]

CITATION = """@article{xu2025neural,
  title   = {Neural Approximate Inverse Preconditioners},
  author  = {Xu, Tianshi and Li, Ruipeng and Xi, Yuanzhe},
  journal = {arXiv preprint},
  year    = {2025}
}
"""

FORMATS = ("auto", "sparse", "hmatrix", "dense")


def uniform_spacing(X: np.ndarray) -> float | None:
    """``h`` if the points are the interior nodes of a uniform grid on the unit cube
    (``x = i h``, ``h = 1/(N+1)``, the same ``N`` in every direction), else ``None``."""
    if X.size == 0:
        return None
    hs = []
    for k in range(X.shape[1]):
        u = np.unique(np.round(X[:, k], 12))
        if len(u) < 2:
            return None
        h = 1.0 / (len(u) + 1)
        if not np.allclose(u, h * np.arange(1, len(u) + 1), atol=1e-9):
            return None
        hs.append(h)
    if not np.allclose(hs, hs[0]) or X.shape[0] != round(1 / hs[0] - 1) ** X.shape[1]:
        return None
    return float(hs[0])


class _HMatrixMat:
    """Context of the python ``Mat`` that applies the H-matrix (see the module docstring)."""

    def __init__(self, H: HMatrix, weight: float, interior: np.ndarray, diag_rows: np.ndarray,
                 diag_vals: np.ndarray, scatter: PETSc.Scatter, seq: PETSc.Vec) -> None:
        self.H = H
        self.weight = weight
        self.interior = interior  # global indices of the kernel's points, in H's order
        self.diag_rows = diag_rows  # local rows preconditioned by 1 / a_ii
        self.diag_vals = diag_vals
        self.scatter = scatter
        self.seq = seq  # full-length sequential work vector
        self.applies = 0
        self.seconds = 0.0

    def mult(self, mat: PETSc.Mat, x: PETSc.Vec, y: PETSc.Vec) -> None:
        t0 = time.perf_counter()
        with log_event("GreenHMatMult"):
            self.scatter.scatter(x, self.seq, addv=PETSc.InsertMode.INSERT,
                                 mode=PETSc.ScatterMode.FORWARD)
            full = self.seq.getArray(readonly=True)
            part = self.H.matvec(full[self.interior]).numpy()
            out = np.zeros(len(full))
            out[self.interior] = self.weight * part
            self.seq.setArray(out)
            y.zeroEntries()
            self.scatter.scatter(self.seq, y, addv=PETSc.InsertMode.ADD,
                                 mode=PETSc.ScatterMode.REVERSE)
            if len(self.diag_rows):
                xa = x.getArray(readonly=True)
                ya = y.getArray()
                ya[self.diag_rows] = xa[self.diag_rows] / self.diag_vals
        self.applies += 1
        self.seconds += time.perf_counter() - t0

    def view(self, mat: PETSc.Mat, viewer: PETSc.Viewer | None = None) -> None:
        if viewer is not None and viewer.getType() == PETSc.Viewer.Type.ASCII:
            viewer.printfASCII("GreenInverse H-matrix (python Mat)\n")


class GreenInverse(SetupNetworkPC):
    """GreenInverse: learned Green's function, compressed approximate inverse (seed 003).

    Use::

        -ksp_type fgmres -pc_type python -pc_python_type petsc_neural.GreenInverse
        -pc_green_problem convection1d -pc_green_format hmatrix

    Options ``-pc_green_``: ``problem``, ``theta``, ``format``
    (auto|sparse|hmatrix|dense), ``weight``, ``tau_loc``, ``radius``,
    ``sparse_p``, ``decay_rows``, ``leaf``, ``eta``, ``compression``, ``rank``,
    ``max_rank``, ``tau``,
    ``check_samples``, ``max_memory``, ``max_refine``, ``batch``, ``seed``,
    ``boundary``, ``skew_max``, ``boundary_table``; see
    :mod:`petsc_neural.green.pc`.  Needs node coordinates.  Linear.
    """

    method = "green"
    title = "GreenInverse learned Green's function (seed 003)"
    method_prefix = "pc_green_"
    inner_prefix = "green_"
    citation = CITATION

    def __init__(self) -> None:
        super().__init__()
        self.info: dict[str, Any] = {}
        self.timings: dict[str, float] = {}
        self.M: PETSc.Mat | None = None
        self.H: HMatrix | None = None
        self._kernel_pairs = 0

    # -- options ---------------------------------------------------------------------
    def method_options(self) -> list[Option]:
        return [
            Option("problem", "", "shipped model to use without -pc_neural_model",
                   choices=("", *PROBLEMS)),
            Option("theta", float("nan"), "rotation angle of a parametric model"),
            Option("format", "auto", "compression", choices=FORMATS),
            Option("weight", "auto", "M^-1 = weight * G: auto (h^d on a uniform grid, else "
                   "fit), fit, or a number"),
            Option("tau_loc", 1e-2, "decay test threshold (relative to the row maximum)",
                   low=0.0, open_low=True),
            Option("radius", 4.0, "decay test / sparse radius in mesh sizes", low=0.0,
                   open_low=True),
            Option("sparse_p", 0, "entries kept per row by sparse (0: all within radius)",
                   low=0),
            Option("decay_rows", 32, "rows sampled by the decay test", low=1),
            Option("leaf", 0, "H-matrix leaf size (0: the paper's rule)", low=0),
            Option("eta", 0.0, "admissibility parameter (0: 1 in 1D, 0.7 in 2D)", low=0.0),
            Option("compression", "aca", "low-rank blocks: aca (adaptive, to tau) or nystrom "
                   "(the paper's fixed ranks)", choices=("aca", "nystrom")),
            Option("rank", 0, "nystrom: base rank of the low-rank blocks (0: the paper's rule)",
                   low=0),
            Option("max_rank", 0, "aca: largest rank of a low-rank block (0: break-even)",
                   low=0),
            Option("tau", 0.0, "H-matrix tolerance (aca: relative per block) and a "
                   "posteriori check (0: 1e-5 in 1D, 1e-3 in 2D)", low=0.0),
            Option("check_samples", 1000, "random entries of the a posteriori check", low=1),
            Option("max_memory", _default_budget(), "memory budget of the H-matrix (its "
                   "construction's peak included) / dense matrix (MB, summed over the ranks; "
                   "default half the machine's memory)",
                   low=0.0, open_low=True),
            Option("max_refine", 3, "refinements allowed by the a posteriori check (aca: tau / "
                   "4, nystrom: rank doubled)", low=0),
            Option("batch", 16384, "pairs per network call", low=1),
            Option("seed", 0, "seed of the sampled rows, entries and the fit vector"),
            Option("boundary", "auto", "subtract the blend of the kernel's boundary values "
                   "in x (Dirichlet condition enforced exactly): blend, none, or auto (blend "
                   "unless the operator is convection-dominated)",
                   choices=("auto", "blend", "none")),
            Option("skew_max", 0.1, "auto: blend while ||A - A^T||_F / ||A + A^T||_F is "
                   "at most this", low=0.0),
            Option("boundary_table", 0.25, "blend: tabulate boundary values while the tables "
                   "hold at most this fraction of n^2 entries (else evaluated per pair)",
                   low=0.0),
        ]

    def default_model(self) -> str | None:
        return None

    def load_model(self, pc: PETSc.PC) -> Any:
        problem = self.opts["problem"]
        if not self.opts["model"] and problem:
            path = METHODS["green"].model_path(problem)
            if path is None:
                raise NeuralPCError(
                    f"no shipped GreenInverse model for problem {problem!r} (shipped: "
                    f"{', '.join(METHODS['green'].models) or 'none'}): train one with "
                    f"`petsc-neural train green --problem {problem} -o green_{problem}.pt` "
                    f"and pass -{self.options_prefix(pc)}model green_{problem}.pt")
            self.opts["model"] = path
        if not self.opts["model"]:
            raise NeuralPCError(
                f"no model given: set -{self.options_prefix(pc)}model FILE or "
                f"-{self.options_prefix(pc, self.method_prefix)}problem "
                f"({'|'.join(METHODS['green'].models)}) for a shipped kernel")
        return super().load_model(pc)

    def check_model(self, pc: PETSc.PC, P: PETSc.Mat) -> None:
        super().check_model(pc, P)
        meta, path = self.model.metadata, self.model.path
        if meta.inputs != ["x", "y", "params"]:
            raise ModelFileError(f"model {path!r}: a GreenInverse kernel takes "
                                 f"['x', 'y', 'params'], got {meta.inputs}")
        if not meta.linear:
            raise ModelFileError(f"model {path!r}: GreenInverse models are declared linear")
        dim = meta.training.get("dim")
        if dim not in (1, 2):
            raise ModelFileError(f"model {path!r}: training.dim must be 1 or 2, got {dim!r}")
        if meta.training.get("parametric") and math.isnan(self.opts["theta"]):
            raise NeuralPCError(
                f"model {path!r} is parametric in theta ({meta.problem_family}): give "
                f"-{self.options_prefix(pc, self.method_prefix)}theta")

    # -- helpers -----------------------------------------------------------------------
    def _params(self, n: int) -> torch.Tensor:
        meta = self.model.metadata
        if not meta.training.get("parametric"):
            return torch.zeros(n, 0, dtype=self.dtype, device=self.device)
        t = float(self.opts["theta"])
        p = torch.tensor([math.cos(2 * t), math.sin(2 * t)], dtype=self.dtype,
                         device=self.device)
        return p.expand(n, 2)

    def _evaluator(self, pc: PETSc.PC, where: str):
        """The collective ``(pairs, n) -> G(xa_k, ya_k)``, ``k < n`` (float64 numpy), where
        ``pairs(lo, hi)`` gives the point tensors of pairs ``lo..hi``: the points are gathered
        one batch at a time, never for all ``n`` pairs at once (at N = 256 the near field
        alone is ~10^8 pairs).  Ranks may pass different ``n`` (the chunk count is agreed)."""
        comm = pc.getComm()
        batch = int(self.opts["batch"])

        def evaluate(pairs: Pairs, n: int) -> np.ndarray:
            chunks = -(-n // batch)
            if comm.getSize() > 1:
                chunks = comm.tompi4py().allreduce(chunks, op=_mpi("MAX"))
            out = np.empty(n)
            for i in range(chunks):
                lo, hi = i * batch, min((i + 1) * batch, n)
                skip = lo >= n
                xa, ya = pairs(lo, hi) if not skip else pairs(0, 0)
                val = self.run_network(pc, xa, ya, self._params(len(xa)), where=where,
                                       local_skip=skip, check=_check_shape(len(xa)))
                if not skip:
                    out[lo:hi] = val.detach().double().cpu().numpy()
            self._kernel_pairs += n
            return out

        return evaluate

    def _budget(self, comm: PETSc.Comm) -> float:
        """``-pc_green_max_memory``, the smallest over the ranks (its default depends on the
        machine, and every rank must take the same decision)."""
        budget = float(self.opts["max_memory"])
        if comm.getSize() > 1:
            budget = comm.tompi4py().allreduce(budget, op=_mpi("MIN"))
        return budget

    @staticmethod
    def _agree(comm: PETSc.Comm):
        """A collective OR over the ranks (``bool`` on one rank)."""
        if comm.getSize() == 1:
            return bool
        mpi = comm.tompi4py()
        return lambda a: bool(mpi.allreduce(bool(a), op=_mpi("LOR")))

    def _blend_wanted(self, P: PETSc.Mat) -> tuple[bool, str]:
        """``-pc_green_boundary``: ``auto`` blends unless ``P`` is convection-dominated.

        The Green's function of a convection-dominated operator has an outflow layer
        thinner than the mesh, and the discrete inverse does not vanish at the nodes
        next to that boundary: the blend would spread the network's unresolved layer
        values over the domain as a linear ramp (measured on the shipped convection2d
        kernel: 23.3 -> 33.3 iterations at N = 32, 24.3 -> 35 at N = 64)."""
        choice = self.opts["boundary"]
        if choice != "auto":
            return choice == "blend", f"-pc_green_boundary {choice}"
        At = P.transpose(PETSc.Mat())
        skew = P.duplicate(copy=True)
        skew.axpy(-1.0, At, structure=PETSc.Mat.Structure.DIFFERENT_NONZERO_PATTERN)
        sym = P.duplicate(copy=True)
        sym.axpy(1.0, At, structure=PETSc.Mat.Structure.DIFFERENT_NONZERO_PATTERN)
        ratio = skew.norm(PETSc.NormType.FROBENIUS) / max(sym.norm(PETSc.NormType.FROBENIUS),
                                                          1e-300)
        for m in (At, skew, sym):
            m.destroy()
        blend = ratio <= self.opts["skew_max"]
        return blend, (f"auto: ||A - A^T|| / ||A + A^T|| = {ratio:.3g} "
                       f"{'<=' if blend else '>'} {self.opts['skew_max']:g}")

    def _kernel(self, pc: PETSc.PC, X: np.ndarray, where: str):
        """The collective kernel ``(rows, cols) -> G(X[rows], X[cols])`` (float64 numpy)."""
        Xt = torch.from_numpy(X).to(dtype=self.dtype, device=self.device)
        evaluate = self._evaluator(pc, where)

        def kernel(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
            r = torch.from_numpy(np.asarray(rows, dtype=np.int64))
            c = torch.from_numpy(np.asarray(cols, dtype=np.int64))
            return evaluate(lambda lo, hi: (Xt[r[lo:hi]], Xt[c[lo:hi]]), len(r))

        return kernel

    def _with_blend(self, pc: PETSc.PC, X: np.ndarray, kernel, fmt: str):
        """``kernel`` minus the boundary blend of ``-pc_green_boundary`` (not for sparse:
        a linear blend of a local kernel's boundary values is not local)."""
        if fmt == "sparse":
            self.info["boundary"] = ("boundary blend: none (sparse format: the blend of a "
                                     "local kernel's boundary values would not be local)")
            return kernel
        wanted, why = self._blend_wanted(pc.getOperators()[1])
        if not wanted:
            self.info["boundary"] = f"boundary blend: none ({why})"
            return kernel
        Xt = torch.from_numpy(X).to(dtype=self.dtype, device=self.device)
        blend = BoundaryBlend(X, Xt, self._evaluator(pc, "kernel"), pc.getComm(),
                              max_table=float(self.opts["boundary_table"]))
        self.info["boundary"] = f"{blend.describe()} ({why})"

        self._held_bytes += blend.nbytes  # the tables live through the construction

        def blended(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
            out = kernel(rows, cols)
            out -= blend(rows, cols)
            return out

        return blended

    # -- setup -----------------------------------------------------------------------
    def build(self, pc: PETSc.PC) -> PETSc.PC:
        A, P = pc.getOperators()
        comm = P.getComm()
        mpi = comm.tompi4py()
        size = comm.getSize()
        self.info, self.timings, self._kernel_pairs = {}, {}, 0
        self._held_bytes = 0  # construction memory outside the H-matrix (budget)
        t_start = time.perf_counter()
        meta = self.model.metadata
        dim = int(meta.training["dim"])
        coords = self.node_coordinates(pc, P)
        n_local = P.getLocalSize()[0]
        if coords is None:
            raise NeuralPCError(
                "GreenInverse needs the node coordinates: call PCSetCoordinates (Firedrake "
                "problems and firedrake_problems do), compose them with "
                "pcshell.set_coordinates, or attach a DMDA with coordinates")
        coords = np.asarray(coords, dtype=float).reshape(n_local, -1) if coords.size else \
            np.zeros((n_local, dim))
        if coords.shape != (n_local, dim):
            raise ModelMismatchError(
                f"model {self.model.path!r} is a {dim}D kernel, but the PC has coordinates of "
                f"shape {coords.shape} for {n_local} local rows")
        lo_c = coords.min(0) if n_local else np.zeros(dim)
        hi_c = coords.max(0) if n_local else np.zeros(dim)
        lo_c = np.array(mpi.allreduce(lo_c.tolist(), op=_mpi("MIN")) if size > 1 else lo_c)
        hi_c = np.array(mpi.allreduce(hi_c.tolist(), op=_mpi("MAX")) if size > 1 else hi_c)
        if np.any(lo_c < -1e-9) or np.any(hi_c > 1 + 1e-9):
            domain = "square" if dim == 2 else "interval"
            raise ModelMismatchError(
                f"model {self.model.path!r} was trained on the unit {domain}; the nodes span "
                f"{lo_c.tolist()} to {hi_c.tolist()}")
        # Dirichlet rows (no nonzero off the diagonal; Firedrake keeps explicit zeros in
        # the pattern): 1 / a_ii, not the kernel
        r0, _ = P.getOwnershipRange()
        indptr, indices, values = P.getValuesCSR()
        row = np.repeat(np.arange(n_local), np.diff(indptr))
        off = (indices != row + r0) & (values != 0)
        diag = np.zeros(n_local)
        on = indices == row + r0
        diag[row[on]] = values[on]
        lone = np.nonzero((np.bincount(row[off], minlength=n_local) == 0) & (diag != 0))[0]
        diag_vals = diag[lone]
        # gather every node (global order) on every rank: the kernel is global
        parts = mpi.allgather((coords, np.isin(np.arange(n_local), lone))) if size > 1 else \
            [(coords, np.isin(np.arange(n_local), lone))]
        X_all = np.concatenate([p[0] for p in parts])
        dirichlet = np.concatenate([p[1] for p in parts])
        interior = np.nonzero(~dirichlet)[0]
        X = X_all[interior]
        n = len(interior)
        if n == 0:
            raise NeuralPCError("GreenInverse: every row is a Dirichlet row")
        self.info.update(n=n, dirichlet=int(dirichlet.sum()), dim=dim, ranks=size)
        h = uniform_spacing(X)
        hmin = h if h is not None else _mesh_size(X)
        kernel = self._kernel(pc, X, "kernel")
        leaf, eta, k_base = self._h_parameters(n, dim)
        # -- the format ----------------------------------------------------------------
        fmt = self.opts["format"]
        t0 = time.perf_counter()
        if fmt == "auto":
            rho = self._decay_test(X, kernel, self.opts["radius"] * hmin)
            fmt = "sparse" if rho < self.opts["tau_loc"] else "hmatrix"
            self.info["decay"] = (f"decay test: max rho_i(r) = {rho:.3g} on "
                                  f"{min(self.opts['decay_rows'], n)} sampled rows, r = "
                                  f"{self.opts['radius']:g} h, tau_loc = "
                                  f"{self.opts['tau_loc']:g} -> {fmt}")
        else:
            self.info["decay"] = f"format forced: -pc_green_format {fmt}"
        self.timings["decay test"] = time.perf_counter() - t0
        self.info["format"] = fmt
        t0 = time.perf_counter()
        kernel = self._with_blend(pc, X, kernel, fmt)
        self.timings["boundary"] = time.perf_counter() - t0
        # interior global index -> position in X
        local_interior = np.nonzero(~dirichlet[r0:r0 + n_local])[0]
        t0 = time.perf_counter()
        if fmt == "hmatrix":
            Mmat = self._build_hmatrix(pc, X, kernel, interior, lone, diag_vals,
                                       leaf, eta, k_base)
        else:
            Mmat = self._build_assembled(pc, fmt, X, X_all, interior, local_interior, kernel,
                                         r0, n_local, lone, diag_vals, hmin)
        self.timings["build"] = time.perf_counter() - t0
        # -- the weight ----------------------------------------------------------------
        t0 = time.perf_counter()
        w_opt = str(self.opts["weight"]).lower()
        if w_opt == "auto" and h is not None:
            w, how = h**dim, f"h^d (uniform grid, h = 1/{round(1 / h)})"
        elif w_opt in ("auto", "fit"):
            w, how = self._fit_weight(A, Mmat, local_interior), "least-squares fit"
        else:
            try:
                w, how = float(w_opt), "given"
            except ValueError:
                raise NeuralPCError(f"-pc_green_weight must be auto, fit or a number, got "
                                    f"{self.opts['weight']!r}") from None
        self._set_weight(Mmat, w, local_interior)
        self.info["weight"] = f"{w:.6g} ({how})"
        self.timings["weight"] = time.perf_counter() - t0
        self.timings["setup"] = time.perf_counter() - t_start
        self.info["kernel_pairs"] = (mpi.allreduce(self._kernel_pairs) if size > 1
                                     else self._kernel_pairs)
        self.M = Mmat
        self.inner_objects.append(Mmat)
        inner = PETSc.PC().create(comm=comm)
        inner.setOptionsPrefix(self.inner_options_prefix(pc))
        inner.setType(PETSc.PC.Type.MAT)
        inner.setOperators(A, Mmat)
        inner.setFromOptions()
        inner.setUp()
        return inner

    def _h_parameters(self, n: int, dim: int) -> tuple[int, float, int]:
        """Leaf size, eta and base rank: the options, else seed 003 §5.2-5.3."""
        N = round(n ** (1.0 / dim))
        if dim == 1:
            leaf = max(2, min(int(math.sqrt(n)), 128))
            eta, k = 1.0, 1
        else:
            leaf = 64 if N <= 64 else 128
            eta, k = 0.7, (10 if N <= 64 else 20)
        return (self.opts["leaf"] or leaf, self.opts["eta"] or eta, self.opts["rank"] or k)

    def _decay_test(self, X: np.ndarray, kernel, r: float) -> float:
        """``max_i max_{|x_i - x_j| > r} |G_ij| / max_j |G_ij|`` over sampled rows ``i``."""
        n = len(X)
        rng = np.random.default_rng(self.opts["seed"])
        rows = np.sort(rng.choice(n, size=min(self.opts["decay_rows"], n), replace=False))
        ri = np.repeat(rows, n)
        cj = np.tile(np.arange(n), len(rows))
        vals = np.abs(kernel(ri, cj)).reshape(len(rows), n)
        dist = np.linalg.norm(X[rows][:, None, :] - X[None, :, :], axis=2)
        far = np.where(dist > r, vals, 0.0).max(1)
        return float((far / np.maximum(vals.max(1), 1e-300)).max())

    def _build_assembled(self, pc, fmt, X, X_all, interior, local_interior, kernel, r0,
                         n_local, lone, diag_vals, hmin) -> PETSc.Mat:
        """``sparse`` (AIJ, radius and top-p) or ``dense`` (MATDENSE), owned rows."""
        comm = pc.getComm()
        N_all = len(X_all)
        pos = np.full(N_all, -1)
        pos[interior] = np.arange(len(interior))
        mine = pos[r0 + local_interior]  # positions in X of this rank's kernel rows
        if fmt == "dense":
            n = len(X)
            need = n_local * len(X_all) * 8 / 2**20
            budget = self._budget(comm)
            total = comm.tompi4py().allreduce(need) if comm.getSize() > 1 else need
            if total > budget:
                raise NeuralPCError(
                    f"-pc_green_format dense needs {total:.0f} MB for {n}^2 entries, above "
                    f"-pc_green_max_memory {budget:g}: use hmatrix or sparse, or raise the "
                    "budget")
            M = PETSc.Mat().createDense(((n_local, N_all), (n_local, N_all)), comm=comm)
            M.setUp()
            arr = M.getDenseArray()
            arr[:] = 0.0
            step = max(1, PIECE // n)

            def pieces():  # rows of the kernel, at most PIECE pairs per call
                for a in range(0, len(mine), step):
                    part = mine[a:a + step]
                    where = np.ix_(local_interior[a:a + step], interior)

                    def store(vals, where=where):
                        arr[where] = vals.reshape(len(where[0]), n)

                    yield np.repeat(part, n), np.tile(np.arange(n), len(part)), store

            evaluate_pieces(kernel, pieces(), self._agree(comm))
            arr[lone, r0 + lone] = 1.0 / diag_vals
            M.assemble()
            self.info.update(stored=float(total * 2**20 / 8), storage_mb=total)
            return M
        from scipy.spatial import cKDTree

        r = self.opts["radius"] * hmin
        tree = cKDTree(X)
        nbrs = tree.query_ball_point(X[mine], r) if len(mine) else []
        counts = np.array([len(b) for b in nbrs], dtype=int)
        ri = np.repeat(mine, counts)
        cj = np.concatenate(nbrs).astype(int) if len(nbrs) else np.zeros(0, int)
        vals = kernel(ri, cj)
        p = self.opts["sparse_p"]
        rows_out, cols_out, vals_out = [], [], []
        off = 0
        for k, cnt in enumerate(counts):
            c, v = cj[off:off + cnt], vals[off:off + cnt]
            off += cnt
            if p and cnt > p:
                keep = np.argsort(-np.abs(v), kind="stable")[:p]
                c, v = c[keep], v[keep]
            rows_out.append(np.full(len(c), r0 + local_interior[k]))
            cols_out.append(interior[c])
            vals_out.append(v)
        rows_out.append(r0 + lone)
        cols_out.append(r0 + lone)
        vals_out.append(1.0 / diag_vals)
        R = np.concatenate(rows_out).astype(PETSc.IntType) if rows_out else np.zeros(0)
        C = np.concatenate(cols_out).astype(PETSc.IntType)
        V = np.concatenate(vals_out).astype(PETSc.ScalarType)
        M = PETSc.Mat().create(comm=comm)
        M.setSizes(((n_local, N_all), (n_local, N_all)))
        M.setType(PETSc.Mat.Type.AIJ)
        M.setPreallocationCOO(R, C)
        M.setValuesCOO(V)
        M.assemble()
        nnz = int(M.getInfo(PETSc.Mat.InfoType.GLOBAL_SUM)["nz_used"])
        self.info.update(stored=float(nnz), nnz=nnz, radius=r, sparse_p=p,
                         storage_mb=nnz * 12 / 2**20)
        return M

    def _build_hmatrix(self, pc, X, kernel, interior, lone, diag_vals, leaf, eta,
                       k_base) -> PETSc.Mat:
        comm = pc.getComm()
        mpi = comm.tompi4py()
        size, rank = comm.getSize(), comm.getRank()
        n = len(X)
        itemsize = torch.finfo(self.dtype).bits // 8
        budget = self._budget(comm)
        tree = ClusterTree(X, leaf)
        aca = self.opts["compression"] == "aca"
        tau = self.opts["tau"] or (1e-5 if X.shape[1] == 1 else 1e-3)
        self.info["tau"] = tau
        tol = tau if aca else 0.0
        # the same number of ACA steps (collective kernel calls) on every rank
        agree = self._agree(comm)

        def memory_check(nbytes: int) -> None:
            # collective (every rank calls it at the same ACA step): the same error on all
            nbytes += self._held_bytes  # the boundary blend's tables
            total = mpi.allreduce(nbytes) if size > 1 else nbytes
            mb = total / 2**20
            self.info["construction_mb"] = max(self.info.get("construction_mb", 0.0), mb)
            if mb > budget:
                raise NeuralPCError(
                    f"the H-matrix's construction would hold {mb:.0f} MB (blocks, factors "
                    f"and temporaries), above -pc_green_max_memory {budget:g} (n = {n}): "
                    "raise the budget, raise -pc_green_tau, or use -pc_green_format sparse")

        H = HMatrix.build(X, kernel, leaf=leaf, eta=eta, k_base=k_base, rank=rank,
                          nparts=size, dtype=self.dtype, tree=tree, grow_rank=X.shape[1] > 1,
                          tol=tol, max_rank=self.opts["max_rank"], agree_any=agree,
                          memory_check=memory_check if aca else None)
        rng = np.random.default_rng(self.opts["seed"] + 1)
        blk, a, c, rows, cols = H.sample_admissible(rng, self.opts["check_samples"])
        exact = kernel(rows, cols)
        err, mem, refinements = 0.0, 0.0, 0
        # aca: the root-mean-square relative error (the norm it controls; 2x sampling slack)
        limit = 2 * tau if aca else tau
        while True:
            approx = H.entries(blk, a, c)
            if size > 1:
                approx = mpi.allreduce(approx)
            if not len(rows):
                err = 0.0
            elif aca:
                err = float(np.linalg.norm(approx - exact)
                            / max(np.linalg.norm(exact), 1e-300))
            else:
                err = float(np.abs(approx - exact).sum() / max(np.abs(exact).sum(), 1e-300))
            stored = mpi.allreduce(H.padded) if size > 1 else H.padded
            mem = stored * itemsize / 2**20
            if mem > budget:
                raise NeuralPCError(
                    f"the H-matrix needs {mem:.0f} MB, above -pc_green_max_memory {budget:g} "
                    f"(n = {n}, base rank {H.k_base}): raise the budget, lower "
                    "-pc_green_rank or -pc_green_leaf, or use -pc_green_format sparse")
            if err <= limit or refinements >= self.opts["max_refine"]:
                break
            if aca:  # the tolerance / 4 (storage grows mildly; the budget is checked above)
                refinements += 1
                H.compress_aca(kernel, H.tol / 4, self.opts["max_rank"], agree, memory_check)
                continue
            new_k = 2 * H.k_base
            dense_mb = H.dense_entries() * itemsize / 2**20
            if size > 1:
                dense_mb = mpi.allreduce(dense_mb)
            grown = 2 * mem - dense_mb
            if grown > budget:
                break
            refinements += 1
            H.compress(kernel, new_k)
        H.release()  # the ACA state (kept for the refinements) is several times H
        stats = H.stats()
        if size > 1:
            for key in ("blocks_low_rank", "blocks_dense", "entries", "padded_entries",
                        "rank_sum"):
                stats[key] = mpi.allreduce(stats[key])
            stats["rank_max"] = mpi.allreduce(stats["rank_max"], op=_mpi("MAX"))
        if err > limit:
            how = (f"tolerance {H.tol:.3g}" if aca else f"base rank {H.k_base}")
            self.warn(pc, f"GreenInverse: the H-matrix's a posteriori error {err:.3g} is above "
                          f"-pc_green_tau {tau:g} after {refinements} "
                          f"refinement(s) ({how}); using it anyway")
        self.H = H
        self.info.update(
            leaf=leaf, eta=eta, k_base=H.k_base, refinements=refinements, hmatrix_error=err,
            compression=self.opts["compression"], aca_tol=H.tol,
            aca_dense=int(mpi.allreduce(H.aca_dense) if size > 1 else H.aca_dense),
            stored=stats["entries"], padded=stats["padded_entries"], storage_mb=mem,
            blocks_low_rank=int(stats["blocks_low_rank"]),
            blocks_dense=int(stats["blocks_dense"]), rank_max=int(stats["rank_max"]),
            rank_mean=stats["rank_sum"] / max(stats["blocks_low_rank"], 1),
            depth=tree.depth(),
        )
        # the python Mat: gathered apply (VecScatter to all), partial products summed back
        N_all = P_size = pc.getOperators()[1].getSize()[0]
        n_local = pc.getOperators()[1].getLocalSize()[0]
        tmpl = PETSc.Vec().createMPI((n_local, P_size), comm=comm)
        scatter, seq = PETSc.Scatter.toAll(tmpl)
        tmpl.destroy()
        ctx = _HMatrixMat(H, 1.0, interior, lone, diag_vals, scatter, seq)
        M = PETSc.Mat().createPython(((n_local, N_all), (n_local, N_all)), ctx, comm=comm)
        M.setUp()
        self.inner_objects.extend([scatter, seq])
        return M

    def _fit_weight(self, A: PETSc.Mat, M: PETSc.Mat, local_interior: np.ndarray) -> float:
        """Least-squares ``w`` in ``A (w M v) ~ v`` on the kernel rows, random ``v``."""
        v = A.createVecRight()
        lo, hi = v.getOwnershipRange()
        # drawn in the global numbering: the same w on any number of ranks
        full = np.random.default_rng(self.opts["seed"] + 2).standard_normal(v.getSize())
        v.setArray(full[lo:hi])
        z, az = v.duplicate(), v.duplicate()
        M.mult(v, z)
        A.mult(z, az)
        a = az.getArray(readonly=True)[local_interior]
        b = v.getArray(readonly=True)[local_interior]
        num, den = float(a @ b), float(a @ a)
        comm = A.getComm()
        if comm.getSize() > 1:
            num, den = comm.tompi4py().allreduce(num), comm.tompi4py().allreduce(den)
        for obj in (v, z, az):
            obj.destroy()
        if not den > 0:
            raise NeuralPCError("GreenInverse: the weight fit failed (A M v = 0)")
        return num / den

    def _set_weight(self, M: PETSc.Mat, w: float, local_interior: np.ndarray) -> None:
        if M.getType() == PETSc.Mat.Type.PYTHON:
            M.getPythonContext().weight = w
            return
        # scale the kernel rows only (Dirichlet rows keep 1 / a_ii)
        d = M.createVecLeft()
        d.set(1.0)
        arr = d.getArray()
        arr[local_interior] = w
        M.diagonalScale(L=d)
        d.destroy()

    # -- view --------------------------------------------------------------------------
    def view_details(self, pc: PETSc.PC) -> list[str]:
        lines = super().view_details(pc)
        i = self.info
        if not i:
            return lines
        n = i["n"]
        lines.append(f"kernel on {n} nodes ({i['dim']}D){'' if not i['dirichlet'] else ''}"
                     f"; {i['dirichlet']} Dirichlet rows by 1/a_ii; {i['kernel_pairs']} kernel "
                     f"evaluations")
        lines.append(i["decay"])
        lines.append(i["boundary"])
        lines.append(f"format: {i['format']}; weight {i['weight']}")
        ratio = i["stored"] / float(n) ** 2
        if i["format"] == "sparse":
            lines.append(f"sparse: {i['nnz']} nonzeros ({i['nnz'] / n:.1f} per row), radius "
                         f"{i['radius']:.3g}, p = {i['sparse_p'] or 'all'}; AIJ applied by "
                         f"PETSc; storage {i['storage_mb']:.2f} MB, {ratio:.4f} of dense")
        elif i["format"] == "dense":
            lines.append(f"dense: {n}^2 entries, storage {i['storage_mb']:.1f} MB (MATDENSE)")
        else:
            lines.append(
                f"H-matrix: leaf {i['leaf']}, eta {i['eta']:g}, depth {i['depth']}; "
                f"{i['blocks_low_rank']} low-rank blocks (rank max {i['rank_max']}, mean "
                f"{i['rank_mean']:.1f}, "
                + (f"ACA to {i['aca_tol']:.3g} + QR/SVD recompression" if i["aca_tol"] else
                   f"Nystrom, base rank {i['k_base']}")
                + f"), {i['blocks_dense']} dense blocks"
                + (f" ({i['aca_dense']} admissible ones above break-even rank)"
                   if i["aca_dense"] else ""))
            lines.append(
                f"storage {i['stored']:.4g} entries ({i['storage_mb']:.1f} MB padded), "
                f"compression {1 / ratio:.2f}x vs dense ({ratio:.3f} of n^2)")
            lines.append(
                f"a posteriori error {i['hmatrix_error']:.3g} on "
                f"{self.opts['check_samples']} random admissible entries (tau "
                f"{i['tau']:g}, {i['refinements']} refinement(s)); budget "
                f"{self.opts['max_memory']:g} MB"
                + (f" (construction's peak, as checked: {i['construction_mb']:.1f} MB)"
                   if "construction_mb" in i else ""))
            apply = ("serial apply" if i["ranks"] == 1 else
                     f"gathered apply on {i['ranks']} ranks: input scattered to all, each "
                     "rank applies its blocks, partial products summed by a reverse scatter")
            ctx = self.M.getPythonContext() if self.M is not None else None
            lines.append(f"{apply}; batched per tree level (python Mat)"
                         + (f"; {ctx.applies} applies, {ctx.seconds:.3f}s" if ctx else ""))
        lines.append("setup times: " + ", ".join(f"{k} {v:.3f}s"
                                                  for k, v in self.timings.items()))
        return lines


def _default_budget() -> float:
    """Half this machine's physical memory in MB (4096 where the OS does not say)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 4096.0
    return float(max(1024, total // 2**21))


def _mpi(name: str):
    from pcshell.mpi import mpi_op

    return mpi_op(name)


def _mesh_size(X: np.ndarray) -> float:
    """The median nearest-neighbour distance of the points."""
    from scipy.spatial import cKDTree

    if len(X) < 2:
        return 1.0
    d, _ = cKDTree(X).query(X, k=2)
    return float(np.median(d[:, 1]))


def _check_shape(m: int):
    def check(out: Any) -> None:
        if not isinstance(out, torch.Tensor) or out.shape != (m,):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ModelMismatchError(f"the kernel must return one value per pair ({m},), "
                                     f"got {shape}")
    return check
