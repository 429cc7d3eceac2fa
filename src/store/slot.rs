//! Broker slots: `workspaces/<key>/<name>/broker.json`, guarded by `broker.lock`.
//!
//! Every change to a slot goes through a `SlotGuard`, which only `Slot::lock` produces, so no code path can write a
//! record without holding its flock. Locks are taken one at a time, with a bounded wait.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::model::deadline::Deadline;
use crate::model::name::SlotName;
use crate::model::record::{self, BrokerRecord, Parsed};
use crate::model::workspace;
use crate::store::lock::{self, LockGuard};
use crate::store::root::{self, StateRoot, WORKSPACES};

pub(crate) const RECORD: &str = "broker.json";
pub(crate) const LOCK: &str = "broker.lock";

/// The default bounded wait for a slot lock, for commands without a deadline of their own.
pub(crate) const LOCK_WAIT: Duration = Duration::from_secs(2);

/// One broker slot of one workspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    dir: PathBuf,
    key: String,
    name: String,
    /// The workspace path, when the slot was reached from it (not from a directory listing or a label).
    workspace: Option<PathBuf>,
}

pub(crate) use crate::model::slot::{SlotView, Unreadable};

impl SlotView {
    /// Reads the record at `path` without changing anything.
    pub(crate) fn read(root: &StateRoot, path: &Path) -> (Self, Option<Vec<u8>>) {
        let bytes = match root.read_file(path) {
            Ok(None) => return (SlotView::Empty, None),
            Ok(Some(bytes)) => bytes,
            Err(err) => return (SlotView::refused(format!("{err:#}")), None),
        };
        match record::parse::<BrokerRecord>(&bytes, path) {
            Ok(Parsed::Record(record)) => (SlotView::Broker(record), Some(bytes)),
            Ok(Parsed::Corrupt(why)) => (
                SlotView::Unreadable(Unreadable {
                    why: format!("corrupt: {why}"),
                    corrupt: true,
                }),
                None,
            ),
            Err(err) => (SlotView::refused(format!("{err:#}")), None),
        }
    }

    fn refused(why: String) -> Self {
        SlotView::Unreadable(Unreadable {
            why,
            corrupt: false,
        })
    }

    pub(crate) fn broker(&self) -> Option<&BrokerRecord> {
        match self {
            SlotView::Broker(record) => Some(record),
            _ => None,
        }
    }
}

impl Slot {
    /// The slot of `workspace` (canonical) and `name`.
    pub(crate) fn of(root: &StateRoot, workspace: &Path, name: &SlotName) -> Self {
        let key = workspace::workspace_key(workspace);
        Slot {
            dir: root.join(WORKSPACES).join(&key).join(name.as_str()),
            key,
            name: name.as_str().to_owned(),
            workspace: Some(workspace.to_path_buf()),
        }
    }

    /// The slot a label (`<workspace-key>/<name>`, as the owner index keeps it) names, if it is a valid label.
    pub(crate) fn from_label(root: &StateRoot, label: &str) -> Option<Self> {
        let (key, name) = label.split_once('/')?;
        let name = SlotName::parse(name).ok()?;
        let plain =
            |part: &str| !part.is_empty() && part != "." && part != ".." && !part.contains('/');
        if !plain(key) {
            return None;
        }
        Some(Slot {
            dir: root.join(WORKSPACES).join(key).join(name.as_str()),
            key: key.to_owned(),
            name: name.as_str().to_owned(),
            workspace: None,
        })
    }

    /// Every slot under the state root, in a stable order (see `iter`).
    pub(crate) fn all(root: &StateRoot) -> Vec<Slot> {
        let mut slots: Vec<Slot> = Self::iter(root).collect();
        slots.sort_by(|a, b| a.dir.cmp(&b.dir));
        slots
    }

