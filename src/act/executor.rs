//! The executor, the one place that files stop tickets and (with the stopper, and the hook's own error line) logs
//! events. It applies a `Plan` change by change, logging one event for each change applied (a stop's is the
//! stopper's, once the stop is done), a session's change under the session's lock, and a slot's change under the
//! slot's lock: it takes the lock (bounded by the caller's deadline), reads the view, asks the decision
//! for the change and applies it. In a dry run nothing is applied and the same changes come back (a slot's decision
//! runs on an unlocked view), so `--dry-run` prints what a real run would do.

use crate::decide::SlotChange;
use crate::model::clock;
use crate::model::deadline::Deadline;
use crate::model::name::SessionId;
use crate::model::plan::{Change, Plan};
use crate::model::record::{SessionRecord, StopTicket};
use crate::store::Store;
use crate::store::events::{Event, EventLog};
use crate::store::slot::{Slot, SlotGuard, SlotView};
use crate::store::tickets::Tickets;

/// Whether changes are applied or only decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Apply,
    DryRun,
}

impl Mode {
    pub(crate) fn dry(dry_run: bool) -> Self {
        if dry_run { Mode::DryRun } else { Mode::Apply }
    }
}

/// What applying a plan did: the changes applied (in a dry run, every change, none applied), each `Clean`'s event
/// saying what it removed; and the changes that failed, with why.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    pub done: Vec<Change>,
    pub failed: Vec<(Change, anyhow::Error)>,
}

impl Applied {
    /// The stop tickets filed (in a dry run: that a real run would file), for a stopper to drive.
    pub(crate) fn tickets(&self) -> Vec<StopTicket> {
        self.done
            .iter()
            .filter_map(|change| match change {
                Change::Stop(ticket) => Some(ticket.clone()),
                _ => None,
            })
            .collect()
    }
}

/// Applies `plan` to `store` (nothing, in a dry run): see `execute_on`.
pub(crate) fn execute(store: &Store, plan: Plan, mode: Mode) -> Applied {
    execute_on(&store.tickets, &store.log, plan, mode)
}

/// Logs one note (a command's own event): a plan of one `Change::Note`.
pub(crate) fn note(store: &Store, event: Event) {
    execute(store, Plan::of(Change::Note(event)), Mode::Apply);
}

/// Changes one session record under the session's lock (`Sessions::update`), logging the note of a corrupt record
/// moved aside first. Returns the record before and after.
pub(crate) fn update_session(
    store: &Store,
    id: &SessionId,
    deadline: Deadline,
    change: impl FnOnce(Option<&SessionRecord>) -> anyhow::Result<Option<SessionRecord>>,
) -> anyhow::Result<(Option<SessionRecord>, Option<SessionRecord>)> {
    noting(store, |moved_aside| {
        store.sessions.update(id, deadline, moved_aside, change)
    })
}

/// Enters `slot` in the index of the session `id` under the session's lock (`Sessions::index_slot`), logging the
/// note of a corrupt record moved aside first.
pub(crate) fn index_slot(
    store: &Store,
    id: &SessionId,
    slot: &str,
    deadline: Deadline,
) -> anyhow::Result<()> {
    noting(store, |moved_aside| {
        store.sessions.index_slot(id, slot, deadline, moved_aside)
    })
}

/// Runs a store operation that may find something worth a note on its way, and logs that note.
fn noting<T>(store: &Store, operation: impl FnOnce(&mut Option<Event>) -> T) -> T {
    let mut found = None;
    let done = operation(&mut found);
    if let Some(event) = found {
        note(store, event);
    }
    done
}

/// Every pending stop ticket, for a run that drives them; what else the tickets directory held (a corrupt ticket
/// moved aside, one refused as it stands) is logged.
pub(crate) fn pending(store: &Store) -> Vec<StopTicket> {
    let (tickets, found) = store.tickets.pending();
    execute(
        store,
        Plan(found.into_iter().map(Change::Note).collect()),
        Mode::Apply,
    );
    tickets
}

