//! The session store: `sessions/<id>.json`, one per agent session, kept as a tombstone after it ends.
//! Read-modify-writes of one session record are serialised by `sessions/<id>.lock`.

use std::path::PathBuf;

use anyhow::Context;

use crate::deadline::Deadline;
use crate::lock;
use crate::name::SessionId;
use crate::record::{self, Parsed, SessionRecord};
use crate::state::{SESSIONS, StateRoot};

/// The session records of one state root.
#[derive(Clone, Debug)]
pub struct Sessions {
    root: StateRoot,
}

impl Sessions {
    pub fn new(root: &StateRoot) -> Self {
        Sessions { root: root.clone() }
    }

    fn path(&self, id: &SessionId) -> PathBuf {
        self.root.join(SESSIONS).join(format!("{id}.json"))
    }

    fn lock_path(&self, id: &SessionId) -> PathBuf {
        self.root.join(SESSIONS).join(format!("{id}.lock"))
    }

    /// The record of `id`, if any (a corrupt one reads as none).
    pub fn get(&self, id: &SessionId) -> anyhow::Result<Option<SessionRecord>> {
        let path = self.path(id);
        let Some(bytes) = self.root.read_file(&path)? else {
            return Ok(None);
        };
        Ok(match record::parse(&bytes, &path)? {
            Parsed::Record(record) => Some(record),
            Parsed::Corrupt(_) => None,
        })
    }

    /// Changes one session record under its lock; `change` returns the new record, or `None` to leave it as is.
    /// Returns the record as it is afterwards.
    pub fn update(
        &self,
        id: &SessionId,
        deadline: Deadline,
        change: impl FnOnce(Option<SessionRecord>) -> Option<SessionRecord>,
    ) -> anyhow::Result<Option<SessionRecord>> {
        let _lock = lock::lock(&self.root, &self.lock_path(id), deadline)
            .with_context(|| format!("session {id}"))?;
        let current = self.get(id)?;
        match change(current.clone()) {
            Some(updated) if Some(&updated) != current.as_ref() => {
                self.root
                    .write_atomic(&self.path(id), &record::to_bytes(&updated))?;
                Ok(Some(updated))
            }
            _ => Ok(current),
        }
    }

    /// Every readable session record.
    pub fn all(&self) -> Vec<SessionRecord> {
        let Ok(entries) = std::fs::read_dir(self.root.join(SESSIONS)) else {
            return Vec::new();
        };
        let mut records: Vec<SessionRecord> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let name = entry
                    .file_name()
                    .to_str()?
                    .strip_suffix(".json")?
                    .to_owned();
                SessionId::parse(&name).ok()
            })
            .filter_map(|id| self.get(&id).ok().flatten())
            .collect();
        records.sort_by(|a, b| a.started_at.cmp(&b.started_at));
        records
    }

    /// Deletes a tombstone and its lock, under the lock. A record in use (locked) or resumed since it was read
    /// (no longer ended) is left alone.
    pub fn remove(&self, id: &SessionId) -> anyhow::Result<()> {
        let Some(lock) = lock::try_lock(&self.root, &self.lock_path(id))? else {
            return Ok(());
        };
        if self.get(id)?.is_some_and(|record| !record.is_ended()) {
            return Ok(());
        }
        let path = self.path(id);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err).with_context(|| format!("removing {}", path.display())),
        }
        lock.remove()
    }
}
