#!/usr/bin/env bash
# Install livekit-server (the binary is named `server`) into a cache outside the
# checkout, for the integration tests. Needs Go >= 1.26 on PATH; no CGO.
#
#   LK_OBSERVER_CACHE   cache root (default: $HOME/.cache/lk-observer)
#
# The last line printed on stdout is the path of the binary, so callers can do
#   LIVEKIT_SERVER_BIN="$(scripts/install-livekit-server.sh | tail -n 1)"
set -euo pipefail

readonly VERSION="1.13.5"
readonly MODULE="github.com/livekit/livekit-server/cmd/server"

cache_dir="${LK_OBSERVER_CACHE:-$HOME/.cache/lk-observer}"
bin_dir="${cache_dir}/bin"
binary="${bin_dir}/server"

installed_version() {
    # `server --version` prints e.g. "livekit-server version 1.13.5".
    "$binary" --version 2>/dev/null | awk '{print $NF}' || true
}

if [[ -x "$binary" && "$(installed_version)" == "$VERSION" ]]; then
    echo "livekit-server ${VERSION} already installed" >&2
else
    if ! command -v go >/dev/null 2>&1; then
        echo "error: 'go' not found on PATH (Go >= 1.26 is needed to build livekit-server)" >&2
        exit 1
    fi
    mkdir -p "$bin_dir"
    echo "building livekit-server ${VERSION} into ${bin_dir} (takes a few minutes the first time)" >&2
    # stdout of go install goes to stderr so the last stdout line stays the path.
    GOBIN="$bin_dir" go install "${MODULE}@v${VERSION}" >&2
    got="$(installed_version)"
    if [[ "$got" != "$VERSION" ]]; then
        echo "error: ${binary} reports version '${got}', expected ${VERSION}" >&2
        exit 1
    fi
fi

echo "$binary"
