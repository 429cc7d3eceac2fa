//! Ending a session: the one step shared by `SessionEnd`, `reap --session`, a sweep's `owners_gone` and the
//! shutdown drain. In every slot the session owns (its owner index) it loses its ownership; slots left with no
//! owner become stop tickets in the same locked step; processes resuming the session become tickets too. Nothing
//! is signalled here: the caller runs the tickets within its deadline.

use std::collections::HashSet;

use serde::Serialize;

use crate::act::executor::{self, Mode};
use crate::act::signal::Guard;
use crate::decide::resume;
use crate::decide::{self, SlotChange};
use crate::model::clock;
use crate::model::deadline::Deadline;
use crate::model::name::SessionId;
use crate::model::plan::{Change, Plan};
use crate::model::record::{BrokerRecord, Identity, SessionRecord, StopTicket};
use crate::observe::proc;
use crate::store::Store;
use crate::store::events::{Event, Reason};
use crate::store::slot::Slot;

/// A request to end one session.
#[derive(Clone, Debug)]
pub(crate) struct Ending {
    pub session: SessionId,
    pub reason: Reason,
    /// The agent's own word for why (`clear`, `prompt_input_exit`, …), kept in the session record.
    pub agent_reason: Option<String>,
    /// What the `SessionEnd` payload says of the session, to fill blanks in a record whose start was never seen.
    pub seen: Option<Seen>,
    pub dry_run: bool,
    /// Where the Codex plugin's brokers are looked for (`--no-codex`: nowhere).
    pub codex: crate::adapters::codex_plugin::Discovery,
}

/// A session's details as an ending payload gives them.
#[derive(Clone, Debug, Default)]
pub(crate) struct Seen {
    pub agent: Option<String>,
    pub cwd: Option<String>,
    pub transcript_path: Option<String>,
    pub title: Option<String>,
    /// The agent process the ending hook runs under, and the leftover policy and sentinel choice of its flags: what
    /// a `SessionStart` would have recorded, so that the agent's exit still finds the session's leftovers.
    pub agent_identity: Option<Identity>,
    pub start_facts: Option<(crate::model::leftover::Policy, bool)>,
}

impl Seen {
    /// Fills what `record` lacks (hooks installed mid-session, a failed `SessionStart`); overwrites nothing.
    fn fill_blanks(&self, record: &mut SessionRecord) {
        if record.agent_identity.is_none()
            && let Some(identity) = self.agent_identity.clone().filter(proc::is_alive)
        {
            record.agent_identity = Some(identity);
            if let Some((policy, sentinel)) = self.start_facts
                && !crate::model::leftover::has_facts(record)
            {
                crate::act::leftovers::note_start(record, None, policy, sentinel);
            }
        }
        if let Some(agent) = self.agent.as_ref().filter(|_| record.agent.is_empty()) {
            record.agent.clone_from(agent);
        }
        if let Some(cwd) = self.cwd.as_ref().filter(|_| record.cwd.is_empty()) {
            record.cwd.clone_from(cwd);
        }
        if record.transcript_path.is_none() {
            record.transcript_path.clone_from(&self.transcript_path);
        }
        if record.title.is_none() {
            record.title.clone_from(&self.title);
        }
    }
}

/// One slot the session owned.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct OwnedSlot {
    pub workspace: String,
    pub name: String,
    pub pid: i32,
    pub remaining_owners: Vec<String>,
    /// True when the session was the last owner: the broker is being stopped.
    pub stopping: bool,
}

/// What ending a session found and filed.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct EndReport {
    pub session: String,
    pub reason: String,
    pub slots: Vec<OwnedSlot>,
    /// Processes resuming the session: pid and argv.
    pub resume_orphans: Vec<(i32, Vec<String>)>,
    pub problems: Vec<String>,
    /// What the Codex plugin adapter did with that plugin's brokers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub codex_plugin: Vec<crate::adapters::AdapterAction>,
    #[serde(skip)]
    pub tickets: Vec<StopTicket>,
}

