#!/usr/bin/env bash
# Installs the real Codex CLI from the npm registry into target/e2e-codex for tests/e2e_codex.rs. Idempotent: a
# working install of the pinned version is left alone. Without npm it says so and exits 0 (the test then reports
# itself ignored, except under CI=true where it fails). Pinned: @openai/codex 0.171.0 is a native binary (musl)
# that runs on Node 20, and the version whose hooks the test was written against.
# SESSION_REAPER_CODEX_VERSION=x.y.z picks another version.
set -euo pipefail

HERE="${BASH_SOURCE[0]%/*}"
[[ "$HERE" == "${BASH_SOURCE[0]}" ]] && HERE=.
ROOT="$(cd "$HERE/.." && pwd)"
PREFIX="$ROOT/target/e2e-codex"
VERSION="${SESSION_REAPER_CODEX_VERSION:-0.171.0}"
SPEC="@openai/codex@$VERSION"
BIN="$PREFIX/node_modules/.bin/codex"

installed_version() {
    [[ -x "$BIN" ]] && "$BIN" --version </dev/null 2>/dev/null | head -n 1
}

if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
    echo "install-codex: npm or node not found; Codex CLI not installed (tests/e2e_codex.rs is ignored outside CI)"
    exit 0
fi

if version="$(installed_version)" && [[ "$version" == *"$VERSION"* ]]; then
    echo "install-codex: already installed: $version ($BIN)"
    exit 0
fi

mkdir -p "$PREFIX"
echo "install-codex: installing $SPEC into $PREFIX"
npm install --prefix "$PREFIX" --no-audit --no-fund --no-update-notifier "$SPEC" </dev/null

if ! version="$(installed_version)" || [[ "$version" != *"$VERSION"* ]]; then
    echo "install-codex: $BIN does not run as $VERSION after installing $SPEC (got: ${version:-nothing})" >&2
    exit 1
fi
echo "install-codex: installed: $version ($BIN)"
