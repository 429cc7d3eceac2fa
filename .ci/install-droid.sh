#!/usr/bin/env bash
# Installs the real Factory Droid into target/e2e-droid for tests/e2e_droid.rs. Pinned: the platform package
# @factory/cli-linux-x64 0.225.2 (the @factory/cli 0.225.1 shim asks for a platform package the registry lacks), a
# standalone binary; the version whose hooks the test was written against. SESSION_REAPER_DROID_VERSION picks another.
set -euo pipefail
VERSION="${SESSION_REAPER_DROID_VERSION:-0.225.2}"
exec bash "$(dirname "${BASH_SOURCE[0]}")/install-npm-client.sh" droid "@factory/cli-linux-x64@$VERSION" \
    node_modules/@factory/cli-linux-x64/bin/droid "$VERSION"
