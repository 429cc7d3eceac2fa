//! `status`: every slot with its broker, owners and liveness; pending stop tickets; live sessions.

use serde::Serialize;
use serde_json::json;

use crate::act::finisher;
use crate::act::stopper::STUCK_AFTER;
use crate::config::Config;
use crate::error::Outcome;
use crate::model::record::{BrokerRecord, SessionRecord, StopTicket};
use crate::observe::proc;
use crate::store::Store;
use crate::store::root::StateRoot;
use crate::store::slot::{Slot, SlotView};
use crate::store::tickets::TicketView;

/// One slot as `status --json` shows it.
#[derive(Debug, Serialize)]
pub struct SlotStatus {
    pub slot: String,
    pub alive: bool,
    /// The broker's members besides its leader (DESIGN "Process lineage").
    pub members: Vec<Member>,
    #[serde(flatten)]
    pub record: BrokerRecord,
}

/// A live member of a broker: what it runs and the memory it holds.
#[derive(Clone, Debug, Serialize)]
pub struct Member {
    pub pid: i32,
    pub argv: Vec<String>,
    pub rss_kib: Option<u64>,
}

/// Fills in each broker's members, and each ticket's members left behind: a ticket whose leader is gone while
/// members run, with no finisher driving it, is a stop that left them behind — stuck, not stopped.
fn add_members(slots: &mut [SlotStatus], tickets: &mut [TicketStatus], finisher_running: bool) {
    let leaders: std::collections::HashSet<i32> = slots
        .iter()
        .filter(|slot| slot.alive)
        .map(|slot| slot.record.identity.pid)
        .chain(
            tickets
                .iter()
                .filter(|t| t.alive)
                .map(|t| t.ticket.identity.pid),
        )
        .collect();
    let processes = proc::observe(&leaders, crate::model::deadline::Deadline::far()).0;
    let liveness = proc::Liveness::default();
    for slot in slots {
        let record = &slot.record;
        slot.members = members_of(
            (&processes, &liveness),
            &record.identity,
            record.lineage.as_deref(),
            &[],
        );
    }
    for status in tickets {
        let ticket = &status.ticket;
        status.members_left = members_of(
            (&processes, &liveness),
            &ticket.identity,
            ticket.lineage.as_deref(),
            &ticket.members,
        );
        let leader_alive = status.alive;
        status.alive = leader_alive || !status.members_left.is_empty();
        let left_behind = !leader_alive && !status.members_left.is_empty() && !finisher_running;
        status.stuck = status.alive && (ticket.attempts >= STUCK_AFTER || left_behind);
    }
}

/// The live members of the broker led by `leader` (token, or group and session while the leader lives), plus the
/// members a ticket remembers.
pub(crate) fn members_of(
    (snapshot, liveness): (&[proc::Observed], &proc::Liveness),
    leader: &crate::model::record::Identity,
    token: Option<&str>,
    remembered: &[crate::model::record::Identity],
) -> Vec<Member> {
    let mut found = crate::decide::lineage::members(
        leader,
        token,
        liveness.is_alive(leader),
        snapshot,
        &proc::adopters_of(leader),
    );
    found.extend(remembered.iter().filter(|m| liveness.is_alive(m)).cloned());
    found.sort_by_key(|m| m.pid);
    found.dedup_by_key(|m| m.pid);
    found
        .into_iter()
        .map(|member| Member {
            pid: member.pid,
            argv: proc::cmdline(member.pid).unwrap_or_default(),
            rss_kib: proc::rss_kib(member.pid),
        })
        .collect()
}

/// A leftover that `--leftovers report` left running, still running: found in the `leftover` events the agent's end
/// logged (the process with that pid still runs that argv; status only shows it, nothing signals it).
#[derive(Clone, Debug, Serialize)]
pub struct ReportedLeftover {
    pub pid: i32,
    pub argv: Vec<String>,
    pub rss_kib: Option<u64>,
    pub session: Option<String>,
    /// When the event was logged.
    pub reported_at: String,
}

/// The reported leftovers that still run, newest report of a pid first kept.
fn reported_leftovers(store: &Store) -> Vec<ReportedLeftover> {
    let mut found: Vec<ReportedLeftover> = Vec::new();
    for event in store.log.read_all().into_iter().rev() {
        if event.action != "leftover" || event.result != "reported" {
            continue;
        }
        let (Some(pid), Some(argv)) = (event.pid, event.argv) else {
            continue;
        };
        if found.iter().any(|seen| seen.pid == pid) {
            continue;
        }
        let runs_it =
            proc::pinned(pid, |pid| proc::cmdline(pid).ok()).is_some_and(|(_, now)| now == argv);
        if runs_it {
            found.push(ReportedLeftover {
                pid,
                argv,
                rss_kib: proc::rss_kib(pid),
                session: event.session,
                reported_at: event.ts,
            });
        }
    }
    found.sort_by_key(|leftover| leftover.pid);
    found
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
    /// Each live session's leftovers-to-be, its agent's MCP servers and its sentinel.
    pub leftovers: Vec<crate::commands::leftovers::SessionView>,
    /// What `--leftovers report` left running after its agent was gone, still running.
    pub reported_leftovers: Vec<ReportedLeftover>,
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
    /// The leader or a member still runs.
    pub alive: bool,
    /// Still running after the SIGKILLs, or members left behind by a leader that is gone with nothing driving the
    /// stop: not stopped.
    pub stuck: bool,
    pub members_left: Vec<Member>,
    #[serde(flatten)]
    pub ticket: StopTicket,
}

