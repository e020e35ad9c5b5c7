"""NPO-MG: roots and candidates, the attention transfer network, the two-grid loss, the PC.

Correctness only (speed goals live in scripts/npo_scaling.py): the MIS is an
MIS, the network's weights are convex and equivariant, the training cycle is
the cycle PETSc applies, a tiny model transfers over refinements, and 2 ranks
need about the iterations of one.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from mpi4py import MPI
from petsc4py import PETSc

from firedrake_problems import make_problem
from pcshell import load_model, to_scipy
from petsc_neural.coarse import mg_hierarchy
from petsc_neural.coarse.aggregation import strength_graph
from petsc_neural.coarse.prolongation import jacobi_omega, smooth_prolongator, token_prolongator
from petsc_neural.coarse.roots import candidate_tokens, mis2_roots, nearest_weights, token_graph
from petsc_neural.npo_mg.features import coarsen, level_graph
from petsc_neural.npo_mg.loss import dense_prolongator, two_grid
from petsc_neural.npo_mg.network import AttentionTransfer, level_inputs
from petsc_neural.npo_mg.train import TrainConfig, export_model, gershgorin_omega, make_levels
from petsc_neural.npo_mg.train import train as train_npo_mg
from petsc_neural.registry import get_method

NPO_MG = {"pc_type": "python", "pc_python_type": "petsc_neural.NPOMultigrid"}


def _grid(n: int) -> tuple[sp.csr_matrix, np.ndarray]:
    T = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(n, n))
    A = (sp.kron(T, sp.eye(n)) + sp.kron(sp.eye(n), T)).tocsr()
    X, Y = np.meshgrid(np.arange(n) / n, np.arange(n) / n, indexing="ij")
    return A, np.stack([X.ravel(), Y.ravel()], axis=1)


def _distances(G: sp.csr_matrix, sources: np.ndarray, depth: int) -> np.ndarray:
    """Hop distance (capped at depth + 1) from the nearest source, by breadth-first sweeps."""
    d = np.full(G.shape[0], depth + 1)
    d[sources] = 0
    front = np.zeros(G.shape[0], bool)
    front[sources] = True
    for k in range(1, depth + 1):
        front = (G @ front.astype(float) > 0) & (d > k)
        d[front] = k
    return d


# ----------------------------------------------------------------------------- roots
@pytest.mark.parametrize("distance", [1, 2])
def test_mis_is_independent_and_maximal(distance):
    rng = np.random.default_rng(0)
    A, _ = _grid(15)
    A = A + sp.random(225, 225, density=0.01, random_state=1)  # some irregular edges
    G = strength_graph(A + A.T)
    eligible = np.ones(225, bool)
    eligible[rng.choice(225, 10, replace=False)] = False
    root = mis2_roots(G, rng.permutation(225), eligible, distance)
    assert not root[~eligible].any()
    roots = np.flatnonzero(root)
    for r in roots:  # no other root within `distance` edges
        d = _distances(G, np.array([r]), distance)
        assert (d[roots] <= distance).sum() == 1
    d = _distances(G, roots, distance)
    assert (d[eligible] <= distance).all()  # maximal


def test_candidates_are_the_roots_within_two_edges_nearest_first():
    A, _ = _grid(12)
    G = strength_graph(A)
    root = mis2_roots(G, np.random.default_rng(3).permutation(144), np.ones(144, bool))
    c = candidate_tokens(G, root, max_candidates=16)
    roots = np.flatnonzero(root)
    for i in range(144):
        slots = c.index[i][c.index[i] >= 0]
        if root[i]:
            assert list(slots) == [np.flatnonzero(roots == i)[0]] and c.hop[i, 0] == 0
            continue
        d = _distances(G, np.array([i]), 2)
        within = set(np.flatnonzero(d[roots] <= 2))
        assert set(slots) == within and len(within) >= 1
        hops = c.hop[i, : len(slots)]
        assert list(hops) == sorted(hops)
        assert all(hops[k] == d[roots[s]] for k, s in enumerate(slots))
    tg = token_graph(c)
    assert (tg[:, 0] == np.arange(c.n_tokens)).all()  # every token attends to itself first
    W = nearest_weights(c)
    assert np.allclose(W.sum(axis=1), 1.0)


# ----------------------------------------------------------------------------- network
def _level(n=10, coords=True):
    A, X = _grid(n)
    G, c = coarsen(A, X if coords else None)
    return A, level_graph(A, X if coords else None, G, c)


def test_network_scripts_and_gives_convex_weights():
    torch.manual_seed(0)
    net = torch.jit.script(AttentionTransfer().double())
    A, g = _level()
    W = net(*level_inputs(g, torch.float64))
    mask = torch.from_numpy(g.candidates.mask)
    assert W.shape == mask.shape and (W >= 0).all()
    assert torch.allclose(W.sum(1), torch.ones(W.shape[0], dtype=W.dtype))
    assert (W[~mask] == 0).all()


def test_network_is_equivariant_to_renumbering():
    """Renumbering the rows (and so the tokens) permutes the weights, nothing else."""
    torch.manual_seed(1)
    net = AttentionTransfer().double()
    A, X = _grid(9)
    perm = np.random.default_rng(2).permutation(81)
    Ap = A[perm][:, perm].tocsr()
    Ap.sort_indices()
    out = []
    for M, Y in ((A, X), (Ap, X[perm])):
        G, c = coarsen(M, Y)  # roots keyed by coordinates: the same nodes
        g = level_graph(M, Y, G, c)
        W = net(*level_inputs(g, torch.float64)).detach().numpy()
        out.append({(tuple(Y[i]), tuple(Y[c.roots[t]])): W[i, k]
                    for i in range(M.shape[0]) for k, t in enumerate(c.index[i]) if t >= 0})
    assert out[0].keys() == out[1].keys()
    assert max(abs(out[0][k] - out[1][k]) for k in out[0]) < 1e-12


# ----------------------------------------------------------------------------- training cycle
def test_training_cycle_is_the_cycle_petsc_applies():
    """The torch two-grid cycle equals PETSc's two-level PCMG with the same P and smoother."""
    A, X = _grid(12)
    A = (A + sp.diags(0.2 + np.arange(144) % 3)).tocsr()
    G, c = coarsen(A, X)
    W = np.random.default_rng(0).random(c.index.shape) * c.mask
    W /= W.sum(1, keepdims=True)
    omega = gershgorin_omega(A)
    At = torch.sparse_csr_tensor(torch.from_numpy(A.indptr.astype(np.int64)),
                                 torch.from_numpy(A.indices.astype(np.int64)),
                                 torch.from_numpy(A.data), A.shape)
    dinv = torch.from_numpy(1.0 / A.diagonal())
    P = dense_prolongator(torch.from_numpy(W), torch.from_numpy(c.index), c.n_tokens, At, dinv,
                          omega)
    r = np.random.default_rng(1).standard_normal(144)
    z_torch = two_grid(At, dinv, P, torch.from_numpy(r).unsqueeze(1), 2, omega)[:, 0].numpy()

    Ap = PETSc.Mat().createAIJ(A.shape, csr=(A.indptr, A.indices, A.data), comm=PETSc.COMM_SELF)
    assert jacobi_omega(Ap) == pytest.approx(omega)
    T = token_prolongator(c.index, W, c.n_tokens, PETSc.COMM_SELF)
    Pp = smooth_prolongator(Ap, T, omega)
    assert np.allclose(Pp.convert("dense").getDenseArray(), P.numpy(), atol=1e-14)
    mg = mg_hierarchy(Ap, Ap, [Pp], "t_mg_", smoother="jacobi", smooth_its=2, omega=omega)
    x, y = Ap.createVecs()
    x.setArray(r)
    mg.apply(x, y)
    # (the torch cycle shifts A_c by 1e-10 max(diag) to stay invertible)
    assert np.abs(y.getArray() - z_torch).max() <= 1e-8 * np.abs(z_torch).max()
    for obj in (mg, Pp, T, Ap, x, y):
        obj.destroy()


