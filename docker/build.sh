#!/usr/bin/env bash
# `make docker`: build the petsc-neural image on a machine like the project's VM
# (docker daemon running; no image registry needed).
#
#   docker/build.sh [extra docker build args...]      IMAGE=petsc-neural:latest
#
# 1. debian:12 made locally if missing (docker/make-base-image.sh);
# 2. the host's CA bundle for pip (docker/pip-ca/host-ca.crt);
# 3. the CPU torch wheel (pinned in scripts/setup_env.sh) in a wheelhouse on the
#    host (build/docker-wheelhouse), from this machine's pip configuration or else
#    download.pytorch.org, served to the build on 127.0.0.1:58609 (so it is in no
#    layer; PETSC_NEURAL_WHEEL_PORT);
# 4. docker build --network host, at low CPU priority (the machine is shared);
# then prints the build time and the image size.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
IMAGE=${IMAGE:-petsc-neural:latest}
WHEELHOUSE=${PETSC_NEURAL_WHEELHOUSE:-$ROOT/build/docker-wheelhouse}
TORCH_VERSION=$(sed -n 's/^TORCH_VERSION=//p' scripts/setup_env.sh)

bash docker/make-base-image.sh debian:12

ca_arg=()
if [ -s /etc/ssl/certs/ca-certificates.crt ]; then
  cp /etc/ssl/certs/ca-certificates.crt docker/pip-ca/host-ca.crt
  ca_arg=(--build-arg PIP_CERT=/etc/petsc-neural/pip-ca/host-ca.crt)
else
  rm -f docker/pip-ca/host-ca.crt
fi

mkdir -p "$WHEELHOUSE" build
if ! ls "$WHEELHOUSE"/torch-"$TORCH_VERSION"+cpu-cp311-*.whl >/dev/null 2>&1; then
  echo "[docker] fetching the CPU torch $TORCH_VERSION wheel into $WHEELHOUSE"
  # The image's Python is Debian 12's 3.11 on x86_64, whatever the host runs.
  target=(--no-deps --only-binary=:all: --python-version 3.11 --implementation cp
          --abi cp311 --platform manylinux_2_28_x86_64 -d "$WHEELHOUSE")
  python3 -m pip download "${target[@]}" "torch==$TORCH_VERSION" >/dev/null || true
  if ! ls "$WHEELHOUSE"/torch-"$TORCH_VERSION"+cpu-*.whl >/dev/null 2>&1; then
    rm -f "$WHEELHOUSE"/torch-*.whl  # PyPI's default torch is the CUDA build
    python3 -m pip download "${target[@]}" --index-url https://download.pytorch.org/whl/cpu \
      "torch==$TORCH_VERSION+cpu"
  fi
fi
ls "$WHEELHOUSE"/torch-"$TORCH_VERSION"+cpu-*.whl

# A fixed port: the wheelhouse URL is a build argument, and the classic builder keys
# every RUN layer after an ARG on the ARG's value, so a new port each time would
# rebuild PETSc and the venv (hours) on every `make docker`.
PORT=${PETSC_NEURAL_WHEEL_PORT:-58609}
if ! python3 -c "import socket; socket.socket().bind(('127.0.0.1', $PORT))" 2>/dev/null; then
  echo "[docker] port $PORT is busy: set PETSC_NEURAL_WHEEL_PORT (the layer cache" \
       "is keyed on the port, so another one rebuilds from the apt layer on)" >&2
  exit 1
fi
python3 -m http.server --bind 127.0.0.1 --directory "$WHEELHOUSE" "$PORT" \
  >"$ROOT/build/docker-wheelhouse-server.log" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/')" \
    2>/dev/null && break
  sleep 0.2
done

echo "[docker] building $IMAGE (log: build/docker-build.log)"
t0=$(date +%s)
set +e
# The classic builder: it honours --cpu-shares (BuildKit does not).
DOCKER_BUILDKIT=0 nice -n 15 docker build --network host --cpu-shares 256 --force-rm \
  --build-arg TORCH_FIND_LINKS="http://127.0.0.1:$PORT/" "${ca_arg[@]}" \
  -f docker/Dockerfile -t "$IMAGE" "$@" . 2>&1 | tee "$ROOT/build/docker-build.log"
rc=${PIPESTATUS[0]}
set -e
t=$(( $(date +%s) - t0 ))
if [ "$rc" != 0 ]; then
  echo "[docker] build FAILED after ${t}s (build/docker-build.log)" >&2
  exit "$rc"
fi
size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
echo "[docker] built $IMAGE in ${t}s; image size $(awk -v s="$size" 'BEGIN{printf "%.2f GB", s/1e9}')"
