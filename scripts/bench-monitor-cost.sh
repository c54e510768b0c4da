#!/usr/bin/env bash
# Benchmark: the monitor's CPU, peak RSS and stats-round time with 10, 50 and 100 running
# containers at a 5 s stats interval, and each agent's idle RSS. Builds in release mode, then
# runs the harness (needs Docker; starts its own redis-server).
# Usage: scripts/bench-monitor-cost.sh [--window 60s] [--counts 10,50,100]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/need-redis.sh
need_redis
cargo build --release --quiet -p hemostat-monitor -p hemostat-analyzer -p hemostat-responder \
  -p hemostat-alert -p hemostat-tests --bins
exec target/release/bench-monitor-cost "$@"
