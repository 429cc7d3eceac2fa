#!/usr/bin/env bash
# Installs the real Gemini CLI from the npm registry into target/e2e-gemini for tests/e2e_gemini.rs. Idempotent: a
# working install of the pinned version is left alone. Without npm it says so and exits 0 (the test then reports
# itself ignored, except under CI=true where it fails). Pinned: @google/gemini-cli 0.61.0 runs on Node 20 and is the
# version whose hooks and shell tool the test was written against (its install scripts, for node-pty and keytar,
# are not needed: without node-pty the shell tool runs commands through child_process).
# SESSION_REAPER_GEMINI_VERSION=x.y.z picks another version.
set -euo pipefail

HERE="${BASH_SOURCE[0]%/*}"
[[ "$HERE" == "${BASH_SOURCE[0]}" ]] && HERE=.
ROOT="$(cd "$HERE/.." && pwd)"
PREFIX="$ROOT/target/e2e-gemini"
VERSION="${SESSION_REAPER_GEMINI_VERSION:-0.61.0}"
SPEC="@google/gemini-cli@$VERSION"
BIN="$PREFIX/node_modules/.bin/gemini"

installed_version() {
    [[ -x "$BIN" ]] && "$BIN" --version </dev/null 2>/dev/null | head -n 1
}

if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
    echo "install-gemini: npm or node not found; Gemini CLI not installed (tests/e2e_gemini.rs is ignored outside CI)"
    exit 0
fi

if version="$(installed_version)" && [[ "$version" == *"$VERSION"* ]]; then
    echo "install-gemini: already installed: $version ($BIN)"
    exit 0
fi

mkdir -p "$PREFIX"
echo "install-gemini: installing $SPEC into $PREFIX"
npm install --prefix "$PREFIX" --no-audit --no-fund --no-update-notifier "$SPEC" </dev/null

if ! version="$(installed_version)" || [[ "$version" != *"$VERSION"* ]]; then
    echo "install-gemini: $BIN does not run as $VERSION after installing $SPEC (got: ${version:-nothing})" >&2
    exit 1
fi
echo "install-gemini: installed: $version ($BIN)"
