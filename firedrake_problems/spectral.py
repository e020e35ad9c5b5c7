"""Chebyshev spectral collocation families for 1D boundary-value problems (seed 004).

No Firedrake and no torch: numpy (and petsc4py for :func:`to_petsc`, h5py for
the dataset files, both imported on use).  The systems are the ones of
Algebraformer (seed 004, appendices C-F): Chebyshev-Gauss-Lobatto collocation
on the domain ``[0, 7.5]`` with homogeneous Dirichlet conditions, ``n = 64``
interior unknowns by default, for

- ``diffusion``:  ``-(K u')' = f``,                    eq. (5)
- ``reaction``:   ``-(K u')' + q u = f``,              eq. (6), ``q = 1/3`` on ``[3, 4.5]``, else 0
- ``advection``:  ``-(K u')' + (v u)' = f``,           eq. (7), ``v`` constant ``~ U(-2, 2)``

with ``K(x) = 1 + alpha cos(2 pi omega x)``, ``alpha ~ U[0.25, 0.75]``,
``omega ~ U[0.01, 0.75]``, and ``f(x) = (1 - alpha) + alpha r(x)`` where
``r`` is a random field with unit average (appendix E; the paper reuses the
symbol ``alpha`` of ``K`` for the blend, and so do we).  Our ``r`` is a
log-normal field, ``r = exp(g) / mean(exp(g))`` with ``g`` a random Fourier
series of 8 modes on the domain (amplitudes ``0.5 N(0,1) / k``), the mean
taken by Clenshaw-Curtis quadrature: positive (a source) and of unit average.

Discretisation (Trefethen, *Spectral Methods in MATLAB*, programs 13 and
33): with ``D`` the Chebyshev differentiation matrix on the ``N + 1 = n + 2``
nodes (:func:`cheb`) scaled to the domain, the operator on all nodes is
``L = -D diag(K) D (+ diag(q)) (+ v D)`` and the system is its interior
block ``A = L[1:-1, 1:-1]`` (the boundary values are zero), with
``b = f(x_interior)``.  The nodes run from ``x = 7.5`` down to ``0``
(Trefethen's order).  The matrices are dense, nonsymmetric and have
condition numbers of order 1e5 for n = 64, as the paper says.

Every sample is deterministic: sample ``i`` of a set with seed ``s`` draws
from ``numpy.random.default_rng([s, i])``, so a set of 100 samples is the
first 100 of a set of 1000 with the same seed.

>>> D, x = cheb(2)
>>> D.round(3).tolist()
[[1.5, -2.0, 0.5], [0.5, -0.0, -0.5], [-0.5, 2.0, -1.5]]
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "cheb",
    "clencurt",
    "DOMAIN",
    "KINDS",
    "PAPER_SIZES",
    "BVPParams",
    "SpectralSet",
    "nodes",
    "coefficient_k",
    "bvp_operator",
    "sample_params",
    "source_term",
    "make_system",
    "generate",
    "save_spectral",
    "load_spectral",
    "to_petsc",
    "FORMAT",
]

#: The paper's domain (appendix D).
DOMAIN = (0.0, 7.5)
#: The three equations of appendix D.
KINDS = ("diffusion", "reaction", "advection")
#: The paper's set sizes (appendix F): (train, test).
PAPER_SIZES = {"diffusion": (50_000, 5_000), "reaction": (250, 5_000),
               "advection": (1_500, 5_000)}
FORMAT = "petsc-neural/spectral-dataset"
VERSION = 1


def cheb(N: int) -> tuple[np.ndarray, np.ndarray]:
    """Chebyshev differentiation matrix and Gauss-Lobatto nodes (Trefethen's ``cheb``).

    Returns ``(D, x)`` with ``x_j = cos(pi j / N)``, ``j = 0..N`` (from 1 down
    to -1) and ``D`` the ``(N+1) x (N+1)`` matrix with ``(D u)_i = p'(x_i)``
    for the degree-``N`` interpolant ``p`` of ``u``.  Off-diagonal entries
    from the closed form ``c_i / c_j (-1)^(i+j) / (x_i - x_j)`` (``c_0 = c_N
    = 2``, else 1); the diagonal by the negative-sum trick (each row of ``D``
    annihilates constants), which is more accurate than the closed form.
    ``N = 0`` gives ``D = [[0]], x = [1]``.
    """
    if N < 0:
        raise ValueError(f"cheb needs N >= 0, got {N}")
    if N == 0:
        return np.zeros((1, 1)), np.ones(1)
    j = np.arange(N + 1)
    x = np.cos(np.pi * j / N)
    c = np.where((j == 0) | (j == N), 2.0, 1.0) * (-1.0) ** j
    dX = x[:, None] - x[None, :]
    D = np.outer(c, 1.0 / c) / (dX + np.eye(N + 1))
    D -= np.diag(D.sum(axis=1))
    return D, x


def clencurt(N: int) -> tuple[np.ndarray, np.ndarray]:
    """Clenshaw-Curtis nodes and weights on ``[-1, 1]`` (Trefethen's ``clencurt``).

    ``sum(w * f(x))`` integrates polynomials of degree ``<= N`` exactly.
    """
    if N < 1:
        raise ValueError(f"clencurt needs N >= 1, got {N}")
    theta = np.pi * np.arange(N + 1) / N
    x = np.cos(theta)
    w = np.zeros(N + 1)
    ii = np.arange(1, N)
    v = np.ones(N - 1)
    if N % 2 == 0:
        w[0] = w[N] = 1.0 / (N**2 - 1)
        for k in range(1, N // 2):
            v -= 2.0 * np.cos(2 * k * theta[ii]) / (4 * k**2 - 1)
        v -= np.cos(N * theta[ii]) / (N**2 - 1)
    else:
        w[0] = w[N] = 1.0 / N**2
        for k in range(1, (N - 1) // 2 + 1):
            v -= 2.0 * np.cos(2 * k * theta[ii]) / (4 * k**2 - 1)
    w[ii] = 2.0 * v / N
    return x, w


def nodes(n: int = 64, domain: tuple[float, float] = DOMAIN) -> tuple[np.ndarray, np.ndarray]:
    """All ``n + 2`` collocation nodes mapped to ``domain`` and ``D`` scaled to them."""
    D, t = cheb(n + 1)
    a, b = domain
    half = 0.5 * (b - a)
    return D / half, a + half * (t + 1.0)


@dataclass(frozen=True)
class BVPParams:
    """The random parameters of one sample (``velocity`` only for advection)."""

    kind: str
    alpha: float
    omega: float
    velocity: float = 0.0


def coefficient_k(x: np.ndarray, alpha: float, omega: float) -> np.ndarray:
    """``K(x) = 1 + alpha cos(2 pi omega x)`` (appendix E)."""
    return 1.0 + alpha * np.cos(2.0 * np.pi * omega * x)


def reaction_q(x: np.ndarray) -> np.ndarray:
    """``q = 1/3`` on ``[3, 4.5]``, else 0 (appendix E)."""
    return np.where((x >= 3.0) & (x <= 4.5), 1.0 / 3.0, 0.0)


def bvp_operator(p: BVPParams, n: int = 64, domain: tuple[float, float] = DOMAIN
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The ``n x n`` collocation matrix of ``p`` and the interior nodes."""
    if p.kind not in KINDS:
        raise ValueError(f"unknown BVP kind {p.kind!r}; known: {', '.join(KINDS)}")
    D, x = nodes(n, domain)
    L = -D @ (coefficient_k(x, p.alpha, p.omega)[:, None] * D)
    if p.kind == "reaction":
        L += np.diag(reaction_q(x))
    elif p.kind == "advection":
        L += p.velocity * D  # (v u)' with a constant v
    return np.ascontiguousarray(L[1:-1, 1:-1]), x[1:-1]


def sample_params(kind: str, rng: np.random.Generator) -> BVPParams:
    """Draw ``alpha``, ``omega`` (and for advection ``v ~ U(-2, 2)``)."""
    alpha = float(rng.uniform(0.25, 0.75))
    omega = float(rng.uniform(0.01, 0.75))
    velocity = float(rng.uniform(-2.0, 2.0)) if kind == "advection" else 0.0
    return BVPParams(kind, alpha, omega, velocity)


def source_term(alpha: float, rng: np.random.Generator, n: int = 64,
                domain: tuple[float, float] = DOMAIN, modes: int = 8,
                amplitude: float = 0.5) -> np.ndarray:
    """``f = (1 - alpha) + alpha r`` on all ``n + 2`` nodes, ``r`` of unit average."""
    _, x = nodes(n, domain)
    a, b = domain
    length = b - a
    k = np.arange(1, modes + 1)
    ca = rng.standard_normal(modes) * amplitude / k
    cb = rng.standard_normal(modes) * amplitude / k
    phase = 2.0 * np.pi * np.outer(x - a, k) / length
    g = np.cos(phase) @ ca + np.sin(phase) @ cb
    e = np.exp(g)
    _, w = clencurt(n + 1)
    mean = float(w @ e) / 2.0  # the weights integrate over [-1, 1] (length 2)
    return (1.0 - alpha) + alpha * e / mean


def make_system(kind: str, rng: np.random.Generator, n: int = 64,
                f: Callable[[np.ndarray], np.ndarray] | None = None
                ) -> tuple[np.ndarray, np.ndarray, BVPParams]:
    """One sample ``(A, b, params)``; ``f`` overrides the random source term."""
    p = sample_params(kind, rng)
    A, xi = bvp_operator(p, n)
    if f is None:
        b = source_term(p.alpha, rng, n)[1:-1]
    else:
        b = np.asarray(f(xi), dtype=float)
    return A, b, p


@dataclass
class SpectralSet:
    """A set of systems ``A x = b`` (``A``: (count, n, n); ``b``, ``x``: (count, n))."""

    kind: str
    seed: int
    A: np.ndarray
    b: np.ndarray
    x: np.ndarray
    alpha: np.ndarray
    omega: np.ndarray
    velocity: np.ndarray
    attrs: dict[str, Any]

    def __len__(self) -> int:
        return int(self.A.shape[0])

    @property
    def n(self) -> int:
        return int(self.A.shape[1])

    def subset(self, count: int) -> SpectralSet:
        """The first ``count`` samples (what a smaller set of the same seed holds)."""
        return SpectralSet(self.kind, self.seed, self.A[:count], self.b[:count],
                           self.x[:count], self.alpha[:count], self.omega[:count],
                           self.velocity[:count], dict(self.attrs, count=count))


def generate(kind: str, count: int, seed: int, n: int = 64,
             progress: bool = False) -> SpectralSet:
    """``count`` samples of ``kind``; sample ``i`` from ``default_rng([seed, i])``.

    The solutions ``x`` are computed by LU with partial pivoting in float64
    (``numpy.linalg.solve``); all three equations give well-posed systems.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown BVP kind {kind!r}; known: {', '.join(KINDS)}")
    A = np.empty((count, n, n))
    b = np.empty((count, n))
    pars = np.empty((count, 3))
    it: Any = range(count)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"{kind} n={n}", unit="sample", leave=False)
    for i in it:
        rng = np.random.default_rng([int(seed), int(i)])
        A[i], b[i], p = make_system(kind, rng, n)
        pars[i] = (p.alpha, p.omega, p.velocity)
    x = np.linalg.solve(A, b[..., None])[..., 0]
    attrs = {"kind": kind, "seed": int(seed), "count": int(count), "n": int(n),
             "domain": list(DOMAIN), "generator": "firedrake_problems.spectral.generate"}
    return SpectralSet(kind, int(seed), A, b, x, pars[:, 0].copy(), pars[:, 1].copy(),
                       pars[:, 2].copy(), attrs)


def save_spectral(data: SpectralSet, path: str | os.PathLike) -> str:
    """Write ``data`` to HDF5, atomically (a temporary file renamed into place).

    Schema: root attrs ``format``, ``version``, ``attrs`` (JSON: kind, seed,
    count, n, domain); datasets ``A`` (count, n, n), ``b``, ``x`` (count, n),
    ``alpha``, ``omega``, ``velocity`` (count,), all float64.  The dense
    Krylov-dataset schema of :mod:`firedrake_problems.datasets` (CSR, recorded
    iterates) does not fit dense spectral systems, hence this small writer.
    """
    import h5py

    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.part{os.getpid()}"
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["version"] = VERSION
            f.attrs["attrs"] = json.dumps(data.attrs, sort_keys=True)
            for name in ("A", "b", "x", "alpha", "omega", "velocity"):
                f.create_dataset(name, data=getattr(data, name))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_spectral(path: str | os.PathLike) -> SpectralSet:
    """Read a file written by :func:`save_spectral` (the arrays bit for bit)."""
    import h5py

    with h5py.File(os.fspath(path), "r") as f:
        if f.attrs.get("format") != FORMAT:
            raise ValueError(f"{path!r} is not a {FORMAT} file")
        if int(f.attrs.get("version", -1)) != VERSION:
            raise ValueError(f"{path!r}: version {f.attrs.get('version')} is not {VERSION}")
        attrs = json.loads(f.attrs["attrs"])
        arrays = {name: f[name][()] for name in ("A", "b", "x", "alpha", "omega", "velocity")}
    return SpectralSet(attrs["kind"], int(attrs["seed"]), attrs=attrs, **arrays)


def cached_set(kind: str, count: int, seed: int, directory: str | os.PathLike,
               n: int = 64, progress: bool = False) -> SpectralSet:
    """``generate(kind, count, seed, n)``, stored in ``directory`` and read back next time.

    A stored set of the same kind, size and seed with more samples serves a
    smaller request (samples are nested: sample ``i`` depends on ``(seed, i)`` only).
    """
    directory = os.fspath(directory)
    stem = f"spectral_{kind}_n{n}_s{seed}_c"
    if os.path.isdir(directory):
        counts = sorted(int(f[len(stem):-3]) for f in os.listdir(directory)
                        if f.startswith(stem) and f.endswith(".h5") and f[len(stem):-3].isdigit())
        larger = [c for c in counts if c >= count]
        if larger:
            data = load_spectral(os.path.join(directory, f"{stem}{larger[0]}.h5"))
            return data if larger[0] == count else data.subset(count)
    data = generate(kind, count, seed, n, progress=progress)
    save_spectral(data, os.path.join(directory, f"{stem}{count}.h5"))
    return data


def to_petsc(A: np.ndarray, b: np.ndarray | None = None, comm: Any = None,
             mat_type: str = "aij") -> tuple[Any, Any]:
    """A dense system as a PETSc ``Mat`` (``aij`` or ``dense``) and ``Vec``, rows split by PETSc."""
    from petsc4py import PETSc

    comm = PETSc.COMM_WORLD if comm is None else comm
    n = A.shape[0]
    M = PETSc.Mat().create(comm=comm)
    M.setSizes(((PETSc.DECIDE, n), (PETSc.DECIDE, n)))
    M.setType(mat_type)
    if mat_type == "aij":
        M.setPreallocationNNZ((n, n))
    M.setUp()
    r0, r1 = M.getOwnershipRange()
    cols = np.arange(n, dtype=PETSc.IntType)
    for i in range(r0, r1):
        M.setValues([i], cols, A[i], addv=PETSc.InsertMode.INSERT_VALUES)
    M.assemble()
    v = None
    if b is not None:
        v = M.createVecLeft()
        v.setArray(np.asarray(b, dtype=PETSc.ScalarType)[r0:r1])
    return M, v
