//! One invocation's memory of what processes said about themselves: while a `World` is entered, each process's
//! `/proc/<pid>/{cmdline,environ,statm}` is opened at most once, however many readers (discovery, the stopper's
//! member rescans, the resume-orphan scan, the adapters) ask for it.
//!
//! Keyed by identity (pid and start ticks): bytes are stored under the start ticks a `stat` showed *before* they
//! were read, and are handed out again only once a `stat` read *after* them showed the same start ticks (pinned: the
//! process did not change in between). `stat` itself is never remembered: it is how a rescan sees liveness and new
//! processes. A process-wide memo rather than a value passed down (see `docs/layout.md`): the readers sit in
//! twenty call sites across every layer, and the memo's lifetime is an explicit scope that the commands open.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// A file of `/proc/<pid>` that the memo keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ProcFile {
    Cmdline,
    Environ,
    Statm,
}

impl ProcFile {
    const ALL: [ProcFile; 3] = [ProcFile::Cmdline, ProcFile::Environ, ProcFile::Statm];

    pub(crate) fn name(self) -> &'static str {
        match self {
            ProcFile::Cmdline => "cmdline",
            ProcFile::Environ => "environ",
            ProcFile::Statm => "statm",
        }
    }
}

/// What one read of a file gave: its bytes, or the error (another user's process, a kernel thread's missing
/// environment), which holds as long as the process does: once confirmed like bytes, it is given again.
type Bytes = Result<Arc<[u8]>, io::ErrorKind>;

struct Remembered {
    /// The start ticks a `stat` before the read showed; `None` for a read no `stat` preceded (a pass over every
    /// argv, which stays one open a process), which a later `stat` gives to the process that had started before the
    /// read began (a pid is not reused while its process lives).
    start_ticks: Option<u64>,
    /// The boot clock, in clock ticks (floored), when the read began.
    read_at: u64,
    read: Bytes,
    /// A `stat` after the read showed the same start ticks: the bytes are this process's.
    confirmed: bool,
}

struct Memo {
    /// How many `World`s are entered (nested scopes share one memory).
    entered: usize,
    files: Option<HashMap<(i32, ProcFile), Remembered>>,
}

static MEMO: Mutex<Memo> = Mutex::new(Memo {
    entered: 0,
    files: None,
});

fn memo() -> MutexGuard<'static, Memo> {
    MEMO.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The scope of one invocation's (or one pass's) observation: while it lives, `/proc` files are remembered; when
/// the last one is dropped, everything is forgotten. A long-lived process (the finisher) enters one per pass, so
/// that a process that exec'd since is read anew.
#[must_use = "the memory lasts as long as the World"]
pub(crate) struct World(());

impl World {
    pub(crate) fn enter() -> World {
        let mut memo = memo();
        memo.entered += 1;
        memo.files.get_or_insert_with(HashMap::new);
        World(())
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let mut memo = memo();
        memo.entered = memo.entered.saturating_sub(1);
        if memo.entered == 0 {
            memo.files = None;
        }
    }
}

/// Whether a `World` is entered (reads are remembered).
pub(crate) fn remembering() -> bool {
    memo().files.is_some()
}

/// What a `stat` of `pid` just showed (`None`: it is gone): confirms what was read of it under the same start
/// ticks, forgets what was read of an earlier process at that pid.
pub(crate) fn seen(pid: i32, start_ticks: Option<u64>) {
    let mut memo = memo();
    let Some(files) = memo.files.as_mut() else {
        return;
    };
    for file in ProcFile::ALL {
        match files.get_mut(&(pid, file)) {
            Some(kept) if start_ticks.is_some_and(|start| kept.belongs_to(start)) => {
                kept.start_ticks = start_ticks;
                kept.confirmed = true;
            }
            Some(_) => {
                files.remove(&(pid, file));
            }
            None => {}
        }
    }
}

/// `file` of the process `pid` whose start ticks a `stat` read before this call showed: from memory when a World
/// is entered and it was read already (and confirmed since), else through `read` (remembered, to be confirmed by
/// the next `stat`). A remembered read not yet confirmed is confirmed by one `stat` now — never by opening the file
/// again.
pub(crate) fn file(
    pid: i32,
    start_ticks: u64,
    file: ProcFile,
    read: impl FnOnce() -> io::Result<Vec<u8>>,
    stat_now: impl FnOnce() -> Option<u64>,
) -> io::Result<Arc<[u8]>> {
    if !remembering() {
        return read().map(Arc::from);
    }
    let unconfirmed = match recall(pid, start_ticks, file) {
        Recall::Confirmed(read) => return read.map_err(io::Error::from),
        Recall::Unconfirmed => true,
        Recall::Unknown => false,
    };
    if unconfirmed {
        seen(pid, stat_now());
        return match recall(pid, start_ticks, file) {
            Recall::Confirmed(read) => read.map_err(io::Error::from),
            // Gone, or another process now: what was read is no longer anyone's.
            _ => Err(io::Error::from(io::ErrorKind::NotFound)),
        };
    }
    remember(pid, file, Some(start_ticks), 0, read)
}

/// Reads `file` of `pid` and remembers what it gave (bytes or error), to be confirmed by the next `stat`.
fn remember(
    pid: i32,
    file: ProcFile,
    start_ticks: Option<u64>,
    read_at: u64,
    read: impl FnOnce() -> io::Result<Vec<u8>>,
) -> io::Result<Arc<[u8]>> {
    let fresh = read();
    let kept: Bytes = match &fresh {
        Ok(bytes) => Ok(Arc::from(bytes.as_slice())),
        Err(err) => Err(err.kind()),
    };
    if let Some(files) = memo().files.as_mut() {
        files.insert(
            (pid, file),
            Remembered {
                start_ticks,
                read_at,
                read: kept.clone(),
                confirmed: false,
            },
        );
    }
    kept.map_err(|kind| fresh.err().unwrap_or_else(|| io::Error::from(kind)))
}

