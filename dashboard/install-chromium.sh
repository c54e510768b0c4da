#!/usr/bin/env bash
# Installs Debian's `chromium` package when it is missing, for the dashboard's browser test
# (tests/tests/dashboard.rs runs it headless over the DevTools protocol on a pipe). About
# 300 MB; a no-op when `chromium` is already on PATH. Called by scripts/test.sh.
#
# Usage: dashboard/install-chromium.sh
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    # Debian's wrapper script prints a harmless shell warning on some hosts; keep only the version.
    chromium --version 2>/dev/null || true
    exit 0
fi

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "need root to run: $*" >&2; return 1; fi
}

if ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium is missing and this is not a Debian/Ubuntu system: install Chromium by hand" >&2
    exit 1
fi
echo "chromium missing: installing Debian's chromium package (about 300 MB)"
as_root apt-get update -qq
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
chromium --version 2>/dev/null
