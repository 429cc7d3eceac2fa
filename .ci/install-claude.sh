#!/usr/bin/env bash
# Installs the real Claude Code client from the npm registry into target/e2e-claude for
# tests/e2e_claude.rs. Idempotent: a working install is left alone. Without npm it says so
# and exits 0 (the test then skips, except under CI=true where it fails).
# SESSION_REAPER_CLAUDE_VERSION=x.y.z pins the version (default: the registry's latest).
set -euo pipefail

HERE="${BASH_SOURCE[0]%/*}"
[[ "$HERE" == "${BASH_SOURCE[0]}" ]] && HERE=.
ROOT="$(cd "$HERE/.." && pwd)"
PREFIX="$ROOT/target/e2e-claude"
PACKAGE="@anthropic-ai/claude-code"
PACKAGE_DIR="$PREFIX/node_modules/$PACKAGE"
BIN="$PREFIX/node_modules/.bin/claude"
SPEC="$PACKAGE${SESSION_REAPER_CLAUDE_VERSION:+@$SESSION_REAPER_CLAUDE_VERSION}"

# The version the installed client reports, or nothing when it does not run.
installed_version() {
    [[ -x "$BIN" ]] && "$BIN" --version </dev/null 2>/dev/null | head -n 1
}

# The package's native binary replaces bin/claude.exe in its postinstall step; when npm
# skipped that step (install scripts blocked), bin/claude.exe is still a stub that exits 1.
run_postinstall() {
    if [[ -f "$PACKAGE_DIR/install.cjs" ]]; then
        echo "install-claude: running the package's postinstall step"
        (cd "$PACKAGE_DIR" && node install.cjs </dev/null)
    fi
}

if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
    echo "install-claude: npm or node not found; Claude Code not installed (tests/e2e_claude.rs skips outside CI)"
    exit 0
fi

# A working install of the pinned version (or of any version when none is pinned) is kept; another version is
# replaced. (Since 2.1.198 the package declares Node >= 22: on Node 20 an unpinned install silently picks 2.1.197,
# while the newer package is a native binary that runs on Node 20 too.)
if version="$(installed_version)" && [[ -n "$version" ]]; then
    if [[ -z "${SESSION_REAPER_CLAUDE_VERSION:-}" || "$version" == "$SESSION_REAPER_CLAUDE_VERSION"* ]]; then
        echo "install-claude: already installed: $version ($BIN)"
        exit 0
    fi
    echo "install-claude: installed $version is not the pinned $SESSION_REAPER_CLAUDE_VERSION: reinstalling"
    rm -rf "$PREFIX"
fi

if [[ ! -x "$BIN" ]]; then
    mkdir -p "$PREFIX"
    echo "install-claude: installing $SPEC into $PREFIX"
    # --engine-strict=false: the native package runs on an older Node than its `engines` field says.
    npm install --prefix "$PREFIX" --no-audit --no-fund --no-update-notifier --engine-strict=false "$SPEC" </dev/null
fi

if ! version="$(installed_version)" || [[ -z "$version" ]]; then
    run_postinstall
fi
if ! version="$(installed_version)" || [[ -z "$version" ]]; then
    echo "install-claude: $BIN does not run after installing $SPEC" >&2
    exit 1
fi
echo "install-claude: installed: $version ($BIN)"
