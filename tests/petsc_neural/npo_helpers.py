"""Small graphs, a dense loop-by-loop reference of the NAMG operator, and NPO solve helpers.

Imported by name (pytest prepend mode), hence the unique module name.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch

from petsc_neural.npo.train import TrainSample, rigid_body_modes


def grid_laplacian(n: int, varying: bool = True) -> tuple[sp.csr_matrix, np.ndarray]:
    """5-point Laplacian on an n x n grid (a varying diagonal) and its node coordinates."""
    T = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(n, n))
    A = (sp.kron(T, sp.eye(n)) + sp.kron(sp.eye(n), T)).tocsr()
    if varying:
        A = A + sp.diags(0.1 * (np.arange(n * n) % 5))
    X, Y = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n), indexing="ij")
    return A.tocsr(), np.stack([X.ravel(), Y.ravel()], axis=1)


def block_operator(A: sp.csr_matrix, bs: int) -> sp.csr_matrix:
    """A coupled vector operator with ``bs`` interleaved components (SPD)."""
    C = np.eye(bs) + 0.3 * (np.ones((bs, bs)) - np.eye(bs))
    return sp.kron(A, C).tocsr()


def to_torch_csr(A: sp.csr_matrix) -> torch.Tensor:
    return torch.sparse_csr_tensor(
        torch.from_numpy(A.indptr.astype(np.int64)),
        torch.from_numpy(A.indices.astype(np.int64)),
        torch.from_numpy(A.data.astype(np.float64)),
        A.shape,
    )


def train_sample(A: sp.csr_matrix, coords: np.ndarray, seed: int = 0, bs: int = 1) -> TrainSample:
    """A training sample whose 'recorded iterates' are Jacobi-free exact errors."""
    rng = np.random.default_rng(seed)
    n = A.shape[0]
    b = rng.standard_normal(n)
    x = sp.linalg.spsolve(A.tocsc(), b)
    # Iterates x_k = x - e_k with smooth and rough errors; r_k = A e_k.
    E = np.stack([x * (0.5**k) + 0.01 * rng.standard_normal(n) for k in range(4)], axis=1)
    return TrainSample(
        A=to_torch_csr(A),
        diag=torch.from_numpy(A.diagonal().copy()),
        coords=torch.from_numpy(coords),
        near_nullspace=torch.from_numpy(rigid_body_modes(coords)) if bs > 1 else None,
        b=torch.from_numpy(b),
        R_rec=torch.from_numpy(A @ E),
        E_rec=torch.from_numpy(E),
    )


# ------------------------------------------------------------------ dense reference
def _lin(P: dict, name: str, x: np.ndarray) -> np.ndarray:
    return x @ P[name + ".weight"].T + P[name + ".bias"]


def _layernorm(P: dict, name: str, x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        mu = x[i].mean()
        var = ((x[i] - mu) ** 2).mean()
        out[i] = (x[i] - mu) / math.sqrt(var + 1e-5) * P[name + ".weight"] + P[name + ".bias"]
    return out


def _softmax_rows(S: np.ndarray) -> np.ndarray:
    out = np.empty_like(S)
    for i in range(S.shape[0]):
        e = np.exp(S[i] - S[i].max())
        out[i] = e / e.sum()
    return out


def reference_namg(net, r: np.ndarray, A: np.ndarray, coords: np.ndarray,
                   nns: np.ndarray | None = None) -> np.ndarray:
    """The NAMG forward written densely, loop by loop, from the module's docstring."""
    P = {k: v.detach().double().numpy() for k, v in net.state_dict().items()}
    cfg = net.config_dict
    bs, m, nf = cfg["block_size"], cfg["n_coarse"], cfg["n_fourier"]
    n = len(r)
    d = np.diag(A).copy()
    d[d <= 0] = 1.0
    dis = 1.0 / np.sqrt(d)
    Ah = dis[:, None] * A * dis[None, :]
    Aabs = np.abs(Ah) / np.abs(Ah).sum(axis=1, keepdims=True)
    rh = r * dis
    s = math.sqrt(np.mean(rh * rh))
    rh = rh / s
    y = np.zeros(n)
    for i in range(cfg["pre"]):
        y = y + P["omega_pre"][i] * (rh - Ah @ y)
    rho = rh - Ah @ y
    # Positional features, one dof at a time.
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    pos = []
    for i in range(n):
        node = coords[i // bs]
        x = np.zeros(3)
        x[: len(node)] = (node - lo) / np.maximum(hi - lo, 1e-12)
        ang = [x[dd] * math.pi * k for dd in range(3) for k in range(1, nf + 1)]
        onehot = [1.0 if c == i % bs else 0.0 for c in range(bs)]
        pos.append(list(x) + list(np.sin(ang)) + list(np.cos(ang)) + [1.0] + onehot)
    pos = np.array(pos)
    h = _lin(P, "lift", np.column_stack([rh, y, rho, Ah @ rh, pos]))

    def relax(prefix, h, rho):
        z = np.column_stack([h, Ah @ h, rho])
        return h + _lin(P, prefix + ".lin2", np.maximum(_lin(P, prefix + ".lin1", z), 0.0))

    for i in range(cfg["pre"]):
        h = relax(f"pre_layers.{i}", h, rho)
    W = _softmax_rows(_lin(P, "w_coarse", h) / cfg["tau"])
    if bs > 1:
        for node in range(n // bs):
            W[node * bs:(node + 1) * bs] = W[node * bs:(node + 1) * bs].mean(axis=0)
    E = Aabs @ W
    xc = (E.T @ h) / (E.sum(axis=0)[:, None] + 1e-12)
    if cfg["galerkin"]:
        basis = nns if nns is not None else np.eye(bs)[np.arange(n) % bs]
        basis = basis * np.sqrt(d)[:, None]
        k = basis.shape[1]
        Pm = np.zeros((n, m * k))
        for t in range(m):
            for j in range(k):
                col = E[:, t] * basis[:, j]
                Pm[:, t * k + j] = col / max(np.linalg.norm(col), 1e-30)
        Ac = Pm.T @ Ah @ Pm
        Ac = 0.5 * (Ac + Ac.T) + 1e-10 * np.eye(m * k)
        yc = np.linalg.solve(Ac, Pm.T @ (rh - Ah @ y))
        y = y + P["gamma"][0] * (Pm @ yc)
        tok = np.linalg.norm(yc.reshape(m, k), axis=1)
        tok = tok / max(math.sqrt(np.mean(tok * tok)), 1e-30)
        xc = xc + _lin(P, "coarse_in", tok[:, None])
    # Coarse self-attention, head by head, token by token.
    heads = cfg["heads"]
    hd = cfg["width"] // heads
    z = _layernorm(P, "attention.norm1", xc)
    q, kk, v = (_lin(P, f"attention.{w}", z) for w in ("q", "k", "v"))
    att_out = np.zeros_like(xc)
    for hh in range(heads):
        sl = slice(hh * hd, (hh + 1) * hd)
        for t in range(m):
            scores = np.array([q[t, sl] @ kk[u, sl] / math.sqrt(hd) for u in range(m)])
            w = np.exp(scores - scores.max())
            w /= w.sum()
            att_out[t, sl] = sum(w[u] * v[u, sl] for u in range(m))
    x1 = xc + _lin(P, "attention.o", att_out)
    mlp = _lin(P, "attention.mlp1", _layernorm(P, "attention.norm2", x1))
    xc = x1 + _lin(P, "attention.mlp2", np.maximum(mlp, 0.0))
    h = h + E @ xc
    for i in range(cfg["post"]):
        rho = rh - Ah @ y
        y = y + P["omega_post"][i] * rho
        h = relax(f"post_layers.{i}", h, rho)
    head = _lin(P, "head2", np.maximum(_lin(P, "head1", h), 0.0))[:, 0]
    out = y + P["alpha"][0] * head
    return out * dis * s


# ------------------------------------------------------------------ PETSc-side helpers
def tiny_model(path: str, steps: int = 20, seed: int = 0) -> str:
    """Train a small NPO on 5-point grid Laplacians (not a Firedrake problem) and save it."""
    from petsc_neural.npo.train import TrainConfig, export_model, train

    samples = []
    for i, n in enumerate((10, 14)):
        A, coords = grid_laplacian(n)
        samples.append(train_sample(A, coords, seed=i))
    cfg = TrainConfig(family="grid_laplacian", size=12, steps=steps, lr=5e-3, batch=6,
                      seed=seed, network=dict(width=16, heads=4, n_coarse=32))
    net, hist = train(cfg, samples)
    export_model(net, path, cfg, hist)
    return path


def npo_params(model: str | None, ksp_type: str = "fgmres", rtol: float = 1e-10) -> dict:
    params = {
        "ksp_type": ksp_type,
        "ksp_rtol": rtol,
        "ksp_atol": 0.0,
        "ksp_max_it": 1000,
        "ksp_gmres_restart": 1000,
        "ksp_norm_type": "unpreconditioned",
        "pc_type": "python",
        "pc_python_type": "petsc_neural.NPO",
    }
    if model is not None:
        params["pc_neural_model"] = model
    return params


def plain_params(pc_type: str = "none", rtol: float = 1e-10) -> dict:
    return {
        "ksp_type": "gmres",
        "ksp_rtol": rtol,
        "ksp_atol": 0.0,
        "ksp_max_it": 1000,
        "ksp_gmres_restart": 1000,
        "ksp_norm_type": "unpreconditioned",
        "pc_type": pc_type,
    }
