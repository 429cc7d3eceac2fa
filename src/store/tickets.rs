//! The stop-ticket store: `stopping/<ticket>.json`, one per process to stop, deleted only when the process is
//! confirmed gone. A ticket is driven by one process at a time: the driver holds `stopping/<ticket>.lock` (see
//! `claim`), others skip it.

use std::path::PathBuf;

use anyhow::Context;

use crate::error::bad_input;
use crate::model::record::{self, Parsed, StopTicket};
use crate::store::events::Event;
use crate::store::lock::{self, LockGuard};
use crate::store::root::{self, STOPPING, StateRoot};
use crate::store::slot::Unreadable;

/// Proof that this process drives a ticket; the lock is released when it is dropped.
#[derive(Debug)]
pub(crate) struct TicketLock(LockGuard);

/// What claiming a ticket found. (One value lives per claim attempt: its size does not matter.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Claim {
    /// Ours to drive, as it is on disk.
    Mine(StopTicket, TicketLock),
    /// Another process drives it right now.
    Busy,
    /// Gone: another driver finished it.
    Finished,
}

/// The tickets of one state root.
#[derive(Clone, Debug)]
pub(crate) struct Tickets {
    root: StateRoot,
}

impl Tickets {
    pub(crate) fn new(root: &StateRoot) -> Self {
        Tickets { root: root.clone() }
    }

    pub(crate) fn path_of(&self, ticket: &StopTicket) -> PathBuf {
        self.root
            .join(STOPPING)
            .join(StopTicket::file_name(&ticket.identity))
    }

    fn lock_path_of(&self, ticket: &StopTicket) -> PathBuf {
        self.path_of(ticket).with_extension("lock")
    }

    /// Files a ticket. When one already exists for the process, that one stands (its progress is kept): the file
    /// is created, never replaced, so a driver's progress is never overwritten.
    pub(crate) fn file(&self, ticket: &StopTicket) -> anyhow::Result<()> {
        self.root
            .create_atomic(&self.path_of(ticket), &record::to_bytes(ticket))
            .map(drop)
    }

    /// Claims `ticket` for driving: its lock taken without waiting, and the ticket as it is on disk now (another
    /// driver may have made progress since it was listed). A ticket gone from disk was finished by another driver.
    pub(crate) fn claim(&self, ticket: &StopTicket) -> anyhow::Result<Claim> {
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
    pub(crate) fn save(&self, ticket: &StopTicket, _claim: &TicketLock) -> anyhow::Result<()> {
        self.root
            .write_atomic(&self.path_of(ticket), &record::to_bytes(ticket))
    }

    /// Deletes a claimed ticket whose process is confirmed gone, then its lock (still held, so a process waiting
    /// for it starts over and finds the ticket gone).
    pub(crate) fn remove(&self, ticket: &StopTicket, claim: &TicketLock) -> anyhow::Result<()> {
        let path = self.path_of(ticket);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err).with_context(|| format!("removing {}", path.display())),
        }
        claim.0.remove()
    }

    /// Every ticket file and what it holds, changing nothing (for `status`, `doctor` and dry runs).
    pub(crate) fn scan(&self) -> Vec<(PathBuf, TicketView)> {
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
    pub(crate) fn readable(&self) -> Vec<StopTicket> {
        self.scan()
            .into_iter()
            .filter_map(|(_, view)| match view {
                TicketView::Ticket(ticket) => Some(ticket),
                TicketView::Unreadable(_) => None,
            })
            .collect()
    }

    /// The ticket files that exist but are not read as they stand and are not corrupt (another user's, a symlink,
    /// too large): reported by `doctor` and `sweep`, never acted on nor removed.
    pub(crate) fn refused(&self) -> Vec<(PathBuf, String)> {
        self.scan()
            .into_iter()
            .filter_map(|(path, view)| match view {
                TicketView::Unreadable(unreadable) if !unreadable.corrupt => {
                    Some((path, unreadable.why))
                }
                _ => None,
            })
            .collect()
    }

    /// Removes the locks of tickets that are gone (a driver killed between the two removals): each only when its
    /// lock can be taken and no ticket of its name exists under it. Returns their paths; `dry_run` removes none.
    pub(crate) fn remove_orphan_locks(&self, dry_run: bool) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(self.root.join(STOPPING)) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for path in entries.filter_map(Result::ok).map(|entry| entry.path()) {
            if path.extension().is_none_or(|ext| ext != "lock")
                || path.with_extension("json").exists()
            {
                continue;
            }
            if dry_run {
                removed.push(path);
                continue;
            }
            if let Ok(Some(lock)) = lock::try_lock(&self.root, &path)
                && !path.with_extension("json").exists()
                && lock.remove().is_ok()
            {
                removed.push(path);
            }
        }
        removed
    }

    /// Every pending ticket, for a run that drives them, and the events of what else was found: a corrupt one is
    /// moved aside, one that is refused as it stands is left (`act::executor::pending` logs them).
    pub(crate) fn pending(&self) -> (Vec<StopTicket>, Vec<Event>) {
        let host = root::host_name();
        let mut found = Vec::new();
        let tickets = self
            .scan()
            .into_iter()
            .filter_map(|(path, view)| match view {
                TicketView::Ticket(ticket) => self.at_its_name(&path, ticket, &host),
                TicketView::Unreadable(unreadable) if unreadable.corrupt => {
                    let detail = match root::quarantine(&path) {
                        Ok(moved) => {
                            format!("{}; moved aside to {}", unreadable.why, moved.display())
                        }
                        Err(err) => format!("{}: {err:#}", unreadable.why),
                    };
                    found.push(Event::new("corrupt", "moved_aside").detail(detail));
                    None
                }
                TicketView::Unreadable(unreadable) => {
                    found.push(Event::new("refuse", "refused").detail(unreadable.why));
                    None
                }
            })
            .collect();
        (tickets, found)
    }
}