/// Ends `ending.session`: marks its record ended, strips it from the slots it owns, files stop tickets. The slots
/// visited are those of the session's owner index (read under its lock as it is marked ended); a session recorded
/// before the index existed, or never recorded at all, has every slot visited instead. Slot locks are waited for
/// no later than `lock_deadline`; a slot still busy then is reported (a later sweep finishes it: it removes owners
/// whose session has ended).
pub(crate) fn end_session(
    store: &Store,
    guard: &Guard,
    ending: &Ending,
    lock_deadline: Deadline,
) -> EndReport {
    let session = ending.session.as_str();
    let mut report = EndReport {
        session: session.to_owned(),
        reason: ending.reason.to_string(),
        ..EndReport::default()
    };
    let (title, index) = match mark_ended(store, ending, lock_deadline) {
        Ok((before, after)) => (
            after.and_then(|record| record.title),
            before.and_then(|record| record.slots),
        ),
        Err(err) => {
            report.problems.push(format!("session record: {err:#}"));
            (None, None)
        }
    };
    let slots = match index {
        Some(labels) => labels
            .iter()
            .filter_map(|label| Slot::from_label(&store.root, label))
            .collect(),
        None => Slot::all(&store.root),
    };
    let (host, now) = (proc::host(), clock::now_rfc3339());
    let mode = Mode::dry(ending.dry_run);
    for slot in slots {
        let label = slot.label();
        if lock_deadline.expired() {
            report.problems.push(format!(
                "deadline reached before {label}; a sweep finishes the rest"
            ));
            break;
        }
        let decided = executor::update_slot(store, &slot, lock_deadline, mode, |view| {
            decide::slot::remove_owners(view, &[session], ending.reason, (&host, &now), &label)
        });
        match decided {
            Ok(change) => report.note(&label, change, mode),
            Err(err) => {
                report.problems.push(format!("{label}: {err:#}"));
                executor::execute(
                    store,
                    Plan::of(Change::Note(
                        Event::planned("error", "failed")
                            .session(Some(session))
                            .detail(format!("{err:#}")),
                    )),
                    mode,
                );
            }
        }
    }
    file_resume_orphans(
        store,
        guard,
        (ending, lock_deadline),
        title.as_deref(),
        &mut report,
    );
    // The Codex plugin adapter's part: its actions, tickets and problems join the session's report.
    let found = crate::adapters::codex_plugin::at_session_end(
        store,
        guard,
        &ending.codex,
        ending.session.as_str(),
        ending.reason,
        (ending.dry_run, lock_deadline),
    );
    report.codex_plugin.extend(found.actions);
    report.tickets.extend(found.tickets);
    report.problems.extend(found.problems);
    let ended = Event::planned("session_end", "ended")
        .reason(&ending.reason)
        .session(Some(session))
        .detail(ending.agent_reason.clone().unwrap_or_default());
    executor::execute(store, Plan::of(Change::Note(ended)), mode);
    report
}

impl EndReport {
    /// Adds what ending the session did (or would do) to one slot.
    fn note(&mut self, label: &str, change: SlotChange, mode: Mode) {
        match change {
            SlotChange::LeaveAlone { why } => self.problems.push(format!("{label}: {why}")),
            SlotChange::MoveAside { why } => {
                let done = match mode {
                    Mode::Apply => "moved aside",
                    Mode::DryRun => "would be moved aside",
                };
                self.problems
                    .push(format!("{label}: corrupt broker.json {done}: {why}"));
            }
            SlotChange::Write { record, .. } => self.slots.push(owned_slot(&record, false)),
            SlotChange::HandOff { record, ticket, .. } => {
                self.slots.push(owned_slot(&record, true));
                self.tickets.push(ticket);
            }
            SlotChange::Keep | SlotChange::Prune { .. } | SlotChange::RemoveEmpty { .. } => {}
        }
    }
}

