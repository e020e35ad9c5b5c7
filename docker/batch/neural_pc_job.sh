#!/usr/bin/env bash
# A batch job: PETSc solves under MPI with a neural preconditioner chosen by PETSc
# options, each beside a classical reference, writing -log_view, the residual
# histories and a convergence plot.
#
#   1. PETSc's C tutorial src/ksp/ksp/tutorials/ex2.c (2D Laplacian, SIZE x SIZE
#      grid), compiled from the PETSc source the setup installed ($PETSC_DIR), run
#      with -python <venv python> and NEURAL_OPTS, then with REFERENCE_OPTS;
#   2. docker/batch/firedrake_poisson.py (P1 Poisson on a SIZE x SIZE mesh) with the
#      same two option sets under its -poisson_ prefix.
#
#   NP=4 OUT=job-out bash docker/batch/neural_pc_job.sh     (any host with the venv)
#   docker run --rm -v $PWD:/out petsc-neural exec env OUT=/out/job \
#       bash /opt/petsc-neural/docker/batch/neural_pc_job.sh
#   sbatch docker/batch/neural_pc.sbatch                    (Slurm, same script)
#
# Variables (default):
#   NP (4)                 MPI ranks
#   MPIEXEC (mpiexec)      launcher, called as "$MPIEXEC -n $NP ..."; e.g. "srun --mpi=pmix"
#   SIZE (128)             grid / mesh cells per direction
#   RTOL (1e-8)            relative tolerance of every solve
#   NEURAL_OPTS ("-ksp_type fgmres -pc_type python -pc_python_type petsc_neural.NPO")
#   REFERENCE_OPTS ("-ksp_type cg -ksp_norm_type unpreconditioned -pc_type gamg")
#   OUT (petsc-neural-job-<date>)  output directory
#   PYTHON (python3 on PATH)  the petsc-neural venv's python
# Output in $OUT: {ex2,firedrake}_{neural,reference}.{out,hist,log_view},
# convergence.png, summary.txt.  Exits non-zero if any solve fails or diverges.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
NP=${NP:-4}
MPIEXEC=${MPIEXEC:-mpiexec}
SIZE=${SIZE:-128}
RTOL=${RTOL:-1e-8}
NEURAL_OPTS=${NEURAL_OPTS:-"-ksp_type fgmres -pc_type python -pc_python_type petsc_neural.NPO"}
REFERENCE_OPTS=${REFERENCE_OPTS:-"-ksp_type cg -ksp_norm_type unpreconditioned -pc_type gamg"}
OUT=${OUT:-petsc-neural-job-$(date +%Y%m%d-%H%M%S)}
PYTHON=${PYTHON:-$(command -v python3)}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

if ! "$PYTHON" -c "import petsc_neural, petsc4py" 2>/dev/null; then
  echo "neural_pc_job: $PYTHON cannot import petsc_neural and petsc4py;" \
       "activate the petsc-neural venv or set PYTHON" >&2
  exit 2
