//! The executor: takes a slot's lock (bounded by the caller's deadline), reads its view, asks the decision for a
//! change, applies it and logs exactly one event for it. In a dry run the same decision runs on an unlocked view
//! and nothing is applied, so `--dry-run` prints what a real run would do.

use crate::decide::SlotChange;
use crate::model::deadline::Deadline;
use crate::store::Store;
use crate::store::events::Event;
use crate::store::slot::{Slot, SlotGuard, SlotView};

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
        store.log.record(&event);
    }
    Ok(())
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
