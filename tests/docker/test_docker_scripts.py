"""The Docker and batch-job scripts: syntax, the setup steps the Dockerfile stops
after, the files it copies, and the convergence-plot parser.

The real runs (``make docker-test``, ``docker/batch/slurm-test.sh``) need a docker
daemon or root and minutes of CPU; their output is recorded in the README.
"""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCKER = os.path.join(ROOT, "docker")
sys.path.insert(0, os.path.join(DOCKER, "batch"))
import plot_convergence  # noqa: E402

SHELL_SCRIPTS = [
    "docker/build.sh", "docker/test.sh", "docker/entrypoint.sh", "docker/make-base-image.sh",
    "docker/install-cuda.sh", "docker/batch/neural_pc_job.sh", "docker/batch/neural_pc.sbatch",
    "docker/batch/slurm-test.sh", "scripts/setup_env.sh",
]


@pytest.mark.parametrize("script", SHELL_SCRIPTS)
def test_shell_syntax_and_mode(script):
    path = os.path.join(ROOT, script)
    out = subprocess.run(["bash", "-n", path], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert os.access(path, os.X_OK), f"{script} is not executable"


def _dockerfile():
    text = open(os.path.join(DOCKER, "Dockerfile"), encoding="utf-8").read()
    return text.replace("\\\n", " ")


def test_dockerfile_stops_after_existing_setup_steps():
    """The image builds the setup in layers: every step it stops after must exist."""
    setup = open(os.path.join(ROOT, "scripts", "setup_env.sh"), encoding="utf-8").read()
    steps = re.findall(r"^step (\S+) ", setup, flags=re.M)
    stops = re.findall(r"PETSC_NEURAL_SETUP_STOP_AFTER=(\S+)", _dockerfile())
    assert stops == ["apt", "petsc", "firedrake"], stops
    assert all(s in steps for s in stops), (stops, steps)
    # In the order the script runs them.
    assert [steps.index(s) for s in stops] == sorted(steps.index(s) for s in stops)


def test_dockerfile_copies_existing_files():
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", _dockerfile(), flags=re.M):
        for path in src.split():
            if path != ".":
                assert os.path.exists(os.path.join(ROOT, path)), path
    ignored = open(os.path.join(ROOT, ".dockerignore"), encoding="utf-8").read().split()
    for entry in (".venv", ".setup-logs", "build", ".git"):
        assert entry in ignored, entry


def test_setup_stop_after(tmp_path):
    """PETSC_NEURAL_SETUP_STOP_AFTER=apt runs the apt check only and exits 0."""
    # A copy of the script, so its logs go to tmp_path/.setup-logs.
    (tmp_path / "scripts").mkdir()
    script = tmp_path / "scripts" / "setup_env.sh"
    script.write_text(open(os.path.join(ROOT, "scripts", "setup_env.sh")).read())
    env = dict(os.environ, PETSC_NEURAL_SETUP_STOP_AFTER="apt",
               PETSC_NEURAL_CACHE=str(tmp_path / "cache"),
               PETSC_NEURAL_VENV=str(tmp_path / "venv"))
    out = subprocess.run(["bash", str(script)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[setup] apt" in out.stdout
    assert "stopping after apt" in out.stdout
    assert "petsc" not in out.stdout.replace("petsc-neural", "")
    assert not (tmp_path / "venv").exists()
    assert (tmp_path / ".setup-logs" / "apt.log").exists()


MONITOR = """\
  0 KSP unpreconditioned resid norm 2.0e+00 true resid norm 2.0e+00 ||r(i)||/||b|| 1.0e+00
  1 KSP unpreconditioned resid norm 1.0e-01 true resid norm 1.0e-01 ||r(i)||/||b|| 5.0e-02
    Residual norms for poisson_ solve.
    0 KSP preconditioned resid norm 3.0e+00 true resid norm 4.0e+00 ||r(i)||/||b|| 1.0e+00
    1 KSP preconditioned resid norm 3.0e-01 true resid norm 4.0e-01 ||r(i)||/||b|| 1.0e-01
    2 KSP preconditioned resid norm 3.0e-05 true resid norm 4.0e-05 ||r(i)||/||b|| 1.0e-05
"""


def test_plot_reads_last_solve_true_relative_residual(tmp_path):
    hist = tmp_path / "a.hist"
    hist.write_text(MONITOR)
    assert plot_convergence.read_history(str(hist)) == [1.0, 1e-1, 1e-5]
    png = tmp_path / "c.png"
    assert plot_convergence.main([str(hist), "-o", str(png)]) == 0
    assert png.stat().st_size > 0


def test_plot_refuses_a_file_without_monitor_lines(tmp_path):
    empty = tmp_path / "empty.hist"
    empty.write_text("no monitor here\n")
    with pytest.raises(SystemExit, match="no '-ksp_monitor_true_residual' lines"):
        plot_convergence.read_history(str(empty))
