#!/usr/bin/env bash
# Benchmark: kill → running again through hemostat's pipeline (monitor → analyzer rules →
# responder restart), beside a plain `docker restart -t 0` of the same kind of container.
# Builds the agents and the harness in release mode, then runs the harness (needs Docker;
# starts its own redis-server). Usage: scripts/bench-recovery.sh [--kills 30] [--restarts 30]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/need-redis.sh
need_redis
cargo build --release --quiet -p hemostat-monitor -p hemostat-analyzer -p hemostat-responder \
  -p hemostat-alert -p hemostat-tests --bins
exec target/release/bench-recovery "$@"
