#!/usr/bin/env bash
# The headline on real processes: a fake agent (fixtures/fake_agent.py, which starts its children as Claude Code
# does) runs our hooks, a stdio MCP server and two jobs its shell tool left running; `status` shows them; the agent is
# SIGKILLed; its sentinel stops what it left behind; `log` and `log --freed` say so. Prints the transcript
# (`$ command` lines and their output) on stdout. Everything runs in a temporary directory (state root, HOME,
# workspace) with an environment of its own, and every process it starts is gone when it returns.
# Usage: scripts/headline.sh BINARY [always|never]   (colour; never by default)
set -euo pipefail
bin=$(realpath "$1")
color=${2:-never}
here=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/sr-picture-XXXXXX")
mkdir -p "$tmp/home" "$tmp/src/app/.git"
state=$tmp/home/.local/state/session-reaper
agent_pid=
cleanup() {
    # Only what this script started: the fake agent, and what carries its fresh session id.
    if [ -n "$agent_pid" ]; then kill -KILL "$agent_pid" 2>/dev/null || true; fi
    # Left over jobs carry the session id, which nothing else on this machine has.
    for pid in $(grep -lz "CLAUDE_CODE_SESSION_ID=$session" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3); do
        kill -KILL "$pid" 2>/dev/null || true
    done
    rm -rf "$tmp"
}
# A fresh session id (it marks what this run started), shown as a fixed one so that two runs read alike.
session=$(python3 -c 'import uuid; print(uuid.uuid4())')
shown_session=0b5f6b3e-41c2-4d57-9a51-3c6f0e9d2a11
trap cleanup EXIT
# An environment of its own: no agent variables of whoever runs the script.
# Containment is off: the script makes no cgroup in this machine's tree (the picture shows the session variable at work).
run_clean() { env -i PATH="$PATH" HOME="$tmp/home" LANG=C.UTF-8 SESSION_REAPER_CONTAINMENT=off "$@"; }
# The fake agent runs as a program named `claude` (the real python3 behind a link of that name): only a process the
# agents table recognises gets an agent's powers (docs/belonging.md).
# The real python3 comes first on PATH too, so that what the agent's tools start is python3 itself, not a version
# manager's shim running helpers of its own.
mkdir -p "$tmp/bin"
real_python=$(python3 -c 'import os, sys; print(os.path.realpath(sys.executable))')
ln -s "$real_python" "$tmp/bin/claude"
ln -s "$real_python" "$tmp/bin/python3"
PATH="$tmp/bin:$PATH"
coproc AGENT { cd "$tmp/src/app" && exec env -i PATH="$PATH" HOME="$tmp/home" LANG=C.UTF-8 \
    SESSION_REAPER_CONTAINMENT=off \
    "$tmp/bin/claude" "$here/fixtures/fake_agent.py" "$bin" "$state" "$session" CLAUDE_CODE_SESSION_ID --deadline 10s; }
agent_pid=$AGENT_PID
order() { echo "$1" >&"${AGENT[1]}"; read -r answer <&"${AGENT[0]}"; [ "$answer" = ok ]; }
# Waits (up to 10 s) until a process whose argv contains $1 runs with the session in its environment.
started() {
    for _ in $(seq 100); do
        for pid in $(grep -lz "CLAUDE_CODE_SESSION_ID=$session" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3); do
            tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$1" && return 0
        done
        sleep 0.1
    done
    echo "never started: $1" >&2; return 1
}
show() {
    printf '$ session-reaper %s\n' "$*"
    (cd "$tmp/src/app" && run_clean "$bin" --color "$color" "$@" 2>&1) |
        sed "s|$tmp/home|/home/me|g; s|$tmp/src|/home/me/src|g; s|$session|$shown_session|g"
}
# A stdio MCP server, as a client starts one (its stdin and stdout are pipes to the agent), that does not notice
# them closing.
mkdir -p "$tmp/home/.local/bin"
printf '#!/usr/bin/env python3\nimport time\ntime.sleep(900)\n' >"$tmp/home/.local/bin/mcp-server-notes"
chmod +x "$tmp/home/.local/bin/mcp-server-notes"
order start
order "mcp exec $tmp/home/.local/bin/mcp-server-notes"
started mcp-server-notes
# What the agent's shell tool left running: a dev server in a session of its own, and a nohup job.
order "run setsid python3 -m http.server 8765 --bind 127.0.0.1 >/dev/null 2>&1 &"
started http.server
order "run nohup sleep 900 >/dev/null 2>&1 &"
started "sleep 900"
show status
printf '$ kill -9 %s    # the agent dies: no SessionEnd hook runs\n' "$agent_pid"
{ kill -KILL "$agent_pid"; wait "$agent_pid"; } 2>/dev/null || true
# Its sentinel stops the three; wait (up to 10 s) until the log has their stops.
for _ in $(seq 100); do
    [ "$(run_clean "$bin" --state-dir "$state" log --action stop | grep -c ' leftover ')" -ge 3 ] && break
    sleep 0.1
done
show log
show log --freed
