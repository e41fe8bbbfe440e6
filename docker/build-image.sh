#!/bin/sh
# Builds the image of Flywheel and of its `--runtime docker` execution
# containers (docker/Dockerfile) around a flywheel binary, in a build context
# of its own (so the binary may live in any cargo target dir), with debug
# info stripped to keep the image small.
#
#   docker/build-image.sh [IMAGE] [BINARY] [BASE]
#
# Defaults: flywheel-sandbox:latest, target/release/flywheel, and the base
# built by docker/build-base-image.sh (flywheel-sandbox-base:bookworm).
set -eu
IMAGE=${1:-flywheel-sandbox:latest}
BINARY=${2:-target/release/flywheel}
BASE=${3:-flywheel-sandbox-base:bookworm}
HERE=$(cd "$(dirname "$0")" && pwd)

[ -x "$BINARY" ] || { echo "error: $BINARY is not built (make build)" >&2; exit 1; }
docker image inspect "$BASE" >/dev/null 2>&1 \
    || { echo "error: the base image $BASE is missing: build it with docker/build-base-image.sh" >&2; exit 1; }

CONTEXT=$(mktemp -d /tmp/flywheel-image.XXXXXX)
trap 'rm -rf "$CONTEXT"' EXIT INT TERM
cp "$HERE/Dockerfile" "$CONTEXT/Dockerfile"
strip --strip-debug -o "$CONTEXT/flywheel" "$BINARY" 2>/dev/null || cp "$BINARY" "$CONTEXT/flywheel"
PREVIOUS=$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
if ! docker build -q --build-arg BASE="$BASE" --build-arg BINARY=flywheel -t "$IMAGE" "$CONTEXT" \
    >/dev/null 2>"$CONTEXT.log"; then
    cat "$CONTEXT.log" >&2
    rm -f "$CONTEXT.log"
    exit 1
fi
rm -f "$CONTEXT.log"
# A rebuild leaves the previous image untagged: remove it unless a container uses it.
CURRENT=$(docker image inspect -f '{{.Id}}' "$IMAGE")
if [ -n "$PREVIOUS" ] && [ "$PREVIOUS" != "$CURRENT" ]; then
    docker image rm "$PREVIOUS" >/dev/null 2>&1 || true
fi
echo "built $IMAGE from $BINARY"