fi
# PETSc as petsc4py was built against it (the C tutorial must use the same library).
petsc=$("$PYTHON" -c 'import petsc4py, shlex; c = petsc4py.get_config()
print("PETSC_DIR=" + shlex.quote(c["PETSC_DIR"]), "PETSC_ARCH=" + shlex.quote(c["PETSC_ARCH"]))')
eval "$petsc"
export PETSC_DIR PETSC_ARCH
mkdir -p "$OUT/ex2"
OUT=$(cd "$OUT" && pwd)
read -r -a neural <<<"$NEURAL_OPTS"
read -r -a reference <<<"$REFERENCE_OPTS"
read -r -a launch <<<"$MPIEXEC"
prefixed() {  # prefixed PREFIX OPTS...: "-x v" -> "-PREFIXx v"
  local p=$1 o; shift
  for o in "$@"; do
    if [[ $o =~ ^-[A-Za-z] ]]; then printf '%s\n' "-$p${o#-}"; else printf '%s\n' "$o"; fi
  done
}
{
  echo "petsc-neural batch job on $(hostname), $(date -u +%FT%TZ)"
  echo "NP=$NP MPIEXEC='$MPIEXEC' SIZE=$SIZE RTOL=$RTOL"
  echo "NEURAL_OPTS='$NEURAL_OPTS'"
  echo "REFERENCE_OPTS='$REFERENCE_OPTS'"
  echo "PETSC_DIR=$PETSC_DIR PETSC_ARCH=$PETSC_ARCH PYTHON=$PYTHON"
} >"$OUT/summary.txt"

# --- PETSc's C tutorial ksp/ex2, built with PETSc's own makefiles -----------------
cp "$PETSC_DIR/src/ksp/ksp/tutorials/ex2.c" "$OUT/ex2/"
cat >"$OUT/ex2/makefile" <<MAKE
include \${PETSC_DIR}/lib/petsc/conf/variables
include \${PETSC_DIR}/lib/petsc/conf/rules
MAKE
make -s -C "$OUT/ex2" ex2 >"$OUT/ex2/build.log" 2>&1 || {
  cat "$OUT/ex2/build.log" >&2; echo "neural_pc_job: ex2 did not compile" >&2; exit 1; }

run_ex2() {  # run_ex2 NAME OPTS...
  local name=$1; shift
  local t0=$SECONDS
  "${launch[@]}" -n "$NP" "$OUT/ex2/ex2" -m "$SIZE" -n "$SIZE" -python "$PYTHON" "$@" \
    -ksp_rtol "$RTOL" -ksp_max_it 2000 -ksp_error_if_not_converged -ksp_converged_reason \
    -ksp_monitor_true_residual "ascii:$OUT/ex2_$name.hist" \
    -log_view ":$OUT/ex2_$name.log_view" >"$OUT/ex2_$name.out" 2>&1 || {
      tail -n 30 "$OUT/ex2_$name.out" >&2; echo "neural_pc_job: ex2 $name failed" >&2; exit 1; }
  echo "ex2 $name ($(( SECONDS - t0 ))s): $(grep -h 'Norm of error' "$OUT/ex2_$name.out")" \
    | tee -a "$OUT/summary.txt"
}
run_ex2 neural "${neural[@]}"
run_ex2 reference "${reference[@]}"

# --- the Firedrake script, the same options under its -poisson_ prefix -------------
run_firedrake() {  # run_firedrake NAME OPTS...
  local name=$1; shift
  local t0=$SECONDS
  mapfile -t opts < <(prefixed poisson_ "$@")
  "${launch[@]}" -n "$NP" "$PYTHON" "$HERE/firedrake_poisson.py" -size "$SIZE" "${opts[@]}" \
    -poisson_ksp_rtol "$RTOL" -poisson_ksp_converged_reason \
    -poisson_ksp_monitor_true_residual "ascii:$OUT/firedrake_$name.hist" \
    -log_view ":$OUT/firedrake_$name.log_view" >"$OUT/firedrake_$name.out" 2>&1 || {
      tail -n 30 "$OUT/firedrake_$name.out" >&2
      echo "neural_pc_job: firedrake $name failed" >&2; exit 1; }
  echo "firedrake $name ($(( SECONDS - t0 ))s): $(grep -h '^firedrake_poisson:' \
    "$OUT/firedrake_$name.out")" | tee -a "$OUT/summary.txt"
}
run_firedrake neural "${neural[@]}"
run_firedrake reference "${reference[@]}"

"$PYTHON" "$HERE/plot_convergence.py" -o "$OUT/convergence.png" \
  --title "SIZE=$SIZE, $NP ranks" "$OUT"/ex2_*.hist "$OUT"/firedrake_*.hist
echo "neural_pc_job: done; results in $OUT" | tee -a "$OUT/summary.txt"
