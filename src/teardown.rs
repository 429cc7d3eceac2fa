//! Ending a session: the one step shared by `SessionEnd`, `reap --session`, a sweep's `owners_gone` and the
//! shutdown drain. In every slot of every workspace the session loses its ownership; slots left with no owner
//! become stop tickets in the same locked step; processes resuming the session become tickets too. Nothing is
//! signalled here: the caller runs the tickets within its deadline.

use std::collections::HashSet;

use serde::Serialize;

use crate::clock;
use crate::deadline::Deadline;
use crate::events::{Event, Reason};
use crate::name::SessionId;
use crate::plan::{self, OwnerRemoval};
use crate::proc;
use crate::record::{SessionRecord, StopTicket, is_other_host};
use crate::signal::Guard;
use crate::slot::{Slot, SlotContent};
use crate::stop;
use crate::store::Store;

/// A request to end one session.
#[derive(Clone, Debug)]
pub struct Ending {
    pub session: SessionId,
    pub reason: Reason,
    /// The agent's own word for why (`clear`, `prompt_input_exit`, …), kept in the session record.
    pub agent_reason: Option<String>,
    /// What the `SessionEnd` payload says of the session, to fill blanks in a record whose start was never seen.
    pub seen: Option<Seen>,
    pub dry_run: bool,
}

/// A session's details as an ending payload gives them.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    pub agent: Option<String>,
    pub cwd: Option<String>,
    pub transcript_path: Option<String>,
    pub title: Option<String>,
}

