#!/usr/bin/env bash
# Builds the Docker API proxy image (docker-read and docker-write in docker-compose.yml) with no
# registry: Debian's haproxy from this host (installed with apt when missing), exactly the shared
# libraries it loads, and docker/docker-proxy/*.cfg, `FROM scratch`. Idempotent.
# Usage: scripts/build-docker-proxy-image.sh   (tag: $DOCKER_PROXY_IMAGE, default hemostat-docker-proxy:local)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE="${DOCKER_PROXY_IMAGE:-hemostat-docker-proxy:local}"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "need root to run: $*" >&2; return 1; fi
}

# /usr/sbin is not on every user's PATH.
haproxy="$(command -v haproxy || true)"
if [ -z "$haproxy" ] && [ -x /usr/sbin/haproxy ]; then haproxy=/usr/sbin/haproxy; fi
if [ -z "$haproxy" ]; then
    echo "==> installing haproxy (Debian package) to build $IMAGE" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null
    haproxy=/usr/sbin/haproxy
fi

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
rootfs="$ctx/rootfs"
mkdir -p "$rootfs/usr/local/sbin" "$rootfs/usr/local/etc/haproxy"
cp -L "$haproxy" "$rootfs/usr/local/sbin/haproxy"
# Every shared library it loads, at the same path, plus the dynamic loader.
ldd "$haproxy" | awk '/=> \//{print $3} /^\t\/lib/{print $1}' | while read -r lib; do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
done
cp "$ROOT"/docker/docker-proxy/*.cfg "$rootfs/usr/local/etc/haproxy/"
for cfg in "$rootfs"/usr/local/etc/haproxy/*.cfg; do
    if ! out="$("$haproxy" -c -q -f "$cfg" 2>&1)"; then
        printf '%s\n' "$out" >&2
        echo "build-docker-proxy-image: $(basename "$cfg") is not a valid HAProxy configuration" >&2
        exit 1
    fi
done

# The classic builder never tries to pull anything for `FROM scratch`.
if ! out="$(DOCKER_BUILDKIT=0 docker build -q -t "$IMAGE" \
    -f "$ROOT/docker/Dockerfile.docker-proxy-local" "$ctx" 2>&1)"; then
    printf '%s\n' "$out" >&2
    echo "build-docker-proxy-image: docker build of $IMAGE failed" >&2
    exit 1
fi
echo "$IMAGE"
