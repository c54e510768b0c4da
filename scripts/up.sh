#!/usr/bin/env bash
# Runs hemostat on this machine against the local Docker engine: starts a local Redis if none
# answers at $REDIS_URL, builds the agents in release mode, and runs the monitor, the
# analyzer, the responder and the alert service in the foreground (Ctrl-C stops them). Settings come from the environment or ./.env
# (see .env.example). Watch it with: redis-cli subscribe 'hemostat:*'
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ -f .env ]; then set -a; . ./.env; set +a; fi
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
export HEMOSTAT_LISTEN="${HEMOSTAT_LISTEN:-127.0.0.1:9090}"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "need root to run: $*" >&2; return 1; fi
}

if ! command -v redis-server >/dev/null 2>&1; then
    echo "==> installing redis-server (Debian package)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi

if ! redis-cli -u "$REDIS_URL" ping >/dev/null 2>&1; then
    case "$REDIS_URL" in
        redis://127.0.0.1:*|redis://localhost:*)
            port="${REDIS_URL##*:}"; port="${port%%/*}"
            mkdir -p .hemostat
            echo "==> starting redis-server on 127.0.0.1:$port (data in .hemostat/)"
            redis-server --port "$port" --bind 127.0.0.1 --daemonize yes --dir "$ROOT/.hemostat" \
                --appendonly yes --logfile "$ROOT/.hemostat/redis.log"
            ;;
        *) echo "Redis at $REDIS_URL does not answer; start it or fix REDIS_URL" >&2; exit 1 ;;
    esac
fi

echo "==> building hemostat (release)"
cargo build --release --quiet -p hemostat-monitor -p hemostat-analyzer -p hemostat-responder -p hemostat-alert

# Each agent serves /healthz and /metrics on its own port.
listen_host="${HEMOSTAT_LISTEN%:*}"
base_port="${HEMOSTAT_LISTEN##*:}"
pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
HEMOSTAT_LISTEN="$listen_host:$((base_port + 1))" target/release/hemostat-analyzer &
pids+=($!)
llm="off (rules only)"
if [ -n "${OPENAI_BASE_URL:-}" ]; then llm="$OPENAI_BASE_URL"; elif [ -n "${OPENAI_API_KEY:-}" ]; then llm="OpenAI"; fi
echo "==> hemostat-analyzer on http://$listen_host:$((base_port + 1)) (LLM: $llm)"
HEMOSTAT_LISTEN="$listen_host:$((base_port + 2))" target/release/hemostat-responder &
pids+=($!)
echo "==> hemostat-responder on http://$listen_host:$((base_port + 2)) (dry run: ${HEMOSTAT_DRY_RUN:-false})"
HEMOSTAT_LISTEN="$listen_host:$((base_port + 3))" target/release/hemostat-alert &
pids+=($!)
echo "==> hemostat-alert     on http://$listen_host:$((base_port + 3))"
HEMOSTAT_LISTEN="$listen_host:$base_port" target/release/hemostat-monitor &
pids+=($!)
echo "==> hemostat-monitor  on http://$listen_host:$base_port"
echo "    watch it:  redis-cli subscribe 'hemostat:*'      stop: Ctrl-C"
wait -n "${pids[@]}"
