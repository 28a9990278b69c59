#!/usr/bin/env bash
# Install stripe-mock (Stripe's API mock, a Go program) into a cache outside the checkout,
# for the export's Stripe tests. Needs Go on PATH.
#
#   scripts/install-stripe-mock.sh
#
#   LK_OBSERVER_CACHE   cache root (default: $HOME/.cache/lk-observer)
#
# The last line printed on stdout is the path of the binary, so callers can do
#   STRIPE_MOCK_BIN="$(scripts/install-stripe-mock.sh | tail -n 1)"
set -euo pipefail

readonly VERSION="0.203.0"
readonly MODULE="github.com/stripe/stripe-mock"

cache_dir="${LK_OBSERVER_CACHE:-$HOME/.cache/lk-observer}"
bin_dir="${cache_dir}/stripe-mock/bin"
binary="${bin_dir}/stripe-mock"
# the binary says "master" whatever its release: a stamp beside it says which was built
stamp="${bin_dir}/VERSION"

if [[ -x "$binary" && "$(cat "$stamp" 2>/dev/null)" == "$VERSION" ]]; then
    echo "stripe-mock ${VERSION} already installed" >&2
else
    if ! command -v go >/dev/null 2>&1; then
        echo "error: 'go' not found on PATH (needed to build stripe-mock)" >&2
        exit 1
    fi
    mkdir -p "$bin_dir"
    echo "building stripe-mock ${VERSION} into ${bin_dir}" >&2
    # outside the checkout, so that its go.mod (if any) is not in the way
    (cd "$bin_dir" && GOBIN="$bin_dir" GOFLAGS=-mod=mod go install "${MODULE}@v${VERSION}") >&2
    echo "$VERSION" >"$stamp"
fi

echo "$binary"
