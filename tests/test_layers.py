"""The import layers: pcshell never imports Firedrake or petsc_neural, PC classes never import
Firedrake, and pcshell's PETSc utilities never import torch (firedrake_problems uses them)."""

import os
import subprocess
import sys

import pytest

CASES = [
    ("import pcshell; pcshell.ModelPC; pcshell.ResidualNetworkPC; pcshell.SetupNetworkPC",
     ["firedrake", "petsc_neural"]),
    ("import pcshell.mats, pcshell.options, pcshell.mpi, pcshell.lazy", ["torch", "firedrake"]),
    ("import petsc_neural; [getattr(petsc_neural, c) for c in petsc_neural.__all__[2:]]",
     ["firedrake"]),
    ("import petsc_neural.registry, petsc_neural.cli; petsc_neural.cli.build_parser()",
     ["firedrake"]),
]


@pytest.mark.parametrize("code, forbidden", CASES)
def test_imports_run_downwards(code, forbidden):
    check = "; ".join([code, "import sys",
                       f"bad = [m for m in {forbidden!r} if m in sys.modules]",
                       "print(bad)"])
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]", (code, out.stdout)
