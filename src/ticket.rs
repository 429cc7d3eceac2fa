//! The stop-ticket store: `stopping/<ticket>.json`, one per process to stop, deleted only when the process is
//! confirmed gone. A ticket is driven by one process at a time: the driver holds `stopping/<ticket>.lock` (see
//! `claim`), others skip it.

use std::path::PathBuf;

use anyhow::Context;

use crate::clock;
use crate::error::bad_input;
use crate::events::{Event, EventLog};
use crate::lock::{self, LockGuard};
use crate::record::{self, Parsed, StopTicket};
use crate::state::{STOPPING, StateRoot};

/// Proof that this process drives a ticket; the lock is released when it is dropped.
#[derive(Debug)]
pub struct TicketLock(LockGuard);

/// What claiming a ticket found. (One value lives per claim attempt: its size does not matter.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Claim {
    /// Ours to drive, as it is on disk.
    Mine(StopTicket, TicketLock),
    /// Another process drives it right now.
    Busy,
    /// Gone: another driver finished it.
    Finished,
}

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

    fn lock_path_of(&self, ticket: &StopTicket) -> PathBuf {
        self.path_of(ticket).with_extension("lock")
    }

    /// Files a ticket. When one already exists for the process, that one stands (its progress is kept): the file
    /// is created, never replaced, so a driver's progress is never overwritten.
    pub fn file(&self, ticket: &StopTicket) -> anyhow::Result<()> {
        self.root
            .create_atomic(&self.path_of(ticket), &record::to_bytes(ticket))
            .map(drop)
    }

    /// Claims `ticket` for driving: its lock taken without waiting, and the ticket as it is on disk now (another
    /// driver may have made progress since it was listed). A ticket gone from disk was finished by another driver.
    pub fn claim(&self, ticket: &StopTicket) -> anyhow::Result<Claim> {
        let Some(lock) = lock::try_lock(&self.root, &self.lock_path_of(ticket))? else {
            return Ok(Claim::Busy);
        };
        let path = self.path_of(ticket);
        let Some(bytes) = self.root.read_file(&path)? else {
            lock.remove()?;
            return Ok(Claim::Finished);
        };
        match record::parse::<StopTicket>(&bytes, &path)? {
            Parsed::Record(current) => Ok(Claim::Mine(current, TicketLock(lock))),
            Parsed::Corrupt(why) => Err(bad_input(format!("{}: {why}", path.display()))),
        }
    }

    /// Writes a claimed ticket's progress.
    pub fn save(&self, ticket: &StopTicket, _claim: &TicketLock) -> anyhow::Result<()> {
        self.root
            .write_atomic(&self.path_of(ticket), &record::to_bytes(ticket))
    }

    /// Deletes a claimed ticket whose process is confirmed gone, then its lock (still held, so a process waiting
    /// for it starts over and finds the ticket gone).
    pub fn remove(&self, ticket: &StopTicket, claim: &TicketLock) -> anyhow::Result<()> {
        let path = self.path_of(ticket);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err).with_context(|| format!("removing {}", path.display())),
        }
        claim.0.remove()
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