/// Applies `plan` change by change: a `Stop` files its ticket (its event is the stopper's, once the stop is done;
/// a ticket that cannot be filed logs an error instead); a `Clean` removes what still names the broker and logs
/// what it removed; a `Report` or a `Note` logs its event. Events are stamped when applied.
pub(crate) fn execute_on(tickets: &Tickets, log: &EventLog, plan: Plan, mode: Mode) -> Applied {
    let mut applied = Applied::default();
    for change in plan {
        if mode == Mode::DryRun {
            applied.done.push(change);
            continue;
        }
        match change {
            Change::Stop(ticket) => match tickets.file(&ticket) {
                Ok(()) => applied.done.push(Change::Stop(ticket)),
                Err(err) => {
                    record(
                        log,
                        Event::new("error", "failed")
                            .session(ticket.session.as_deref())
                            .pid(ticket.identity.pid)
                            .detail(format!("{} ticket: {err:#}", ticket.origin)),
                    );
                    applied.failed.push((Change::Stop(ticket), err));
                }
            },
            Change::Clean {
                files,
                live_sockets,
                mut event,
            } => {
                let live: std::collections::HashSet<_> = live_sockets.iter().cloned().collect();
                let removed = crate::act::clean::clean(&files, &live);
                event.detail = Some(crate::act::clean::describe(&removed));
                record(log, event.clone());
                applied.done.push(Change::Clean {
                    files,
                    live_sockets,
                    event,
                });
            }
            Change::Report(ref event) | Change::Note(ref event) => {
                record(log, event.clone());
                applied.done.push(change);
            }
        }
    }
    applied
}

/// Decides and applies one change to `slot`: `update(key, deadline, |view| change)`. A slot whose directory is
/// gone holds nothing (it is not created to be looked at). Returns the change decided, applied unless dry.
pub(crate) fn update_slot(
    store: &Store,
    slot: &Slot,
    deadline: Deadline,
    mode: Mode,
    decide: impl FnOnce(&SlotView) -> SlotChange,
) -> anyhow::Result<SlotChange> {
    if mode == Mode::DryRun || !slot.dir().exists() {
        let change = decide(&slot.view(&store.root));
        return Ok(match (mode, &change) {
            (Mode::Apply, SlotChange::RemoveEmpty { .. }) => SlotChange::Keep,
            _ => change,
        });
    }
    // A sweep may remove the (empty) directory between the look above and the lock: then it holds nothing.
    let Some(guard) = crate::store::slot_dirs::lock_unless_gone(slot, &store.root, deadline)?
    else {
        return Ok(SlotChange::Keep);
    };
    let change = decide(&guard.view());
    apply(store, &guard, &change)?;
    Ok(change)
}

/// Applies `change` to the slot whose lock `guard` proves held, and logs its event.
pub(crate) fn apply(
    store: &Store,
    guard: &SlotGuard<'_>,
    change: &SlotChange,
) -> anyhow::Result<()> {
    let slot = guard.slot();
    let event = match change {
        SlotChange::Keep | SlotChange::LeaveAlone { .. } => None,
        SlotChange::Write { record, .. } => {
            guard.write(record)?;
            owner_event(change)
        }
        SlotChange::HandOff { ticket, .. } => {
            store.tickets.file(ticket)?;
            guard.clear()?;
            owner_event(change).or_else(|| {
                Some(Event::new("ticket", "filed").detail("handed to a stop ticket".to_owned()))
            })
        }
        SlotChange::Prune { reason, .. } => {
            guard.clear()?;
            Some(Event::new("prune", "pruned").reason(reason).detail(
                "the recorded process no longer has its identity (exited, or the pid was reused)",
            ))
        }
        SlotChange::MoveAside { why } => {
            let moved_to = guard.quarantine()?;
            Some(
                Event::new("corrupt", "moved_aside")
                    .detail(format!("{why}; moved aside to {}", moved_to.display())),
            )
        }
        SlotChange::RemoveEmpty { keep_log } => {
            guard.remove_if_empty(*keep_log)?;
            None
        }
    };
    if let Some(mut event) = event {
        match change.record() {
            Some(record) => {
                event = event
                    .slot(&record.workspace, &record.name)
                    .pid(record.identity.pid);
            }
            None => match slot.workspace() {
                Some(workspace) => event = event.slot(&workspace.to_string_lossy(), slot.name()),
                None => event.name = Some(slot.label()),
            },
        }
        if let (None, SlotChange::HandOff { reason, .. }) = (&event.reason, change) {
            event = event.reason(reason);
        }
        record(&store.log, event);
    }
    Ok(())
}

