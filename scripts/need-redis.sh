#!/usr/bin/env bash
# Installs Debian's redis-server (with redis-cli) when it is missing. Tests and benchmarks
# start their own private server on a free port; the package's system-wide one is stopped.
# Sourced by scripts/test.sh and the benchmark scripts.
need_redis() {
    command -v redis-server >/dev/null 2>&1 && return 0
    echo "redis-server missing: installing Debian's redis-server package"
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || { echo "need root to install redis-server" >&2; return 1; }
        sudo=(sudo)
    fi
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    "${sudo[@]}" service redis-server stop >/dev/null 2>&1 || true
}
