#!/usr/bin/env bash
# Run the observer against a local development livekit-server, with the SQLite default.
# Installs what is missing, starts livekit-server on 127.0.0.1:7880 (unless one already
# answers there), migrates ./observer.db and runs the daemon until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/bootstrap.sh
server_bin="$(scripts/install-livekit-server.sh | tail -n 1)"

export LIVEKIT_URL="${LIVEKIT_URL:-ws://127.0.0.1:7880}"
export LIVEKIT_API_KEY="${LIVEKIT_API_KEY:-devkey}"
export LIVEKIT_API_SECRET="${LIVEKIT_API_SECRET:-dev-secret-for-local-use-only-0123456789}"

server_pid=""
cleanup() { [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null || true; }
trap cleanup EXIT

if ! curl -fsS http://127.0.0.1:7880 >/dev/null 2>&1; then
    mkdir -p .dev
    "$server_bin" --dev --bind 127.0.0.1 \
        --keys "${LIVEKIT_API_KEY}: ${LIVEKIT_API_SECRET}" >.dev/livekit-server.log 2>&1 &
    server_pid=$!
    for _ in $(seq 50); do
        curl -fsS http://127.0.0.1:7880 >/dev/null 2>&1 && break
        sleep 0.2
    done
    echo "livekit-server started (log: .dev/livekit-server.log)" >&2
fi

.venv/bin/observer migrate
echo "observer running; in another shell: .venv/bin/observer simulate --rooms 2 --agents 1 --duration 20" >&2
echo "then: .venv/bin/observer sessions" >&2
.venv/bin/observer run