/// Reads everything without taking any lock (each record file is replaced atomically) and changes nothing.
pub(crate) fn snapshot(store: &Store) -> Snapshot {
    let liveness = proc::Liveness::default();
    let mut slots = Vec::new();
    let mut unreadable = Vec::new();
    for slot in Slot::all(&store.root) {
        match slot.view(&store.root) {
            SlotView::Empty => {}
            SlotView::Broker(record) => slots.push(SlotStatus {
                slot: slot.label(),
                alive: liveness.is_alive(&record.identity),
                members: Vec::new(),
                record,
            }),
            SlotView::Unreadable(problem) => unreadable.push(Unreadable {
                slot: slot.label(),
                problem: problem.why,
            }),
        }
    }
    let rest = beside_slots(store);
    let mut tickets = rest.tickets;
    add_members(&mut slots, &mut tickets, rest.finisher_running);
    unreadable.extend(rest.unreadable);
    Snapshot {
        state_dir: store.root.path().to_string_lossy().into_owned(),
        slots,
        unreadable,
        tickets,
        sessions: rest.sessions,
        leftovers: rest.leftovers,
        reported_leftovers: rest.reported,
        finisher_running: rest.finisher_running,
        codex_plugin: Vec::new(),
    }
}

/// What the state root holds besides its slots: pending tickets (members not yet added), live sessions, and the
/// tickets and session records that cannot be read.
struct BesideSlots {
    tickets: Vec<TicketStatus>,
    leftovers: Vec<crate::commands::leftovers::SessionView>,
    reported: Vec<ReportedLeftover>,
    sessions: Vec<SessionRecord>,
    unreadable: Vec<Unreadable>,
    finisher_running: bool,
}

fn beside_slots(store: &Store) -> BesideSlots {
    let mut unreadable = Vec::new();
    let mut tickets = Vec::new();
    for (path, view) in store.tickets.scan() {
        match view {
            TicketView::Ticket(ticket) => {
                let alive = proc::is_alive(&ticket.identity);
                tickets.push(TicketStatus {
                    alive,
                    stuck: alive && ticket.attempts >= STUCK_AFTER,
                    members_left: Vec::new(),
                    ticket,
                });
            }
            TicketView::Unreadable(problem) => unreadable.push(Unreadable {
                slot: path.to_string_lossy().into_owned(),
                problem: problem.why,
            }),
        }
    }
    // A symlink (or anything but a directory) where a slot belongs: never read through, shown as unreadable.
    unreadable.extend(
        crate::store::slot_dirs::odd_entries(&store.root)
            .into_iter()
            .map(|odd| Unreadable {
                problem: odd.problem(),
                slot: odd.label,
            }),
    );
    let (sessions, unreadable_sessions) = store.sessions.scan();
    unreadable.extend(
        unreadable_sessions
            .into_iter()
            .map(|(id, problem)| Unreadable {
                slot: format!("session {id}"),
                problem: problem.why,
            }),
    );
    let sessions: Vec<SessionRecord> = sessions
        .into_iter()
        .filter(|session| !session.is_ended())
        .collect();
    BesideSlots {
        tickets,
        leftovers: crate::commands::leftovers::status_view(store, &sessions),
        reported: reported_leftovers(store),
        sessions,
        unreadable,
        finisher_running: finisher::is_running(store),
    }
}

pub(crate) fn run(
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
                       "leftovers": [], "reported_leftovers": [], "codex_plugin": codex_plugin})
            );
        } else {
            println!("no state yet at {}", config.state_dir.display());
            crate::adapters::codex_plugin::print_status(&codex_plugin);
        }
        return Ok(Outcome::Done);
    };
    let store = Store::from_root(root);
    let codex_plugin = crate::adapters::codex_plugin::status(Some(&store), codex);
    if json_output {
        let mut rest = beside_slots(&store);
        add_members(&mut [], &mut rest.tickets, rest.finisher_running);
        let printed = super::status_json::print(
            &store,
            &rest.tickets,
            (&rest.sessions, &rest.leftovers, &rest.reported),
            rest.unreadable,
            (rest.finisher_running, codex_plugin),
        )?;
        return Ok(Outcome::from_ok(!printed.stuck && !printed.unreadable));
    }
    let mut snapshot = snapshot(&store);
    snapshot.codex_plugin = codex_plugin;
    let facts = super::status_tree::observe(&store, &snapshot);
    let tree = super::status_tree::build(&snapshot, &facts);
    print!(
        "{}",
        super::status_tree::render(&tree, crate::commands::term::get().color)
    );
    let stuck = snapshot.tickets.iter().any(|ticket| ticket.stuck);
    Ok(Outcome::from_ok(!stuck && snapshot.unreadable.is_empty()))
}
