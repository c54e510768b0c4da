#!/usr/bin/env bash
# Every benchmark in docs/BENCHMARKS.md, one after the other, with the settings the document
# reports (about 20 minutes on 2 cores, and 40 more for the soak). Needs Docker; installs Debian's redis-server when missing;
# each harness starts its own redis-server and containers and removes them when it ends.
# Not part of the test run. Usage: scripts/bench.sh [detection|recovery|throughput|central|central-2|monitor-cost|soak]...
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
which=("$@")
[ ${#which[@]} -gt 0 ] || which=(detection recovery throughput central central-2 monitor-cost soak)
for b in "${which[@]}"; do
    case "$b" in
        detection) cmd=(scripts/bench-detection.sh --kills 100 --unhealthy 100) ;;
        recovery) cmd=(scripts/bench-recovery.sh) ;;
        throughput) cmd=(scripts/bench-throughput.sh) ;;
        central) cmd=(scripts/bench-central.sh --replicas 1) ;;
        central-2) cmd=(scripts/bench-central.sh --replicas 2) ;;
        monitor-cost) cmd=(scripts/bench-monitor-cost.sh --counts 10,50,100,200) ;;
        soak) cmd=(scripts/bench-soak.sh) ;;
        *) echo "unknown benchmark '$b': expected detection, recovery, throughput, central, central-2, monitor-cost or soak" >&2; exit 2 ;;
    esac
    printf '\n$ %s\n' "${cmd[*]}"
    "${cmd[@]}"
done
