#!/usr/bin/env bash
# `make docker-test`: run the image's main jobs, as a user would.
#   1. `docker run IMAGE models` and the non-root user;
#   2. `docker run IMAGE demo` (the main job: NPO beside classical PCs, a plot);
#   3. a 2-rank batch job in the container: docker/batch/neural_pc_job.sh with NP=2
#      (PETSc's C tutorial ex2 and the Firedrake script, neural PC and reference,
#      -log_view and a convergence plot);
#   4. -pc_neural_device cuda on a machine without CUDA: a clear error, no hang.
# Outputs in build/docker-test/ (mounted as /out).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGE=${IMAGE:-petsc-neural:latest}
OUTDIR=$ROOT/build/docker-test
rm -rf "$OUTDIR"; mkdir -p "$OUTDIR"; chmod 777 "$OUTDIR"
run() {  # the image as a user runs it, at low CPU priority (a shared machine)
  docker run --rm --cpu-shares 256 --shm-size 512m -v "$OUTDIR:/out" -w /out "$IMAGE" "$@"
}
step() { printf '\n[docker-test] %s\n' "$*"; }

step "models, user"
run models
uid=$(run exec id -u)
[ "$uid" != 0 ] || { echo "[docker-test] the image runs as root" >&2; exit 1; }
echo "runs as uid $uid"

step "demo"
t0=$SECONDS
run demo --plot /out/npo_demo.png | tee "$OUTDIR/demo.txt"
test -s "$OUTDIR/npo_demo.png"
echo "demo: $(( SECONDS - t0 ))s"

step "2-rank batch job"
t0=$SECONDS
run exec env NP=2 SIZE="${SIZE:-64}" OUT=/out/job bash /opt/petsc-neural/docker/batch/neural_pc_job.sh
for f in ex2_neural.log_view ex2_reference.log_view firedrake_neural.log_view \
         firedrake_reference.log_view convergence.png; do
  test -s "$OUTDIR/job/$f" || { echo "[docker-test] missing job/$f" >&2; exit 1; }
done
grep -q "PCNeuralApply" "$OUTDIR/job/ex2_neural.log_view"
echo "batch job: $(( SECONDS - t0 ))s"

step "-pc_neural_device cuda without CUDA"
set +e
out=$(run exec mpiexec -n 2 /out/job/ex2/ex2 -m 16 -n 16 -python python3 -ksp_type fgmres \
      -pc_type python -pc_python_type petsc_neural.NPO -pc_neural_device cuda 2>&1)
rc=$?
set -e
echo "$out" | grep -iE "cuda" | head -n 4
if [ "$rc" = 0 ] || ! grep -qi "cuda" <<<"$out"; then
  echo "[docker-test] -pc_neural_device cuda did not fail clearly (rc=$rc)" >&2; exit 1
fi
step "all passed"
