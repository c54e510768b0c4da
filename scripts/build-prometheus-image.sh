#!/usr/bin/env bash
# Builds a Prometheus image with no registry, for deploy/compose.metrics.yml on a machine that
# cannot pull prom/prometheus: Debian's prometheus from this host (installed with apt when
# missing), exactly the shared libraries it loads, `FROM scratch`. Idempotent.
# Usage: scripts/build-prometheus-image.sh   (tag: $PROMETHEUS_IMAGE, default hemostat-prometheus:local)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE="${PROMETHEUS_IMAGE:-hemostat-prometheus:local}"
. "$ROOT/scripts/need-prometheus.sh"
need_prometheus
prometheus="$(command -v prometheus)"

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
rootfs="$ctx/rootfs"
mkdir -p "$rootfs/bin" "$rootfs/etc/prometheus" "$rootfs/prometheus"
cp -L "$prometheus" "$rootfs/bin/prometheus"
ldd "$prometheus" | awk '/=> \//{print $3} /^\t\/lib/{print $1}' | while read -r lib; do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
done
# Debian's build serves its web UI from these files.
if [ -d /usr/share/prometheus/web ]; then
    mkdir -p "$rootfs/usr/share/prometheus"
    cp -rL /usr/share/prometheus/web "$rootfs/usr/share/prometheus/web"
fi
cp "$ROOT"/deploy/prometheus/*.yml "$rootfs/etc/prometheus/"
cat > "$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY --chown=65534:65534 rootfs/ /
USER 65534:65534
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
DOCKERFILE

# The classic builder never tries to pull anything for `FROM scratch`.
if ! out="$(DOCKER_BUILDKIT=0 docker build -q -t "$IMAGE" "$ctx" 2>&1)"; then
    printf '%s\n' "$out" >&2
    echo "build-prometheus-image: docker build of $IMAGE failed" >&2
    exit 1
fi
echo "built $IMAGE ($("$prometheus" --version 2>&1 | head -1))"
