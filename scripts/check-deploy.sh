#!/usr/bin/env bash
# Checks what deploy/prometheus ships with Prometheus's own tool: the scrape configuration
# (and the rule files it loads), the alert rules, and the rules' unit tests.
# Usage: scripts/check-deploy.sh   (CI=true: a missing promtool fails instead of skipping)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v promtool >/dev/null 2>&1; then
    if [ "${CI:-}" = "true" ]; then
        echo "promtool is missing, and CI=true: failing (apt-get install prometheus)" >&2
        exit 1
    fi
    echo "*** promtool missing: the Prometheus rules check is SKIPPED ***"
    exit 0
fi
promtool check config deploy/prometheus/prometheus.yml
promtool check rules deploy/prometheus/rules.yml
promtool test rules deploy/prometheus/rules.test.yml
