#!/usr/bin/env bash
# Run the compat scenarios (`pytest -m compat`) against livekit-server releases and print
# a table release x scenario.
#
#   scripts/compat.sh [VERSION...]        default: 1.8.4 1.13.5 (the oldest and the tests' own)
#
# Each release is built (once) by scripts/install-livekit-server.sh into its own cache
# folder; the releases run one after another. Reports and pytest's output stay in
# $COMPAT_OUT (default: a new temporary folder). Exit status: 0 when every scenario
# passed on every release. Extra pytest arguments go in $COMPAT_PYTEST_ARGS.
#
#   COMPAT_SDK=1.2.1 scripts/compat.sh    the same with that release of the rtc SDK `livekit`,
#                                         in a virtualenv of its own (.venv-livekit-VERSION)
#
#   COMPAT_AGENTS=1.0.0 scripts/compat.sh the agents scenarios alone (tests/test_agent_frameworks.py:
#                                         a livekit-agents worker process and the Node worker),
#                                         the Python worker with that release of livekit-agents
#                                         in a virtualenv of its own (.venv-agents-VERSION; the
#                                         observer and the tests keep .venv); then a table of what
#                                         the observer made of each agent: kind, name, usage
#
# The test extras pin the SDK to what livekit-agents wants (1.1.21); a plain
# `pip install .` brings the newest the bounds in pyproject.toml allow.
set -uo pipefail
cd "$(dirname "$0")/.."

versions=("$@")
if [[ ${#versions[@]} -eq 0 ]]; then
    versions=(1.8.4 1.13.5)
fi
out="${COMPAT_OUT:-$(mktemp -d -t lk-compat-XXXXXX)}"
mkdir -p "$out"
python=".venv/bin/python"
[[ -x "$python" ]] || scripts/bootstrap.sh
if [[ -n "${COMPAT_SDK:-}" ]]; then
    env_dir=".venv-livekit-${COMPAT_SDK}"
    if [[ ! -x "${env_dir}/bin/python" ]]; then
        "$python" -m venv "$env_dir"
        "${env_dir}/bin/python" -m pip install --quiet -e '.[test]'
    fi
    # over the agents framework's exact pin: pip warns of the conflict and installs it
    "${env_dir}/bin/python" -m pip install --quiet "livekit==${COMPAT_SDK}" 2>"${out}/pip-sdk.log" \
        || { echo "rtc SDK livekit ${COMPAT_SDK} could not be installed: see ${out}/pip-sdk.log" >&2; exit 1; }
    python="${env_dir}/bin/python"
    echo "== rtc SDK: livekit $("$python" -c 'import importlib.metadata as m; print(m.version("livekit"))')" >&2
fi

selection=(-m compat)
if [[ -n "${COMPAT_AGENTS:-}" ]]; then
    agents_dir=".venv-agents-${COMPAT_AGENTS}"
    if [[ ! -x "${agents_dir}/bin/python" ]]; then
        "$python" -m venv "$agents_dir"
    fi
    "${agents_dir}/bin/python" -m pip install --quiet "livekit-agents==${COMPAT_AGENTS}" \
        2>"${out}/pip-agents.log" \
        || { echo "livekit-agents ${COMPAT_AGENTS} could not be installed: see ${out}/pip-agents.log" >&2; exit 1; }
    export AGENTS_PYTHON="${PWD}/${agents_dir}/bin/python"
    echo "== livekit-agents $("$AGENTS_PYTHON" -c 'import importlib.metadata as m; print(m.version("livekit-agents"))')" \
        "(rtc SDK livekit $("$AGENTS_PYTHON" -c 'import importlib.metadata as m; print(m.version("livekit"))'))" >&2
    scripts/ensure-node-agent.sh
    selection=(-m compat tests/test_agent_frameworks.py)
fi

reports=()
observations=()
status=0
for v in "${versions[@]}"; do
    v="${v#v}"
    if ! binary="$(scripts/install-livekit-server.sh "$v" 2>"${out}/build-${v}.log" | tail -n 1)" \
        || [[ ! -x "$binary" ]]; then
        echo "== livekit-server ${v}: could not be built: $(tail -n 1 "${out}/build-${v}.log")" >&2
        status=1
        continue
    fi
    report="${out}/compat-${v}.json"
    echo "== livekit-server ${v}: pytest -m compat (output in ${out}/pytest-${v}.log)" >&2
    start=$(date +%s)
    # shellcheck disable=SC2086  # the extra arguments are words on purpose
    seen="${out}/agents-${v}.jsonl"
    if ! AGENT_MATRIX_OUT="$seen" LIVEKIT_SERVER_BIN="$binary" "$python" -m pytest "${selection[@]}" \
        -q -p no:cacheprovider --basetemp="${out}/tmp-${v}" --compat-report="$report" \
        ${COMPAT_PYTEST_ARGS:-} >"${out}/pytest-${v}.log" 2>&1; then
        status=1
    fi
    echo "   $(tail -n 1 "${out}/pytest-${v}.log") ($(($(date +%s) - start)) s)" >&2
    [[ -f "$seen" ]] && observations+=("$seen")
    if [[ -f "$report" ]]; then
        reports+=("$report")
    else
        echo "   no report: see ${out}/pytest-${v}.log" >&2
        status=1
    fi
done

echo
echo "livekit-server compatibility, $(date -u +%Y-%m-%d)"
if [[ ${#reports[@]} -gt 0 ]]; then
    "$python" tests/compat.py "${reports[@]}"
fi
if [[ ${#observations[@]} -gt 0 ]]; then
    echo
    echo "agents as the observer recorded them"
    "$python" tests/compat.py --agents "${observations[@]}"
fi
exit "$status"
