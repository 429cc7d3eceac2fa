#!/usr/bin/env bash
# Installs the real OpenCode into target/e2e-opencode for tests/e2e_opencode.rs. Pinned: opencode-ai 1.18.33, a
# standalone ELF (bin/opencode.exe, run as node_modules/.bin/opencode). At its first run with a plugin folder,
# OpenCode itself installs @opencode-ai/plugin from the npm registry. SESSION_REAPER_OPENCODE_VERSION picks another.
set -euo pipefail
VERSION="${SESSION_REAPER_OPENCODE_VERSION:-1.18.33}"
exec bash "$(dirname "${BASH_SOURCE[0]}")/install-npm-client.sh" opencode "opencode-ai@$VERSION" \
    node_modules/.bin/opencode "$VERSION"
