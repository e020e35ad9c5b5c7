"""``petsc-neural train algebraformer|lstm|gru``: CLI, export, resume, fine-tuning, devices."""

import numpy as np
import pytest
import torch
from algebraformer_helpers import N_TINY

from firedrake_problems.spectral import generate
from pcshell import load_model
from petsc_neural.algebraformer.data import load_task, normalised_set, random_rhs
from petsc_neural.algebraformer.train import TrainConfig, load_solver, resolve_device, train
from petsc_neural.cli import main

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

TINY = ["--width", "16", "--layers", "1", "--heads", "2", "--batch", "4", "--no-progress"]


@pytest.mark.parametrize("arch,task", [("algebraformer", "reaction"), ("lstm", "diffusion"),
                                       ("gru", "advection"), ("algebraformer", "newton")])
def test_cli_trains_and_exports_a_servable_model(tmp_path, capsys, arch, task):
    out = tmp_path / f"{arch}_{task}.pt"
    rc = main(["train", arch, "--task", task, "--train-samples", "2" if task == "newton" else "8",
               "--test-samples", "1" if task == "newton" else "4", "--epochs", "2", *TINY,
               "--workdir", str(tmp_path), "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "test relative MSE" in text and str(out) in text
    m = load_model(out, method="algebraformer")
    assert m.metadata.inputs == ["residual", "blocks", "rowscale", "gather", "scatter"]
    assert not m.metadata.linear and m.metadata.problem_family == task
    tr = m.metadata.training
    assert tr["arch"] == arch and tr["network"]["n"] == (60 if task == "newton" else 64)
    assert len(tr["eval"]) == 2 and tr["steps"] > 0
    n = tr["network"]["n"]
    A = torch.eye(n, dtype=torch.float32)[None] * 2.0
    assert m.module.solve(A, torch.ones(1, n)).shape == (1, n)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    data = generate("diffusion", 32, seed=0, n=N_TINY)
    tr = normalised_set("diffusion", data.A, data.b, data.x)
    cfg = TrainConfig(arch="algebraformer", epochs=3, batch=8, lr=1e-3,
                      network={"width": 16, "layers": 1, "heads": 2}, eval_every=1.0)
    full, res_full, hist_full = train(cfg, tr, tr)
    ckpt = str(tmp_path / "run.ckpt")
    train(cfg, tr, tr, checkpoint=ckpt, checkpoint_every=1, max_steps=5)
    resumed, res, hist = train(cfg, tr, tr, checkpoint=ckpt, resume=True)
    assert res.resumed_from == 5 and res.steps_done == res_full.steps_done == 12
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=k)
    assert [r[3] for r in hist.records] == pytest.approx([r[3] for r in hist_full.records])


def test_fine_tuning_starts_from_the_given_model(tmp_path):
    out = tmp_path / "base.pt"
    main(["train", "algebraformer", "--task", "reaction", "--train-samples", "8",
          "--test-samples", "4", "--epochs", "1", *TINY, "--workdir", str(tmp_path),
          "--out", str(out)])
    base, _ = load_solver(str(out))
    data = load_task("advection", 8, 0, tmp_path)
    cfg = TrainConfig(arch="algebraformer", task="advection", epochs=1, batch=4,
                      init=str(out), lr=0.0, schedule="constant", weight_decay=0.0)
    tuned, *_ = train(cfg, data)
    for (k, a), b in zip(base.state_dict().items(), tuned.state_dict().values(), strict=True):
        torch.testing.assert_close(a.float(), b.float(), msg=k)  # lr 0: unchanged


@pytest.mark.parametrize("device", DEVICES)
def test_training_runs_on_each_device(device):
    data = generate("diffusion", 8, seed=0, n=N_TINY)
    tr = normalised_set("diffusion", data.A, data.b, data.x)
    cfg = TrainConfig(epochs=1, batch=4, network={"width": 16, "layers": 1, "heads": 2})
    solver, result, _ = train(cfg, tr, device=device)
    assert next(solver.parameters()).device.type == device and result.steps_done == 2


def test_cuda_request_without_a_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA is not available.*--device cpu"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="cpu, cuda or cuda:N"):
        resolve_device("tpu")


def test_random_rhs_are_consistent():
    data = generate("diffusion", 4, seed=0, n=N_TINY)
    tr = normalised_set("diffusion", data.A, data.b, data.x, dtype=torch.float64)
    bh, xh = random_rhs(tr.Ah, torch.Generator().manual_seed(0))
    np.testing.assert_allclose(torch.linalg.vector_norm(bh, dim=1), 1.0)
    torch.testing.assert_close((tr.Ah @ xh.unsqueeze(-1)).squeeze(-1), bh)


@pytest.mark.parametrize("arch", ["algebraformer", "lstm", "gru"])
def test_paper_configuration_and_budget_are_selectable(arch):
    from petsc_neural.algebraformer.network import PAPER_CONFIGS, build_solver, count_parameters
    from petsc_neural.algebraformer.train import config_from_args
    from petsc_neural.cli import build_parser

    args = build_parser().parse_args(["train", arch, "--task", "diffusion", "--config", "paper",
                                      "--budget", "paper", "--out", "x.pt"])
    cfg = config_from_args(args)
    assert (cfg.train_samples, cfg.test_samples, cfg.epochs) == (50_000, 5_000, 400)
    assert cfg.lr == 1e-4 and cfg.lr_min == 1e-5 and cfg.schedule == "cosine"
    assert tuple(cfg.betas) == (0.9, 0.95)
    net = cfg.arch_config()
    for key, value in PAPER_CONFIGS[arch].items():
        assert getattr(net, key) == value
    if arch == "algebraformer":
        assert 9.4e6 < count_parameters(build_solver(net)) < 9.6e6
    ft = config_from_args(build_parser().parse_args(
        ["train", arch, "--task", "reaction", "--budget", "paper", "--init", "m.pt",
         "--out", "x.pt"]))
    assert (ft.epochs, ft.lr, ft.schedule) == (500, 5e-5, "constant")  # appendix F


def test_load_solver_reads_models_without_standardisation_buffers(tmp_path):
    """Models written before ``in_mean``/``in_std`` existed (the shipped diffusion one) load."""
    from pcshell import ModelMetadata, save_model
    from petsc_neural.algebraformer.network import ArchConfig, build_solver

    net = ArchConfig(n=N_TINY, width=16, layers=1, heads=2)
    solver = build_solver(net, out_scale=3.0)

    class Old(torch.nn.Module):  # the same module without the two buffers
        def __init__(self):
            super().__init__()
            self.core = solver.core
            self.n = solver.n
            self.register_buffer("out_scale", solver.out_scale.clone())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    path = str(tmp_path / "old.pt")
    save_model(Old(), path, ModelMetadata(method="algebraformer", training={
        "network": net.to_dict()}))
    loaded, _ = load_solver(path)
    assert float(loaded.out_scale) == 3.0 and float(loaded.in_std.sum()) == N_TINY + 1
    torch.testing.assert_close(loaded.core.encoder.weight.float(), solver.core.encoder.weight)


def test_newton_task_standardises_by_default():
    from petsc_neural.algebraformer.train import config_from_args
    from petsc_neural.cli import build_parser

    def cfg(*extra):
        return config_from_args(build_parser().parse_args(["train", "algebraformer",
                                                           *extra, "--out", "x.pt"]))

    assert cfg("--task", "newton").arch_config().standardize
    assert not cfg("--task", "diffusion").arch_config().standardize
    assert cfg("--task", "diffusion", "--standardize").arch_config().standardize
    assert not cfg("--task", "newton", "--no-standardize").arch_config().standardize


def test_paired_ratio_interval():
    from petsc_neural.algebraformer.loss import paired_ratio_interval

    rng = np.random.default_rng(3)
    other = rng.lognormal(size=500)
    # an exact multiple: every resample has the same ratio
    assert paired_ratio_interval(2.0 * other, other, np.random.default_rng(0)) == \
        pytest.approx((2.0, 2.0, 2.0))
    base = other * rng.lognormal(mean=0.2, sigma=0.5, size=500)
    ratio, lo, hi = paired_ratio_interval(base, other, np.random.default_rng(0))
    assert ratio == pytest.approx(base.mean() / other.mean())
    assert lo < ratio < hi and hi - lo < 0.5
    # seeded: the same interval again
    assert paired_ratio_interval(base, other, np.random.default_rng(0)) == (ratio, lo, hi)
