#!/usr/bin/env bash
# Submit docker/batch/neural_pc.sbatch to a real single-node Slurm on this machine
# and wait for it: installs Debian's slurm-wlm and munge if missing, starts munged,
# slurmctld and slurmd for localhost only (a private config and state directory,
# ports 6817/6818), runs `sbatch --wait`, prints the job's output, stops the
# daemons it started.  Needs root.  The job uses the petsc-neural environment of
# the caller (activate the venv first, or set PETSC_NEURAL_VENV).
#
#   docker/batch/slurm-test.sh [sbatch options...]      (e.g. --export=ALL,SIZE=64)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
[ "$(id -u)" = 0 ] || { echo "slurm-test: needs root (it starts slurmd)" >&2; exit 1; }
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurm-wlm munge
fi
DIR=${SLURM_TEST_DIR:-$(mktemp -d /tmp/slurm-test.XXXXXX)}
mkdir -p "$DIR"/{state,spool,log}
HOST=$(hostname -s)
NCPU=${SLURM_TEST_CPUS:-4}   # advertised CPUs (config_overrides: may exceed the real ones)
export SLURM_CONF=$DIR/slurm.conf
cat >"$SLURM_CONF" <<CONF
ClusterName=petsc-neural-test
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$NCPU State=UNKNOWN
PartitionName=local Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF

MUNGE_STARTED=0
stop() {
  local f
  if [ -s "$DIR/slurmctld.pid" ]; then  # no job left running without its daemons
    scancel --full --signal=TERM --user="$(id -un)" 2>/dev/null || true
    for _ in $(seq 20); do
      [ -z "$(squeue -h 2>/dev/null)" ] && break
      sleep 1
    done
  fi
  for f in "$DIR/slurmd.pid" "$DIR/slurmctld.pid"; do
    [ -s "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
  done
  if [ "$MUNGE_STARTED" = 1 ] && [ -s /run/munge/munged.pid ]; then
    kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
  fi
}
trap stop EXIT

if ! munge -n </dev/null >/dev/null 2>&1; then
  [ -s /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || \
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; }
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  install -d -o munge -g munge -m 755 /run/munge
  runuser -u munge -- /usr/sbin/munged
  MUNGE_STARTED=1
fi
munge -n </dev/null | unmunge >/dev/null
slurmctld
slurmd
for _ in $(seq 60); do
  sinfo -h -o '%T' 2>/dev/null | grep -qx idle && break
  sleep 1
done
sinfo
echo "slurm-test: submitting docker/batch/neural_pc.sbatch (config and logs in $DIR)"
cd "$ROOT"
export OUT=${OUT:-$DIR/results}
# The node advertises more CPUs than it has (4 ranks on a 2-core VM): Open MPI then
# believes it is not oversubscribed; stop it binding ranks to cores and spinning.
export OMPI_MCA_hwloc_base_binding_policy=none OMPI_MCA_mpi_yield_when_idle=1
t0=$SECONDS
set +e
jobid=$(sbatch --parsable --wait --output="$DIR/job-%j.out" "$@" docker/batch/neural_pc.sbatch)
rc=$?
set -e
echo "slurm-test: job $jobid finished with exit code $rc after $(( SECONDS - t0 ))s; its output:"
cat "$DIR"/job-*.out
exit "$rc"
