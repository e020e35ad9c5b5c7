"""KrylovUNet's network, grid map and losses on a synthetic 3D-1D system (no Firedrake/PETSc)."""

import numpy as np
import pytest
import torch
from kunet_helpers import coupled_system, grid_coordinates, laplacian3d

from pcshell import ModelMetadata, load_model, save_model
from petsc_neural.krylov_unet.grid import (
    check_dirichlet_faces,
    dirichlet_faces,
    geometry_field,
    lattice_order,
)
from petsc_neural.krylov_unet.loss import dynamic_loss, static_loss
from petsc_neural.krylov_unet.network import KrylovUNet
from petsc_neural.krylov_unet.system import CoupledSystem


def _net(width=4, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return KrylovUNet(width=width, geometry_scale=3.0).to(dtype)


def _system(G=9, seed=0, dtype=torch.float64):
    A, n3, coords, blk = coupled_system(G, seed)
    return CoupledSystem(blk["A33"], blk["A31"], blk["A13"], blk["A11"], dtype=dtype), blk


def test_table1_architecture_size():
    net = KrylovUNet()  # width 32: Table 1's channels 32, 64, 128
    n = sum(p.numel() for p in net.parameters())
    assert n == 1_079_137  # Table 1 sums to 1,091,384 (see the network's docstring)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (2, 32), (32, 64), (64, 128), (128, 128), (128, 64), (64, 32), (32, 1)]


def test_homogeneous_faces_exact_and_batched():
    net = _net()
    S, blk = _system()
    rng = np.random.default_rng(0)
    r = torch.from_numpy(rng.standard_normal(S.n3))
    with torch.no_grad():
        z = net(r, S.geometry, S.diagonal)
        torch.testing.assert_close(net(2.5 * r, S.geometry, S.diagonal), 2.5 * z)
        assert float(net(0 * r, S.geometry, S.diagonal).abs().max()) == 0.0
        face = torch.from_numpy(dirichlet_faces(9))
        torch.testing.assert_close(z[face], r[face] / S.diagonal[face])
        R = torch.from_numpy(rng.standard_normal((S.n3, 3)))
        Z = net.forward_batch(R, S.geometry, S.diagonal)
        for j in range(3):
            torch.testing.assert_close(Z[:, j], net(R[:, j], S.geometry, S.diagonal))
    with pytest.raises(ValueError, match="not a cube"):
        net(torch.zeros(10, dtype=torch.float64), torch.zeros(10, dtype=torch.float64),
            torch.ones(10, dtype=torch.float64))


def test_torchscript_round_trip(tmp_path):
    net = _net(dtype=torch.float32).eval()
    S, _ = _system(dtype=torch.float32)
    path = tmp_path / "kunet.pt"
    save_model(net, path, ModelMetadata(method="krylov_unet", dtype="float32",
                                        inputs=["residual", "geometry", "diagonal"]))
    loaded = load_model(path, method="krylov_unet")
    r = torch.randn(S.n3)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(r, S.geometry, S.diagonal),
                                   net(r, S.geometry, S.diagonal))
        R = torch.randn(S.n3, 2)
        torch.testing.assert_close(loaded.module.forward_batch(R, S.geometry, S.diagonal),
                                   net.forward_batch(R, S.geometry, S.diagonal))


def test_lattice_order_and_fields():
    G = 5
    coords = grid_coordinates(G)
    perm = np.random.default_rng(1).permutation(G**3)
    order, g = lattice_order(coords[perm] * 2.0 + 1.0)  # any box
    assert g == G
    np.testing.assert_array_equal(perm[order], np.arange(G**3))
    with pytest.raises(ValueError, match="not the G\\^3"):
        lattice_order(coords[:-1])
    bad = coords.copy()
    bad[7] += 0.01
    with pytest.raises(ValueError, match="not on a uniform"):
        lattice_order(bad)
    dup = coords.copy()
    dup[3] = dup[4]
    with pytest.raises(ValueError, match="repeated"):
        lattice_order(dup)
    _, _, _, blk = coupled_system(9)
    assert check_dirichlet_faces(blk["A33"], 9) is None
    assert "not Dirichlet" in check_dirichlet_faces(laplacian3d(9), 9)
    g = geometry_field(blk["A33"], 9)
    # interior rows away from the boundary: the stiffness part sums to zero
    inner = np.zeros((9, 9, 9), bool)
    inner[2:-2, 2:-2, 2:-2] = True
    np.testing.assert_allclose(g[inner.ravel()], -np.asarray(blk["A31"].sum(axis=1)).ravel()[
        inner.ravel()], atol=1e-12)
    assert g[inner.ravel()].max() > 0


def test_schur_operator_matches_dense_elimination():
    S, blk = _system()
    dense = (blk["A33"].toarray() - blk["A31"].toarray()
             @ np.linalg.solve(blk["A11"].toarray(), blk["A13"].toarray()))
    X = torch.from_numpy(np.random.default_rng(2).standard_normal((2, S.n3)))
    torch.testing.assert_close(S.schur(X), X @ torch.from_numpy(dense).T)


def test_few_steps_lower_the_static_and_the_dynamic_loss():
    torch.manual_seed(0)
    systems = [_system(seed=s)[0] for s in (0, 1)]
    rng = np.random.default_rng(3)
    b = torch.from_numpy(rng.standard_normal((2, systems[0].n3)))
    net = _net(width=4)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    with torch.no_grad():
        s0 = float(static_loss(net, systems, b))
    for _ in range(5):
        opt.zero_grad()
        static_loss(net, systems, b).backward()
        opt.step()
    with torch.no_grad():
        assert float(static_loss(net, systems, b)) < 0.9 * s0
        d0 = float(dynamic_loss(net, systems, b, m=10)[0])
    for _ in range(5):
        opt.zero_grad()
        loss, sines = dynamic_loss(net, systems, b, m=10)
        loss.backward()
        opt.step()
    assert sines.shape == (2, 10)
    with torch.no_grad():
        assert float(dynamic_loss(net, systems, b, m=10)[0]) < d0
