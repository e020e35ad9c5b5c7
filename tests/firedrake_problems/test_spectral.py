"""Chebyshev collocation (seed 004): cheb, Clenshaw-Curtis, the BVP systems and their files."""

import numpy as np
import pytest

from firedrake_problems import spectral
from firedrake_problems.spectral import (
    BVPParams,
    bvp_operator,
    cheb,
    clencurt,
    coefficient_k,
    generate,
    load_spectral,
    reaction_q,
    save_spectral,
)


def test_cheb_known_values():
    D, x = cheb(1)
    np.testing.assert_allclose(x, [1.0, -1.0])
    np.testing.assert_allclose(D, [[0.5, -0.5], [0.5, -0.5]], atol=1e-15)
    D, x = cheb(2)
    np.testing.assert_allclose(x, [1.0, 0.0, -1.0], atol=1e-15)
    np.testing.assert_allclose(D, [[1.5, -2.0, 0.5], [0.5, 0.0, -0.5], [-0.5, 2.0, -1.5]],
                               atol=1e-14)
    D, x = cheb(4)  # Trefethen, Spectral Methods in MATLAB, p. 53: D_00 = (2N^2+1)/6
    assert D[0, 0] == pytest.approx(5.5, rel=1e-13)
    assert D[4, 4] == pytest.approx(-5.5, rel=1e-13)
    assert D[0, 1] == pytest.approx(-2.0 / (1.0 - np.cos(np.pi / 4)), rel=1e-13)  # -6.8284
    assert D[2, 2] == pytest.approx(0.0, abs=1e-14)


@pytest.mark.parametrize("N", [5, 8, 16])
def test_cheb_matches_the_closed_form(N):
    D, x = cheb(N)
    c = np.ones(N + 1)
    c[0] = c[N] = 2.0
    for i in range(N + 1):
        for j in range(N + 1):
            if i != j:
                ref = c[i] / c[j] * (-1.0) ** (i + j) / (x[i] - x[j])
            elif i == 0:
                ref = (2 * N**2 + 1) / 6
            elif i == N:
                ref = -(2 * N**2 + 1) / 6
            else:
                ref = -x[i] / (2 * (1 - x[i] ** 2))
            assert D[i, j] == pytest.approx(ref, rel=1e-10, abs=1e-10 * N**2)


@pytest.mark.parametrize("N", [4, 11, 24])
def test_cheb_differentiates_polynomials_exactly(N):
    D, x = cheb(N)
    rng = np.random.default_rng(N)
    for deg in range(N + 1):
        coef = rng.standard_normal(deg + 1)
        p = np.polynomial.Chebyshev(coef)
        np.testing.assert_allclose(D @ p(x), p.deriv()(x), atol=1e-10 * N**2 * np.abs(coef).sum())
    # degree N + 1 is not exact: the interpolant differs
    q = np.polynomial.Chebyshev.basis(N + 1)
    assert np.abs(D @ q(x) - q.deriv()(x)).max() > 1.0


def test_clencurt_integrates_polynomials_exactly():
    x, w = clencurt(12)
    for k in range(13):
        exact = (1 - (-1) ** (k + 1)) / (k + 1)
        assert w @ x**k == pytest.approx(exact, abs=1e-14)
    x, w = clencurt(7)
    assert w.sum() == pytest.approx(2.0, abs=1e-14)


