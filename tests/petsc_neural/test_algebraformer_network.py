"""Algebraformer networks (seed 004): encoding, sizes, scripting, normalisation, training."""

import warnings

import numpy as np
import pytest
import torch
from algebraformer_helpers import N_TINY, chebyshev_system, tiny_solver

from firedrake_problems.spectral import generate
from petsc_neural.algebraformer.data import normalised_set
from petsc_neural.algebraformer.loss import relative_mse
from petsc_neural.algebraformer.network import (
    ARCHS,
    PAPER_CONFIGS,
    ArchConfig,
    build_solver,
    count_parameters,
    diagonal_blocks,
    make_tokens,
    normalise_system,
    prepare_blocks,
    split_sizes,
)
from petsc_neural.algebraformer.train import TrainConfig, evaluate, train


def test_paper_configurations_have_the_papers_parameter_counts():
    counts = {arch: count_parameters(build_solver(ArchConfig(arch=arch, n=64,
                                                             **PAPER_CONFIGS[arch])))
              for arch in ARCHS}
    assert 9.4e6 < counts["algebraformer"] < 9.6e6  # paper: 9.5 M
    assert 12e6 < counts["lstm"] < 13.5e6  # paper: 12 M
    assert 9e6 < counts["gru"] < 10e6  # paper: 9 M


def test_tokens_are_columns_with_the_rhs_entry():
    A = torch.arange(9.0).view(1, 3, 3)
    b = torch.tensor([[10.0, 11.0, 12.0]])
    tok = make_tokens(A, b)
    assert tok.shape == (1, 3, 4)
    np.testing.assert_array_equal(tok[0, 1].numpy(), [1.0, 4.0, 7.0, 11.0])


@pytest.mark.parametrize("arch", ARCHS)
def test_scripted_equals_eager_and_is_positively_homogeneous(arch):
    solver = tiny_solver(arch=arch)
    scripted = torch.jit.script(solver)
    A, b = chebyshev_system(N_TINY)
    At, bt = torch.from_numpy(A)[None], torch.from_numpy(b)[None]
    y = solver.solve(At, bt)
    torch.testing.assert_close(scripted.solve(At, bt), y)
    torch.testing.assert_close(solver.solve(At, 3.5 * bt), 3.5 * y)
    # row scaling of the system does not change what the network sees
    d = torch.from_numpy(np.random.default_rng(0).uniform(0.1, 10.0, N_TINY))
    torch.testing.assert_close(solver.solve(d[:, None] * At, d * bt), y)


def test_normalise_system_keeps_the_solution():
    A, b = chebyshev_system(24)
    x = np.linalg.solve(A, b)
    Ah, bh, d, s = normalise_system(torch.from_numpy(A), torch.from_numpy(b))
    np.testing.assert_allclose(np.linalg.norm(Ah.numpy(), axis=1), 1.0, rtol=1e-12)
    assert float(torch.linalg.vector_norm(bh)) == pytest.approx(1.0)
    np.testing.assert_allclose(np.linalg.solve(Ah.numpy(), bh.numpy()) * float(s), x,
                               rtol=1e-8)


def test_split_sizes():
    assert split_sizes(128, 64) == [64, 64]
    assert split_sizes(100, 64) == [50, 50]
    assert split_sizes(65, 64) == [33, 32]
    assert split_sizes(10, 64) == [10]
    assert split_sizes(10, 64, blocks=3) == [4, 3, 3]
    assert split_sizes(0, 64) == []


def test_block_path_equals_the_model_on_each_block():
    """forward(r, blocks...) = solve(A_kk, r_k) for every diagonal block (padding included)."""
    solver = tiny_solver()
    A, _ = chebyshev_system(40)  # blocks of 14, 13, 13 rows (padded to 16)
    At = torch.from_numpy(A)
    sizes = split_sizes(40, N_TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch: sparse CSR is "beta"
        sp = At.to_sparse_csr()
    blocks = diagonal_blocks(sp.crow_indices(), sp.col_indices(), sp.values(), sizes)
    static = prepare_blocks(blocks, N_TINY)
    r = torch.from_numpy(np.random.default_rng(1).standard_normal(40))
    z = solver(r, *static)
    start = 0
    for blk, size in zip(blocks, sizes, strict=True):
        torch.testing.assert_close(blk, At[start:start + size, start:start + size])
        pad = torch.eye(N_TINY, dtype=At.dtype)
        pad[:size, :size] = blk
        rb = torch.zeros(N_TINY, dtype=At.dtype)
        rb[:size] = r[start:start + size]
        ref = solver.solve(pad[None], rb[None])[0]
        torch.testing.assert_close(z[start:start + size], ref[:size])
        start += size
    Z = solver.forward_batch(torch.stack([r, 2.5 * r], dim=1), *static)
    torch.testing.assert_close(Z[:, 0], z)
    torch.testing.assert_close(Z[:, 1], 2.5 * z)  # positively homogeneous (not odd)


def test_prepare_blocks_refuses_a_zero_row():
    A = torch.eye(4, dtype=torch.float64)
    A[2, 2] = 0.0
    with pytest.raises(ValueError, match="row 2 is zero"):
        prepare_blocks([A], 8)
    with pytest.raises(ValueError, match="at most"):
        prepare_blocks([torch.eye(9, dtype=torch.float64)], 8)


@pytest.mark.parametrize("arch", ["algebraformer", "gru"])
def test_a_few_training_steps_lower_the_loss(arch):
    data = generate("diffusion", 64, seed=0, n=N_TINY)
    tr = normalised_set("diffusion", data.A, data.b, data.x)
    cfg = TrainConfig(arch=arch, task="diffusion", epochs=6, batch=16, lr=3e-3,
                      network={"width": 32, "layers": 1, "heads": 2}, eval_every=100)
    init = build_solver(cfg.arch_config(N_TINY), float(tr.xh.pow(2).mean().sqrt())).float()
    before = float(np.mean(evaluate(init, tr.to("cpu", torch.float32))))
    solver, result, _ = train(cfg, tr)
    after = float(np.mean(evaluate(solver, tr.to("cpu", torch.float32))))
    assert result.steps_done == 24
    assert after < 0.5 * before, (before, after)
    assert np.mean(result.history[-4:]) < np.mean(result.history[:4])


def test_relative_mse():
    t = torch.tensor([[3.0, 4.0]])
    assert float(relative_mse(t * 1.1, t)) == pytest.approx(0.01)


def test_token_standardisation():
    from petsc_neural.algebraformer.network import token_statistics

    data = generate("diffusion", 6, seed=1, n=N_TINY)
    tr = normalised_set("diffusion", data.A, data.b, data.x, dtype=torch.float64)
    mean, std = token_statistics(tr.Ah, tr.bh, chunk=4)
    tokens = make_tokens(tr.Ah, tr.bh).reshape(-1, N_TINY + 1)
    torch.testing.assert_close(mean, tokens.mean(0))
    torch.testing.assert_close(std, tokens.std(0, unbiased=False))
    solver = tiny_solver()
    ref = solver.solve_normalised(tr.Ah, tr.bh)
    solver.in_mean.copy_(mean)
    solver.in_std.copy_(std)
    out = solver.solve_normalised(tr.Ah, tr.bh)
    torch.testing.assert_close(out, solver.core((make_tokens(tr.Ah, tr.bh) - mean) / std)
                               * solver.out_scale)
    assert not torch.allclose(out, ref)
    scripted = torch.jit.script(solver)
    torch.testing.assert_close(scripted.solve_normalised(tr.Ah, tr.bh), out)
