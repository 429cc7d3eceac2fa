#!/usr/bin/env bash
# Installs one real coding-agent client, pinned, from the npm registry into target/e2e-NAME for its end-to-end test
# (tests/e2e_NAME.rs); the install-droid.sh, install-copilot.sh and install-opencode.sh scripts call it with their pins.
# Usage: install-npm-client.sh NAME PACKAGE@VERSION BIN VERSION
#   BIN: the client's executable below target/e2e-NAME; VERSION: what `BIN --version` must print.
# Idempotent: a working install of the pinned version is left alone. Without npm it says so and exits 0 (the test
# then reports itself ignored, except under CI=true where it fails). `--version` runs in a throwaway HOME.
set -euo pipefail

NAME="$1"
SPEC="$2"
BIN_PATH="$3"
VERSION="$4"
HERE="${BASH_SOURCE[0]%/*}"
[[ "$HERE" == "${BASH_SOURCE[0]}" ]] && HERE=.
ROOT="$(cd "$HERE/.." && pwd)"
PREFIX="$ROOT/target/e2e-$NAME"
BIN="$PREFIX/$BIN_PATH"

installed_version() {
    local home
    home="$(mktemp -d)"
    [[ -x "$BIN" ]] && HOME="$home" "$BIN" --version </dev/null 2>/dev/null | head -n 1
    local rc=$?
    rm -rf "$home"
    return $rc
}

if ! command -v npm >/dev/null 2>&1; then
    echo "install-$NAME: npm not found; $SPEC not installed (tests/e2e_$NAME.rs is ignored outside CI)"
    exit 0
fi

if version="$(installed_version)" && [[ "$version" == *"$VERSION"* ]]; then
    echo "install-$NAME: already installed: $version ($BIN)"
    exit 0
fi

mkdir -p "$PREFIX"
echo "install-$NAME: installing $SPEC into $PREFIX"
npm install --prefix "$PREFIX" --no-audit --no-fund --no-update-notifier "$SPEC" </dev/null

if ! version="$(installed_version)" || [[ "$version" != *"$VERSION"* ]]; then
    echo "install-$NAME: $BIN does not run as $VERSION after installing $SPEC (got: ${version:-nothing})" >&2
    exit 1
fi
echo "install-$NAME: installed: $version ($BIN)"
