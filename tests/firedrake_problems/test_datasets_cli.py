"""HDF5 datasets of recorded Krylov solves, and the CLI."""

from __future__ import annotations

import argparse

import h5py
import numpy as np
import pytest

from firedrake_problems import make_problem
from firedrake_problems.cli import register
from firedrake_problems.datasets import generate_dataset, load_dataset


def _run_cli(argv):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "poisson.h5"
    generate_dataset(
        "poisson",
        12,
        2,
        seed=10,
        out=str(path),
        params={"rhs": "grf", "dim": 2, "mesh": "jittered"},
    )
    return path


def test_roundtrip_bit_for_bit(dataset):
    ds = load_dataset(str(dataset))
    assert len(ds) == 2 and ds.attrs["family"] == "poisson" and ds.params["mesh"] == "jittered"
    for i, s in enumerate(ds):
        p = make_problem("poisson", 12, seed=10 + i, rhs="grf", dim=2, mesh="jittered")
        ip, ix, v = p.A.getValuesCSR()
        np.testing.assert_array_equal(s.A_indptr, ip)
        np.testing.assert_array_equal(s.A_indices, ix)
        np.testing.assert_array_equal(s.A_data, v)
        np.testing.assert_array_equal(s.b, p.b.getArray())
        np.testing.assert_array_equal(s.coordinates, p.coordinates)
        assert s.seed == 10 + i
        # the record is what a fresh solve produces, bit for bit
        from firedrake_problems.datasets import baseline_solver_parameters, record_krylov_solve

        rec = record_krylov_solve(p, baseline_solver_parameters(p))
        for key in ("x", "r", "residual_norms"):
            np.testing.assert_array_equal(getattr(s, key), rec[key])
        assert s.iterations == rec["iterations"] and s.converged_reason > 0
        # and it is consistent: x_0 = 0, r_k = b - A x_k, the last residual meets 1e-10
        A = s.A_scipy()
        assert s.x.shape == s.r.shape == (s.iterations + 1, len(s.b))
        assert not s.x[0].any()
        np.testing.assert_allclose(
            s.r, s.b[None, :] - (A @ s.x.T).T, atol=1e-12 * np.abs(s.b).max()
        )
        assert np.linalg.norm(s.r[-1]) <= 1e-10 * np.linalg.norm(s.b)


def test_reload_twice_identical_and_schema(dataset):
    with h5py.File(dataset, "r") as f:
        assert f.attrs["format"] == "petsc-neural/krylov-dataset"
        g = f["samples/000000"]
        for name in (
            "A_indptr",
            "A_indices",
            "A_data",
            "b",
            "coordinates",
            "x",
            "r",
            "residual_norms",
        ):
            assert name in g
        raw = g["x"][()]
    s = load_dataset(str(dataset))[0]
    np.testing.assert_array_equal(raw, s.x)
    assert s.A_data.dtype == np.float64 and s.A_indptr.dtype == np.int64


def test_cli_data_generate_and_problems_show(tmp_path):
    out = tmp_path / "d.h5"
    assert (
        _run_cli(
            [
                "data",
                "generate",
                "--family",
                "screened_poisson",
                "--size",
                "8",
                "--count",
                "2",
                "--seed",
                "3",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    ds = load_dataset(str(out))
    assert len(ds) == 2 and ds[1].seed == 4
    png = tmp_path / "show.png"
    assert _run_cli(["problems", "show", "diffusion", "--size", "16", "--out", str(png)]) == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


@pytest.mark.parametrize(
    "family,param", [("elasticity", "dim=2"), ("mixed_3d1d", "rhs='grf'"), ("cdr", "dim=1")]
)
def test_cli_show_other_families(tmp_path, family, param):
    png = tmp_path / f"{family}.png"
    assert (
        _run_cli(
            [
                "problems",
                "show",
                family,
                "--size",
                "6" if family == "mixed_3d1d" else "16",
                "--param",
                param,
                "--out",
                str(png),
            ]
        )
        == 0
    )
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_cli_family_names_match_registry_and_parser_is_light():
    import subprocess
    import sys

    from firedrake_problems import FAMILIES
    from firedrake_problems.cli import FAMILY_NAMES

    assert tuple(FAMILIES) == FAMILY_NAMES
    code = (
        "import argparse, sys; import firedrake_problems.cli as c; "
        "p = argparse.ArgumentParser(); c.register(p.add_subparsers()); "
        "print('firedrake' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
