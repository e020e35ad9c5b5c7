"""The differentiable FGMRES of petsc_neural.krylov against PETSc, finite differences and itself."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from petsc_neural.krylov import fgmres


def convection_diffusion(n: int, wind: float = 0.3) -> sp.csr_matrix:
    """A nonsymmetric 2D convection-diffusion matrix on an n x n grid (upwind)."""
    T = sp.diags([-1.0 - wind, 2.0, -1.0 + wind], [-1, 0, 1], shape=(n, n))
    return (sp.kron(T, sp.eye(n)) + sp.kron(sp.eye(n), T) + 0.05 * sp.eye(n * n)).tocsr()


def fixed_preconditioner(A: sp.csr_matrix, seed: int) -> sp.csr_matrix:
    """A fixed linear, not symmetric, preconditioner: Jacobi plus a random sparse part."""
    rng = np.random.default_rng(seed)
    n = A.shape[0]
    R = sp.random(n, n, density=3.0 / n, random_state=rng, data_rvs=rng.standard_normal)
    return (sp.diags(1.0 / A.diagonal()) + 0.05 * R).tocsr()


def _mv(M: sp.csr_matrix, dtype=torch.float64):
    Md = torch.from_numpy(M.toarray()).to(dtype)
    return lambda X: X @ Md.T


def test_matches_petsc_fgmres_residual_history():
    from petsc4py import PETSc

    n, m = 12, 25
    A = convection_diffusion(n)
    P = fixed_preconditioner(A, 1)
    b = np.random.default_rng(2).standard_normal(n * n)

    def petsc_mat(M):
        return PETSc.Mat().createAIJ(size=M.shape, csr=(M.indptr, M.indices, M.data),
                                     comm=PETSc.COMM_SELF)

    Ap, Pp = petsc_mat(A), petsc_mat(P)
    ksp = PETSc.KSP().create(comm=PETSc.COMM_SELF)
    ksp.setOperators(Ap, Pp)
    ksp.setType("fgmres")
    ksp.setGMRESRestart(m)
    ksp.getPC().setType("mat")  # applies Pp itself: a fixed linear preconditioner
    opts = PETSc.Options()
    opts["ksp_gmres_modifiedgramschmidt"] = None
    try:
        ksp.setFromOptions()
    finally:
        opts.delValue("ksp_gmres_modifiedgramschmidt")
    ksp.setTolerances(rtol=1e-30, atol=1e-300, max_it=m)
    ksp.setConvergenceHistory()
    bv, xv = Ap.createVecs()
    bv.setArray(b)
    xv.set(0.0)
    ksp.solve(bv, xv)
    hist = np.asarray(ksp.getConvergenceHistory())
    assert len(hist) == m + 1

    res = fgmres(_mv(A), torch.from_numpy(b), _mv(P), m)
    ours = res.residual_norms[0].numpy()
    np.testing.assert_allclose(ours, hist, rtol=1e-10, atol=0)
    np.testing.assert_allclose(res.x.numpy(), xv.getArray(), rtol=1e-8,
                               atol=1e-10 * np.abs(xv.getArray()).max())
    for obj in (ksp, Ap, Pp, bv, xv):
        obj.destroy()


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 2e-3)])
def test_sines_are_ratios_of_successive_true_residual_norms(dtype, tol):
    n, m = 10, 15
    A = convection_diffusion(n)
    P = fixed_preconditioner(A, 3)
    rng = np.random.default_rng(4)
    b = torch.from_numpy(rng.standard_normal((3, n * n))).to(dtype)
    res = fgmres(_mv(A, dtype), b, _mv(P, dtype), m)
    assert res.sines.dtype == dtype and res.sines.shape == (3, m)
    Ad = torch.from_numpy(A.toarray()).to(torch.float64)
    true = [torch.linalg.vector_norm(b.double() - res.iterate(k).double() @ Ad.T, dim=-1)
            for k in range(m + 1)]
    true = torch.stack(true, dim=-1)
    ratio = true[:, 1:] / true[:, :-1]
    torch.testing.assert_close(res.sines.double(), ratio, rtol=tol, atol=tol)
    # and the Givens estimates are the residual norms
    torch.testing.assert_close(res.residual_norms.double(), true, rtol=tol, atol=0)
    assert bool((res.sines > 0).all() and (res.sines < 1).all())


def test_gradient_wrt_preconditioner_parameter_matches_finite_differences():
    n, m = 8, 8
    A = convection_diffusion(n)
    Ad = torch.from_numpy(A.toarray())
    dinv = torch.from_numpy(1.0 / A.diagonal())
    rng = np.random.default_rng(5)
    W = torch.from_numpy(rng.standard_normal((n * n, n * n)) / n)
    b = torch.from_numpy(rng.standard_normal((2, n * n)))

    def loss(theta: torch.Tensor) -> torch.Tensor:
        # A nonlinear preconditioner with parameters: scaled Jacobi plus a tanh correction.
        def prec(V):
            return dinv * V * torch.exp(theta[0]) + theta[1] * torch.tanh(V @ W.T)

        return fgmres(lambda X: X @ Ad.T, b, prec, m).sines.abs().mean()

    theta = torch.tensor([0.1, 0.3], dtype=torch.float64, requires_grad=True)
    value = loss(theta)
    value.backward()
    grad = theta.grad.clone()
    assert torch.isfinite(grad).all() and grad.abs().max() > 1e-4
    eps = 1e-6
    fd = []
    for i in range(2):
        e = torch.zeros(2, dtype=torch.float64)
        e[i] = eps
        with torch.no_grad():
            fd.append(float(loss(theta + e) - loss(theta - e)) / (2 * eps))
    np.testing.assert_allclose(grad.numpy(), fd, rtol=1e-6, atol=1e-9)


def test_batched_equals_one_by_one_with_different_operators():
    m = 7
    mats = [convection_diffusion(6, w) for w in (0.0, 0.2, 0.4)]
    Ads = [torch.from_numpy(M.toarray()) for M in mats]
    b = torch.from_numpy(np.random.default_rng(6).standard_normal((3, 36)))

    def mv(X):
        return torch.stack([X[i] @ Ads[i].T for i in range(3)])

    batch = fgmres(mv, b, None, m)
    for i in range(3):
        one = fgmres(lambda X, i=i: X @ Ads[i].T, b[i], None, m)
        torch.testing.assert_close(batch.residual_norms[i], one.residual_norms[0], rtol=1e-12,
                                   atol=1e-14)
        torch.testing.assert_close(batch.x[i], one.x, rtol=1e-10, atol=1e-12)


def test_happy_breakdown_gives_zero_sines_and_finite_gradients():
    A = convection_diffusion(5)
    Ad = torch.from_numpy(A.toarray())
    Ainv = torch.linalg.inv(Ad)
    b = torch.from_numpy(np.random.default_rng(7).standard_normal((2, 25)))
    scale = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)

    def prec(V):  # the exact inverse for system 0, a poor one for system 1
        return torch.stack([scale * (V[0] @ Ainv.T), scale * V[1]])

    res = fgmres(lambda X: X @ Ad.T, b, prec, 5)
    assert float(res.sines[0].detach().abs().max()) < 1e-12
    assert float(res.sines[1].detach().min()) > 1e-3
    np.testing.assert_allclose(res.x[0].detach().numpy(),
                               torch.linalg.solve(Ad, b[0]).numpy(), rtol=1e-10, atol=1e-12)
    res.sines.abs().mean().backward()
    assert torch.isfinite(scale.grad)


def test_early_stop_and_argument_checks():
    A = convection_diffusion(6)
    b = torch.from_numpy(np.random.default_rng(8).standard_normal(36))
    res = fgmres(_mv(A), b, None, 100, rtol=1e-6)
    assert res.iterations < 100
    assert float(res.residual_norms[0, -1]) <= 1e-6 * float(res.residual_norms[0, 0])
    with pytest.raises(ValueError, match="m must be"):
        fgmres(_mv(A), b, None, 0)
    with pytest.raises(ValueError, match="b must be"):
        fgmres(_mv(A), b.reshape(1, 1, -1), None, 3)
