# Shared by the chaos scripts: find demo targets, start throwaway patients, print expectations.
# Demo targets are found by their label (hemostat.demo=<name>), so any compose project works.
set -euo pipefail

PATIENT_IMAGE="${PATIENT_IMAGE:-hemostat-patient:local}"
CHAOS_LABEL="hemostat.chaos=true"

# Only this compose project's demo targets, when set (e.g. HEMOSTAT_PROJECT=hemostat).
project_filter=()
[ -z "${HEMOSTAT_PROJECT:-}" ] || project_filter=(--filter "label=com.docker.compose.project=$HEMOSTAT_PROJECT")

# The id of the running (or any) demo container `$1` (web, crasher, leaker, ...).
demo() {
    local id
    id="$(docker ps -q --filter "label=hemostat.demo=$1" "${project_filter[@]}" | head -n 1)"
    [ -n "$id" ] || id="$(docker ps -aq --filter "label=hemostat.demo=$1" "${project_filter[@]}" | head -n 1)"
    if [ -z "$id" ]; then
        echo "no demo container '$1': start the stack with the demo profile (scripts/up.sh --demo)" >&2
        exit 1
    fi
    echo "$id"
}

name_of() { docker inspect -f '{{.Name}}' "$1" | sed 's#^/##'; }

# Starts a throwaway patient in hemostat's scope: chaos_run NAME [docker run options --] ARGS...
chaos_run() {
    local name="$1"; shift
    local opts=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do opts+=("$1"); shift; done
    [ "${1:-}" = "--" ] && shift
    docker rm -f "$name" >/dev/null 2>&1 || true
    docker run -d --name "$name" --label hemostat.enable=true --label "$CHAOS_LABEL" \
        "${opts[@]}" "$PATIENT_IMAGE" run "$@" >/dev/null
    echo "$name"
}

did() { printf '\033[1mchaos:\033[0m %s\n' "$*"; }
expect() { printf '\033[1mexpect:\033[0m %s\n' "$*"; }
