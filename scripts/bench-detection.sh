#!/usr/bin/env bash
# Benchmark: container death, and a health check turning unhealthy, → hemostat:health_alert
# received by a subscriber (deaths first, then health transitions; each has its own section).
# Builds the monitor and the harness in release mode, then runs the harness (needs Docker;
# starts its own redis-server). Usage: scripts/bench-detection.sh [--kills 100] [--unhealthy 100]
# (0 skips a measurement; --help lists the batch, stagger and timeout options). About 4-5 minutes
# with the defaults.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/need-redis.sh
need_redis
cargo build --release --quiet -p hemostat-monitor -p hemostat-tests --bin hemostat-monitor --bin bench-detection
exec target/release/bench-detection "$@"
