#!/usr/bin/env bash
# One-command, idempotent setup of the petsc-neural stack on Debian 12:
#   system libraries -> PETSc 3.26.0 (cached outside the repo) -> .venv with
#   torch (CPU) + mpi4py + petsc4py + Firedrake -> this project (editable).
# Every step prints one line with its elapsed time; finished steps are skipped
# (stamp files), so a second run takes seconds.  On failure the step is named and
# the tail of its log is shown.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

PETSC_VERSION=3.26.0
PETSC4PY_VERSION=3.26.0
TORCH_VERSION=2.13.0
FIREDRAKE_VERSION=2026.10.0
H5PY_VERSION=3.16.0
PETSC_ARCH=arch-petsc-neural
VENV=${PETSC_NEURAL_VENV:-$ROOT/.venv}
CACHE=${PETSC_NEURAL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/petsc-neural}
LOGDIR=$ROOT/.setup-logs
mkdir -p "$CACHE" "$LOGDIR"

APT_PACKAGES="python3-dev python3-venv python3-pip build-essential ca-certificates
bison flex gfortran ninja-build pkg-config cmake zlib1g-dev libopenmpi-dev
openmpi-bin libhdf5-mpi-dev libmumps-ptscotch-dev libmetis-dev libopenblas-dev
libptscotch-dev libscalapack-openmpi-dev libsuitesparse-dev libsuperlu-dev
libsuperlu-dist-dev libhwloc-dev
libglu1-mesa libxcursor1 libxft2 libxinerama1 libxrender1 libxfixes3 libfontconfig1 libgl1"
# (the last line: shared libraries that the gmsh wheel's bundled library loads)

# The configure options that work against Debian 12's libraries (hypre left out:
# Debian's hypre 2.26 does not compile with PETSc 3.26).
PETSC_CONFIGURE_OPTS=(
  --with-c2html=0 --with-debugging=0 --with-fortran-bindings=0
  --with-shared-libraries=1 --with-strict-petscerrorcode
  "--CFLAGS+=-I/usr/include/superlu -I/usr/include/superlu-dist"
  "--CXXFLAGS+=-I/usr/include/superlu -I/usr/include/superlu-dist"
  "--FFLAGS+=-I/usr/include/superlu -I/usr/include/superlu-dist"
  --COPTFLAGS=-O3 --CXXOPTFLAGS=-O3 --FOPTFLAGS=-O3
  --with-bison
  --with-hdf5-include=/usr/include/hdf5/openmpi
  "--with-hdf5-lib=[/usr/lib/x86_64-linux-gnu/hdf5/openmpi/libhdf5.so,/usr/lib/x86_64-linux-gnu/hdf5/openmpi/libhdf5_hl.so]"
  --with-hwloc --with-metis --with-mumps
  --with-ptscotch "--with-ptscotch-lib=-lptesmumps -lptscotch -lptscotcherr -lesmumps -lscotch -lscotcherr"
  --with-ptscotch-include=/usr/include/scotch
  --with-scalapack-lib=-lscalapack-openmpi
  --with-suitesparse --with-superlu_dist --with-zlib
)
# Extra configure options, e.g. the CUDA image's "--with-cuda=1 --with-cuda-dir=...";
# they are part of the hash, so a CUDA build gets its own PETSC_DIR.
read -r -a PETSC_EXTRA <<<"${PETSC_NEURAL_PETSC_CONFIGURE_EXTRA:-}"
PETSC_CONFIGURE_OPTS+=("${PETSC_EXTRA[@]}")
PETSC_HASH=$(printf '%s\n' "$PETSC_VERSION" "${PETSC_CONFIGURE_OPTS[@]}" | sha256sum | cut -c1-12)
PETSC_DIR=$CACHE/petsc-$PETSC_VERSION-$PETSC_HASH
export PETSC_DIR PETSC_ARCH

# Open MPI refuses root unless told; 2 ranks on 2 cores need oversubscription.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1 OMP_NUM_THREADS=1
export PIP_DISABLE_PIP_VERSION_CHECK=1

