#!/usr/bin/env bash
# CUDA toolkit for the CUDA image (docker/Dockerfile --build-arg CUDA=12-6), from
# NVIDIA's Debian 12 repository.  Runs as root before the setup's apt step.
#   install-cuda.sh 12-6
set -euo pipefail
CUDA=$1
REPO=https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64
apt-get update
apt-get install -y --no-install-recommends ca-certificates curl
CURL_CA=()
[ -s /etc/petsc-neural/pip-ca/host-ca.crt ] && CURL_CA=(--cacert /etc/petsc-neural/pip-ca/host-ca.crt)
curl -fsSL "${CURL_CA[@]}" -o /tmp/cuda-keyring.deb "$REPO/cuda-keyring_1.1-1_all.deb"
dpkg -i /tmp/cuda-keyring.deb
rm -f /tmp/cuda-keyring.deb
apt-get update
# The toolkit (nvcc, cuBLAS, cuSPARSE, cuSOLVER, cuRAND: what PETSc's --with-cuda links).
apt-get install -y --no-install-recommends "cuda-toolkit-$CUDA"
ln -sfn "/usr/local/cuda-${CUDA/-/.}" /usr/local/cuda
