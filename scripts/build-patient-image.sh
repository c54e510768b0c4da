#!/usr/bin/env bash
# Builds the hemostat-patient test/demo image without any registry: a statically linked
# binary built on the host, copied into a `FROM scratch` image.
# Usage: scripts/build-patient-image.sh   (tag: $PATIENT_IMAGE, default hemostat-patient:latest)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE="${PATIENT_IMAGE:-hemostat-patient:latest}"
TARGET=x86_64-unknown-linux-gnu
# A separate target dir, so these RUSTFLAGS do not invalidate (or wait on the lock of)
# the normal build.
TARGET_DIR="$ROOT/target/static"

RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --quiet --release -p hemostat-patient \
    --manifest-path "$ROOT/Cargo.toml" --target "$TARGET" --target-dir "$TARGET_DIR"
BIN="$TARGET_DIR/$TARGET/release/hemostat-patient"

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
cp "$BIN" "$ctx/hemostat-patient"
strip "$ctx/hemostat-patient" 2>/dev/null || true
cp "$ROOT/tests/patient/Dockerfile" "$ctx/Dockerfile"

# The classic builder needs no buildx plugin and never tries to pull anything for
# `FROM scratch` (BuildKit would need buildx, absent here). Its output (and its
# deprecation notice) is shown only when the build fails.
if ! out="$(DOCKER_BUILDKIT=0 docker build -q -t "$IMAGE" "$ctx" 2>&1)"; then
    printf '%s\n' "$out" >&2
    echo "build-patient-image: docker build failed" >&2
    exit 1
fi
echo "$IMAGE"
