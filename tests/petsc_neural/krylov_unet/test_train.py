"""KrylovUNet's trainer: both stages on synthetic systems, resume, export (no Firedrake)."""

import numpy as np
import torch
from kunet_helpers import coupled_system

from pcshell import load_model
from petsc_neural.krylov_unet.data import GraphData
from petsc_neural.krylov_unet.system import CoupledSystem
from petsc_neural.krylov_unet.train import TrainConfig, export_model, paper_config, train


def _graphs(seeds):
    out = []
    for s in seeds:
        _, n3, _, blk = coupled_system(9, s)
        S = CoupledSystem(blk["A33"], blk["A31"], blk["A13"], blk["A11"], dtype=torch.float32)
        rng = np.random.default_rng(s)
        rhs = []
        for _ in range(2):
            f = S.reduce_rhs(rng.standard_normal(n3), rng.standard_normal(S.n1))
            rhs.append(f / np.linalg.norm(f))
        out.append(GraphData(seed=s, system=S, rhs=torch.from_numpy(np.stack(rhs)).float(),
                             n1=S.n1, network_length=0.5))
    return out


def test_static_then_dynamic_with_resume_and_export(tmp_path):
    tr, va = _graphs([0, 1, 2]), _graphs([10])
    cfg = TrainConfig(stage="static", size=8, train_graphs=3, val_graphs=1, steps=6, batch=3,
                      lr=3e-3, lr_final=1e-3, width=4, val_every=3, m=4)
    ckpt = str(tmp_path / "s.ckpt")
    net_a, hist_a, val_a = train(cfg, tr, va, checkpoint=ckpt, checkpoint_every=2,
                                 max_steps=4)
    assert len(hist_a) == 4
    net_b, hist_b, val_b = train(cfg, tr, va, checkpoint=ckpt, checkpoint_every=2, resume=True)
    net_c, hist_c, val_c = train(cfg, tr, va)
    assert hist_b == hist_c and [r["step"] for r in val_b] == [0, 3, 6]
    for a, c in zip(net_b.state_dict().values(), net_c.state_dict().values(), strict=True):
        torch.testing.assert_close(a, c, rtol=0, atol=0)
    path = str(tmp_path / "static.pt")
    export_model(net_c, path, cfg, hist_c, val_c)
    meta = load_model(path, method="krylov_unet").metadata
    assert meta.inputs == ["residual", "geometry", "diagonal"] and meta.dtype == "float32"
    assert not meta.linear and meta.training["validation"][-1]["step"] == 6
    assert len(meta.training["validation"][0]["sines"]) == 4

    dcfg = TrainConfig(stage="dynamic", size=8, train_graphs=3, val_graphs=1, steps=3, batch=2,
                       lr=1e-3, lr_final=1e-4, width=4, val_every=3, m=4, init=path)
    net_d, hist_d, val_d = train(dcfg, tr, va)
    assert len(hist_d) == 3 and all(0 < h < 1 for h in hist_d)
    assert val_d[0]["sines"] == val_c[-1]["sines"]  # it starts from the static model


def test_paper_configurations():
    assert paper_config("static")["batch"] == 5 and paper_config("static")["train_graphs"] == 480
    assert paper_config("static")["steps"] == 250 * 480  # 2400 samples / batch 5 per epoch
    assert paper_config("dynamic") == dict(train_graphs=100, val_graphs=20, batch=20,
                                           steps=750, val_every=5)
