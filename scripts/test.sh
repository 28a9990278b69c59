#!/usr/bin/env bash
# Run the whole test suite on a fresh machine: installs what is missing (virtualenv and
# packages, livekit-server, PostgreSQL, redis-server, chromium, promtool, the Node
# agent's packages), then lints, type-checks and runs pytest.
# Extra arguments go to pytest, e.g. scripts/test.sh -m unit (the tier that needs no server;
# README lists the tiers) or scripts/test.sh -k tracker
set -euo pipefail
cd "$(dirname "$0")/.."

# Python's byte-code caches are kept (in __pycache__, which git ignores) even where the
# environment says not to write them: the suite's processes (pytest's workers, the observers
# and agents they start) would otherwise each compile the test modules and the observer again.
unset PYTHONDONTWRITEBYTECODE

scripts/ensure-postgres.sh
scripts/ensure-redis.sh
scripts/ensure-chromium.sh
scripts/ensure-promtool.sh
scripts/bootstrap.sh
# The Node agent's packages download while ruff and mypy run (both wait on their own).
scripts/ensure-node-agent.sh &
node_agent=$!
trap 'kill "$node_agent" 2>/dev/null || true' EXIT
export LIVEKIT_SERVER_BIN="${LIVEKIT_SERVER_BIN:-$(scripts/install-livekit-server.sh | tail -n 1)}"
export STRIPE_MOCK_BIN="${STRIPE_MOCK_BIN:-$(scripts/install-stripe-mock.sh | tail -n 1)}"
# The whole suite also runs the release matrix's scenarios (tests marked `compat`) against
# the oldest livekit-server release the observer supports; scripts/compat.sh runs any other.
readonly OLDEST_RELEASE="1.8.4"
oldest=()
if [[ $# == 0 ]]; then
    oldest=("--oldest-server=$(scripts/install-livekit-server.sh "$OLDEST_RELEASE" | tail -n 1)")
fi

.venv/bin/ruff check observer tests migrations bench
.venv/bin/mypy
wait "$node_agent"
trap - EXIT
# Tests run in parallel worker processes (pytest-xdist; most of a live test is waiting on
# the server's clocks), handed out a few at a time, longest first (see tests/conftest.py),
# so that the long ones spread over the workers; a module's tests that must not run beside
# each other share an xdist_group. OBSERVER_TEST_WORKERS=0 runs them in this process.
# Tests that measure their own pace under load (marked `alone`) then run by themselves.
# A worker that crashes (a native fault in a library) ends the run at once with the test it
# was running named: with --dist loadgroup, the worker xdist would start in its place is never
# given work nor told to stop, and the run would wait forever.
workers="${OBSERVER_TEST_WORKERS:-5}"
.venv/bin/python -m pytest -n "$workers" --dist loadgroup --max-worker-restart=0 "${oldest[@]}" "$@"
if [[ "$workers" != 0 ]]; then
    rc=0
    .venv/bin/python -m pytest --alone "$@" || rc=$?
    [[ $rc == 0 || $rc == 5 ]] || exit "$rc" # 5: none of them selected
fi
