"""Random fields that do not depend on the parallel decomposition.

Every random quantity in :mod:`firedrake_problems` is a function of *global*
information only (the seed and physical coordinates), never of a rank-local
index, so a problem built on 1 rank and on N ranks is the same problem:

* :func:`grf_values` samples a stationary Gaussian random field by random
  Fourier features (Rahimi & Recht): the frequencies, phases and amplitudes are
  drawn once from ``np.random.default_rng``; the field is then a closed-form
  function of ``x`` evaluated wherever it is needed, in O(n * n_features)
  memory-chunked work (no dense n x n covariance, so it scales to 1e6+ dofs).
* :func:`hashed_normal` gives i.i.d. N(0, 1) samples attached to *points*
  (cell centroids for piecewise-constant coefficients): the point coordinates
  are quantised and hashed together with the seed (SplitMix64), then mapped to
  normals by Box-Muller.  A cell gets the same sample whichever rank owns it.
"""

from __future__ import annotations

import logging

import numpy as np

__all__ = ["grf_values", "hashed_uniform", "hashed_normal", "stream"]

log = logging.getLogger("petsc_neural.problems")

# Independent random streams of one seed (mesh jitter, coefficients, rhs, ...).
STREAMS = {"mesh": 1, "coefficient": 2, "rhs": 3, "parameter": 4, "graph": 5, "rhs2": 6}


def stream(seed: int, name: str) -> np.random.Generator:
    """The random generator of stream ``name`` of ``seed`` (independent streams)."""
    return np.random.default_rng([int(seed), STREAMS[name]])


def grf_values(
    points: np.ndarray,
    rng: np.random.Generator,
    *,
    length_scale: float = 0.1,
    variance: float = 1.0,
    kernel: str = "se",
    nu: float = 1.5,
    n_features: int = 512,
    chunk: int = 65536,
) -> np.ndarray:
    """Sample one zero-mean Gaussian random field at ``points`` (shape (n, d)).

    ``kernel="se"``: covariance ``variance * exp(-|x-y|^2 / (2 l^2))``;
    ``kernel="matern"``: Matérn with smoothness ``nu`` (spectral density is a
    multivariate Student t with 2 nu degrees of freedom).  The sample is
    ``sqrt(2 variance / M) * sum_j a_j cos(w_j . x + phi_j)`` with
    ``a_j ~ N(0, 1)``, ``phi_j ~ U(0, 2 pi)``; its covariance converges to the
    kernel as ``M = n_features`` grows.  Deterministic in ``rng``'s state.
    """
    points = np.atleast_2d(np.asarray(points, dtype=float))
    d = points.shape[1]
    z = rng.standard_normal((n_features, d))
    if kernel == "se":
        omega = z / length_scale
    elif kernel == "matern":
        g = rng.chisquare(2.0 * nu, size=(n_features, 1))
        omega = z / length_scale * np.sqrt(2.0 * nu / g)
    else:
        raise ValueError(f"unknown GRF kernel {kernel!r} (use 'se' or 'matern')")
    phase = rng.uniform(0.0, 2.0 * np.pi, n_features)
    amp = rng.standard_normal(n_features) * np.sqrt(2.0 * variance / n_features)
    out = np.empty(points.shape[0])
    for start in range(0, points.shape[0], chunk):
        p = points[start : start + chunk]
        out[start : start + chunk] = np.cos(p @ omega.T + phase) @ amp
    return out


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hashed_uniform(points: np.ndarray, seed: int, salt: int = 0, resolution: float = 1e-9):
    """U(0, 1) samples, one per point, a function of (rounded point, seed, salt) only."""
    points = np.atleast_2d(np.asarray(points, dtype=float))
    q = np.round(points / resolution).astype(np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        h0 = np.uint64(int(seed) % (1 << 63)) * np.uint64(1000003) + np.uint64(salt)
        h = _splitmix64(np.full(points.shape[0], h0, dtype=np.uint64))
        for k in range(points.shape[1]):
            h = _splitmix64(h ^ q[:, k])
    # 53 random bits -> (0, 1)
    return ((h >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


def hashed_normal(points: np.ndarray, seed: int, salt: int = 0) -> np.ndarray:
    """N(0, 1) samples, one per point, independent of the parallel decomposition."""
    u1 = hashed_uniform(points, seed, 2 * salt + 11)
    u2 = hashed_uniform(points, seed, 2 * salt + 12)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
