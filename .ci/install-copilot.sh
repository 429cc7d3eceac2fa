#!/usr/bin/env bash
# Installs the real GitHub Copilot CLI into target/e2e-copilot for tests/e2e_copilot.rs. Pinned: @github/copilot
# 1.0.102, whose native binary (@github/copilot-linux-x64/copilot) the test starts directly (the npm launcher does
# not pass signals on). SESSION_REAPER_COPILOT_VERSION picks another.
set -euo pipefail
VERSION="${SESSION_REAPER_COPILOT_VERSION:-1.0.102}"
exec bash "$(dirname "${BASH_SOURCE[0]}")/install-npm-client.sh" copilot "@github/copilot@$VERSION" \
    node_modules/@github/copilot-linux-x64/copilot "$VERSION"
