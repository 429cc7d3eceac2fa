//! The stop-ticket store: `stopping/<ticket>.json`, one per process to stop, deleted only when the process is
//! confirmed gone.

use std::path::PathBuf;

use anyhow::Context;

use crate::clock;
use crate::events::{Event, EventLog};
use crate::record::{self, Parsed, StopTicket};
use crate::state::{STOPPING, StateRoot};

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

    /// Every pending ticket. A corrupt one is moved aside and reported in the log.
    pub fn pending(&self, log: &EventLog) -> Vec<StopTicket> {
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
                let bytes = self.root.read_file(&path).ok()??;
                match record::parse::<StopTicket>(&bytes, &path) {
                    Ok(Parsed::Record(ticket)) => Some(ticket),
                    Ok(Parsed::Corrupt(why)) => {
                        let moved = path.with_extension(format!(
                            "json.corrupt-{}",
                            clock::now_rfc3339().replace(':', "")
                        ));
                        let _ = std::fs::rename(&path, &moved);
                        log.record(
                            &Event::new("corrupt", "moved_aside")
                                .detail(format!("{}: {why}", moved.display())),
                        );
                        None
                    }
                    Err(err) => {
                        log.record(&Event::new("refuse", "refused").detail(format!("{err:#}")));
                        None
                    }
                }
            })
            .collect()
    }
}
