#!/usr/bin/env bash
# Run a command with a Firestore emulator on 127.0.0.1:<free port>.
#
#   scripts/with_emulator.sh COMMAND [ARGS...]
#
# Starts `gcloud emulators firestore start` in its own process group, waits until it
# serves, exports FIRESTORE_EMULATOR_HOST=127.0.0.1:<port>, runs the command, then kills
# the emulator's whole process group (gcloud leaves a java child) and exits with the
# command's exit code.
#
# If FIRESTORE_EMULATOR_HOST is already set, that emulator is used and none is started.
# If the emulator is not installed: with CI set, exit 1; otherwise warn and run the
# command without an emulator (the tests that need one then skip).
set -euo pipefail

READY_LINE="Dev App Server is now running"
READY_TIMEOUT="${EMULATOR_READY_TIMEOUT:-90}"

if [[ $# -eq 0 ]]; then
    echo "usage: $0 COMMAND [ARGS...]" >&2
    exit 2
fi

log() { echo "with_emulator: $*" >&2; }

if [[ -n "${FIRESTORE_EMULATOR_HOST:-}" ]]; then
    log "using the emulator already at FIRESTORE_EMULATOR_HOST=$FIRESTORE_EMULATOR_HOST"
    exec "$@"
fi

emulator_installed() {
    local gcloud root
    gcloud="$(command -v gcloud 2>/dev/null)" || return 1
    command -v java >/dev/null 2>&1 || return 1
    root="$(dirname "$(dirname "$(readlink -f "$gcloud")")")"
    for dir in "${CLOUDSDK_ROOT_DIR:-}" "$root" /usr/lib/google-cloud-sdk /usr/share/google-cloud-sdk; do
        [[ -n "$dir" && -d "$dir/platform/cloud-firestore-emulator" ]] && return 0
    done
    return 1
}

if ! emulator_installed; then
    msg="the Firestore emulator is not installed (need gcloud, java and the Debian package google-cloud-cli-firestore-emulator)"
    if [[ -n "${CI:-}" ]]; then
        log "ERROR: $msg; CI is set, refusing to run the tests without it"
        exit 1
    fi
    log "WARNING: $msg; running without it (Firestore tests will skip)"
    exec "$@"
fi

PORT="$(python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()')"
WORKDIR="$(mktemp -d "${TMPDIR:-/tmp}/asyncstore-emulator.XXXXXX")"
LOG="$WORKDIR/emulator.log"
EMU_PID=""

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n "$EMU_PID" ]]; then
        # The emulator leads its own process group: signal the whole group.
        kill -TERM -- "-$EMU_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 -- "-$EMU_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 -- "-$EMU_PID" 2>/dev/null; then
            log "emulator did not stop on TERM; killing it"
            kill -KILL -- "-$EMU_PID" 2>/dev/null || true
        fi
        wait "$EMU_PID" 2>/dev/null || true
    fi
    rm -rf "$WORKDIR"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A private gcloud config dir: no prompts, no races on ~/.config/gcloud/emulators.
export CLOUDSDK_CONFIG="$WORKDIR/gcloud-config"
export CLOUDSDK_CORE_DISABLE_PROMPTS=1
export CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK=1
export CLOUDSDK_CORE_DISABLE_USAGE_REPORTING=true

start_cmd=(gcloud emulators firestore start "--host-port=127.0.0.1:$PORT")
if command -v setsid >/dev/null 2>&1; then
    # A background child of a non-interactive shell is no group leader, so setsid
    # does not fork and $! is the new session's (and process group's) id.
    setsid "${start_cmd[@]}" >"$LOG" 2>&1 </dev/null &
else
    python3 -c 'import os, sys; os.setsid(); os.execvp(sys.argv[1], sys.argv[1:])' \
        "${start_cmd[@]}" >"$LOG" 2>&1 </dev/null &
fi
EMU_PID=$!

log "starting the Firestore emulator on 127.0.0.1:$PORT (pid $EMU_PID)"
deadline=$((SECONDS + READY_TIMEOUT))
until grep -q "$READY_LINE" "$LOG" 2>/dev/null; do
    if ! kill -0 "$EMU_PID" 2>/dev/null; then
        log "ERROR: the emulator exited before it was ready; its output:"
        cat "$LOG" >&2 || true
        exit 1
    fi
    if ((SECONDS >= deadline)); then
        log "ERROR: the emulator was not ready after ${READY_TIMEOUT}s; its output:"
        cat "$LOG" >&2 || true
        exit 1
    fi
    sleep 0.25
done
log "emulator ready at 127.0.0.1:$PORT"

export FIRESTORE_EMULATOR_HOST="127.0.0.1:$PORT"
set +e
"$@"
status=$?
set -e
exit "$status"
