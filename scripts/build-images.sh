#!/usr/bin/env bash
# Builds hemostat's images with no registry at all:
#   $HEMOSTAT_IMAGE (default hemostat:local)        every agent, FROM scratch, static binaries
#   $PATIENT_IMAGE  (default hemostat-patient:local) the demo/test program
#   $REDIS_IMAGE    (default hemostat-redis:local)   Debian's redis-server from this host
#   $DOCKER_PROXY_IMAGE (default hemostat-docker-proxy:local) Debian's haproxy from this host,
#                   the Docker API proxies (scripts/build-docker-proxy-image.sh)
# Binaries are compiled here with `-C target-feature=+crt-static` (glibc, no OpenSSL: rustls),
# so the images need nothing but the CA bundle. Idempotent and incremental.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HEMOSTAT_IMAGE="${HEMOSTAT_IMAGE:-hemostat:local}"
PATIENT_IMAGE="${PATIENT_IMAGE:-hemostat-patient:local}"
REDIS_IMAGE="${REDIS_IMAGE:-hemostat-redis:local}"
DOCKER_PROXY_IMAGE="${DOCKER_PROXY_IMAGE:-hemostat-docker-proxy:local}"
TARGET=x86_64-unknown-linux-gnu
TARGET_DIR="$ROOT/target/static"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "need root to run: $*" >&2; return 1; fi
}

build_image() { # tag, context dir, dockerfile
    local out
    if ! out="$(DOCKER_BUILDKIT=0 docker build -q -t "$1" -f "$3" "$2" 2>&1)"; then
        printf '%s\n' "$out" >&2
        echo "build-images: docker build of $1 failed" >&2
        exit 1
    fi
    echo "built $1"
}

echo "==> compiling static binaries (target/static)"
RUSTFLAGS='-C target-feature=+crt-static' cargo build --quiet --release \
    --manifest-path "$ROOT/Cargo.toml" --target "$TARGET" --target-dir "$TARGET_DIR" \
    -p hemostat-monitor -p hemostat-analyzer -p hemostat-responder -p hemostat-alert \
    -p hemostat-dashboard
BIN="$TARGET_DIR/$TARGET/release"

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT

mkdir -p "$ctx/hemostat/bin"
for agent in monitor analyzer responder alert dashboard; do
    cp "$BIN/hemostat-$agent" "$ctx/hemostat/bin/"
    # Line tables are for profiling on the host; the image ships without them (70 MB → 13 MB).
    strip "$ctx/hemostat/bin/hemostat-$agent" 2>/dev/null || true
done
ca="${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}"
[ -f "$ca" ] || { echo "no CA bundle at $ca (install ca-certificates)" >&2; exit 1; }
cp "$ca" "$ctx/hemostat/ca-certificates.crt"
build_image "$HEMOSTAT_IMAGE" "$ctx/hemostat" "$ROOT/docker/Dockerfile.local"

PATIENT_IMAGE="$PATIENT_IMAGE" bash "$ROOT/scripts/build-patient-image.sh" >/dev/null
echo "built $PATIENT_IMAGE"

if ! command -v redis-server >/dev/null 2>&1; then
    echo "==> installing redis-server (Debian package) to build $REDIS_IMAGE"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
rootfs="$ctx/redis/rootfs"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/data" "$rootfs/tmp"
for b in redis-server redis-cli; do
    path="$(command -v "$b")"
    cp -L "$path" "$rootfs/usr/local/bin/$b"
    # Every shared library it loads, at the same path, plus the dynamic loader.
    ldd "$path" | awk '/=> \//{print $3} /^\t\/lib/{print $1}' | while read -r lib; do
        mkdir -p "$rootfs$(dirname "$lib")"
        cp -L "$lib" "$rootfs$lib"
    done
done
build_image "$REDIS_IMAGE" "$ctx/redis" "$ROOT/docker/Dockerfile.redis-local"

DOCKER_PROXY_IMAGE="$DOCKER_PROXY_IMAGE" bash "$ROOT/scripts/build-docker-proxy-image.sh" >/dev/null
echo "built $DOCKER_PROXY_IMAGE"
