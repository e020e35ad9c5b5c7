# petsc-neural: `make demo` and `make test` install whatever is missing first
# (idempotent: a second run skips finished steps), then do their job.
SHELL := /bin/bash
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
# Open MPI refuses root unless told; 2 ranks on 2 cores need oversubscription;
# Firedrake wants one OpenMP thread.
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1
export OMPI_MCA_rmaps_base_oversubscribe := 1
export OMP_NUM_THREADS := 1
PYTEST_ARGS ?=

.PHONY: setup demo test lint clean-venv docker docker-test
setup:
	@bash scripts/setup_env.sh

demo: setup
	$(VENV)/bin/petsc-neural demo

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check .

clean-venv:
	rm -rf $(VENV)

# The image (docker/Dockerfile, built by docker/build.sh: see the README's "Docker
# and batch jobs"); needs a running docker daemon, no image registry.
docker:
	@bash docker/build.sh

docker-test: docker
	@bash docker/test.sh
