#!/usr/bin/env bash
# Make the `debian:12` base image locally when no image registry is reachable.
#
#   docker/make-base-image.sh [TAG]        (default TAG: debian:12; needs root)
#
# Does nothing if TAG exists.  Otherwise tries `docker pull` (a registry may be
# reachable), and if that fails builds a minimal Debian 12 root file system with
# debootstrap from the Debian mirror this machine's apt uses, and `docker import`s
# it.  The result has the same apt sources layout as the official image (deb822
# /etc/apt/sources.list.d/debian.sources: bookworm, bookworm-updates,
# bookworm-security), so docker/Dockerfile needs no change either way.
set -euo pipefail
TAG=${1:-debian:12}

if docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "[base] $TAG exists"
  exit 0
fi
if [ "${PETSC_NEURAL_NO_PULL:-0}" != 1 ] && timeout 60 docker pull "$TAG" >/dev/null 2>&1; then
  echo "[base] pulled $TAG"
  exit 0
fi
echo "[base] no registry: building $TAG with debootstrap"
command -v debootstrap >/dev/null || {
  echo "[base] debootstrap is missing: apt-get install -y debootstrap" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "[base] debootstrap needs root" >&2; exit 1; }

# The mirror apt already uses here (deb822 or one-line sources), else deb.debian.org.
mirror() {  # mirror SUFFIX  ->  first URI ending in /debian$SUFFIX
  local suffix=$1 f uri
  for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -r "$f" ] || continue
    uri=$(grep -vE '^[[:space:]]*#' "$f" | grep -ohE '(https?|file)://[^ ]*/debian'"$suffix"'/?( |$)' \
          | head -n1 | tr -d ' ') || true
    if [ -n "$uri" ]; then echo "${uri%/}"; return; fi
  done
  echo "http://deb.debian.org/debian$suffix"
}
MIRROR=${DEBIAN_MIRROR:-$(mirror "")}
SECURITY=${DEBIAN_SECURITY_MIRROR:-$(mirror "-security")}
echo "[base] mirror $MIRROR, security $SECURITY"

ROOTFS=$(mktemp -d /var/tmp/debian12-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT
chmod 755 "$ROOTFS"  # it becomes the image's / (mktemp made it 0700: only root could enter)
debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR"

rm -f "$ROOTFS/etc/apt/sources.list"
cat >"$ROOTFS/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
# As in the official image: no package lists or downloaded .debs left behind.
chroot "$ROOTFS" apt-get clean
find "$ROOTFS"/var/lib/apt/lists -maxdepth 1 -type f -delete
rm -rf "$ROOTFS"/var/log/*.log "$ROOTFS"/var/cache/debconf/*-old

tar --numeric-owner -C "$ROOTFS" -c . | docker import --change 'CMD ["bash"]' - "$TAG" >/dev/null
echo "[base] imported $TAG ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