    /// Every slot under the state root as the directories list them: the two levels below `workspaces/`, nothing
    /// deeper, read as it goes (memory does not grow with the number of workspaces). Entries that are not plain
    /// directories are skipped.
    pub(crate) fn iter(root: &StateRoot) -> impl Iterator<Item = Slot> {
        // Two `read_dir` levels, the entry types from the listing itself: no slot directory is opened or stat'ed.
        subdirectories(&root.join(WORKSPACES)).flat_map(|workspace| {
            let key = workspace
                .file_name()
                .and_then(|key| key.to_str())
                .map(str::to_owned);
            subdirectories(&workspace).filter_map(move |dir| {
                Some(Slot {
                    key: key.clone()?,
                    name: dir.file_name()?.to_str()?.to_owned(),
                    dir,
                    workspace: None,
                })
            })
        })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<workspace-key>/<name>`: how events and tickets name the slot.
    pub(crate) fn label(&self) -> String {
        format!("{}/{}", self.key, self.name)
    }

    pub(crate) fn workspace(&self) -> Option<&Path> {
        self.workspace.as_deref()
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn record_path(&self) -> PathBuf {
        self.dir.join(RECORD)
    }

    /// Creates the slot's directories (0700, checked).
    pub(crate) fn create(&self, root: &StateRoot) -> anyhow::Result<()> {
        if let Some(workspace_dir) = self.dir.parent() {
            root.ensure_dir(workspace_dir)?;
        }
        root.ensure_dir(&self.dir)
    }

    /// Takes the slot's flock, waiting no later than `deadline`.
    pub(crate) fn lock(
        &self,
        root: &StateRoot,
        deadline: Deadline,
    ) -> anyhow::Result<SlotGuard<'_>> {
        if let Some(workspace_dir) = self.dir.parent() {
            root.check_dir(workspace_dir)?;
        }
        root.check_dir(&self.dir)?;
        let lock = lock::lock(root, &self.dir.join(LOCK), deadline)?;
        Ok(SlotGuard {
            slot: self,
            root: root.clone(),
            lock,
            last_read: RefCell::new(None),
        })
    }

    /// Reads the record without the lock (for looks and dry runs): a rename is atomic, so this sees one whole
    /// version. Changes nothing.
    pub(crate) fn view(&self, root: &StateRoot) -> SlotView {
        SlotView::read(root, &self.record_path()).0
    }
}

/// Proof that the slot's lock is held; the only way to read-for-update, write or clear a slot.
pub(crate) struct SlotGuard<'s> {
    slot: &'s Slot,
    root: StateRoot,
    lock: LockGuard,
    /// The bytes last read or written, so that a write that changes nothing is skipped.
    last_read: RefCell<Option<Vec<u8>>>,
}

impl SlotGuard<'_> {
    pub(crate) fn slot(&self) -> &Slot {
        self.slot
    }

    /// What the slot holds now. Changes nothing: a corrupt record is moved aside only by `quarantine`.
    pub(crate) fn view(&self) -> SlotView {
        let (view, bytes) = SlotView::read(&self.root, &self.slot.record_path());
        self.last_read.replace(bytes);
        view
    }

    /// Moves a corrupt record aside (`broker.json.corrupt-<ts>`); returns where it went.
    pub(crate) fn quarantine(&self) -> anyhow::Result<PathBuf> {
        self.last_read.replace(None);
        root::quarantine(&self.slot.record_path())
    }

    /// Writes the record atomically; skipped when it is byte-for-byte what was read.
    pub(crate) fn write(&self, record: &BrokerRecord) -> anyhow::Result<()> {
        let bytes = record::to_bytes(record);
        if self.last_read.borrow().as_deref() == Some(bytes.as_slice()) {
            return Ok(());
        }
        self.root.write_atomic(&self.slot.record_path(), &bytes)?;
        self.last_read.replace(Some(bytes));
        self.remove_dead_temps();
        Ok(())
    }

    /// Removes temp files a writer killed between create and rename left behind. Every writer of the record holds
    /// this lock, so under it any such file is garbage.
    fn remove_dead_temps(&self) {
        let prefix = format!(".{RECORD}.tmp-");
        let Ok(entries) = std::fs::read_dir(&self.slot.dir) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            if entry
                .file_name()
                .to_str()
                .is_some_and(|name| name.starts_with(&prefix))
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Removes an empty slot's directory: its lock (while holding it, so any waiter re-opens and finds the slot
    /// gone), its log when older than `keep_log`, then the directory and its workspace directory if empty.
    /// Anything else in the directory (a moved-aside corrupt record) keeps it.
    pub(crate) fn remove_if_empty(&self, keep_log: Duration) -> anyhow::Result<bool> {
        if self.slot.record_path().exists() {
            return Ok(false);
        }
        let log = self.slot.dir.join("broker.log");
        let log_age = std::fs::metadata(&log)
            .and_then(|meta| meta.modified())
            .ok()
            .and_then(|at| at.elapsed().ok());
        if log_age.is_some_and(|age| age < keep_log) {
            return Ok(false);
        }
        // A writer killed mid-write left its temp file: under the lock it is garbage, and it would keep the slot.
        self.remove_dead_temps();
        let _ = std::fs::remove_file(&log);
        self.lock.remove()?;
        let removed = std::fs::remove_dir(&self.slot.dir).is_ok();
        if let Some(workspace_dir) = self.slot.dir.parent() {
            let _ = std::fs::remove_dir(workspace_dir);
        }
        Ok(removed)
    }

    /// Empties the slot (the broker was handed to a stop ticket, or is gone). The lock file stays.
    pub(crate) fn clear(&self) -> anyhow::Result<()> {
        if let Err(err) = std::fs::remove_file(self.slot.record_path())
            && err.kind() != std::io::ErrorKind::NotFound
        {
            return Err(err)
                .with_context(|| format!("removing {}", self.slot.record_path().display()));
        }
        self.last_read.replace(None);
        Ok(())
    }
}

/// The plain directories in `dir` (symlinks and other entries left out), as the listing goes; none if it cannot be
/// listed.
fn subdirectories(dir: &Path) -> impl Iterator<Item = PathBuf> + use<> {
    super::slot_dirs::entries_of(dir)
        .filter(|entry| entry.is_dir)
        .map(|entry| entry.path)
}
