//! Leftovers as people read them: `reap`'s lines and `status`'s per-session view (leftovers-to-be, MCP servers,
//! sentinel).

use serde::Serialize;

use crate::act::{leftovers, sentinel};
use crate::agents::Agent;
use crate::decide::leftovers::{Found, Leftover};
use crate::model::leftover::{Policy, SessionFacts};
use crate::model::record::SessionRecord;
use crate::observe::table::Table;
use crate::store::Store;

/// The lines `reap` prints for one session's leftovers.
pub(crate) fn print_found(found: &[Found], session: &str, dry_run: bool) {
    for found in found.iter().filter(|found| found.session == session) {
        let what = match (found.policy, dry_run) {
            (Policy::Stop, true) => "leftover, would stop:",
            (Policy::Stop, false) => "leftover, stopping:",
            _ => "leftover, reported:",
        };
        for leftover in &found.leftovers {
            print_leftover(&format!("  {what}"), leftover);
        }
    }
}

// ---- visibility ----

/// A live session's leftovers-to-be, its agent's MCP servers and its sentinel, as `status` shows them.
#[derive(Clone, Debug, Serialize)]
pub struct SessionView {
    pub session: String,
    pub agent_pid: i32,
    pub policy: Policy,
    pub sentinel: bool,
    /// The sentinel's pid, when one watches the agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentinel_pid: Option<i32>,
    pub leftovers: Vec<Leftover>,
    /// Carriers of the session that serve a live terminal (a tmux server in use): reported, never stopped.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub spared: Vec<Leftover>,
    /// The stdio MCP servers the live agent process runs (`mcp`).
    pub mcp_servers: Vec<crate::observe::mcp::McpServer>,
    /// How its processes are known (DESIGN "Containment"), and what its cgroup holds.
    pub containment: crate::observe::cgroup::View,
}

/// For each live session: what would be stopped if its agent went now, and the MCP servers its agent runs — from
/// one observation of the process table.
pub(crate) fn status_view(store: &Store, live: &[SessionRecord]) -> Vec<SessionView> {
    let table = leftovers::observed_since(live)
        .map(Table::observe)
        .unwrap_or_default();
    let claimed = crate::adapters::claimed(
        &crate::adapters::codex_plugin::Discovery::default(),
        crate::model::deadline::Deadline::far(),
    );
    let found = leftovers::discover_in(store, &table, live, &claimed);
    live.iter()
        .map(|record| {
            let agent = record.agent_identity.as_ref();
            let sentinel = agent.is_some_and(|agent| sentinel::is_running(store, agent));
            let spec = Agent::from_name(&record.agent).map(Agent::spec);
            SessionView {
                session: record.session_id.clone(),
                agent_pid: agent.map_or(0, |agent| agent.pid),
                policy: SessionFacts::of(record).policy,
                sentinel,
                sentinel_pid: agent
                    .filter(|_| sentinel)
                    .and_then(|agent| sentinel::pid_of(store, agent)),
                leftovers: found
                    .iter()
                    .find(|found| found.session == record.session_id)
                    .map(|found| found.leftovers.clone())
                    .unwrap_or_default(),
                containment: crate::observe::cgroup::view_of(record),
                spared: found
                    .iter()
                    .find(|found| found.session == record.session_id)
                    .map(|found| found.spared.clone())
                    .unwrap_or_default(),
                mcp_servers: agent.map_or_else(Vec::new, |agent| {
                    crate::observe::mcp::servers_of(
                        &table,
                        agent,
                        spec,
                        &crate::observe::mcp::speaks_stdio,
                    )
                }),
            }
        })
        .collect()
}

/// One line per leftover: pid, memory, how it was found, argv.
pub(crate) fn print_leftover(prefix: &str, leftover: &Leftover) {
    println!(
        "{prefix} pid {:>7}  {:>8}  {}  {}",
        leftover.pid,
        format_kib(leftover.rss_kib),
        leftover.via,
        leftover.argv.join(" ")
    );
}

/// Memory as people read it.
pub(crate) fn format_kib(kib: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let mib = kib as f64 / 1024.0;
    if kib >= 1024 * 1024 {
        format!("{:.1} GiB", mib / 1024.0)
    } else if kib >= 1024 {
        format!("{mib:.1} MiB")
    } else {
        format!("{kib} KiB")
    }
}