impl Seen {
    /// Fills what `record` lacks (hooks installed mid-session, a failed `SessionStart`); overwrites nothing.
    fn fill_blanks(&self, record: &mut SessionRecord) {
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
pub struct OwnedSlot {
    pub workspace: String,
    pub name: String,
    pub pid: i32,
    pub remaining_owners: Vec<String>,
    /// True when the session was the last owner: the broker is being stopped.
    pub stopping: bool,
}

/// What ending a session found and filed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EndReport {
    pub session: String,
    pub reason: String,
    pub slots: Vec<OwnedSlot>,
    /// Processes resuming the session: pid and argv.
    pub resume_orphans: Vec<(i32, Vec<String>)>,
    pub problems: Vec<String>,
    #[serde(skip)]
    pub tickets: Vec<StopTicket>,
}

/// Ends `ending.session`: marks its record ended, strips it from every slot, files stop tickets. Slot locks are
/// waited for no later than `lock_deadline`; a slot still busy then is reported (a later sweep finishes it: it
/// removes owners whose session has ended).
pub fn end_session(
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
    let title = match mark_ended(store, ending, lock_deadline) {
        Ok(record) => record.and_then(|record| record.title),
        Err(err) => {
            report.problems.push(format!("session record: {err:#}"));
            None
        }
    };
    let host = proc::host_name();
    for slot in Slot::all(&store.root) {
        if lock_deadline.expired() {
            report.problems.push(format!(
                "deadline reached before {}; a sweep finishes the rest",
                slot.label()
            ));
            break;
        }
        strip_owner(store, &slot, ending, (lock_deadline, &host), &mut report);
    }
    file_resume_orphans(
        store,
        guard,
        (ending, lock_deadline),
        title.as_deref(),
        &mut report,
    );
    if !ending.dry_run {
        store.log.record(
            &Event::new("session_end", "ended")
                .reason(&ending.reason)
                .session(Some(session))
                .detail(ending.agent_reason.clone().unwrap_or_default()),
        );
    }
    report
}

fn mark_ended(
    store: &Store,
    ending: &Ending,
    deadline: Deadline,
) -> anyhow::Result<Option<SessionRecord>> {
    if ending.dry_run {
        return store.sessions.get(&ending.session);
    }
    let now = clock::now_rfc3339();
    store.sessions.update(&ending.session, deadline, |current| {
        let mut record = current.unwrap_or_else(|| {
            SessionRecord::new(ending.session.as_str(), proc::host_name(), &now)
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
        record.last_seen = now;
        if let Some(seen) = &ending.seen {
            seen.fill_blanks(&mut record);
        }
        Some(record)
    })
}

/// Removes the ending session from one slot's owners, filing a stop ticket when it was the last. Another host's
/// record is left alone.
fn strip_owner(
    store: &Store,
    slot: &Slot,
    ending: &Ending,
    (lock_deadline, host): (Deadline, &str),
    report: &mut EndReport,
) {
    let session = ending.session.as_str();
    if ending.dry_run {
        if let Some(mut record) = slot
            .peek(&store.root)
            .filter(|record| record.has_owner(session) && !is_other_host(&record.host, host))
        {
            let removal = plan::remove_owner(&mut record, session);
            report.slots.push(owned_slot(&record, removal));
            if removal == OwnerRemoval::LastOwnerGone {
                report.tickets.push(stop::ticket_for(
                    &record,
                    ending.reason.as_str(),
                    Some(session),
                    &slot.label(),
                ));
            }
        }
        return;
    }
    let guard = match slot.lock(&store.root, lock_deadline) {
        Ok(guard) => guard,
        Err(err) => {
            report.problems.push(format!("{}: {err:#}", slot.label()));
            store.log.record(
                &Event::new("error", "failed")
                    .session(Some(session))
                    .detail(format!("{err:#}")),
            );
            return;
        }
    };
    let mut record = match guard.read() {
        Ok(SlotContent::Broker(record)) if is_other_host(&record.host, host) => return,
        Ok(SlotContent::Broker(record)) => record,
        Ok(SlotContent::Empty) => return,
        Ok(SlotContent::Corrupt { moved_to, why }) => {
            let detail = format!("{why}; moved aside to {}", moved_to.display());
            report
                .problems
                .push(format!("{}: corrupt broker.json: {detail}", slot.label()));
            store
                .log
                .record(&Event::new("corrupt", "moved_aside").detail(detail));
            return;
        }
        Err(err) => {
            report.problems.push(format!("{}: {err:#}", slot.label()));
            return;
        }
    };
    let removal = plan::remove_owner(&mut record, session);
    let result = match removal {
        OwnerRemoval::NotOwner => return,
        OwnerRemoval::OthersRemain => guard.write(&record),
        OwnerRemoval::LastOwnerGone => {
            let ticket = stop::ticket_for(
                &record,
                ending.reason.as_str(),
                Some(session),
                &slot.label(),
            );
            let filed = store.tickets.file(&ticket).and_then(|()| guard.clear());
            report.tickets.push(ticket);
            filed
        }
    };
    if let Err(err) = result {
        report.problems.push(format!("{}: {err:#}", slot.label()));
        return;
    }
    let detail = if record.owners.is_empty() {
        "last owner: stopping".to_owned()
    } else {
        format!("owners now {}", record.owner_ids().join(", "))
    };
    store.log.record(
        &Event::new("owner_remove", "removed")
            .reason(&ending.reason)
            .session(Some(session))
            .slot(&record.workspace, &record.name)
            .pid(record.identity.pid)
            .detail(detail),
    );
    report.slots.push(owned_slot(&record, removal));
}

fn owned_slot(record: &crate::record::BrokerRecord, removal: OwnerRemoval) -> OwnedSlot {
    OwnedSlot {
        workspace: record.workspace.clone(),
        name: record.name.clone(),
        pid: record.identity.pid,
        remaining_owners: record.owner_ids().into_iter().map(str::to_owned).collect(),
        stopping: removal == OwnerRemoval::LastOwnerGone,
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
    protected.extend(live_agent_pids(store, &ending.session));
    for pid in plan::resume_orphans(&snapshot, ending.session.as_str(), title, &protected) {
        let Some(identity) = proc::identity_of(pid) else {
            continue;
        };
        if guard.check(&identity).is_err() {
            continue;
        }
        let argv = snapshot
            .iter()
            .find(|(p, _)| *p == pid)
            .map(|(_, argv)| argv.clone())
            .unwrap_or_default();
        let mut ticket = stop::new_ticket(
            identity,
            None,
            Reason::ResumeOrphan.as_str(),
            stop::DEFAULT_GRACE_MS,
            "resume-orphan".to_owned(),
        );
        ticket.session = Some(ending.session.as_str().to_owned());
        if !ending.dry_run
            && let Err(err) = store.tickets.file(&ticket)
        {
            report
                .problems
                .push(format!("resume orphan {pid}: {err:#}"));
            continue;
        }
        report.resume_orphans.push((pid, argv));
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
