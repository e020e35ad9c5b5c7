#!/bin/bash
# Entry point of the petsc-neural image.
#
#   docker run IMAGE demo | bench ... | models | train ...   ->  petsc-neural ARGS
#   docker run IMAGE mpiexec -n 2 petsc-neural demo           ->  the command itself
#   docker run IMAGE exec CMD ARGS...                         ->  CMD ARGS (any command)
#
# PETSC_DIR/PETSC_ARCH come from the file the setup script writes into the venv.
set -e
if [ -r "$PETSC_NEURAL_VENV/petsc-neural-env.sh" ]; then
  # shellcheck disable=SC1091
  . "$PETSC_NEURAL_VENV/petsc-neural-env.sh"
fi
case "${1:-}" in
  exec) shift; exec "$@" ;;
  bash | sh | mpiexec | mpirun | python | python3 | make | pytest | petsc-neural) exec "$@" ;;
  *) exec petsc-neural "$@" ;;
esac
