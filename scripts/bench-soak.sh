#!/usr/bin/env bash
# Benchmark: Redis memory of a watched host over time (100 containers, stats every second, for
# 40 minutes by default; metrics retention 10 min so the second half shows the steady state).
# Builds the agents and the harness in release mode, then runs the harness (needs Docker;
# starts its own redis-server). Bounded: it stops by itself and removes what it started.
# Usage: scripts/bench-soak.sh [--containers 100] [--duration 40m] [--metrics-retention 10m]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/need-redis.sh
need_redis
cargo build --release --quiet -p hemostat-monitor -p hemostat-analyzer -p hemostat-responder \
  -p hemostat-alert -p hemostat-tests --bins
exec target/release/bench-soak "$@"