T0=$(date +%s)
step() {  # step NAME STAMP COMMAND...  (runs COMMAND unless STAMP exists)
  local name=$1 stamp=$2; shift 2
  if [ -n "$stamp" ] && [ -e "$stamp" ]; then
    printf '[setup] %-12s done already (0s)\n' "$name"
  else
    run_step "$name" "$stamp" "$@"
  fi
  # PETSC_NEURAL_SETUP_STOP_AFTER=STEP ends the setup after STEP (the Docker image
  # builds the expensive steps as separate layers).
  if [ "${PETSC_NEURAL_SETUP_STOP_AFTER:-}" = "$name" ]; then
    printf '[setup] stopping after %s (PETSC_NEURAL_SETUP_STOP_AFTER) in %ds\n' "$name" \
      $(( $(date +%s) - T0 ))
    exit 0
  fi
}
run_step() {
  local name=$1 stamp=$2; shift 2
  local t=$(date +%s) log=$LOGDIR/$name.log
  printf '[setup] %-12s running (log: %s)\n' "$name" "${log#$ROOT/}"
  # A subshell outside any `if`, so `set -e` holds inside the step's functions.
  local rc=0
  set +e
  ( set -e; "$@" ) >"$log" 2>&1
  rc=$?
  set -e
  if [ "$rc" = 0 ]; then
    if [ -n "$stamp" ]; then mkdir -p "$(dirname "$stamp")"; date -u +%FT%TZ >"$stamp"; fi
    printf '[setup] %-12s ok (%ds)\n' "$name" $(( $(date +%s) - t ))
  else
    printf '[setup] %-12s FAILED after %ds; last lines of %s:\n' "$name" $(( $(date +%s) - t )) "$log" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
}

missing_apt() {
  local p missing=""
  for p in $APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
  done
  echo "$missing"
}
apt_install() {
  local missing; missing=$(missing_apt)
  [ -z "$missing" ] && { echo "all present"; return 0; }
  local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends $missing
}

build_petsc() (
  rm -rf "$PETSC_DIR"
  # The PETSc sources are the petsc sdist on PyPI (the only registry reachable),
  # kept in the cache so a rebuild does not download it again.
  local tarball=$CACHE/downloads/petsc-$PETSC_VERSION.tar.gz
  if [ ! -s "$tarball" ]; then
    local dl; dl=$(mktemp -d)
    python3 -m pip download --no-deps --no-binary :all: "petsc==$PETSC_VERSION" -d "$dl"
    mkdir -p "$CACHE/downloads"
    mv "$dl/petsc-$PETSC_VERSION.tar.gz" "$tarball.part" && mv "$tarball.part" "$tarball"
    rm -rf "$dl"
  fi
  mkdir -p "$PETSC_DIR"
  tar -xzf "$tarball" -C "$PETSC_DIR" --strip-components=1
  cd "$PETSC_DIR"
  ./configure PETSC_ARCH="$PETSC_ARCH" "${PETSC_CONFIGURE_OPTS[@]}"
  # No -j here: PETSc's makefile then runs its own -j MAKE_NP -l MAKE_LOAD (every
  # core, found by configure).  `-j"$(nproc)"` built serially under `make setup`:
  # coreutils' nproc obeys OMP_NUM_THREADS, which the Makefile sets to 1.
  make PETSC_DIR="$PETSC_DIR" PETSC_ARCH="$PETSC_ARCH" all
)

PY=$VENV/bin/python
PIP="$PY -m pip"
STAMPS=$VENV/.petsc-neural-setup
# Keep pip's wheel cache so a second clone's venv comes from cached wheels.
venv_create() { rm -rf "$VENV"; python3 -m venv "$VENV"; $PIP install --upgrade "pip<26"; }

FIREDRAKE_BUILD_REQS=(hatchling flit_core poetry-core scikit-build-core meson-python setuptools_scm wheel
  "Cython>=3.0" "firedrake-rtree>=2026.3.0" "libsupermesh>=2026.3" numpy petsctools pkgconfig pybind11
  "setuptools>=77.0.3" "rtree>=1.2")

step apt "" apt_install
# PETSc's stamp lives inside its directory: a half-finished build is redone.
step petsc "$PETSC_DIR/$PETSC_ARCH/.petsc-neural-complete" build_petsc
[ -x "$PY" ] || rm -rf "$STAMPS"
step venv "$STAMPS/venv" venv_create
# torch first and pinned, so nothing later can pull a CUDA build.
step torch "$STAMPS/torch-$TORCH_VERSION" $PIP install "torch==$TORCH_VERSION"
step mpi4py "$STAMPS/mpi4py" $PIP install setuptools wheel cython pkgconfig numpy mpi4py

