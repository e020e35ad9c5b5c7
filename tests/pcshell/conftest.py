"""Fixtures for the bridge's tests."""

import pytest
from pcshell_helpers import Jacobi, save
from petsc4py import PETSc


@pytest.fixture
def jacobi_model(tmp_path) -> str:
    return save(Jacobi(), tmp_path / "jacobi.pt", linear=True)


@pytest.fixture(autouse=True)
def clean_options():
    """Each test starts and ends with no t_-prefixed options left behind."""
    yield
    o = PETSc.Options()
    for k in list(o.getAll()):
        if k.startswith("t_"):
            o.delValue(k)
