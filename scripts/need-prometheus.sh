#!/usr/bin/env bash
# Installs Debian's prometheus package (prometheus and promtool) when it is missing. The
# metrics test starts its own private server on a free loopback port; the package's
# system-wide one is stopped. Sourced by scripts/test.sh.
need_prometheus() {
    command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 && return 0
    echo "prometheus missing: installing Debian's prometheus package"
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || { echo "need root to install prometheus" >&2; return 1; }
        sudo=(sudo)
    fi
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    "${sudo[@]}" service prometheus stop >/dev/null 2>&1 || true
}
