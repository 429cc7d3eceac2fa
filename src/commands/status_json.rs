//! `status --json` for a state root of any size: the slots are read and written out one at a time, so memory
//! stays flat however many workspaces there are (a root of 100,000 slots prints in a few MiB). The shape is the
//! one `status::Snapshot` serialises to.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::io::Write;

use serde::Serialize;
use serde::ser::{SerializeSeq, Serializer};

use crate::commands::status::{Member, SlotStatus, TicketStatus, Unreadable};
use crate::model::record::SessionRecord;
use crate::observe::proc;
use crate::store::Store;
use crate::store::slot::{Slot, SlotView};

/// A sequence serialised as it is produced.
struct Streamed<I>(RefCell<Option<I>>);

impl<I, T> Serialize for Streamed<I>
where
    I: Iterator<Item = T>,
    T: Serialize,
{
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(None)?;
        if let Some(items) = self.0.borrow_mut().take() {
            for item in items {
                seq.serialize_element(&item)?;
            }
        }
        seq.end()
    }
}

/// A list filled while an earlier field streams, serialised once it is complete.
struct Gathered<'a, T>(&'a RefCell<Vec<T>>);

impl<T: Serialize> Serialize for Gathered<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.borrow().serialize(serializer)
    }
}

/// Session records as every command's JSON names a session: `session` (the records on disk keep `session_id`).
struct Sessions<'a>(&'a [SessionRecord]);

impl Serialize for Sessions<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for record in self.0 {
            let value = serde_json::to_value(record).map_err(serde::ser::Error::custom)?;
            let renamed: serde_json::Map<String, serde_json::Value> = value
                .as_object()
                .into_iter()
                .flatten()
                .map(|(key, value)| {
                    let key = if key == "session_id" { "session" } else { key };
                    (key.to_owned(), value.clone())
                })
                .collect();
            seq.serialize_element(&renamed)?;
        }
        seq.end()
    }
}

#[derive(Serialize)]
#[serde(bound(serialize = "Streamed<I>: Serialize, C: Serialize"))]
struct Document<'a, I, C> {
    state_dir: String,
    slots: Streamed<I>,
    unreadable: Gathered<'a, Unreadable>,
    tickets: &'a [TicketStatus],
    sessions: Sessions<'a>,
    leftovers: &'a [crate::commands::leftovers::SessionView],
    reported_leftovers: &'a [crate::commands::status::ReportedLeftover],
    finisher_running: bool,
    codex_plugin: C,
}

/// What the printed document says that decides the exit code.
pub(crate) struct Printed {
    pub stuck: bool,
    pub unreadable: bool,
}

/// Writes the whole `status --json` document to stdout. `tickets`, `sessions` and the leading unreadable entries
/// (tickets, sessions) are small and come from the caller; slots stream.
pub(crate) fn print(
    store: &Store,
    tickets: &[TicketStatus],
    (sessions, leftovers, reported_leftovers): (
        &[SessionRecord],
        &[crate::commands::leftovers::SessionView],
        &[crate::commands::status::ReportedLeftover],
    ),
    unreadable: Vec<Unreadable>,
    (finisher_running, codex_plugin): (bool, impl Serialize),
) -> anyhow::Result<Printed> {
    // First pass: the live leaders, so that one look at the process table finds every broker's members.
    let liveness = proc::Liveness::default();
    let leaders: HashSet<i32> = Slot::iter(&store.root)
        .filter_map(|slot| match slot.view(&store.root) {
            SlotView::Broker(record) if liveness.is_alive(&record.identity) => {
                Some(record.identity.pid)
            }
            _ => None,
        })
        .collect();
    let processes = proc::observe(&leaders, crate::model::deadline::Deadline::far()).0;
    let gathered = RefCell::new(unreadable);
    // A live broker named by many slots is described once (its members' argv and memory are read once).
    let mut described: HashMap<(i32, u64, Option<String>), Vec<Member>> = HashMap::new();
    let slots = Slot::iter(&store.root).filter_map(|slot| match slot.view(&store.root) {
        SlotView::Empty => None,
        SlotView::Broker(record) => {
            let alive = liveness.is_alive(&record.identity);
            let key = (
                record.identity.pid,
                record.identity.start_ticks,
                record.lineage.clone(),
            );
            let describe = || {
                super::status::members_of(
                    (&processes, &liveness),
                    &record.identity,
                    record.lineage.as_deref(),
                    &[],
                )
            };
            // Only live brokers are remembered: the memory stays flat with the number of dead records.
            let members = if alive {
                described.entry(key).or_insert_with(describe).clone()
            } else {
                describe()
            };
            Some(SlotStatus {
                slot: slot.label(),
                alive,
                members,
                record,
            })
        }
        SlotView::Unreadable(problem) => {
            gathered.borrow_mut().push(Unreadable {
                slot: slot.label(),
                problem: problem.why,
            });
            None
        }
    });
    let document = Document {
        state_dir: store.root.path().to_string_lossy().into_owned(),
        slots: Streamed(RefCell::new(Some(slots))),
        unreadable: Gathered(&gathered),
        tickets,
        sessions: Sessions(sessions),
        leftovers,
        reported_leftovers,
        finisher_running,
        codex_plugin,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    serde_json::to_writer_pretty(&mut out, &document)?;
    writeln!(out)?;
    out.flush()?;
    Ok(Printed {
        stuck: tickets.iter().any(|ticket| ticket.stuck),
        unreadable: !gathered.borrow().is_empty(),
    })
}
