#!/usr/bin/env bash
# Make a local Python base image where no container registry is reachable: a minimal
# Debian bookworm (Python 3.11) from debootstrap, trusting this machine's extra CA
# certificates (so pip inside the image reaches the package index the host reaches),
# imported with `docker import`. The root file system's tarball is kept in BASE_CACHE and
# reused while this script is unchanged, so a second build skips debootstrap.
#
#   bash infra/docker/base.sh [TAG]        # default: image-finetune-base:bookworm
set -euo pipefail
tag=${1:-image-finetune-base:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
cache=${BASE_CACHE:-/var/cache/image-finetune}
packages=python3,python3-venv,python3-pip,ca-certificates
key=$(cat "$0" | sha256sum | cut -c1-12)
tarball="$cache/base-bookworm-$key.tar"

if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "base image $tag: present"
  exit 0
fi
start=$(date +%s)
if [[ ! -s "$tarball" ]]; then
  command -v debootstrap >/dev/null || { echo "base.sh: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 2; }
  mkdir -p "$cache"
  rootfs=$(mktemp -d)
  trap 'rm -rf "$rootfs"' EXIT
  echo "base image: debootstrap bookworm ($packages) from $mirror"
  debootstrap --variant=minbase --include="$packages" bookworm "$rootfs" "$mirror" >/dev/null
  # Extra CAs the host trusts (a proxy's, an internal index's); none on an ordinary machine.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >/dev/null
  fi
  chroot "$rootfs" apt-get clean
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/usr/share/doc/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
  tar -C "$rootfs" -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
  echo "base image: root file system in $(( $(date +%s) - start )) s ($(du -h "$tarball" | cut -f1))"
fi
docker import --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' "$tarball" "$tag" >/dev/null
echo "base image $tag: imported in $(( $(date +%s) - start )) s"
