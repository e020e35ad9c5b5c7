"""scripts/scaling_suite.py (issue 13's suite) regenerates its summary and plot in one command."""

from __future__ import annotations

import json

from script_helpers import load_script


def test_tiny_suite_end_to_end(tmp_path):
    config = tmp_path / "suite.json"
    config.write_text(json.dumps({
        "families": [["poisson", {"dim": 2}, [8, 12]]],
        "ksps": ["fgmres"], "pcs": ["gamg", "jacobi", "none"], "rtol": 1e-8,
        "max_it": 2000, "repeat": 1, "max_dofs": {"none": 100}}))
    out = tmp_path / "out"
    suite = load_script("scripts/scaling_suite.py")
    assert suite.main(["--nprocs", "1", "--config", str(config), "--out", str(out)]) == 0
    res = json.loads((out / "np1" / "results.json").read_text())
    text = (out / "summary.md").read_text()
    assert (out / "time_vs_dofs.png").stat().st_size > 0
    for case in res["cases"]:
        assert case["status"] == "ok" and case["converged"]
        assert case["peak_rss_mb"] > 0 and case["rss_increase_mb"] >= 0
    jacobi = {c["size"]: c for c in res["cases"] if c["pc"] == "jacobi"}
    row = next(line for line in text.splitlines() if line.startswith("| jacobi | 1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")][2:]
    assert [int(c.split(" / ")[0]) for c in cells] == [jacobi[8]["iterations"],
                                                       jacobi[12]["iterations"]]
    assert all("(+" in c for c in cells)
    # "none" is capped by max_dofs: 81 dofs run, 169 do not.
    none_row = next(line for line in text.splitlines() if line.startswith("| none | 1 |"))
    assert none_row.rstrip(" |").endswith("-")
