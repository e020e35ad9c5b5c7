"""The NAMG network, its losses and its training loop (no PETSc solve here)."""

import numpy as np
import pytest
import torch
from npo_helpers import block_operator, grid_laplacian, reference_namg, to_torch_csr, train_sample

from pcshell import ModelMetadata, load_model, save_model
from petsc_neural.npo.loss import LossWeights, condition_loss, data_loss, npo_loss, residual_loss
from petsc_neural.npo.network import NAMG, NAMGConfig
from petsc_neural.npo.train import TrainConfig, model_inputs, rigid_body_modes, train


def _net(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(width=8, heads=2, n_coarse=6)
    cfg.update(kw)
    net = NAMG(NAMGConfig(**cfg)).double()
    # Move every parameter off its initial value so that no term hides behind a zero.
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


@pytest.mark.parametrize("bs, galerkin", [(1, True), (1, False), (2, True)])
def test_forward_matches_dense_reference(bs, galerkin):
    A, coords = grid_laplacian(5)
    if bs > 1:
        A = block_operator(A, bs)
    net = _net(block_size=bs, galerkin=galerkin)
    rng = np.random.default_rng(1)
    r = rng.standard_normal(A.shape[0])
    nns = rigid_body_modes(coords) if bs > 1 else None
    with torch.no_grad():
        z = net(torch.from_numpy(r), to_torch_csr(A), torch.from_numpy(A.diagonal().copy()),
                torch.from_numpy(coords), None if nns is None else torch.from_numpy(nns))
    ref = reference_namg(net, r, A.toarray(), coords, nns)
    np.testing.assert_allclose(z.numpy(), ref, rtol=1e-9, atol=1e-12 * np.abs(ref).max())


def test_forward_is_positively_homogeneous_and_size_free():
    net = _net()
    for n in (4, 9):  # the same network on two graph sizes
        A, coords = grid_laplacian(n)
        args = (to_torch_csr(A), torch.from_numpy(A.diagonal().copy()), torch.from_numpy(coords))
        r = torch.from_numpy(np.random.default_rng(n).standard_normal(n * n))
        with torch.no_grad():
            z1, z2 = net(r, *args), net(3.5 * r, *args)
        assert z1.shape == (n * n,)
        torch.testing.assert_close(z2, 3.5 * z1, rtol=1e-12, atol=0)


def test_torchscript_export_round_trips(tmp_path):
    A, coords = grid_laplacian(6)
    net = _net(n_coarse=8)
    path = tmp_path / "npo.pt"
    save_model(net, path, ModelMetadata(method="npo", inputs=model_inputs(1)))
    loaded = load_model(path, method="npo")
    args = (to_torch_csr(A), torch.from_numpy(A.diagonal().copy()), torch.from_numpy(coords))
    r = torch.from_numpy(np.random.default_rng(0).standard_normal(36))
    with torch.no_grad():
        z_eager = net(r, *args)
        z_loaded = loaded.module(r, *args)
    assert torch.equal(z_eager, z_loaded)
    # Without coordinates (a (0, 0) tensor) it still runs, with other values.
    with torch.no_grad():
        z_nocoords = loaded.module(r, args[0], args[1], torch.zeros(0, 0, dtype=torch.float64))
    assert torch.isfinite(z_nocoords).all() and not torch.equal(z_nocoords, z_loaded)


def test_losses_vanish_for_the_exact_inverse_and_switch_off():
    A, _ = grid_laplacian(4)
    At = to_torch_csr(A)
    R = torch.from_numpy(np.random.default_rng(0).standard_normal((16, 3)))
    Z = torch.linalg.solve(torch.from_numpy(A.toarray()), R)
    assert float(condition_loss(At, R, Z)) < 1e-24
    assert float(residual_loss(At, R[:, 0], Z[:, 0])) < 1e-24
    assert float(data_loss(Z, Z)) == 0.0
    assert float(condition_loss(At, R, torch.zeros_like(R))) == pytest.approx(1.0)
    total, parts = npo_loss(At, LossWeights(condition=1.0, residual=0.0, data=0.0),
                            R_cond=R, Z_cond=0 * Z, b=R[:, 0], z_b=0 * Z[:, 0],
                            Z_data=0 * Z, E_data=Z)
    assert set(parts) == {"condition"} and float(total) == pytest.approx(1.0)


def _eval_loss(net, sample):
    """Condition + data loss on the sample's recorded residuals (a fixed batch)."""
    with torch.no_grad():
        Z = net.forward_batch(sample.R_rec, sample.A, sample.diag, sample.coords,
                              sample.near_nullspace)
    return float(condition_loss(sample.A, sample.R_rec, Z) + data_loss(Z, sample.E_rec))


def test_tiny_training_lowers_the_loss_and_resumes_exactly(tmp_path):
    A, coords = grid_laplacian(6)
    samples = [train_sample(A, coords, seed=s) for s in range(2)]
    cfg = TrainConfig(steps=40, lr=1e-2, batch=6, seed=3,
                      network=dict(width=8, heads=2, n_coarse=8, galerkin=False))
    torch.manual_seed(cfg.seed)
    before = _eval_loss(NAMG(NAMGConfig(**cfg.network)).double(), samples[0])
    net, hist = train(cfg, samples)
    after = _eval_loss(net, samples[0])
    assert len(hist) == 40 and np.isfinite(hist).all()
    assert after < 0.7 * before, (before, after)
    # Interrupted after 5 steps and resumed from the checkpoint: the same weights.
    ckpt = str(tmp_path / "run.ckpt")
    train(cfg, samples, checkpoint=ckpt, checkpoint_every=5, max_steps=5)
    net2, hist2 = train(cfg, samples, checkpoint=ckpt, resume=True)
    assert hist2 == hist
    for (k, a), (_, b) in zip(net.state_dict().items(), net2.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_rigid_body_modes_are_in_the_kernel_of_free_elasticity():
    # Translations/rotation are annihilated by a spring network on any coordinates.
    coords = np.random.default_rng(0).random((5, 2))
    B = rigid_body_modes(coords)
    assert B.shape == (10, 3)
    K = np.zeros((10, 10))
    for i in range(5):
        for j in range(i + 1, 5):
            e = coords[j] - coords[i]
            e = e / np.linalg.norm(e)
            k = np.outer(e, e)
            for a, b_, s in ((i, i, 1), (j, j, 1), (i, j, -1), (j, i, -1)):
                K[2 * a:2 * a + 2, 2 * b_:2 * b_ + 2] += s * k
    np.testing.assert_allclose(K @ B, 0.0, atol=1e-12)


def test_train_npo_cli_writes_a_model_and_resumes(tmp_path):
    """``petsc-neural train npo``: data generation, training, export, then --resume."""
    from petsc_neural.cli import main

    out = tmp_path / "m.pt"
    base = ["train", "npo", "--family", "poisson", "--size", "6", "--samples", "2",
            "--width", "8", "--heads", "2", "--coarse", "8", "--no-progress",
            "--checkpoint-every", "2", "--out", str(out)]
    assert main(base + ["--steps", "4"]) == 0
    m = load_model(out, method="npo")
    assert m.metadata.inputs == ["residual", "operator", "diagonal", "coordinates"]
    assert m.metadata.training["config"]["steps"] == 4
    assert (tmp_path / "m.data.h5").exists() and (tmp_path / "m.ckpt").exists()
    ckpt = torch.load(tmp_path / "m.ckpt", weights_only=False)
    assert ckpt["step"] == 4 and len(ckpt["history"]) == 4
    # A checkpoint of another configuration is refused, not silently mixed in.
    with pytest.raises(ValueError, match="another training configuration"):
        main(base + ["--steps", "6", "--resume"])
