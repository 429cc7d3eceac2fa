//! The one lock primitive: an flock on a lock file below the state root, waited for no later than a `Deadline`.
//!
//! Slots, session records, stop tickets, the finisher and log rotation all lock through `lock`. Lock files may be
//! unlinked by whoever holds them (an emptied slot, a finished ticket), so a lock only counts when it is on the file
//! the path still names; otherwise the wait starts over on the new file.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::model::deadline::Deadline;
use crate::store::root::StateRoot;

/// The longest pause between two tries: short, so that a released lock is taken promptly.
const MAX_PAUSE: Duration = Duration::from_millis(10);

/// A held flock; released when dropped.
#[derive(Debug)]
pub(crate) struct LockGuard {
    /// Held open for the flock on it.
    _file: File,
    path: PathBuf,
}

impl LockGuard {
    #[cfg(test)]
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Unlinks the lock file while still holding it (the thing it guarded is gone): whoever waits on it finds the
    /// path no longer names it and starts over. The lock itself is held until the guard is dropped.
    pub(crate) fn remove(&self) -> anyhow::Result<()> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(err).with_context(|| format!("removing {}", self.path.display())),
        }
    }
}

/// The lock stayed held by another process until the deadline.
#[derive(Debug)]
pub(crate) struct LockBusy {
    pub path: PathBuf,
    pub waited: Duration,
}

impl std::fmt::Display for LockBusy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "busy: {} stayed locked for {}; another session-reaper holds it",
            self.path.display(),
            humantime::format_duration(Duration::from_millis(
                u64::try_from(self.waited.as_millis()).unwrap_or(u64::MAX)
            ))
        )
    }
}

impl std::error::Error for LockBusy {}

/// Takes the flock of `path` (created 0600 if missing), trying until `deadline`; an expired deadline tries once.
/// Fails with `LockBusy` when it stays held.
pub(crate) fn lock(root: &StateRoot, path: &Path, deadline: Deadline) -> anyhow::Result<LockGuard> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        let file = root.open_lock_file(path)?;
        match file.try_lock() {
            Ok(()) if names(path, &file) => {
                return Ok(LockGuard {
                    _file: file,
                    path: path.to_path_buf(),
                });
            }
            // Locked, but the file was unlinked (or replaced) between our open and our lock: it serialises nothing.
            Ok(()) => continue,
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(err)) => {
                return Err(err).with_context(|| format!("locking {}", path.display()));
            }
        }
        if deadline.expired() {
            return Err(anyhow::Error::new(LockBusy {
                path: path.to_path_buf(),
                waited: started.elapsed(),
            }));
        }
        deadline.sleep(pause);
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// Takes the lock only if it is free now; `None` when another process holds it.
pub(crate) fn try_lock(root: &StateRoot, path: &Path) -> anyhow::Result<Option<LockGuard>> {
    match lock(root, path, Deadline::now()) {
        Ok(guard) => Ok(Some(guard)),
        Err(err) if err.is::<LockBusy>() => Ok(None),
        Err(err) => Err(err),
    }
}

/// True while some process holds the lock of `path`. Creates nothing (for read-only commands).
pub(crate) fn is_held(root: &StateRoot, path: &Path) -> bool {
    root.open_existing_lock_file(path)
        .ok()
        .flatten()
        .is_some_and(|file| file.try_lock().is_err())
}

/// True when `path` still names the very file `file` is open on.
fn names(path: &Path, file: &File) -> bool {
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(held), Ok(named)) => held.dev() == named.dev() && held.ino() == named.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> (tempfile::TempDir, StateRoot) {
        let temp = tempfile::tempdir().unwrap();
        let root = StateRoot::open(&temp.path().join("state")).unwrap();
        (temp, root)
    }

    #[test]
    fn a_held_lock_is_busy_until_released() {
        let (_temp, root) = root();
        let path = root.join("x.lock");
        let held = lock(&root, &path, Deadline::now()).unwrap();
        assert!(try_lock(&root, &path).unwrap().is_none());
        assert!(is_held(&root, &path));
        let started = Instant::now();
        let err = lock(&root, &path, Deadline::after(Duration::from_millis(30))).unwrap_err();
        assert!(err.is::<LockBusy>() && started.elapsed() >= Duration::from_millis(30));
        assert!(err.to_string().contains("x.lock"), "{err}");
        drop(held);
        assert!(try_lock(&root, &path).unwrap().is_some());
        assert!(!is_held(&root, &path));
    }

    #[test]
    fn a_removed_lock_file_is_not_a_lock() {
        let (_temp, root) = root();
        let path = root.join("x.lock");
        let first = lock(&root, &path, Deadline::now()).unwrap();
        // A waiter that opened the old file before it was unlinked must not count the lock it then gets.
        let stale = root.open_lock_file(&path).unwrap();
        first.remove().unwrap();
        drop(first);
        assert!(stale.try_lock().is_ok() && !names(&path, &stale));
        let second = lock(&root, &path, Deadline::now()).unwrap();
        assert!(second.path().exists());
        assert!(try_lock(&root, &path).unwrap().is_none());
    }

    #[test]
    fn is_held_creates_nothing() {
        let (_temp, root) = root();
        let path = root.join("none.lock");
        assert!(!is_held(&root, &path));
        assert!(!path.exists());
    }
}
