"""Fixtures for the bridge's tests."""

import pytest
from pcshell_helpers import Jacobi, save


@pytest.fixture
def jacobi_model(tmp_path) -> str:
    return save(Jacobi(), tmp_path / "jacobi.pt", linear=True)
