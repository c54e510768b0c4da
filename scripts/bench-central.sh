#!/usr/bin/env bash
# Benchmark: central path throughput, analyzer (rules) and alert agent (local webhook) fed by
# synthetic alerts from 1,000 simulated hosts, beside redis-benchmark XADD measured in the same
# run. No Docker and no responder. Builds the agents and the harness in release mode, then runs
# the harness (needs Debian's redis-tools; starts its own redis-server, stops it after).
# Usage: scripts/bench-central.sh [--alerts 100000] [--hosts 1000] [--replicas 1]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/need-redis.sh
need_redis
cargo build --release --quiet -p hemostat-analyzer -p hemostat-alert -p hemostat-tests \
    --bin hemostat-analyzer --bin hemostat-alert --bin bench-central
exec target/release/bench-central "$@"
