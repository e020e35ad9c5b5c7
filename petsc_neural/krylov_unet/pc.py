"""``petsc_neural.KrylovUNet``: seed 002's Krylov-geometry-trained U-Net as a PETSc PC.

Use on the whole coupled 3D-1D matrix (``firedrake_problems``' ``mixed_3d1d``)::

    -ksp_type fgmres -pc_type python -pc_python_type petsc_neural.KrylovUNet
    [-pc_neural_model FILE]

or as the preconditioner of the 3D block inside a Schur-complement fieldsplit::

    -ksp_type fgmres -pc_type fieldsplit -pc_fieldsplit_type schur
    -fieldsplit_3d_ksp_type preonly -fieldsplit_3d_pc_type python
    -fieldsplit_3d_pc_python_type petsc_neural.KrylovUNet

or from Firedrake-style ``solver_parameters`` (``Problem.solve``), the same keys
nested.  It is nonlinear in the residual: use a flexible Krylov method
(FGMRES, GCR, FCG); any other is refused (:mod:`pcshell.residual`).

**What one apply does.**  The U-Net (:mod:`.network`) works on the ``G^3``
lattice of the 3D P1 nodes; the 1D (vessel) unknowns are eliminated exactly
around it (block LDU with the network in place of the inverse 3D Schur
complement ``S = A_33 - A_31 A_11^{-1} A_13``)::

    y_1 = A_11^{-1} r_1                   (sparse LU of the small 1D block, at setup)
    z_3 = U-Net(r_3 - A_31 y_1)           (the network approximates S^{-1}, seed 002 §2)
    z_1 = A_11^{-1} (r_1 - A_13 z_3)

This is the design chosen for the 1D unknowns.  The rejected alternative was to
splat the 1D residual onto the grid through ``Pi^T`` (``A_31``) as a third
input channel and read a 1D correction back through ``Pi``: it makes the
network learn the 1D physics as well (a stiff tree of a few hundred nodes that
one sparse LU solves exactly in microseconds) and caps the accuracy of
``z_1`` at what the grid resolves around a vessel of radius 0.02 < h; the
elimination is exact for the 1D part and gives the network exactly the
problem seed 002 trains on (the 3D Schur complement with reduced right-hand
sides).  ``scripts/reproduce_krylov_unet.py`` measures both: see
``results/krylov_unet.md``.

**Which rows are 3D.**  The operator carries the index set of its 3D rows
composed under ``"petsc_neural_field_3d"`` (:func:`set_field_3d`;
``mixed_3d1d`` problems do this); without it every row is taken as 3D (the
3D block of a fieldsplit).  The 3D rows' node coordinates
(``PCSetCoordinates``, which ``Problem.solve`` and PCFIELDSPLIT pass on) must
be exactly a ``G^3`` lattice; the grid's faces must be Dirichlet rows (unit
rows, eliminated columns, as Firedrake makes them).  Anything else is a clear
error at setup.

**MPI.**  The network sees the whole grid: at every apply the residual is
gathered to rank 0 (one ``VecScatter``), the network and the 1D solves run
there, and the correction is scattered back.  The iterations are those of a
serial run (up to rounding); the gather/scatter and the idle ranks are the
cost, reported by ``-ksp_view`` (times so far) and ``-log_view``
(``KUNetGather``, ``KUNetScatter``, ``PCNeuralInfer``).

Options (prefix ``-pc_kunet_``), besides the common ``-pc_neural_*`` ones
(:class:`pcshell.ResidualNetworkPC`; ``-pc_neural_scale`` normalises the whole
gathered residual):

``-pc_kunet_max_grid G``
    Refuse grids with more than ``G`` nodes per direction (default 257): the
    network holds ``32 x G^3`` activations at full resolution.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from petsc4py import PETSc

from pcshell import (
    ModelFileError,
    ModelMismatchError,
    NeuralPCError,
    Option,
    ResidualNetworkPC,
    agreed,
    gather_scipy,
    log_event,
)
from pcshell.base import ModelPC

from ..registry import get_method
from .grid import FIELD_3D_KEY, check_dirichlet_faces, geometry_field, lattice_order

__all__ = ["KrylovUNet", "set_field_3d", "CITATION"]

CITATION = """@article{dimola2025krylov,
  title   = {Neural Preconditioning via {K}rylov Subspace Geometry},
  author  = {Dimola, Nunzio and Coclite, Alessandro and Zunino, Paolo},
  journal = {arXiv preprint arXiv:2507.15452},
  year    = {2025}
}
"""

INPUTS = ["residual", "geometry", "diagonal"]


def set_field_3d(obj: PETSc.Mat | PETSc.PC, is3d: PETSc.IS) -> None:
    """Tell KrylovUNet which rows of a coupled operator are the 3D (tissue) unknowns."""
    obj.compose(FIELD_3D_KEY, is3d)


class KrylovUNet(ResidualNetworkPC):
    """The KrylovUNet preconditioner (see the module docstring for use, options and MPI).

    Options: the common ``-pc_neural_*`` ones and ``-pc_kunet_max_grid``.
    """

    method = "krylov_unet"
    title = "KrylovUNet 3D U-Net trained on Krylov angles (seed 002)"
    method_prefix = get_method("krylov_unet").prefix
    citation = CITATION

    def __init__(self) -> None:
        super().__init__()
        self._root: dict | None = None
        self._scatter: PETSc.Scatter | None = None
        self._seq: PETSc.Vec | None = None
        self._times = {"gather": 0.0, "network": 0.0, "oned": 0.0}
        self._info: dict = {}

    # Work-around (pcshell.ModelPC.initialize reads the options again at setup): a PC
    # set up lazily inside PCFIELDSPLIT (at the first KSPSolve) by a caller that has
    # already removed its options (firedrake_problems' Problem.solve does) would
    # silently fall back to the defaults.  PETSc reads options in setFromOptions; when
    # none of ours is left in the database at setup, the values read there are kept.
    def setFromOptions(self, pc: PETSc.PC) -> None:  # noqa: N802
        super().setFromOptions(pc)
        self._from_options = dict(self.opts)

    def read_options(self, pc: PETSc.PC) -> dict:
        saved = getattr(self, "_from_options", None)
        if saved is not None:
            prefixes = (self.options_prefix(pc), self.options_prefix(pc, self.method_prefix))
            if not any(k.startswith(prefixes) for k in PETSc.Options().getAll()):
                return dict(saved)
        return super().read_options(pc)

    def method_options(self) -> list[Option]:
        return [Option("max_grid", 257, "largest grid (nodes per direction) accepted", low=4)]

    def default_model(self) -> str | None:
        return get_method("krylov_unet").model_path()

    def check_inputs(self, path: str, inputs: list[str]) -> None:
        if list(inputs) != INPUTS:
            raise ModelFileError(f"model {path!r}: KrylovUNet models take inputs {INPUTS}, "
                                 f"this one declares {inputs}")

    # -- setup -----------------------------------------------------------------------
    def setup(self, pc: PETSc.PC) -> None:
        _, P = pc.getOperators()
        meta = self.model.metadata
        self.nonlinear = not meta.linear
        self.check_inputs(self.model.path, meta.inputs)
        comm = pc.getComm()
        self._parallel = comm.getSize() > 1
        self._scale = bool(self.opts["scale"])
        self._cuda = self.device.type == "cuda"
        rstart, rend = P.getOwnershipRange()
        is3 = P.query(FIELD_3D_KEY) or pc.query(FIELD_3D_KEY)
        rows3_local = (np.arange(rstart, rend, dtype=np.int64) if is3 is None
                       else np.asarray(is3.getIndices(), np.int64))
        coords = self.node_coordinates(pc, P)
        with agreed(comm, "KrylovUNet setup"):
            if coords is None:
                raise NeuralPCError(
                    "KrylovUNet needs the node coordinates of the operator's rows "
                    "(PCSetCoordinates, or pcshell.set_coordinates on the operator) to place "
                    "the 3D nodes on the grid")
            if coords.shape[0] != rend - rstart or coords.shape[1] != 3:
                raise NeuralPCError(
                    f"KrylovUNet: {coords.shape[0]} node coordinates of dimension "
                    f"{coords.shape[1]} for {rend - rstart} local rows; one 3D point per row "
                    "is needed")
            if np.any((rows3_local < rstart) | (rows3_local >= rend)):
                raise NeuralPCError(f"KrylovUNet: the index set {FIELD_3D_KEY!r} holds rows "
                                    "this rank does not own")
        mpi = comm.tompi4py()
        parts = mpi.gather((rows3_local, coords[rows3_local - rstart]), root=0)
        A = gather_scipy(P)
        self._root = None
        with agreed(comm, "KrylovUNet setup (rank 0)"):
            if comm.getRank() == 0:
                self._root = self._build_root(A, parts)
        self._info = mpi.bcast(self._root["info"] if self._root else None, root=0)
        if self._parallel:
            x = P.createVecRight()
            self._scatter, self._seq = PETSc.Scatter.toZero(x)
            x.destroy()
            self.inner_objects += [self._scatter, self._seq]
        self._times = {"gather": 0.0, "network": 0.0, "oned": 0.0}
        self.probe(pc)
        ksp_type = PETSc.Options(pc.getOptionsPrefix()).getString("ksp_type", "")
        if ksp_type:
            self.check_ksp(pc, ksp_type)

    def _build_root(self, A, parts) -> dict:
        """Rank 0: grid order, blocks, 1D factorisation and the network's static inputs."""
        import scipy.sparse as sp
        from scipy.sparse.linalg import splu

        rows3 = np.concatenate([p[0] for p in parts])
        coords3 = np.concatenate([p[1] for p in parts])
        n = A.shape[0]
        try:
            order, G = lattice_order(coords3)
        except ValueError as exc:
            raise NeuralPCError(
                f"KrylovUNet: {exc}. The 3D rows must be the P1 nodes of a uniform cube mesh; "
                f"for a coupled 3D-1D operator compose the 3D index set on it "
                f"(petsc_neural.krylov_unet.pc.set_field_3d)") from None
        if G > self.opts["max_grid"]:
            raise NeuralPCError(f"KrylovUNet: a {G}^3 grid exceeds -{self.method_prefix}"
                                f"max_grid {self.opts['max_grid']}")
        rows3 = rows3[order]
        mask = np.ones(n, bool)
        mask[rows3] = False
        rows1 = np.nonzero(mask)[0]
        A = sp.csr_matrix(A)
        R3 = A[rows3]
        A33 = R3[:, rows3].tocsr()
        bad = check_dirichlet_faces(A33, G)
        if bad:
            raise NeuralPCError(f"KrylovUNet: {bad}; the network solves the grid's faces as "
                                "Dirichlet rows")
        root = {"rows3": rows3, "rows1": rows1, "G": G, "n1": len(rows1)}
        t0 = time.perf_counter()
        if len(rows1):
            R1 = A[rows1]
            root["A31"] = R3[:, rows1].tocsr()
            root["A13"] = R1[:, rows3].tocsr()
            root["lu"] = splu(sp.csc_matrix(R1[:, rows1]))
        dt = self.dtype
        root["static"] = (torch.from_numpy(geometry_field(A33, G)).to(device=self.device, dtype=dt),
                          torch.from_numpy(A33.diagonal().copy()).to(device=self.device,
                                                                     dtype=dt))
        root["info"] = {"G": G, "n3": len(rows3), "n1": len(rows1),
                        "setup_1d": time.perf_counter() - t0}
        return root

    def update(self, pc: PETSc.PC) -> None:
        """New operator values: rebuild (the grid map, the 1D factors and the fields)."""
        self.reset(pc)
        self.initialize(pc)

    def reset(self, pc: PETSc.PC) -> None:
        super().reset(pc)  # destroys the scatter and the sequential vector
        self._scatter = self._seq = None
        self._root = None

    def probe(self, pc: PETSc.PC) -> None:
        """Run the network once (rank 0) so that a model that does not fit fails at setup."""
        comm = pc.getComm()
        with agreed(comm, "KrylovUNet model check"):
            if self._root is not None:
                n3 = len(self._root["rows3"])
                r = torch.full((n3,), n3**-0.5, dtype=self.dtype, device=self.device)
                out = self.call_model(r, *self._root["static"],
                                      where=f"{self._root['G']}^3 grid")
                if not isinstance(out, torch.Tensor) or tuple(out.shape) != (n3,):
                    raise ModelMismatchError(
                        f"model {self.model.path!r} returns "
                        f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out)} "
                        f"for a {self._root['G']}^3 grid; expected ({n3},)")

    # -- apply -----------------------------------------------------------------------
    def _root_apply(self, r: np.ndarray) -> np.ndarray:
        """Rank 0: the correction for the whole (gathered) residual ``r`` (float64)."""
        root = self._root
        scale = 1.0
        if self._scale:
            scale = float(np.linalg.norm(r))
            if scale == 0.0 or not math.isfinite(scale):
                return np.zeros_like(r) if scale == 0.0 else r.copy()
            r = r / scale
        t0 = time.perf_counter()
        r3 = r[root["rows3"]]
        if root["n1"]:
            r1 = r[root["rows1"]]
            r3 = r3 - root["A31"] @ root["lu"].solve(r1)
        t1 = time.perf_counter()
        with log_event("PCNeuralInfer"), torch.inference_mode():
            inp = torch.from_numpy(r3).to(device=self.device, dtype=self.dtype)
            z3 = self.model.module(inp, *root["static"]).to("cpu", torch.float64).numpy()
        t2 = time.perf_counter()
        z = np.empty_like(r)
        z[root["rows3"]] = z3
        if root["n1"]:
            z[root["rows1"]] = root["lu"].solve(r1 - root["A13"] @ z3)
        self._times["network"] += t2 - t1
        self._times["oned"] += (t1 - t0) + (time.perf_counter() - t2)
        return z * scale

    def apply(self, pc: PETSc.PC, x: PETSc.Vec, y: PETSc.Vec) -> None:
        with log_event("PCNeuralApply"):
            self._applies += 1
            if self._stagnating():
                self._fallback_this_solve = True
                self.activate_fallback(pc, f"the residual fell by less than "
                                           f"{self.opts['stagnation_factor']} over "
                                           f"{self.opts['stagnation']} iterations")
            if self.fallback_reason is not None:
                self.fallback.apply(x, y)
                return
            comm = pc.getComm()
            t0 = time.perf_counter()
            if self._parallel:
                with log_event("KUNetGather"):
                    self._scatter.scatter(x, self._seq, addv=PETSc.InsertMode.INSERT,
                                          mode=PETSc.ScatterMode.FORWARD)
                src = self._seq
            else:
                src = x
            self._times["gather"] += time.perf_counter() - t0
            z, error = None, None
            if self._root is not None:
                try:
                    z = self._root_apply(src.getArray(readonly=True).astype(np.float64))
                except Exception as exc:  # noqa: BLE001 - agreed on below
                    error = exc
            ok = error is None and (z is None or bool(np.isfinite(z).all()))
            if self._parallel:
                ok = bool(comm.tompi4py().bcast(ok, root=0))
            if not ok:
                if error is not None:
                    error = NeuralPCError(f"KrylovUNet: the network raised at apply "
                                          f"{self._applies}: {type(error).__name__}: {error}")
                self._agree_failure(pc, error)
                self._on_failure(pc, x, y, None)
                return
            t0 = time.perf_counter()
            if self._parallel:
                if z is not None:
                    self._seq.setArray(z)
                with log_event("KUNetScatter"):
                    self._scatter.scatter(self._seq, y, addv=PETSc.InsertMode.INSERT,
                                          mode=PETSc.ScatterMode.REVERSE)
            else:
                y.setArray(z)
            self._times["gather"] += time.perf_counter() - t0

    def _agree_failure(self, pc: PETSc.PC, error: Exception | None) -> None:
        """Rank 0's exception (if any) raised on every rank."""
        from pcshell import agree

        if self._parallel:
            msg = pc.getComm().tompi4py().bcast(None if error is None else str(error), root=0)
            error = None if msg is None else NeuralPCError(msg)
        agree(PETSc.COMM_SELF, error, "network apply")

    def matApply(self, pc: PETSc.PC, X: PETSc.Mat, Y: PETSc.Mat) -> None:  # noqa: N802
        """Column by column (each apply gathers the whole grid on rank 0)."""
        self.apply_columns(pc, X, Y)

    # -- view ------------------------------------------------------------------------
    def view_details(self, pc: PETSc.PC) -> list[str]:
        if self.model is None or not self._info:
            return ["(not set up)"]
        lines = ModelPC.view_details(self, pc)
        info, t = self._info, self._times
        size = pc.getComm().getSize()
        lines.append(f"grid {info['G']}^3 3D nodes ({info['n3']} rows); {info['n1']} 1D rows "
                     "eliminated exactly (sparse LU of A_11)" if info["n1"] else
                     f"grid {info['G']}^3 3D nodes ({info['n3']} rows); no 1D rows "
                     "(the operator is a 3D block)")
        where = (f"network on rank 0 of {size}: the residual is gathered to rank 0 and the "
                 "correction scattered back at every apply" if size > 1 else
                 "network on this process")
        lines.append(where)
        lines.append(f"applies {self._applies}; time so far: network {t['network']:.3g} s, "
                     f"1D elimination {t['oned']:.3g} s, gather/scatter {t['gather']:.3g} s "
                     "(rank 0)")
        if self.nonlinear:
            lines.append("nonlinear in the residual: valid under flexible Krylov methods "
                         "(fgmres, fcg, gcr, ...)")
        return lines
