"""alpha-MSNN network, losses and the staged training of GreenInverse kernels."""

import numpy as np
import pytest
import torch

from pcshell import load_model
from petsc_neural.green.loss import gaussian_source, loss_parts, pde_residual
from petsc_neural.green.network import AlphaMSNN, hessian_pairs
from petsc_neural.green.train import (
    GreenProblem,
    TrainConfig,
    _Sampler,
    anchor_data,
    build_network,
    export,
    train,
)

TINY = dict(epochs=(2, 1, 1, 1), batches_per_epoch=2, n_near=24, n_unif=16, n_bc=8,
            n_aux=16, gate_pretrain_steps=5, anchor_points=10)


@pytest.mark.parametrize("dim, n_params", [(1, 0), (2, 0), (2, 2)])
def test_forward_mode_derivatives_match_autograd_and_the_network_scripts(dim, n_params):
    torch.manual_seed(0)
    net = AlphaMSNN(dim, [1e-1, 1e-2], [6, 7], n_params=n_params, far_width=9, n_experts=3,
                    gate_on="p" if n_params else "y", far_scale=10.0).double()
    net.set_stage(2, True)
    net.replicate_finest(0.1, torch.Generator().manual_seed(1))
    x, y = torch.rand(5, dim, dtype=torch.float64), torch.rand(5, dim, dtype=torch.float64)
    p = torch.rand(5, n_params, dtype=torch.float64)
    v, g, h = net.derivatives(x, y, p)
    xx = x.clone().requires_grad_(True)
    G = net(xx, y, p)
    torch.testing.assert_close(v, G.detach())
    (gr,) = torch.autograd.grad(G.sum(), xx, create_graph=True)
    torch.testing.assert_close(g, gr.detach())
    for q, (k, m) in enumerate(hessian_pairs(dim)):
        (hk,) = torch.autograd.grad(gr[:, k].sum(), xx, retain_graph=True)
        torch.testing.assert_close(h[:, q], hk[:, m])
    scripted = torch.jit.script(net)
    torch.testing.assert_close(scripted(x, y, p), G.detach())
    e = scripted.exponents(y, p)
    assert e.shape == (5, 2, 4)
    assert torch.all(e[:, :, 3] < e[:, :, 1])  # beta_2 < beta_1
    assert torch.all(e[:, :, 2] >= e[:, :, 0])  # alpha_2 >= alpha_1
    w = scripted.gate_weights(y, p)
    torch.testing.assert_close(w.sum(0), torch.ones(5, dtype=torch.float64))


def test_stages_switch_levels_and_the_mixture_starts_from_the_replicated_expert():
    torch.manual_seed(1)
    net = AlphaMSNN(1, [1e-1, 1e-2], [5, 5], far_width=8, n_experts=3).double()
    x, y, p = torch.rand(7, 1).double(), torch.rand(7, 1).double(), torch.zeros(7, 0).double()
    net.set_stage(1, False)
    g1 = net(x, y, p)
    net.set_stage(2, False)
    g2 = net(x, y, p)
    assert not torch.allclose(g1, g2)
    net.replicate_finest(0.0, torch.Generator().manual_seed(0))  # exact copies
    net.set_stage(2, True)
    torch.testing.assert_close(net(x, y, p), g2)  # gate weights sum to one
    with pytest.raises(ValueError):
        net.set_stage(1, True)


def test_residual_of_an_exact_green_function_is_the_source_away_from_the_diagonal():
    # G = min(x, y)(1 - max(x, y)) solves -G'' = delta: its residual is -N_eps off the kink
    class Exact(torch.nn.Module):
        def derivatives(self, x, y, p):
            a, b = x[:, 0], y[:, 0]
            v = torch.minimum(a, b) * (1 - torch.maximum(a, b))
            g = torch.where(a < b, 1 - b, -b)
            return v, g[:, None], torch.zeros_like(g)[:, None]

    from firedrake_problems.fd import CDROperator

    op = CDROperator("laplace", 1, diffusion=lambda x: 1.0 + 0 * x[0],
                     diffusion_grad=lambda x: [0 * x[0]])
    x = torch.tensor([[0.2], [0.7]], dtype=torch.float64)
    y = torch.tensor([[0.5], [0.5]], dtype=torch.float64)
    r = pde_residual(Exact(), op, x, y, torch.zeros(2, 0), 0.01)
    torch.testing.assert_close(r, -gaussian_source(x, y, 0.01))


