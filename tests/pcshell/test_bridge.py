"""DLPack bridge: Vec memory seen by torch without a copy."""

import numpy as np
import pytest
import torch
from petsc4py import PETSc

from pcshell import vec_to_tensor


@pytest.mark.parametrize("mode", ["r", "w", "rw"])
def test_vec_to_tensor_shares_memory(mode):
    v = PETSc.Vec().createSeq(17)
    v.setArray(np.arange(17.0))
    t = vec_to_tensor(v, mode)
    address = v.getArray(readonly=True).__array_interface__["data"][0]
    assert t.data_ptr() == address
    assert t.dtype == torch.float64 and t.shape == (17,)
    if mode != "r":
        t.fill_(3.0)
        assert np.all(v.getArray(readonly=True) == 3.0)
    else:
        assert np.array_equal(t.numpy(), np.arange(17.0))


@pytest.mark.parallel(nprocs=2)
def test_vec_to_tensor_is_local_part_on_two_ranks():
    v = PETSc.Vec().createMPI((5 + PETSc.COMM_WORLD.rank, None))
    rs, re = v.getOwnershipRange()
    v.setArray(np.arange(rs, re, dtype=float))
    t = vec_to_tensor(v, "r")
    assert t.data_ptr() == v.getArray(readonly=True).__array_interface__["data"][0]
    assert np.array_equal(t.numpy(), np.arange(rs, re, dtype=float))
