#!/bin/sh
# Builds the base image of execution containers, flywheel-sandbox-base:bookworm
# (Debian bookworm with Chromium, ffmpeg and fonts), from Debian packages with
# debootstrap, so no image registry is needed. Does nothing if the image exists.
#
#   docker/build-base-image.sh [IMAGE] [MIRROR]
#
# Needs root, debootstrap and a running Docker engine.
set -eu
IMAGE=${1:-flywheel-sandbox-base:bookworm}
MIRROR=${2:-http://deb.debian.org/debian}

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "$IMAGE is already built"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "error: debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }

ROOT=$(mktemp -d /tmp/flywheel-rootfs.XXXXXX)
cleanup() {
    umount "$ROOT/proc" 2>/dev/null || true
    rm -rf "$ROOT"
}
trap cleanup EXIT INT TERM

echo "building $IMAGE in $ROOT (debootstrap, then chromium, ffmpeg, fonts)…"
debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR" >"$ROOT.log" 2>&1 || { tail -20 "$ROOT.log" >&2; exit 1; }
mount -t proc proc "$ROOT/proc"
chroot "$ROOT" /bin/sh -c '
    set -e
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends chromium ffmpeg fonts-liberation ca-certificates
    apt-get clean
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
' >>"$ROOT.log" 2>&1 || { tail -20 "$ROOT.log" >&2; exit 1; }
umount "$ROOT/proc"
rm -f "$ROOT.log"
tar -C "$ROOT" -c . | docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV LANG=C.UTF-8' \
    -m "Debian bookworm with Chromium, ffmpeg and fonts, for Flywheel's execution containers" \
    - "$IMAGE" >/dev/null
echo "built $IMAGE"