/// Marks the session's record ended (creating it if the start was never seen), under its lock; returns the
/// record before and after. A dry run only reads it.
fn mark_ended(
    store: &Store,
    ending: &Ending,
    deadline: Deadline,
) -> anyhow::Result<(Option<SessionRecord>, Option<SessionRecord>)> {
    if ending.dry_run {
        let current = store.sessions.get(&ending.session)?;
        return Ok((current.clone(), current));
    }
    let now = clock::now_rfc3339();
    executor::update_session(store, &ending.session, deadline, |current| {
        let mut record = current.cloned().unwrap_or_else(|| {
            let mut fresh = SessionRecord::new(ending.session.as_str(), proc::host_name(), &now);
            // Never seen before: what it may own is not indexed, so its end visits every slot.
            fresh.slots = None;
            fresh
        });
        if record.ended_at.is_none() {
            record.ended_at = Some(now.clone());
            record.end_reason = Some(
                ending
                    .agent_reason
                    .clone()
                    .unwrap_or_else(|| ending.reason.to_string()),
            );
        }
        record.last_seen.clone_from(&now);
        if let Some(seen) = &ending.seen {
            seen.fill_blanks(&mut record);
        }
        Ok(Some(record))
    })
}

fn owned_slot(record: &BrokerRecord, stopping: bool) -> OwnedSlot {
    OwnedSlot {
        workspace: record.workspace.clone(),
        name: record.name.clone(),
        pid: record.identity.pid,
        remaining_owners: record.owner_ids().into_iter().map(str::to_owned).collect(),
        stopping,
    }
}

/// Files a ticket for each process that resumes the session: never this process or an ancestor, never another
/// user's, never the agent process of a live session (after `/clear` the agent still carries its old argv).
fn file_resume_orphans(
    store: &Store,
    guard: &Guard,
    (ending, deadline): (&Ending, Deadline),
    title: Option<&str>,
    report: &mut EndReport,
) {
    let snapshot = proc::scan_cmdlines(deadline);
    let mut protected: HashSet<i32> = proc::self_and_ancestors();
    let candidates = resume::resume_orphans(&snapshot, ending.session.as_str(), title, &protected);
    if candidates.is_empty() {
        return;
    }
    // Only with a candidate are the other sessions read: their live agents keep their argv after `/clear`.
    protected.extend(live_agent_pids(store, &ending.session));
    let candidates = candidates
        .into_iter()
        .filter(|pid| !protected.contains(pid));
    let resumes = |argv: &[String]| resume::resumes(argv, ending.session.as_str(), title);
    let (now, host) = (clock::now_rfc3339(), proc::host_name());
    let mut plan = Plan::default();
    let mut argvs = std::collections::HashMap::new();
    for (identity, argv) in crate::observe::lineage::confirm_by_argv(candidates, resumes) {
        if guard.check(&identity).is_err() {
            continue;
        }
        argvs.insert(identity.pid, argv);
        let ticket = resume::orphan_ticket(identity, ending.session.as_str(), (&now, &host));
        plan.push(Change::Stop(ticket));
    }
    let applied = executor::execute(store, plan, Mode::dry(ending.dry_run));
    for (change, err) in &applied.failed {
        if let Change::Stop(ticket) = change {
            let pid = ticket.identity.pid;
            report
                .problems
                .push(format!("resume orphan {pid}: {err:#}"));
        }
    }
    for ticket in applied.tickets() {
        let pid = ticket.identity.pid;
        report
            .resume_orphans
            .push((pid, argvs.remove(&pid).unwrap_or_default()));
        report.tickets.push(ticket);
    }
}

/// Agent processes of sessions other than `ending` that are still live.
fn live_agent_pids(store: &Store, ending: &SessionId) -> Vec<i32> {
    store
        .sessions
        .all()
        .into_iter()
        .filter(|record| record.session_id != ending.as_str() && !record.is_ended())
        .filter_map(|record| record.agent_identity)
        .filter(proc::is_alive)
        .map(|identity| identity.pid)
        .collect()
}
