#!/usr/bin/env bash
# Benchmark: pipeline throughput, analyzer (rules) → responder (dry-run) → alert (local webhook),
# beside redis-benchmark XADD/PUBLISH and Docker inspect rates measured in the same run.
# Builds the agents and the harness in release mode, then runs the harness (needs Docker and
# Debian's redis-tools; starts its own redis-server and patient containers, removes them after).
# Usage: scripts/bench-throughput.sh [--events 20000] [--containers 100]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/need-redis.sh
need_redis
cargo build --release --quiet -p hemostat-analyzer -p hemostat-responder -p hemostat-alert -p hemostat-tests \
    --bin hemostat-analyzer --bin hemostat-responder --bin hemostat-alert --bin bench-throughput
exec target/release/bench-throughput "$@"
