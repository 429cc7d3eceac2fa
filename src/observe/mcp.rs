//! The stdio MCP servers a live agent process runs, as `status` shows them. Nothing registers an MCP server with
//! us, so they are recognised by what real clients do when they start one (checked against a real stdio server of
//! Claude Code 2.1.332 in `tests/e2e_claude.rs`; the tool-only variables are from captures of Codex CLI 0.171.0 and
//! Qwen Code 0.24.4; the README's "status" section says more):
//!
//! - the agent process starts it itself: a **child of the live agent process** (a wrapper chain such as `npx` → `node`
//!   or `uvx` → `python` is the child and what runs below it, counted together);
//! - it speaks the stdio transport: its **standard input and output are pipes or sockets** (a shell-tool command run
//!   on a pseudo-terminal, or with /dev/null for input, is not one);
//! - it is **not a shell-tool command or a hook**: not a shell, not one of the agent's own workers (`--bg-pty-host`),
//!   and it carries none of the variables the agent gives only those (the row's `tool_marks`: Claude Code gives its
//!   Bash-tool commands and hooks `CLAUDE_PID` and its MCP servers not, Codex gives each shell-tool command a
//!   `CODEX_TOOL_CALL_ID`, Qwen Code gives its shell tool `QWEN_CODE=1`).
//!
//! What this cannot tell apart: a hook of another tool that runs as a plain program for an instant (it shows until it
//! exits), and a server started through a shell that stays (`sh -c 'a; b'`), which is not listed.

use serde::Serialize;

use crate::agents::AgentSpec;
use crate::model::record::Identity;
use crate::observe::table::{Observed, Table};

/// Programs that are shells: what an agent runs its shell tool and its hooks with.
const SHELLS: &[&str] = &["sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "fish"];

/// One stdio MCP server of a live agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct McpServer {
    pub pid: i32,
    pub argv: Vec<String>,
    /// The resident memory of the server and of every process below it.
    pub rss_kib: u64,
    /// How many processes `rss_kib` counts: the server and its descendants.
    pub processes: usize,
}

/// The stdio MCP servers of `agent` in `table` (none once it is gone); `spec` is its row (its tool marks), `stdio`
/// says whether a process's standard input and output are pipes or sockets.
pub(crate) fn servers_of(
    table: &Table,
    agent: &Identity,
    spec: Option<&AgentSpec>,
    stdio: &dyn Fn(i32) -> bool,
) -> Vec<McpServer> {
    if !table.is_live(agent) {
        return Vec::new();
    }
    let marks = spec.map_or(&[][..], |spec| spec.tool_marks);
    let mut servers: Vec<McpServer> = table
        .children_of(agent.pid)
        .filter(|p| may_be_server(p, agent, marks) && stdio(p.identity.pid))
        .map(|p| {
            let tree = table.descendants_of(p.identity.pid);
            McpServer {
                pid: p.identity.pid,
                argv: p.argv.clone(),
                rss_kib: tree.iter().map(|q| q.rss_kib).sum(),
                processes: tree.len(),
            }
        })
        .collect();
    servers.sort_by_key(|server| server.pid);
    servers
}

/// A child of the agent that is no shell, no worker of the agent and no tool's command.
fn may_be_server(p: &Observed, agent: &Identity, marks: &[&str]) -> bool {
    p.detailed
        && p.identity.uid == agent.uid
        && p.identity.start_ticks >= agent.start_ticks
        && !p.is_agent_worker()
        && !is_shell(p)
        && !p.tool_marks.iter().any(|mark| marks.contains(mark))
}

fn is_shell(p: &Observed) -> bool {
    let program = p.argv.first().map(|argv0| {
        argv0
            .rsplit('/')
            .next()
            .unwrap_or(argv0)
            .trim_start_matches('-')
    });
    SHELLS.contains(&p.comm.as_str()) || program.is_some_and(|program| SHELLS.contains(&program))
}

/// True when `pid`'s standard input and output are both pipes or sockets (read from `/proc/<pid>/fd`).
pub(crate) fn speaks_stdio(pid: i32) -> bool {
    [0, 1].iter().all(|fd| {
        std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).is_ok_and(|target| {
            let target = target.to_string_lossy();
            target.starts_with("pipe:[") || target.starts_with("socket:[")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::Agent;
    use crate::decide::leftovers::tests::{identity, process};

    /// A process of ours started after the agent (its start follows its pid), holding `rss_kib`.
    fn child(pid: i32, parent: i32, argv: &str, rss_kib: u64) -> Observed {
        let mut p = process(pid, parent, 100 + u64::try_from(pid).unwrap(), argv);
        p.rss_kib = rss_kib;
        p
    }

    fn marked(mut p: Observed, mark: &'static str) -> Observed {
        p.tool_marks.push(mark);
        p
    }

    #[test]
    fn children_speaking_stdio_are_servers_and_tool_commands_are_not() {
        let agent = child(10, 1, "claude -p", 300_000);
        let table = Table::from_processes([
            agent.clone(),
            child(20, 10, "npx -y @modelcontextprotocol/server-memory", 40_000),
            child(21, 20, "node /x/server-memory/dist/index.js", 60_000),
            child(30, 10, "python3 leaky_mcp.py", 9_000),
            // Bash-tool command and hook: shells, or carrying CLAUDE_PID.
            marked(
                child(40, 10, "/bin/bash -c -l sleep 9", 3_000),
                "CLAUDE_PID",
            ),
            marked(child(41, 10, "sleep 600", 1_000), "CLAUDE_PID"),
            child(42, 10, "/bin/sh -c session-reaper hook", 2_000),
            // The agent's own worker, and a child on a terminal.
            child(43, 10, "claude --bg-pty-host", 2_000),
            child(44, 10, "vim notes", 5_000),
            // Another agent's server.
            child(50, 1, "claude", 200_000),
            child(51, 50, "node other-server.js", 30_000),
        ]);
        let on_a_terminal = |pid: i32| pid != 44;
        let servers = servers_of(
            &table,
            &agent.identity,
            Some(Agent::Claude.spec()),
            &on_a_terminal,
        );
        let found: Vec<(i32, u64, usize)> = servers
            .iter()
            .map(|server| (server.pid, server.rss_kib, server.processes))
            .collect();
        assert_eq!(found, [(20, 100_000, 2), (30, 9_000, 1)]);
        assert_eq!(servers[1].argv, ["python3", "leaky_mcp.py"]);
    }

    #[test]
    fn a_gone_agent_runs_no_server_and_marks_are_the_agents_own() {
        let agent = child(10, 1, "qwen", 1);
        let server = marked(child(20, 10, "node server.js", 1), "CLAUDE_PID");
        let table = Table::from_processes([agent.clone(), server]);
        let any = |_: i32| true;
        assert_eq!(
            servers_of(&table, &agent.identity, Some(Agent::Qwen.spec()), &any).len(),
            1,
            "Claude's mark says nothing of a Qwen child"
        );
        assert!(servers_of(&table, &agent.identity, Some(Agent::Claude.spec()), &any).is_empty());
        let gone = identity(10, 999);
        assert!(servers_of(&table, &gone, None, &any).is_empty());
    }
}