@pytest.mark.parametrize("kind", spectral.KINDS)
def test_bvp_system_solves_to_a_manufactured_solution(kind):
    """u = sin(pi x / L) exp(x / L) vanishes at 0 and L; f is -(K u')' (+ q u) (+ (v u)')."""
    L = spectral.DOMAIN[1]
    p = BVPParams(kind, alpha=0.6, omega=0.4, velocity=-1.3 if kind == "advection" else 0.0)
    a = np.pi / L

    def u(x):
        return np.sin(a * x) * np.exp(x / L)

    def du(x):
        return (a * np.cos(a * x) + np.sin(a * x) / L) * np.exp(x / L)

    def d2u(x):
        return (-a**2 * np.sin(a * x) + 2 * a / L * np.cos(a * x) + np.sin(a * x) / L**2) \
            * np.exp(x / L)

    def f(x):
        K = coefficient_k(x, p.alpha, p.omega)
        dK = -p.alpha * 2 * np.pi * p.omega * np.sin(2 * np.pi * p.omega * x)
        out = -(dK * du(x) + K * d2u(x))
        if kind == "reaction":
            out = out + reaction_q(x) * u(x)
        if kind == "advection":
            out = out + p.velocity * du(x)
        return out

    errs = []
    for n in (16, 32, 64):
        A, x = bvp_operator(p, n)
        assert A.shape == (n, n) and x.shape == (n,)
        assert np.all((x > 0) & (x < L))
        sol = np.linalg.solve(A, f(x))
        errs.append(np.abs(sol - u(x)).max())
    assert errs[-1] < 1e-9, errs
    assert errs[0] > errs[1] > errs[2] or errs[1] < 1e-10, errs  # spectral convergence


def test_generate_is_deterministic_nested_and_well_posed():
    a = generate("diffusion", 6, seed=3, n=24)
    b = generate("diffusion", 3, seed=3, n=24)
    np.testing.assert_array_equal(a.A[:3], b.A)
    np.testing.assert_array_equal(a.b[:3], b.b)
    c = generate("diffusion", 3, seed=4, n=24)
    assert not np.allclose(a.b[:3], c.b)
    np.testing.assert_allclose(np.einsum("kij,kj->ki", a.A, a.x), a.b, rtol=1e-9, atol=1e-9)
    assert np.all((a.alpha >= 0.25) & (a.alpha <= 0.75))
    assert np.all((a.omega >= 0.01) & (a.omega <= 0.75))
    adv = generate("advection", 20, seed=0, n=16)
    assert np.all(np.abs(adv.velocity) <= 2.0) and adv.velocity.std() > 0.5
    assert np.all(a.b > 0)  # a positive source: (1 - alpha) + alpha * (lognormal field)


def test_source_term_has_unit_average_field():
    rng = np.random.default_rng(0)
    alpha = 0.4
    f = spectral.source_term(alpha, rng, n=64)
    _, w = clencurt(65)
    r = (f - (1 - alpha)) / alpha
    assert w @ r / 2 == pytest.approx(1.0, rel=1e-12)


def test_condition_numbers_are_of_order_1e5():
    """The paper (section 5, appendix D): condition numbers of order 1e5 for n = 64."""
    for kind in spectral.KINDS:
        data = generate(kind, 4, seed=0, n=64)
        cond = np.linalg.cond(data.A)
        assert np.all((cond > 1e4) & (cond < 1e7)), (kind, cond)


def test_save_and_load_round_trip(tmp_path):
    data = generate("reaction", 5, seed=1, n=16)
    path = save_spectral(data, tmp_path / "r.h5")
    back = load_spectral(path)
    for name in ("A", "b", "x", "alpha", "omega", "velocity"):
        np.testing.assert_array_equal(getattr(back, name), getattr(data, name))
    assert back.kind == "reaction" and back.seed == 1 and back.attrs["n"] == 16
    assert not list(tmp_path.glob("*.part*"))


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown BVP kind"):
        generate("wave", 2, 0)


def test_to_petsc_round_trip():
    from petsc4py import PETSc

    data = generate("advection", 1, seed=2, n=12)
    M, v = spectral.to_petsc(data.A[0], data.b[0], comm=PETSc.COMM_SELF)
    np.testing.assert_array_equal(M.getValues(range(12), range(12)), data.A[0])
    np.testing.assert_array_equal(v.getArray(), data.b[0])
    M.destroy()
    v.destroy()


def test_cached_set_reuses_a_larger_file(tmp_path):
    from firedrake_problems.spectral import cached_set

    big = cached_set("diffusion", 6, seed=2, directory=tmp_path, n=12)
    small = cached_set("diffusion", 4, seed=2, directory=tmp_path, n=12)
    assert len(list(tmp_path.glob("*.h5"))) == 1
    np.testing.assert_array_equal(small.A, big.A[:4])
    np.testing.assert_array_equal(small.x, generate("diffusion", 4, seed=2, n=12).x)
