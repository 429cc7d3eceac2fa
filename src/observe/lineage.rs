//! What lineage decisions are taken on, read from the system: what the state root's records know (tokens, pids,
//! unreadable slots), the members of a live leader, and processes confirmed by a pinned argv read.

use serde_json::Value;

use crate::model::known::Known;
use crate::model::record::{Identity, StopTicket};
use crate::observe::proc;

/// What the records of the state root know (slots of every kind, filed tickets) plus `extra` tickets not yet filed.
pub(crate) fn known_to(store: &crate::store::Store, extra: &[StopTicket]) -> Known {
    let mut known = Known::default();
    for slot in crate::store::slot::Slot::all(&store.root) {
        match store.root.read_file(&slot.record_path()) {
            Ok(None) => {}
            Ok(Some(bytes)) => match serde_json::from_slice::<Value>(&bytes) {
                Ok(value) if value.is_object() => known.add_json(&value),
                _ => {
                    known.unreadable_slots.insert(slot.label());
                }
            },
            Err(_) => {
                known.unreadable_slots.insert(slot.label());
            }
        }
    }
    for ticket in store.tickets.readable().iter().chain(extra) {
        known.add_ticket(ticket);
    }
    known
}

/// The processes in `snapshot` (pid, argv) that `matches`, confirmed by pinned observation: identity, argv read
/// again and matched again, identity unchanged. A pid reused since the snapshot gives nothing.
pub(crate) fn confirm_by_argv(
    candidates: impl IntoIterator<Item = i32>,
    matches: impl Fn(&[String]) -> bool,
) -> Vec<(Identity, Vec<String>)> {
    candidates
        .into_iter()
        .filter_map(|pid| {
            proc::pinned(pid, |pid| {
                proc::cmdline(pid).ok().filter(|argv| matches(argv))
            })
        })
        .collect()
}