/// Appends one event, stamped now.
fn record(log: &EventLog, mut event: Event) {
    event.ts = clock::now_rfc3339();
    log.record(&event);
}

/// The event of a change of owners: `owner_add` or `owner_remove`, naming the session and who is left.
fn owner_event(change: &SlotChange) -> Option<Event> {
    let (owners, reason, record) = match change {
        SlotChange::Write {
            owners,
            reason,
            record,
        } => (owners, *reason, record),
        SlotChange::HandOff {
            owners,
            reason,
            record,
            ..
        } => (owners, Some(*reason), record),
        _ => return None,
    };
    let (action, result, sessions) = if owners.removed.is_empty() {
        ("owner_add", "added", &owners.added)
    } else {
        ("owner_remove", "removed", &owners.removed)
    };
    if sessions.is_empty() {
        return None;
    }
    let detail = if record.owners.is_empty() {
        "last owner: stopping".to_owned()
    } else {
        format!("owners now {}", record.owner_ids().join(", "))
    };
    let mut event = Event::new(action, result)
        .session(Some(&sessions.join(",")))
        .detail(detail);
    if let Some(reason) = reason {
        event = event.reason(&reason);
    }
    Some(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::record::Identity;

    fn ticket(pid: i32) -> StopTicket {
        let identity = Identity {
            boot_id: "boot".into(),
            pid_ns: None,
            pid,
            start_ticks: 7,
            uid: 1000,
        };
        let host = crate::store::root::host_name();
        StopTicket::new(
            identity,
            None,
            "leftover",
            100,
            "leftover".into(),
            ("t", &host),
        )
    }

    fn plan() -> Plan {
        Plan(vec![
            Change::Stop(ticket(41)),
            Change::Report(Event::planned("leftover", "reported").pid(42)),
            Change::Note(Event::planned("keep", "kept").pid(43)),
        ])
    }

    #[test]
    fn a_dry_run_returns_the_same_changes_and_applies_none() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let applied = execute(&store, plan(), Mode::DryRun);
        assert_eq!(applied.done, plan().0);
        assert_eq!(applied.tickets().len(), 1);
        assert!(store.log.read_all().is_empty());
        assert!(!store.tickets.path_of(&ticket(41)).exists());
    }

    #[test]
    fn each_change_applied_files_its_ticket_or_logs_its_one_event_stamped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let applied = execute(&store, plan(), Mode::Apply);
        assert!(applied.failed.is_empty(), "{:?}", applied.failed);
        assert!(store.tickets.path_of(&ticket(41)).exists());
        let events = store.log.read_all();
        let logged: Vec<(&str, Option<i32>)> = events
            .iter()
            .map(|event| (event.action.as_str(), event.pid))
            .collect();
        assert_eq!(logged, [("leftover", Some(42)), ("keep", Some(43))]);
        assert!(events.iter().all(|event| !event.ts.is_empty()));
        // A ticket that cannot be filed (its directory is a file now) is no ticket to run, and the log says so.
        let tickets_dir = store
            .tickets
            .path_of(&ticket(44))
            .parent()
            .unwrap()
            .to_owned();
        std::fs::remove_dir_all(&tickets_dir).unwrap();
        std::fs::write(&tickets_dir, "not a directory").unwrap();
        let again = execute(&store, Plan::of(Change::Stop(ticket(44))), Mode::Apply);
        assert_eq!(again.failed.len(), 1);
        assert!(again.tickets().is_empty());
        let last = store.log.read_all().pop().unwrap();
        assert_eq!((last.action.as_str(), last.pid), ("error", Some(44)));
    }
}