# ----------------------------------------------------------------------------- the PC
def _solve(problem, extra, ksp="cg", rtol=1e-8):
    opts = {"ksp_type": ksp, "ksp_rtol": rtol, "ksp_max_it": 300, **NPO_MG, **extra}
    ksp_ = problem.make_ksp(opts)
    x = problem.A.createVecRight()
    ksp_.solve(problem.b, x)
    assert ksp_.getConvergedReason() > 0, ksp_.getConvergedReason()
    its = ksp_.getIterationNumber()
    ctx = ksp_.getPC().getPythonContext()
    levels = list(ctx.levels)
    ksp_.destroy()
    return its, levels


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A model trained for seconds on 12x12 Poisson (and its Galerkin coarse level)."""
    torch.set_num_threads(1)
    cfg = TrainConfig(problems=[["poisson", {"dim": 2}], ["diffusion", {"mesh": "uniform"}]],
                      sizes=[12], seeds=1, steps=30)
    levels = make_levels(cfg)
    net, hist = train_npo_mg(cfg, levels)
    comm = MPI.COMM_WORLD  # every rank reads the file rank 0 wrote (tmp dirs differ)
    path = comm.bcast(str(tmp_path_factory.mktemp("npo_mg") / "tiny.pt") if comm.rank == 0
                      else None)
    if comm.rank == 0:
        export_model(net, path, cfg, hist)
    comm.Barrier()
    return path


def test_nearest_hierarchy_needs_no_model_and_is_valid_under_cg():
    p = make_problem("poisson", 32, seed=3, dim=2)
    its, levels = _solve(p, {"pc_npo_mg_weights": "nearest", "pc_npo_mg_coarse_size": 50})
    assert its <= 15
    assert len(levels) >= 3 and all(lev["weights"] == "nearest" for lev in levels[:-1])
    assert levels[0]["rows"] == 33 * 33 and levels[0]["tokens"] < levels[0]["rows"] / 4


def test_tiny_model_transfers_over_two_refinements(tiny_model):
    """Trained at 12x12 only; iterations at 48x48 stay within 1.5x those at 12x12."""
    its = {}
    for n in (12, 24, 48):
        p = make_problem("poisson", n, seed=1000, dim=2)
        its[n], levels = _solve(p, {"pc_neural_model": tiny_model,
                                    "pc_npo_mg_coarse_size": 20}, ksp="fgmres")
        assert levels[0]["weights"] == "network"
    assert its[48] <= 1.5 * its[12] + 1, its


def test_pc_refuses_block_operators_and_wrong_models(tmp_path):
    p = make_problem("elasticity", 4, seed=0)
    with pytest.raises(PETSc.Error):
        _solve(p, {"pc_npo_mg_weights": "nearest"})
    npo = get_method("npo").model_path("poisson")
    q = make_problem("poisson", 8, seed=0, dim=2)
    with pytest.raises(PETSc.Error):
        _solve(q, {"pc_neural_model": npo})


def test_bad_option_is_a_clear_error():
    q = make_problem("poisson", 8, seed=0, dim=2)
    with pytest.raises(PETSc.Error) as info:
        _solve(q, {"pc_npo_mg_weights": "magic"})
    assert "weights must be one of model, nearest" in str(info.value.__cause__ or info.value)


@pytest.mark.parallel(nprocs=2)
def test_two_ranks_need_about_the_serial_iterations(tiny_model):
    """Each rank coarsens its own rows; the hierarchy and its coarse solve are global."""
    for extra in ({"pc_npo_mg_weights": "nearest"}, {"pc_neural_model": tiny_model}):
        extra = {**extra, "pc_npo_mg_coarse_size": 30}
        par = make_problem("poisson", 40, seed=1000, dim=2)
        its2, _ = _solve(par, extra)
        ser = make_problem("poisson", 40, seed=1000, dim=2, comm=MPI.COMM_SELF)
        its1, _ = _solve(ser, extra)
        assert its2 <= 1.2 * its1 + 1, (extra, its1, its2)


def test_shipped_model_loads_and_preconditions():
    spec = get_method("npo_mg")
    path = spec.model_path()
    assert os.path.getsize(path) < 1024 * 1024
    m = load_model(path, method="npo_mg")
    assert m.metadata.linear and m.metadata.block_size == 1
    p = make_problem("poisson", 24, seed=7, dim=2, mesh="jittered")
    # no model option: the shipped model (a small coarse size, so that 625 rows get two levels)
    its, levels = _solve(p, {"pc_npo_mg_coarse_size": 60})
    assert len(levels) >= 2 and levels[0]["weights"] == "network"
    assert its <= 15, its
    A = to_scipy(p.A)
    assert levels[0]["rows"] == A.shape[0]