impl Tickets {
    /// A ticket is claimed, saved and removed by its identity's file name: one of this host's filed under another
    /// name (by hand, or by an older build) is moved there first, without replacing a ticket already at that name.
    fn at_its_name(
        &self,
        path: &std::path::Path,
        ticket: StopTicket,
        host: &str,
    ) -> Option<StopTicket> {
        let canonical = self.path_of(&ticket);
        if path != canonical && !crate::model::record::is_other_host(&ticket.host, host) {
            match std::fs::hard_link(path, &canonical) {
                Ok(()) => std::fs::remove_file(path).ok()?,
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(_) => return None,
            }
        }
        Some(ticket)
    }
}

/// What a ticket file holds.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum TicketView {
    Ticket(StopTicket),
    Unreadable(Unreadable),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::record::Identity;

    fn tickets() -> (tempfile::TempDir, Tickets, StopTicket) {
        let temp = tempfile::tempdir().unwrap();
        let root = StateRoot::open(&temp.path().join("state")).unwrap();
        let identity = Identity {
            boot_id: "b".into(),
            pid_ns: None,
            pid: 4242,
            start_ticks: 7,
            uid: 0,
        };
        let stamp = (crate::model::clock::now_rfc3339(), root::host_name());
        let ticket = StopTicket::new(
            identity,
            None,
            "manual",
            100,
            "test".into(),
            (&stamp.0, &stamp.1),
        );
        (temp, Tickets::new(&root), ticket)
    }

    #[test]
    fn one_claim_at_a_time_and_a_finished_ticket_stays_finished() {
        let (_temp, tickets, ticket) = tickets();
        tickets.file(&ticket).unwrap();
        let Claim::Mine(mut mine, lock) = tickets.claim(&ticket).unwrap() else {
            panic!("a filed ticket is ours to claim");
        };
        assert!(matches!(tickets.claim(&ticket).unwrap(), Claim::Busy));
        mine.attempts = 2;
        tickets.save(&mine, &lock).unwrap();
        // Filing again keeps the driver's progress.
        tickets.file(&ticket).unwrap();
        assert_eq!(tickets.readable()[0].attempts, 2);
        tickets.remove(&mine, &lock).unwrap();
        drop(lock);
        assert!(matches!(tickets.claim(&ticket).unwrap(), Claim::Finished));
        assert!(
            !tickets.lock_path_of(&ticket).exists(),
            "no lock left behind"
        );
    }

    #[test]
    fn a_claim_reads_the_progress_on_disk() {
        let (_temp, tickets, ticket) = tickets();
        let mut progressed = ticket.clone();
        progressed.attempts = 1;
        tickets.file(&progressed).unwrap();
        let Claim::Mine(current, _lock) = tickets.claim(&ticket).unwrap() else {
            panic!("claimable");
        };
        assert_eq!(current.attempts, 1);
    }
}
