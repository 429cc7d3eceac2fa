//! Slot directories that come and go under a command's feet, and ones that are not directories at all.
//!
//! A sweep removes an empty slot's directory (and its workspace directory, once empty) while `broker spawn`,
//! `attach` or a session's end may be on their way into it: a lock that fails because a directory vanished is
//! taken again, until the caller's deadline. And an entry of `workspaces/` that is not a plain directory (a
//! symlink in place of a slot) is never walked into, so that it can never name another root's broker: it is
//! reported instead.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::model::deadline::Deadline;
use crate::store::lock::LockBusy;
use crate::store::root::{self, StateRoot, WORKSPACES};
use crate::store::slot::{LOCK, Slot, SlotGuard};

/// The pause between two tries at a slot whose directory vanished.
const RETRY_PAUSE: Duration = Duration::from_millis(2);

/// Creates the slot's directories and takes its lock, trying again (until `deadline`) when a sweep removed a
/// directory in between. A lock held past the deadline, or an unsafe directory or lock file, fails at once.
pub(crate) fn lock_creating<'s>(
    slot: &'s Slot,
    root: &StateRoot,
    deadline: Deadline,
) -> anyhow::Result<SlotGuard<'s>> {
    loop {
        let attempt = slot.create(root).and_then(|()| slot.lock(root, deadline));
        match attempt {
            Ok(guard) => return Ok(guard),
            Err(err) if !may_retry(&err, slot, deadline) => return Err(err),
            Err(_) => deadline.sleep(RETRY_PAUSE),
        }
    }
}

/// Takes the lock of an existing slot; `None` when its directory is gone (a sweep removed it: it holds nothing), also
/// when it goes while the lock is being taken.
pub(crate) fn lock_unless_gone<'s>(
    slot: &'s Slot,
    root: &StateRoot,
    deadline: Deadline,
) -> anyhow::Result<Option<SlotGuard<'s>>> {
    loop {
        if is_gone(slot.dir()) {
            return Ok(None);
        }
        match slot.lock(root, deadline) {
            Ok(guard) => return Ok(Some(guard)),
            Err(err) if !may_retry(&err, slot, deadline) => return Err(err),
            Err(_) => deadline.sleep(RETRY_PAUSE),
        }
    }
}

/// A failure worth another try: not a lock held past the deadline, no deadline passed, and nothing on disk that
/// would fail the same way again (an unsafe directory, a lock file that is no regular file of ours). What is left is
/// a directory that vanished between two steps.
fn may_retry(err: &anyhow::Error, slot: &Slot, deadline: Deadline) -> bool {
    let busy = err.chain().any(<dyn std::error::Error>::is::<LockBusy>);
    !busy && !deadline.expired() && !lasting_problem(slot, root_uid())
}

fn root_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// True when the slot's directories or lock file exist and are unsafe: a refusal that no retry changes.
fn lasting_problem(slot: &Slot, uid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let dirs = slot.dir().parent().into_iter().chain([slot.dir()]);
    for dir in dirs {
        match std::fs::symlink_metadata(dir) {
            Ok(meta) if root::unsafe_dir_reason(&meta, uid).is_some() => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    std::fs::symlink_metadata(slot.dir().join(LOCK))
        .is_ok_and(|meta| !meta.file_type().is_file() || meta.uid() != uid)
}

/// Refuses (exit 2, naming the path) a slot whose workspace or slot directory exists and is unsafe — a symlink
/// above all — before anything is read through it.
pub(crate) fn refuse_unsafe(slot: &Slot, root: &StateRoot) -> anyhow::Result<()> {
    for dir in slot.dir().parent().into_iter().chain([slot.dir()]) {
        if !is_gone(dir) {
            root.check_dir(dir)?;
        }
    }
    Ok(())
}

fn is_gone(path: &Path) -> bool {
    matches!(std::fs::symlink_metadata(path), Err(err) if err.kind() == io::ErrorKind::NotFound)
}

/// An entry of `workspaces/` where a workspace or slot directory belongs that is not a plain directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OddEntry {
    /// `<workspace-key>` or `<workspace-key>/<name>`, as slots are labelled.
    pub label: String,
    pub path: PathBuf,
    /// What it is instead (`a symlink to /x`, `not a directory`).
    pub what: String,
}

impl OddEntry {
    /// One line for people: what it is, that it is left alone, and the fix.
    pub(crate) fn problem(&self) -> String {
        format!(
            "{}: {}, where a slot directory belongs; never followed, nothing in it is read or signalled; fix: \
             remove it",
            self.path.display(),
            self.what
        )
    }
}

/// Every entry of the two levels below `workspaces/` that is not a plain directory: symlinks (never followed),
/// files, FIFOs. `Slot::iter` skips them; `status` shows them as unreadable and `sweep` reports them. Reads
/// directory entries only (their type comes with them).
pub(crate) fn odd_entries(root: &StateRoot) -> Vec<OddEntry> {
    // The slots are dropped as they come: memory does not grow with them.
    let mut odd = Vec::new();
    walk(root, |_| {}, |entry| odd.push(entry));
    odd.sort_by(|a, b| a.path.cmp(&b.path));
    odd
}
/// Every slot (in `Slot::all`'s order) and every odd entry, from one walk of the two levels below `workspaces/`:
/// what a sweep judges and what it reports, for the price of `Slot::all`. A directory whose name is no slot name
/// (nothing of ours makes one) is an odd entry too.
pub(crate) fn listing(root: &StateRoot) -> (Vec<Slot>, Vec<OddEntry>) {
    let (mut slots, mut odd) = (Vec::new(), Vec::new());
    walk(root, |slot| slots.push(slot), |entry| odd.push(entry));
    slots.sort_by(|a, b| a.dir().cmp(b.dir()));
    odd.sort_by(|a, b| a.path.cmp(&b.path));
    (slots, odd)
}

/// The two levels below `workspaces/`: each slot to `on_slot`, each entry that is no slot to `on_odd`. Each entry's
/// type comes from the listing itself: no slot directory is opened or stat'ed.
fn walk(root: &StateRoot, mut on_slot: impl FnMut(Slot), mut on_odd: impl FnMut(OddEntry)) {
    let workspaces = root.join(WORKSPACES);
    for workspace in entries_of(&workspaces) {
        if !workspace.is_dir {
            on_odd(OddEntry::of(&workspaces, workspace));
            continue;
        }
        for entry in entries_of(&workspace.path) {
            let label = relative_label(&workspaces, &entry.path);
            match entry
                .is_dir
                .then(|| Slot::from_label(root, &label))
                .flatten()
            {
                Some(slot) => on_slot(slot),
                None => on_odd(OddEntry::of(&workspaces, entry)),
            }
        }
    }
}
/// One entry of a listing: its path and whether it is a plain directory (a symlink never is).
pub(crate) struct Listed {
    pub(crate) path: PathBuf,
    pub(crate) is_dir: bool,
}

/// The entries of `dir` as its listing goes (`.` and `..` left out); none if it cannot be listed. Read with
/// `getdents64` on a descriptor of our own, each entry's type from the listing (an `lstat` only where the file
/// system gives none): no `fstat` of the directory, as `opendir` makes.
pub(crate) fn entries_of(dir: &Path) -> impl Iterator<Item = Listed> + use<> {
    use rustix::fs::{Dir, FileType, Mode, OFlags};
    use std::os::unix::ffi::OsStrExt;
    let opened = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .and_then(Dir::new);
    let base = dir.to_path_buf();
    opened.into_iter().flat_map(move |mut listing| {
        let base = base.clone();
        std::iter::from_fn(move || {
            loop {
                let entry = listing.read()?.ok()?;
                let name = entry.file_name().to_bytes();
                if name == b"." || name == b".." {
                    continue;
                }
                let path = base.join(std::ffi::OsStr::from_bytes(name));
                let is_dir = match entry.file_type() {
                    FileType::Directory => true,
                    FileType::Unknown => std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()),
                    _ => false,
                };
                return Some(Listed { path, is_dir });
            }
        })
    })
}

