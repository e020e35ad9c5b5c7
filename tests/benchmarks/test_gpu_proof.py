"""benchmarks/gpu_proof.py (issue 17's GPU proof) runs and checks what it can on this host."""

from __future__ import annotations

import json

import torch
from script_helpers import load_script


def test_gpu_proof_small(tmp_path):
    out = tmp_path / "gpu.md"
    assert load_script("benchmarks/gpu_proof.py").main(["--size", "16", "--out", str(out)]) == 0
    res = json.loads((tmp_path / "gpu.json").read_text())
    cpu = res["runs"]["cpu"]
    assert cpu["reason"] > 0 and cpu["true_relative_residual"] < 1e-7
    assert cpu["applies"] >= cpu["iterations"] and cpu["host_copies"] == 0
    for name in ("cuda-host", "cuda-dlpack"):
        run = res["runs"][name]
        if torch.cuda.is_available() and "skipped" not in run:
            assert abs(run["iterations"] - cpu["iterations"]) <= 1
        else:  # the table says why it did not run
            assert run["skipped"]
    if torch.cuda.is_available():
        assert "skipped" not in res["runs"]["cuda-host"]
        assert res["runs"]["cuda-host"]["host_copies"] == 2 * res["runs"]["cuda-host"]["applies"]
    assert "| cpu |" in out.read_text()