enum Recall {
    Confirmed(Bytes),
    Unconfirmed,
    Unknown,
}

fn recall(pid: i32, start_ticks: u64, file: ProcFile) -> Recall {
    let memo = memo();
    match memo
        .files
        .as_ref()
        .and_then(|files| files.get(&(pid, file)))
    {
        Some(kept) if kept.start_ticks == Some(start_ticks) && kept.confirmed => {
            Recall::Confirmed(kept.read.clone())
        }
        Some(kept) if kept.belongs_to(start_ticks) => Recall::Unconfirmed,
        _ => Recall::Unknown,
    }
}

impl Remembered {
    /// Whether what was read is the process that started at `start_ticks`, as far as the read's key says (a
    /// `stat` after the read confirms it).
    fn belongs_to(&self, start_ticks: u64) -> bool {
        match self.start_ticks {
            Some(start) => start == start_ticks,
            None => start_ticks < self.read_at,
        }
    }
}

/// `file` of `pid` read with no `stat` before it: a pass over every process's argv, which must stay one open a
/// process. Remembered for the process that had started before the read began: the next reader's `stat` says which
/// that is (it confirms it, or forgets it for a process started since). `None` when this pid's file is remembered
/// already: the caller reads it pinned (from memory).
// The portable backend lists argvs through `sysinfo`, not one read a process.
#[cfg_attr(
    any(not(target_os = "linux"), feature = "portable-proc"),
    allow(dead_code)
)]
pub(crate) fn unpinned(
    pid: i32,
    file: ProcFile,
    read: impl FnOnce() -> io::Result<Vec<u8>>,
) -> Option<io::Result<Arc<[u8]>>> {
    if !remembering() {
        return Some(read().map(Arc::from));
    }
    if memo()
        .files
        .as_ref()
        .is_some_and(|files| files.contains_key(&(pid, file)))
    {
        return None;
    }
    Some(remember(pid, file, None, boot_ticks(), read))
}

/// The boot clock now in clock ticks, floored: the unit of a process's start time in `/proc/<pid>/stat` (both
/// seen from this time namespace).
#[cfg_attr(
    any(not(target_os = "linux"), feature = "portable-proc"),
    allow(dead_code)
)]
fn boot_ticks() -> u64 {
    crate::model::clock::boot_millis() * rustix::param::clock_ticks_per_second() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counted(reads: &std::cell::Cell<usize>, bytes: &[u8]) -> Vec<u8> {
        reads.set(reads.get() + 1);
        bytes.to_vec()
    }

    /// The memo is process-wide: one test (the test threads would share it), on pids no process has (negative).
    #[test]
    fn a_file_is_read_once_per_identity_and_only_while_a_world_is_entered() {
        let reads = std::cell::Cell::new(0);
        let pid = -1001;
        let read = |ticks| {
            file(
                pid,
                ticks,
                ProcFile::Environ,
                || Ok(counted(&reads, b"A=1")),
                || Some(ticks),
            )
        };
        let world = World::enter();
        assert_eq!(&*read(7).unwrap(), b"A=1");
        // Not yet confirmed: the second reader confirms it by a stat, without opening the file.
        assert_eq!(&*read(7).unwrap(), b"A=1");
        assert_eq!(&*read(7).unwrap(), b"A=1");
        assert_eq!(reads.get(), 1);
        // Another process at that pid (a later start) is read anew.
        seen(pid, Some(8));
        assert_eq!(&*read(8).unwrap(), b"A=1");
        assert_eq!(reads.get(), 2);

        // A read whose process changed before its confirmation is dropped, never handed out.
        let other = -1002;
        file(
            other,
            5,
            ProcFile::Cmdline,
            || Ok(counted(&reads, b"old")),
            || None,
        )
        .unwrap();
        let again = file(
            other,
            5,
            ProcFile::Cmdline,
            || Ok(counted(&reads, b"new")),
            || Some(6),
        );
        assert_eq!(again.unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(reads.get(), 3);

        // A read with no stat before it (a pass over every argv) goes to the process that had started before it: a
        // later reader's stat confirms it without a second open; a process started since is read anew.
        let scanned = -1003;
        let before = unpinned(scanned, ProcFile::Cmdline, || Ok(counted(&reads, b"argv")));
        assert_eq!(&*before.unwrap().unwrap(), b"argv");
        assert!(unpinned(scanned, ProcFile::Cmdline, || Ok(counted(&reads, b"no"))).is_none());
        let read_at = boot_ticks();
        let pinned = |ticks| {
            file(
                scanned,
                ticks,
                ProcFile::Cmdline,
                || Ok(counted(&reads, b"later")),
                || Some(ticks),
            )
        };
        assert_eq!(&*pinned(read_at.saturating_sub(5)).unwrap(), b"argv");
        assert_eq!(reads.get(), 4, "the scan's read served the pinned reader");
        seen(scanned, None);
        let unpinned_again = unpinned(scanned, ProcFile::Cmdline, || Ok(counted(&reads, b"x")));
        assert!(
            unpinned_again.is_some(),
            "a gone process's read is forgotten"
        );
        assert_eq!(
            &*pinned(read_at + 1_000_000).unwrap(),
            b"later",
            "started after the read"
        );
        assert_eq!(reads.get(), 6);

        drop(world);
        read(8).unwrap();
        read(8).unwrap();
        assert_eq!(reads.get(), 8, "nothing is remembered outside a World");
    }
}