/// `<workspace-key>` or `<workspace-key>/<name>`: `path` below `workspaces`.
fn relative_label(workspaces: &Path, path: &Path) -> String {
    path.strip_prefix(workspaces).map_or_else(
        |_| path.display().to_string(),
        |rel| rel.display().to_string(),
    )
}

impl OddEntry {
    /// What `entry` is instead of a slot directory.
    fn of(workspaces: &Path, entry: Listed) -> OddEntry {
        let what = match std::fs::read_link(&entry.path) {
            Ok(target) => format!("a symlink to {}", target.display()),
            Err(_) if entry.is_dir => "a directory with no slot name".to_owned(),
            Err(_) => "not a directory".to_owned(),
        };
        OddEntry {
            label: relative_label(workspaces, &entry.path),
            path: entry.path,
            what,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::name::SlotName;

    /// A fresh root, and the default slot of a workspace beside it (not created).
    fn slot_in_fresh_root() -> (tempfile::TempDir, StateRoot, Slot) {
        let temp = tempfile::tempdir().unwrap();
        let root = StateRoot::open(&temp.path().join("state")).unwrap();
        let slot = Slot::of(&root, temp.path(), &SlotName::default());
        (temp, root, slot)
    }

    #[test]
    fn a_vanished_slot_is_created_again_and_locked() {
        let (_temp, root, slot) = slot_in_fresh_root();
        // As a sweep would leave it: the directory of the workspace gone too.
        slot.create(&root).unwrap();
        std::fs::remove_dir(slot.dir()).unwrap();
        std::fs::remove_dir(slot.dir().parent().unwrap()).unwrap();
        assert!(
            lock_unless_gone(&slot, &root, Deadline::now())
                .unwrap()
                .is_none()
        );
        let guard = lock_creating(&slot, &root, Deadline::after(Duration::from_secs(1))).unwrap();
        assert!(guard.slot().dir().is_dir());
    }

    #[test]
    fn an_unsafe_slot_fails_at_once_and_is_listed() {
        let (temp, root, slot) = slot_in_fresh_root();
        let elsewhere = temp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::create_dir_all(slot.dir().parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&elsewhere, slot.dir()).unwrap();
        let started = std::time::Instant::now();
        let deadline = Deadline::after(Duration::from_secs(5));
        assert!(lock_creating(&slot, &root, deadline).is_err());
        assert!(lock_unless_gone(&slot, &root, deadline).is_err());
        assert!(started.elapsed() < Duration::from_secs(4), "no retries");
        let (slots, odd) = listing(&root);
        assert!(slots.is_empty(), "{slots:?}");
        assert_eq!(odd.len(), 1, "{odd:?}");
        assert_eq!(odd[0].label, slot.label());
        assert!(odd[0].what.contains("symlink"), "{odd:?}");
        assert!(!elsewhere.join(LOCK).exists(), "never followed");
    }
}
