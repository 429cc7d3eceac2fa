//! The session store: `sessions/<id>.json`, one per agent session, kept as a tombstone after it ends.
//! Read-modify-writes of one session record are serialised by `sessions/<id>.lock`.

use std::path::PathBuf;
use std::time::Duration;

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
        wait: Duration,
        change: impl FnOnce(Option<SessionRecord>) -> Option<SessionRecord>,
    ) -> anyhow::Result<Option<SessionRecord>> {
        let lock = self.root.open_lock_file(&self.lock_path(id))?;
        let deadline = std::time::Instant::now() + wait;
        while lock.try_lock().is_err() {
            if std::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "session {id} is locked by another session-reaper for more than {wait:?}"
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
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

    /// Deletes a tombstone and its lock.
    pub fn remove(&self, id: &SessionId) -> anyhow::Result<()> {
        for path in [self.path(id), self.lock_path(id)] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(())
    }
}
