//! `events.jsonl`: the append-only audit log. One JSON object a line, written with one `write` on an `O_APPEND`
//! file; rotated to `events.jsonl.1` past 1 MiB.

use std::io::Write;
use std::path::PathBuf;

use crate::store::lock;
use crate::store::root::{EVENTS, StateRoot};

const ROTATE_AT: u64 = 1024 * 1024;
/// The largest log file `log` reads: far above what rotation lets one grow to.
const READ_LIMIT: u64 = 64 * ROTATE_AT;

pub(crate) use crate::model::event::Event;
pub(crate) use crate::model::reason::Reason;

/// The audit log of one state root.
#[derive(Clone, Debug)]
pub(crate) struct EventLog {
    root: StateRoot,
}

impl EventLog {
    pub(crate) fn new(root: &StateRoot) -> Self {
        EventLog { root: root.clone() }
    }

    pub(crate) fn path(&self) -> PathBuf {
        self.root.join(EVENTS)
    }

    pub(crate) fn rotated_path(&self) -> PathBuf {
        self.root.join(format!("{EVENTS}.1"))
    }

    /// Appends one event. Failures are returned; callers that must not fail (hooks) report them on stderr.
    pub(crate) fn append(&self, event: &Event) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(event)?;
        line.push(b'\n');
        let mut file = self.root.open_append(&self.path())?;
        file.write_all(&line)?;
        if file.metadata().map_or(0, |meta| meta.len()) > ROTATE_AT {
            self.rotate();
        }
        Ok(())
    }

    /// Appends, and reports a failure to stderr instead of failing: the log must never stop an action.
    pub(crate) fn record(&self, event: &Event) {
        if let Err(err) = self.append(event) {
            // Never `eprintln!`: a closed stderr must not turn a logging failure into a panic.
            let _ = writeln!(
                std::io::stderr(),
                "session-reaper: cannot write {}: {err:#}",
                self.path().display()
            );
        }
    }

    /// Rotates the log when it has grown past 1 MiB (a sweep's cleanup); true if it did.
    pub(crate) fn rotate_if_oversized(&self) -> bool {
        let big = std::fs::metadata(self.path()).is_ok_and(|meta| meta.len() > ROTATE_AT);
        if big {
            self.rotate();
        }
        big
    }

    /// Moves the log to `events.jsonl.1` (one old file kept). A lock makes concurrent writers rotate once.
    fn rotate(&self) {
        let Ok(Some(_lock)) = lock::try_lock(&self.root, &self.root.join("events.lock")) else {
            return;
        };
        let still_big = std::fs::metadata(self.path()).is_ok_and(|meta| meta.len() > ROTATE_AT);
        if still_big {
            let _ = std::fs::rename(self.path(), self.rotated_path());
        }
    }

    /// Every event still kept, oldest first; unreadable lines are skipped.
    pub(crate) fn read_all(&self) -> Vec<Event> {
        [self.rotated_path(), self.path()]
            .iter()
            .filter_map(|path| self.root.read_file_limited(path, READ_LIMIT).ok().flatten())
            .flat_map(|bytes| {
                String::from_utf8_lossy(&bytes)
                    .lines()
                    .filter_map(|line| serde_json::from_str(line).ok())
                    .collect::<Vec<Event>>()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_and_rotates() {
        let temp = tempfile::tempdir().unwrap();
        let root = StateRoot::open(temp.path()).unwrap();
        let log = EventLog::new(&root);
        let detail = "x".repeat(10_000);
        for _ in 0..120 {
            log.append(
                &Event::new("stop", "stopped")
                    .reason(&Reason::Manual)
                    .detail(detail.clone()),
            )
            .unwrap();
        }
        assert!(log.rotated_path().exists());
        assert!(std::fs::metadata(log.path()).map_or(0, |m| m.len()) < ROTATE_AT);
        let events = log.read_all();
        assert!(
            events.len() >= 100 && events.iter().all(|e| e.reason.as_deref() == Some("manual"))
        );
    }

    #[test]
    fn reasons_round_trip() {
        for reason in Reason::ALL {
            assert_eq!(Reason::parse(reason.as_str()), Some(reason));
            assert_eq!(serde_json::to_value(reason).unwrap(), reason.as_str());
        }
    }
}