# h5py for Firedrake is built from source against MPI HDF5 (single-threaded,
# about 4 minutes).  It needs mpi4py and HDF5, not PETSc, so it is built on the
# second core while petsc4py's single-threaded build runs, and installed as a
# wheel with Firedrake.
H5PY_WHEELS=$STAMPS/wheels
H5PY_STAMP=$STAMPS/h5py-$H5PY_VERSION
MPI_HDF5=(env HDF5_MPI=ON CC=mpicc CXX=mpicxx HDF5_DIR=/usr/lib/x86_64-linux-gnu/hdf5/openmpi)
build_h5py() {
  rm -rf "$H5PY_WHEELS.part"
  "${MPI_HDF5[@]}" $PIP wheel --no-deps --no-build-isolation --no-binary h5py \
    -w "$H5PY_WHEELS.part" "h5py==$H5PY_VERSION"
  rm -rf "$H5PY_WHEELS" && mv "$H5PY_WHEELS.part" "$H5PY_WHEELS"
}
H5PY_PID=
if [ ! -e "$STAMPS/firedrake-$FIREDRAKE_VERSION" ] && [ ! -e "$H5PY_STAMP" ]; then
  printf '[setup] %-12s running in the background (log: %s)\n' h5py "${LOGDIR#$ROOT/}/h5py.log"
  H5PY_T=$(date +%s)
  set +e
  ( set -e; build_h5py ) >"$LOGDIR/h5py.log" 2>&1 &
  H5PY_PID=$!
  set -e
  # A step that fails below ends the setup: the background build goes with it.
  trap '[ -z "$H5PY_PID" ] || { pkill -TERM -P "$H5PY_PID" 2>/dev/null; kill "$H5PY_PID" 2>/dev/null; } || true' EXIT
fi
step petsc4py "$STAMPS/petsc4py-$PETSC4PY_VERSION-$PETSC_HASH" \
  $PIP install --no-build-isolation "petsc4py==$PETSC4PY_VERSION"
if [ -n "$H5PY_PID" ]; then
  rc=0
  wait "$H5PY_PID" || rc=$?
  H5PY_PID=
  if [ "$rc" != 0 ]; then
    printf '[setup] %-12s FAILED; last lines of %s:\n' h5py "$LOGDIR/h5py.log" >&2
    tail -n 40 "$LOGDIR/h5py.log" >&2
    exit 1
  fi
  date -u +%FT%TZ >"$H5PY_STAMP"
  printf '[setup] %-12s ok (%ds, beside petsc4py)\n' h5py $(( $(date +%s) - H5PY_T ))
fi
step fd-reqs "$STAMPS/firedrake-build-reqs" $PIP install "${FIREDRAKE_BUILD_REQS[@]}"
install_firedrake() {
  local wheel; wheel=$(ls "$H5PY_WHEELS"/h5py-"$H5PY_VERSION"-*.whl)
  "${MPI_HDF5[@]}" $PIP install --no-build-isolation "$wheel" "firedrake[check]==$FIREDRAKE_VERSION" \
    "torch==$TORCH_VERSION" "petsc4py==$PETSC4PY_VERSION"
}
step firedrake "$STAMPS/firedrake-$FIREDRAKE_VERSION" install_firedrake
# The project itself; re-run whenever its metadata changes.
PROJ_HASH=$(cat setup.py pyproject.toml 2>/dev/null | sha256sum | cut -c1-12)
step project "$STAMPS/project-$PROJ_HASH" $PIP install --no-build-isolation \
  --config-settings editable_mode=compat -e ".[test]" \
  "torch==$TORCH_VERSION" "petsc4py==$PETSC4PY_VERSION"

# Record where PETSc lives so the package, tests and the C tutorials find it.
cat >"$VENV/petsc-neural-env.sh" <<ENV
export PETSC_DIR=$PETSC_DIR PETSC_ARCH=$PETSC_ARCH
ENV
printf '[setup] all steps done in %ds (PETSC_DIR=%s)\n' $(( $(date +%s) - T0 )) "$PETSC_DIR"
