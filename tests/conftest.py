"""Shared test configuration."""

import os

import pytest

# Open MPI refuses root unless told; 2 ranks on 2 cores need oversubscription.
# (The Makefile exports these too; set here for a bare `pytest` run.)
os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
os.environ.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _scrub_singleton_mpi_env() -> None:
    """Let mpi-pytest's ``mpiexec`` children start from a parent that initialised MPI.

    Once this process has called MPI_Init (Firedrake and petsc4py do, on import),
    Open MPI's singleton mode has put OMPI_MCA_ess=singleton, PMIX_* and friends
    into the C environment, and a child ``mpiexec`` that inherits them exits 1
    without a word.  ``os.environ`` is Python's copy, taken before MPI_Init, so
    handing it to the child explicitly gives it a clean environment.
    """
    import subprocess
    import types

    import pytest_mpi.plugin as plugin

    def run(cmd, *args, **kwargs):
        kwargs.setdefault("env", dict(os.environ))
        return subprocess.run(cmd, *args, **kwargs)

    plugin.subprocess = types.SimpleNamespace(
        **{k: getattr(subprocess, k) for k in dir(subprocess) if not k.startswith("__")}
    )
    plugin.subprocess.run = run


_scrub_singleton_mpi_env()


#: Options prefixes the tests use for their KSPs; cleared after every test.
TEST_PREFIXES = ("t_", "r_", "s_")


@pytest.fixture(autouse=True)
def clean_options():
    """Each test ends with no test-prefixed options left in PETSc's database."""
    yield
    from petsc4py import PETSc

    opts = PETSc.Options()
    for key in list(opts.getAll()):
        if key.startswith(TEST_PREFIXES):
            opts.delValue(key)


def available_devices() -> list[str]:
    """Where the networks can run here: the CPU always, CUDA where torch sees a GPU."""
    import torch

    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_generate_tests(metafunc):
    """A test that takes a ``device`` argument runs once per available device
    (PyTorch Geometric's habit), unless it parametrizes ``device`` itself."""
    if "device" not in metafunc.fixturenames:
        return
    def names(marker) -> list[str]:
        argnames = marker.args[0]
        if isinstance(argnames, str):
            return [a.strip() for a in argnames.split(",")]
        return list(argnames)

    own = any("device" in names(m) for m in metafunc.definition.iter_markers("parametrize"))
    if not own:
        metafunc.parametrize("device", available_devices())
