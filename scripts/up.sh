#!/usr/bin/env bash
# Runs hemostat: Redis, the four agents and the dashboard, with Docker Compose, on this
# machine's Docker engine. Usage: scripts/up.sh [--demo] [--metrics]
#   --demo adds the demo targets; --metrics adds Prometheus (deploy/compose.metrics.yml) on
#   127.0.0.1:9090, scraping every agent and evaluating deploy/prometheus/rules.yml
#
# Images: with Rust on this machine (or no registry reachable), they are built here with no
# registry at all (scripts/build-images.sh: static binaries, FROM scratch, Redis and the Docker
# API proxy from Debian's packages); otherwise Compose builds them from the Dockerfile and pulls
# redis:7-alpine and haproxy:2.8-alpine.
# Settings come from ./.env (see .env.example). Stop with: scripts/compose.sh down
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
profile=()
files=()
for arg in "$@"; do
    case "$arg" in
        --demo) profile=(--profile demo) ;;
        --metrics) files=(-f docker-compose.yml -f deploy/compose.metrics.yml) ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
    esac
done
# Each service's own Redis password: made once, kept in .env (the compose defaults are public).
for service in MONITOR ANALYZER RESPONDER ALERT DASHBOARD; do
    var="HEMOSTAT_${service}_REDIS_PASSWORD"
    if [ -z "${!var:-}" ] && ! grep -qs "^${var}=." .env; then
        [ -f .env ] || printf '# hemostat settings (see .env.example).\n' > .env
        printf '%s=%s\n' "$var" "$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')" >> .env
        made=1
    fi
done
[ -n "${made:-}" ] && echo "==> wrote a Redis password for each service to .env"
if [ -f .env ]; then set -a; . ./.env; set +a; fi

if command -v cargo >/dev/null 2>&1; then
    echo "==> building images here, no registry needed (scripts/build-images.sh)"
    bash scripts/build-images.sh
    export HEMOSTAT_IMAGE="${HEMOSTAT_IMAGE:-hemostat:local}"
    export PATIENT_IMAGE="${PATIENT_IMAGE:-hemostat-patient:local}"
    export REDIS_IMAGE="${REDIS_IMAGE:-hemostat-redis:local}"
    export DOCKER_PROXY_IMAGE="${DOCKER_PROXY_IMAGE:-hemostat-docker-proxy:local}"
    if [ "${#files[@]}" -gt 0 ] && [ -z "${PROMETHEUS_IMAGE:-}" ]; then
        bash scripts/build-prometheus-image.sh
        export PROMETHEUS_IMAGE=hemostat-prometheus:local
    fi
    build=()
else
    echo "==> no Rust toolchain here: Compose builds the images from the Dockerfile (needs a registry)"
    build=(--build)
fi

bash scripts/compose.sh "${files[@]}" "${profile[@]}" up -d "${build[@]}"
# A Redis that was already running keeps the users it loaded: give it the new passwords.
if [ -n "${made:-}" ]; then bash scripts/compose.sh restart redis >/dev/null; fi

port="${HEMOSTAT_REDIS_PORT:-6379}"
cat <<TXT

hemostat is running. Watch it:
    redis-cli -p $port -a '${REDIS_PASSWORD:-hemostat}' --no-auth-warning subscribe 'hemostat:*'
    scripts/compose.sh ps            scripts/compose.sh logs -f responder
Break things (with --demo):  scripts/chaos/kill, crashloop, oom, cpu, memleak, unhealthy, flap,
                             stop, pause, storm, inject; tidy up with scripts/chaos/cleanup
Stop:                        scripts/compose.sh ${files[*]} ${profile[*]} down
TXT
if [ "${#files[@]}" -gt 0 ]; then
    echo "Prometheus:                  http://127.0.0.1:${PROMETHEUS_PORT:-9090}/graph (alerts: /alerts)"
fi
