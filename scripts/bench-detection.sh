#!/usr/bin/env bash
# Benchmark: container death → hemostat:health_alert received by a subscriber.
# Builds the monitor and the harness in release mode, then runs the harness (needs Docker;
# starts its own redis-server). Usage: scripts/bench-detection.sh [--kills 100]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release --quiet -p hemostat-monitor -p hemostat-tests --bin hemostat-monitor --bin bench-detection
exec target/release/bench-detection "$@"
