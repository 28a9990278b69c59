#!/usr/bin/env bash
# Install livekit-server (the binary is named `server`) into a cache outside the
# checkout, for the integration tests. Needs Go >= 1.26 on PATH; no CGO.
#
#   scripts/install-livekit-server.sh [VERSION]     e.g. 1.8.4 or v1.8.4 (default 1.13.5)
#
#   LK_OBSERVER_CACHE   cache root (default: $HOME/.cache/lk-observer)
#
# Each release has a folder of its own: the default one in $LK_OBSERVER_CACHE/bin (where
# the tests look unless LIVEKIT_SERVER_BIN says otherwise), any other in
# $LK_OBSERVER_CACHE/v<VERSION>/bin. The last line printed on stdout is the path of the
# binary, so callers can do
#   LIVEKIT_SERVER_BIN="$(scripts/install-livekit-server.sh 1.8.4 | tail -n 1)"
set -euo pipefail

readonly DEFAULT_VERSION="1.13.5"
readonly MODULE="github.com/livekit/livekit-server/cmd/server"

version="${1:-$DEFAULT_VERSION}"
version="${version#v}"
if [[ ! "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
    echo "error: '${1}' is not a release number like 1.13.5" >&2
    exit 2
fi

cache_dir="${LK_OBSERVER_CACHE:-$HOME/.cache/lk-observer}"
if [[ "$version" == "$DEFAULT_VERSION" ]]; then
    bin_dir="${cache_dir}/bin"
else
    bin_dir="${cache_dir}/v${version}/bin"
fi
binary="${bin_dir}/server"

installed_version() {
    # `server --version` prints e.g. "livekit-server version 1.13.5".
    "$binary" --version 2>/dev/null | awk '{print $NF}' || true
}

if [[ -x "$binary" && "$(installed_version)" == "$version" ]]; then
    echo "livekit-server ${version} already installed" >&2
else
    if ! command -v go >/dev/null 2>&1; then
        echo "error: 'go' not found on PATH (Go >= 1.26 is needed to build livekit-server)" >&2
        exit 1
    fi
    mkdir -p "$bin_dir"
    echo "building livekit-server ${version} into ${bin_dir} (takes a few minutes the first time)" >&2
    # stdout of go install goes to stderr so the last stdout line stays the path.
    log="$(mktemp)"
    if ! GOBIN="$bin_dir" go install "${MODULE}@v${version}" >"$log" 2>&1; then
        cat "$log" >&2
        if grep -q "replace directives" "$log"; then
            # `go install pkg@version` refuses a module whose go.mod replaces others (1.13.11
            # replaces pion's webrtc, dtls and ice with LiveKit's forks, 1.13.5 does not): such a
            # release builds only from its source tree, with those forks reachable.
            echo "error: livekit-server ${version} replaces modules in its go.mod;" \
                "go install cannot build it (build it from a checkout of that tag)" >&2
        fi
        rm -f "$log"
        exit 1
    fi
    cat "$log" >&2
    rm -f "$log"
    got="$(installed_version)"
    if [[ "$got" != "$version" ]]; then
        echo "error: ${binary} reports version '${got}', expected ${version}" >&2
        exit 1
    fi
fi

echo "$binary"
