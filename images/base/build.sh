#!/usr/bin/env bash
# Builds mlpd's base image without any registry: a minimal Debian root made by
# debootstrap from Debian's package mirrors, imported with `docker import`.
# Usage: images/base/build.sh [TAG]   (default mlpd/base:bookworm)
# Machines that can pull from a registry do not need this: build the training
# image with --build-arg BASE=python:3.11-slim-bookworm instead.
set -euo pipefail
tag="${1:-mlpd/base:bookworm}"
suite="${MLPD_BASE_SUITE:-bookworm}"
mirror="${MLPD_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "base image $tag already present"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install -y debootstrap" >&2; exit 1; }

root="$(mktemp -d /tmp/mlpd-base.XXXXXX)"
trap 'rm -rf "$root"' EXIT
echo "debootstrap $suite into $root (about a minute)"
debootstrap --variant=minbase \
  --include=python3,python3-venv,python3-pip,ca-certificates,tini \
  "$suite" "$root" "$mirror" >"$root.log" 2>&1 || { tail -20 "$root.log" >&2; exit 1; }
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
echo "importing as $tag"
tar -C "$root" -c . | docker import \
  --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["/bin/bash"]' - "$tag"
rm -f "$root.log"
echo "built $tag"