def test_a_tiny_network_trained_a_few_steps_lowers_the_residual_loss():
    torch.manual_seed(0)
    problem = GreenProblem("reaction1d")
    cfg = TrainConfig(problem="reaction1d", **TINY).resolved()
    net = build_network(cfg, problem)
    net.set_stage(1, False)
    sampler = _Sampler(cfg, problem, anchor_data(problem, 10), torch.float32)
    batch = sampler.batch(1e-2, torch.Generator().manual_seed(5))
    s2 = np.pi * 1e-4  # (eps sqrt(pi))^2: the training's scale of the near-diagonal part

    def residual():
        parts = loss_parts(net, problem.op_for, batch, 1e-2)
        return parts["res_near"] * s2 + parts["res_unif"]

    before = float(residual().detach())
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(60):
        opt.zero_grad()
        residual().backward()
        opt.step()
    assert float(residual().detach()) < 0.5 * before


def test_anchors_are_the_coarse_inverse_scaled_by_h():
    from firedrake_problems.fd import stencil_scipy

    problem = GreenProblem("convection1d")
    x, y, p, g = anchor_data(problem, 12)
    A = stencil_scipy(problem.base, 10).toarray()
    np.testing.assert_allclose(g.reshape(10, 10), np.linalg.inv(A) * 11)
    assert p.shape == (100, 0)
    # 2D: pairs closer than 1.5 h to the diagonal are left out
    x2, y2, _, _ = anchor_data(GreenProblem("reaction2d"), 8)
    assert np.linalg.norm(x2 - y2, axis=1).min() >= 1.5 / 7 - 1e-12
    # the parametric family: the four anchor angles, encoded
    _, _, p3, _ = anchor_data(GreenProblem("rotated"), 6, (0.0, np.pi / 4))
    assert {tuple(np.round(r, 6)) for r in p3} == {(1.0, 0.0), (0.0, 1.0)}


def test_training_resumes_exactly_and_exports_a_model(tmp_path):
    ck = str(tmp_path / "run.ckpt")
    cfg = TrainConfig(problem="convection1d", **TINY)
    _, full = train(cfg)
    _, part = train(cfg, checkpoint=ck, checkpoint_every=2, max_steps=3)
    assert part["steps_done"] == 3
    net, rest = train(cfg, checkpoint=ck, checkpoint_every=2, resume=True)
    np.testing.assert_allclose(rest["history"], full["history"], rtol=1e-5)
    assert net.mixture and net.active_levels == 3
    path = str(tmp_path / "g.pt")
    meta = export(net, path, rest)
    loaded = load_model(path, method="green")
    assert loaded.metadata.inputs == ["x", "y", "params"] and loaded.metadata.linear
    assert meta.training["dim"] == 1 and meta.training["problem"] == "convection1d"
    x = torch.rand(4, 1)
    torch.testing.assert_close(loaded.module(x, x, torch.zeros(4, 0)),
                               net(x, x, torch.zeros(4, 0)).detach())


def test_config_validation():
    with pytest.raises(ValueError, match="unknown problem"):
        TrainConfig(problem="heat3d").resolved()
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=(1, 2)).resolved()
    c = TrainConfig(problem="rotated").resolved()
    assert c.n_experts == 9 and c.widths == (20, 30, 40) and c.far_width == 100
    assert TrainConfig(problem="reaction2d", preset="paper").resolved().epochs == \
        (1000, 1000, 1000, 2000)
    assert TrainConfig(problem="reaction2d", preset="paper").resolved().n_near == 1500


def test_balance_is_on_by_default_in_2d_only():
    from petsc_neural.green.train import balance_default

    assert balance_default("reaction2d") and balance_default("convection2d")
    assert balance_default("rotated")
    assert not balance_default("reaction1d") and not balance_default("convection1d")
    assert balance_default("reaction1d", "on") and not balance_default("reaction2d", "off")


def test_cli_train_green(tmp_path, capsys):
    from petsc_neural.cli import main

    out = str(tmp_path / "cli.pt")
    assert main(["train", "green", "--problem", "reaction1d", "--epochs", "1,1,1,1",
                 "--batches-per-epoch", "2", "--no-progress", "-o", out]) == 0
    assert "wrote" in capsys.readouterr().out
    training = load_model(out, method="green").metadata.training
    assert training["steps_done"] == 8
    assert training.get("balance", False) is False  # auto: off in 1D
