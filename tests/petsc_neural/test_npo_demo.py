"""``petsc-neural demo`` (the make demo job) on 1 and 2 ranks, and the shipped models."""

import argparse
import os

import pytest

from pcshell import load_model
from petsc_neural.demo import run_demo
from petsc_neural.npo.pc import shipped_model
from petsc_neural.registry import METHODS


def _args(tmp_path, **kw):
    ns = dict(family="poisson", size=10, mesh="jittered", seed=5, rtol=1e-10, model=None,
              plot=str(tmp_path / "demo.png"), json=None)
    ns.update(kw)
    return argparse.Namespace(**ns)


def _check_demo(tmp_path, capsys):
    args = _args(tmp_path)
    assert run_demo(args) == 0
    from mpi4py import MPI

    if MPI.COMM_WORLD.rank == 0:
        out = capsys.readouterr().out
        for name in ("none", "jacobi", "sor", "ilu", "gamg (tuned)", "npo", "npo_mg", "neuralsp"):
            assert f"\n{name} " in out
        assert os.path.getsize(args.plot) > 10_000  # a real PNG, not an empty file
        with open(args.plot, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_demo_serial(tmp_path, capsys):
    _check_demo(tmp_path, capsys)


@pytest.mark.parallel(nprocs=2)
def test_demo_two_ranks(tmp_path, capsys):
    from mpi4py import MPI

    path = MPI.COMM_WORLD.bcast(str(tmp_path) if MPI.COMM_WORLD.rank == 0 else None)
    import pathlib

    _check_demo(pathlib.Path(path), capsys)


@pytest.mark.parametrize("family", sorted(METHODS["npo"].models))
def test_shipped_models_are_small_valid_npo_models(family):
    path = shipped_model(family)
    assert os.path.getsize(path) < 2 * 1024 * 1024
    m = load_model(path, method="npo")  # checks the content hash too
    assert m.metadata.problem_family == family
    assert m.metadata.linear is False
    assert m.metadata.block_size == (2 if family == "elasticity" else 1)
    assert m.metadata.training["config"]["steps"] > 0
