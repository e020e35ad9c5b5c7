"""The benchmark harness: counts match plain petsc4py, schema, outputs, MPI."""

import copy
import json

import jsonschema
import matplotlib.image as mpimg
import pytest
from petsc4py import PETSc

from firedrake_problems import make_problem
from petsc_neural.bench import (
    GAMG_TUNING_GRID,
    BenchConfig,
    ksp_options,
    markdown,
    plot_histories,
    run_bench,
    validate,
    write_outputs,
)
from petsc_neural.bench.run import run_case


def plain_iterations(family, size, ksp_type, pc_opts, rtol=1e-8, **params):
    """The same solve through a plain petsc4py KSP (no harness code)."""
    problem = make_problem(family, size, seed=0, **params)
    ksp = PETSc.KSP().create(comm=problem.A.getComm())
    ksp.setOperators(problem.A)
    ksp.setType(ksp_type)
    ksp.setTolerances(rtol=rtol, atol=0.0, max_it=1000)
    ksp.setNormType(PETSc.KSP.NormType.UNPRECONDITIONED)
    pc = ksp.getPC()
    pc.setType(pc_opts["pc_type"])
    opts = PETSc.Options()
    if pc_opts["pc_type"] == "gamg":
        for key, value in pc_opts.items():
            if key != "pc_type":
                opts[key] = value
        pc.setFromOptions()
        pc.setCoordinates(problem.coordinates)
    try:
        # GAMG reads the mg_levels_* options when it builds its levels, at
        # KSPSetUp: the options stay in the database until then.
        ksp.setUp()
    finally:
        for key in pc_opts:
            if key != "pc_type":
                opts.delValue(key)
    x = problem.A.createVecRight()
    ksp.solve(problem.b, x)
    assert ksp.getConvergedReason() > 0
    return ksp.getIterationNumber()


@pytest.fixture(scope="module")
def poisson_results():
    config = BenchConfig(families=[("poisson", {})], sizes=[12, 24],
                         pcs=["none", "jacobi", "gamg", "pyamg"], ksps=["cg"], repeat=1)
    return run_bench(config)


@pytest.mark.parametrize("size", [12, 24])
def test_iterations_equal_plain_petsc4py(poisson_results, size):
    rows = {c["pc"]: c for c in poisson_results["cases"] if c["size"] == size}
    assert all(c["status"] == "ok" and c["converged"] for c in rows.values()), rows
    assert rows["jacobi"]["iterations"] == plain_iterations("poisson", size, "cg",
                                                            {"pc_type": "jacobi"})
    gamg_opts = {k: v for k, v in rows["gamg"]["options"].items()
                 if k.startswith(("pc_", "mg_"))}
    assert rows["gamg"]["iterations"] == plain_iterations("poisson", size, "cg", gamg_opts)
    # True residual histories, ending below rtol.
    for c in rows.values():
        assert c["history"][-1] <= 1e-8 and c["rel_residual"] <= 1.01e-8


@pytest.mark.parametrize("setting", sorted(GAMG_TUNING_GRID))
def test_every_gamg_setting_matches_plain_petsc4py(setting):
    """Whichever setting the timing-based tuning picks, its count is PETSc's own."""
    opts = GAMG_TUNING_GRID[setting]
    problem = make_problem("poisson", 12, seed=0)
    res = run_case(problem, {**ksp_options("cg", 1e-8, 1000), **opts}, repeat=1)
    assert res["converged"]
    assert res["iterations"] == plain_iterations("poisson", 12, "cg", opts)


def test_schema_accepts_results_and_rejects_broken_ones(poisson_results):
    validate(json.loads(json.dumps(poisson_results)))  # as written to disk
    broken = copy.deepcopy(poisson_results)
    del broken["cases"][0]["iterations"]
    with pytest.raises(jsonschema.ValidationError, match="'iterations' is a required property"):
        validate(broken)
    broken = copy.deepcopy(poisson_results)
    broken["cases"][0]["status"] = "fine"
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)


def test_ratio_to_gamg_is_from_the_same_run(poisson_results):
    for c in poisson_results["cases"]:
        gamg = next(g for g in poisson_results["cases"]
                    if g["pc"] == "gamg" and g["size"] == c["size"])
        assert c["ratio_to_gamg"] == pytest.approx(
            c["total_time"]["min"] / gamg["total_time"]["min"])


