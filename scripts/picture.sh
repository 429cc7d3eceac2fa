#!/usr/bin/env bash
# Draws docs/picture.svg, the README's picture, from a real run: scripts/headline.sh (a fake agent with an MCP server
# and two jobs its shell tool left running; `status`; the agent SIGKILLed; `log`, `log --freed`) with colours, drawn
# by scripts/term2svg.py. Needs cargo, python3 and bash; runs nothing over the network.
# Usage: scripts/picture.sh [BINARY]   (default: builds and uses target/release/session-reaper)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-}
if [ -z "$bin" ]; then
    cargo build --release --locked --quiet
    bin=target/release/session-reaper
fi
bash scripts/headline.sh "$bin" always | python3 scripts/term2svg.py "session-reaper: an agent killed, what it left behind stopped" >docs/picture.svg.new
mv docs/picture.svg.new docs/picture.svg
echo "wrote docs/picture.svg"
