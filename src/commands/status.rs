//! `status`: every slot with its broker, owners and liveness; pending stop tickets; live sessions.

use serde::Serialize;
use serde_json::json;

use crate::config::Config;
use crate::error::Outcome;
use crate::finisher;
use crate::proc;
use crate::record::{BrokerRecord, SessionRecord, StopTicket};
use crate::slot::{Slot, SlotView};
use crate::state::StateRoot;
use crate::stop::STUCK_AFTER;
use crate::store::Store;
use crate::ticket::TicketView;

/// One slot as `status --json` shows it.
#[derive(Debug, Serialize)]
pub struct SlotStatus {
    pub slot: String,
    pub alive: bool,
    #[serde(flatten)]
    pub record: BrokerRecord,
}

/// A snapshot of the whole state root.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub state_dir: String,
    pub slots: Vec<SlotStatus>,
    /// Slots whose record could not be read (corrupt, or written by a newer session-reaper).
    pub unreadable: Vec<Unreadable>,
    pub tickets: Vec<TicketStatus>,
    pub sessions: Vec<SessionRecord>,
    pub finisher_running: bool,
    /// The Codex plugin's brokers (its own records and the ones it lost).
    pub codex_plugin: Vec<crate::adapters::codex_plugin::BrokerStatus>,
}

#[derive(Debug, Serialize)]
pub struct Unreadable {
    pub slot: String,
    pub problem: String,
}

#[derive(Debug, Serialize)]
pub struct TicketStatus {
    pub alive: bool,
    pub stuck: bool,
    #[serde(flatten)]
    pub ticket: StopTicket,
}

/// Reads everything without taking any lock (each record file is replaced atomically) and changes nothing.
pub fn snapshot(store: &Store) -> Snapshot {
    let mut slots = Vec::new();
    let mut unreadable = Vec::new();
    for slot in Slot::all(&store.root) {
        match slot.view(&store.root) {
            SlotView::Empty => {}
            SlotView::Broker(record) => slots.push(SlotStatus {
                slot: slot.label(),
                alive: proc::is_alive(&record.identity),
                record,
            }),
            SlotView::Unreadable(problem) => unreadable.push(Unreadable {
                slot: slot.label(),
                problem: problem.why,
            }),
        }
    }
    let mut tickets = Vec::new();
    for (path, view) in store.tickets.scan() {
        match view {
            TicketView::Ticket(ticket) => {
                let alive = proc::is_alive(&ticket.identity);
                tickets.push(TicketStatus {
                    alive,
                    stuck: alive && ticket.attempts >= STUCK_AFTER,
                    ticket,
                });
            }
            TicketView::Unreadable(problem) => unreadable.push(Unreadable {
                slot: path.to_string_lossy().into_owned(),
                problem: problem.why,
            }),
        }
    }
    let (sessions, unreadable_sessions) = store.sessions.scan();
    unreadable.extend(
        unreadable_sessions
            .into_iter()
            .map(|(id, problem)| Unreadable {
                slot: format!("session {id}"),
                problem: problem.why,
            }),
    );
    Snapshot {
        state_dir: store.root.path().to_string_lossy().into_owned(),
        slots,
        unreadable,
        tickets,
        sessions: sessions
            .into_iter()
            .filter(|session| !session.is_ended())
            .collect(),
        finisher_running: finisher::is_running(store),
        codex_plugin: Vec::new(),
    }
}

pub fn run(
    json_output: bool,
    codex: &crate::adapters::codex_plugin::Discovery,
    config: &Config,
) -> anyhow::Result<Outcome> {
    let Some(root) = StateRoot::open_existing(&config.state_dir)? else {
        let codex_plugin = crate::adapters::codex_plugin::status(None, codex);
        if json_output {
            println!(
                "{}",
                json!({"state_dir": config.state_dir, "slots": [], "unreadable": [], "tickets": [], "sessions": [],
                       "codex_plugin": codex_plugin})
            );
        } else {
            println!("no state yet at {}", config.state_dir.display());
            crate::adapters::codex_plugin::print_status(&codex_plugin);
        }
        return Ok(Outcome::Done);
    };
    let store = Store::from_root(root);
    let mut snapshot = snapshot(&store);
    snapshot.codex_plugin = crate::adapters::codex_plugin::status(Some(&store), codex);
    if json_output {
        println!("{}", serde_json::to_string_pretty(&snapshot)?);
    } else {
        print_human(&snapshot);
    }
    let stuck = snapshot.tickets.iter().any(|ticket| ticket.stuck);
    Ok(Outcome::from_ok(!stuck && snapshot.unreadable.is_empty()))
}

fn print_human(snapshot: &Snapshot) {
    println!("state: {}", snapshot.state_dir);
    if snapshot.slots.is_empty() {
        println!("brokers: none");
    } else {
        println!("brokers:");
        println!(
            "  {:<8} {:<6} {:<24} {:<28} workspace",
            "pid", "alive", "owners", "command"
        );
        for slot in &snapshot.slots {
            let record = &slot.record;
            let owners = if record.owners.is_empty() {
                "-".to_owned()
            } else {
                record.owner_ids().join(",")
            };
            let workspace = if record.name == "default" {
                record.workspace.clone()
            } else {
                format!("{} [{}]", record.workspace, record.name)
            };
            println!(
                "  {:<8} {:<6} {:<24} {:<28} {}",
                record.identity.pid,
                if slot.alive { "yes" } else { "STALE" },
                shorten(&owners, 24),
                shorten(&record.command.join(" "), 28),
                workspace
            );
        }
    }
    for slot in &snapshot.unreadable {
        println!("  UNREADABLE {}: {}", slot.slot, slot.problem);
    }
    if !snapshot.tickets.is_empty() {
        println!("stopping:");
        for ticket in &snapshot.tickets {
            let state = if ticket.stuck {
                format!("STUCK after {} SIGKILLs", ticket.ticket.attempts)
            } else if ticket.alive {
                "in progress".to_owned()
            } else {
                "gone (ticket not yet closed)".to_owned()
            };
            println!(
                "  pid {:<8} {:<14} {}  since {}",
                ticket.ticket.identity.pid, ticket.ticket.reason, state, ticket.ticket.requested_at
            );
        }
    }
    crate::adapters::codex_plugin::print_status(&snapshot.codex_plugin);
    println!("live sessions: {}", snapshot.sessions.len());
    for session in &snapshot.sessions {
        let pid = session
            .agent_identity
            .as_ref()
            .map_or(0, |identity| identity.pid);
        println!(
            "  {} {:<7} agent pid {:<8} {}",
            session.session_id, session.agent, pid, session.cwd
        );
    }
}

/// Cuts `text` to `width` characters, marking the cut.
pub fn shorten(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}
