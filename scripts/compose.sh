#!/usr/bin/env bash
# Runs Docker Compose, whichever this machine has: the v2 plugin (`docker compose`) or v1.29
# (`docker-compose`). Usage: scripts/compose.sh <compose arguments>
set -euo pipefail
if docker compose version >/dev/null 2>&1; then
    exec docker compose "$@"
elif command -v docker-compose >/dev/null 2>&1; then
    exec docker-compose "$@"
fi
echo "neither 'docker compose' nor 'docker-compose' is installed" >&2
exit 1