def test_outputs_show_every_pc(poisson_results, tmp_path):
    write_outputs(poisson_results, str(tmp_path))
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads(
        json.dumps(poisson_results))
    md = (tmp_path / "results.md").read_text()
    for pc in ("none", "jacobi", "gamg", "pyamg"):
        assert f"| {pc} |" in md
    written = plot_histories(poisson_results, str(tmp_path))
    assert len(written) == 2
    for path, labels in written.items():
        assert sorted(labels) == ["gamg", "jacobi", "none", "pyamg"]
        image = mpimg.imread(path)
        assert image.ndim == 3 and image.shape[0] > 100 and image.std() > 0.01
    assert (tmp_path / "scaling.png").exists()  # two sizes -> the scaling plot


def test_paper_rows_are_marked():
    results = {
        "created": "x", "command": "", "machine": {}, "nprocs": 1,
        "config": {"rtol": 1e-8, "max_it": 10, "repeat": 1, "seed": 0}, "cases": [
            {"family": "poisson", "size": 32, "params": {}, "dofs": 1, "nnz": 1, "ksp": "gmres",
             "pc": "jacobi", "status": "ok", "iterations": 3, "reason": 2,
             "rel_residual": 1e-9, "ratio_to_gamg": None,
             **{k: {"min": 1.0, "median": 1.0, "all": [1.0]}
                for k in ("setup_time", "solve_time", "total_time")}}],
        "paper": [{"family": "poisson", "size": 32, "ksp": "gmres", "pc": "NPO",
                   "iterations": 34, "time": 0.5, "source": "seed 000 Table 1"}],
    }
    assert "| NPO (paper: seed 000 Table 1) | 34 |" in markdown(results)


@pytest.mark.parallel(nprocs=2)
def test_two_ranks_match_plain_petsc4py():
    config = BenchConfig(families=[("poisson", {})], sizes=[16], pcs=["jacobi", "ilu", "pyamg"],
                         ksps=["cg", "gmres"], repeat=1)
    results = run_bench(config)
    assert results["nprocs"] == 2
    rows = {(c["ksp"], c["pc"]): c for c in results["cases"]}
    assert rows[("cg", "jacobi")]["iterations"] == plain_iterations(
        "poisson", 16, "cg", {"pc_type": "jacobi"})
    assert rows[("cg", "ilu")]["options"]["pc_type"] == "bjacobi"  # ILU is local in parallel
    assert rows[("cg", "pyamg")]["status"] == "error"
    assert "serial only" in rows[("cg", "pyamg")]["error"]
    assert rows[("gmres", "jacobi")]["options"]["ksp_pc_side"] == "right"
    assert rows[("gmres", "jacobi")]["converged"]


def test_ksp_options_give_true_residual_norms():
    assert ksp_options("cg", 1e-6, 10)["ksp_norm_type"] == "unpreconditioned"
    assert ksp_options("gmres", 1e-6, 10)["ksp_pc_side"] == "right"


def test_peak_memory_is_recorded(poisson_results):
    for c in poisson_results["cases"]:
        assert c["peak_rss_mb"] > 10  # the Python process itself is in it
        assert 0 <= c["rss_increase_mb"] <= c["peak_rss_mb"]
    assert "| peak RSS (MB) |" in markdown(poisson_results)


def test_family_sizes_and_max_dofs():
    config = BenchConfig(families=[("poisson", {"dim": 2}), ("poisson", {"dim": 1})],
                         sizes=[8], family_sizes=[[8, 12], None], pcs=["jacobi", "sor"],
                         ksps=["cg"], repeat=1, max_dofs={"sor": 100})
    results = run_bench(config)
    validate(results)
    got = {(c["params"]["dim"], c["size"], c["pc"]) for c in results["cases"]}
    assert got == {(2, 8, "jacobi"), (2, 8, "sor"), (2, 12, "jacobi"), (1, 8, "jacobi"),
                   (1, 8, "sor")}  # 2D 12x12 has 169 dofs > 100: no SOR there
    assert "Not run at this size: sor (max_dofs 100)." in markdown(results)
