//! The stop-ticket store: `stopping/<ticket>.json`, one per process to stop, deleted only when the process is
//! confirmed gone.

use std::path::PathBuf;

use anyhow::Context;

use crate::events::{Event, EventLog};
use crate::record::{self, Parsed, StopTicket};
use crate::slot::Unreadable;
use crate::state::{self, STOPPING, StateRoot};

/// The tickets of one state root.
#[derive(Clone, Debug)]
pub struct Tickets {
    root: StateRoot,
}

impl Tickets {
    pub fn new(root: &StateRoot) -> Self {
        Tickets { root: root.clone() }
    }

    pub fn path_of(&self, ticket: &StopTicket) -> PathBuf {
        self.root
            .join(STOPPING)
            .join(StopTicket::file_name(&ticket.identity))
    }

    /// Files a ticket. When one already exists for the process, that one stands (its progress is kept).
    pub fn file(&self, ticket: &StopTicket) -> anyhow::Result<()> {
        let path = self.path_of(ticket);
        if path.exists() {
            return Ok(());
        }
        self.root.write_atomic(&path, &record::to_bytes(ticket))
    }

    pub fn save(&self, ticket: &StopTicket) -> anyhow::Result<()> {
        self.root
            .write_atomic(&self.path_of(ticket), &record::to_bytes(ticket))
    }

    /// Deletes a ticket whose process is confirmed gone.
    pub fn remove(&self, ticket: &StopTicket) -> anyhow::Result<()> {
        let path = self.path_of(ticket);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(err).with_context(|| format!("removing {}", path.display())),
        }
    }

    /// Every ticket file and what it holds, changing nothing (for `status`, `doctor` and dry runs).
    pub fn scan(&self) -> Vec<(PathBuf, TicketView)> {
        let dir = self.root.join(STOPPING);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| {
                path.extension().is_some_and(|ext| ext == "json")
                    && !path
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        paths.sort();
        paths
            .into_iter()
            .filter_map(|path| {
                let view = match self.root.read_file(&path) {
                    Ok(None) => return None,
                    Ok(Some(bytes)) => match record::parse::<StopTicket>(&bytes, &path) {
                        Ok(Parsed::Record(ticket)) => TicketView::Ticket(ticket),
                        Ok(Parsed::Corrupt(why)) => TicketView::Unreadable(Unreadable {
                            why: format!("corrupt: {why}"),
                            corrupt: true,
                        }),
                        Err(err) => TicketView::Unreadable(Unreadable {
                            why: format!("{err:#}"),
                            corrupt: false,
                        }),
                    },
                    Err(err) => TicketView::Unreadable(Unreadable {
                        why: format!("{err:#}"),
                        corrupt: false,
                    }),
                };
                Some((path, view))
            })
            .collect()
    }

    /// Every readable pending ticket, changing nothing.
    pub fn readable(&self) -> Vec<StopTicket> {
        self.scan()
            .into_iter()
            .filter_map(|(_, view)| match view {
                TicketView::Ticket(ticket) => Some(ticket),
                TicketView::Unreadable(_) => None,
            })
            .collect()
    }

    /// Every pending ticket, for a run that drives them. A corrupt one is moved aside and reported in the log; one
    /// that is refused as it stands is reported and left.
    pub fn pending(&self, log: &EventLog) -> Vec<StopTicket> {
        self.scan()
            .into_iter()
            .filter_map(|(path, view)| match view {
                TicketView::Ticket(ticket) => Some(ticket),
                TicketView::Unreadable(unreadable) if unreadable.corrupt => {
                    let detail = match state::quarantine(&path) {
                        Ok(moved) => {
                            format!("{}; moved aside to {}", unreadable.why, moved.display())
                        }
                        Err(err) => format!("{}: {err:#}", unreadable.why),
                    };
                    log.record(&Event::new("corrupt", "moved_aside").detail(detail));
                    None
                }
                TicketView::Unreadable(unreadable) => {
                    log.record(&Event::new("refuse", "refused").detail(unreadable.why));
                    None
                }
            })
            .collect()
    }
}

/// What a ticket file holds.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum TicketView {
    Ticket(StopTicket),
    Unreadable(Unreadable),
}
