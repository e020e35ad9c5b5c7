"""scripts/algebraformer_gpu.py (Table 1 at the paper's sizes on a GPU), run small on the CPU."""

from __future__ import annotations

import json
import math
import os

from script_helpers import load_script

from pcshell import load_model


def test_algebraformer_gpu_script_small(tmp_path):
    script = load_script("scripts/algebraformer_gpu.py")
    out, work = tmp_path / "out", tmp_path / "work"
    rc = script.main(["--out", str(out), "--workdir", str(work), "--device", "cpu",
                      "--config", "cpu", "--train-samples", "64", "--test-samples", "32",
                      "--batch", "16", "--seconds", "400", "--timing-steps", "2",
                      "--threads", "1", "--max-epochs", "2"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    # the timing ran, side by side, and set the epochs (capped at 2)
    assert set(res["step_seconds_together"]) == {"algebraformer", "lstm", "gru"}
    assert res["epochs"] == 2 and res["steps"] == 2 * (64 // 16)
    for arch, m in res["models"].items():
        assert m["returncode"] == 0, (arch, m["log_tail"])
        assert len(m["errors"]) == 32 and math.isfinite(m["relative_mse"])
        assert abs(m["relative_mse"] - sum(m["errors"]) / 32) < 1e-9 * m["relative_mse"] + 1e-15
        assert [e for e, _ in m["history"]] == [1.0, 2.0]
    for arch in ("lstm", "gru"):
        ratio, lo, hi = res["paired"][arch]["ratio_ci"]
        assert lo <= ratio <= hi
        assert ratio == res["models"][arch]["relative_mse"] / res["models"]["algebraformer"][
            "relative_mse"]
    # the transformer comes back in pieces that join into a loadable model file
    pieces = sorted(p for p in os.listdir(out) if p.startswith("algebraformer_gpu.pt."))
    joined = tmp_path / "af.pt"
    joined.write_bytes(b"".join((out / p).read_bytes() for p in pieces))
    assert load_model(str(joined), method="algebraformer").metadata.training["steps"] == 8
    text = script.render(res)
    assert "| algebraformer |" in text and "Floor" in text
