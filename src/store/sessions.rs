//! The session store: `sessions/<id>.json`, one per agent session, kept as a tombstone after it ends.
//! Read-modify-writes of one session record are serialised by `sessions/<id>.lock`.

use std::path::PathBuf;

use anyhow::Context;

use crate::error::bad_input;
use crate::model::deadline::Deadline;
use crate::model::name::SessionId;
use crate::model::record::{self, Parsed, SessionRecord};
use crate::store::events::Event;
use crate::store::lock;
use crate::store::root::{self, SESSIONS, StateRoot};
use crate::store::slot::Unreadable;

/// What a session's record file holds, as read at one moment.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum SessionView {
    Missing,
    Record(SessionRecord),
    /// It exists but cannot be used: never read as "no record", never overwritten silently.
    Unreadable(Unreadable),
}

impl SessionView {
    fn refused(why: String) -> Self {
        SessionView::Unreadable(Unreadable {
            why,
            corrupt: false,
        })
    }
}

/// The session records of one state root.
#[derive(Clone, Debug)]
pub(crate) struct Sessions {
    root: StateRoot,
}

impl Sessions {
    pub(crate) fn new(root: &StateRoot) -> Self {
        Sessions { root: root.clone() }
    }

    fn path(&self, id: &SessionId) -> PathBuf {
        self.root.join(SESSIONS).join(format!("{id}.json"))
    }

    fn lock_path(&self, id: &SessionId) -> PathBuf {
        self.root.join(SESSIONS).join(format!("{id}.lock"))
    }

    /// What `sessions/<id>.json` holds now, changing nothing.
    pub(crate) fn view(&self, id: &SessionId) -> SessionView {
        let path = self.path(id);
        let bytes = match self.root.read_file(&path) {
            Ok(None) => return SessionView::Missing,
            Ok(Some(bytes)) => bytes,
            Err(err) => return SessionView::refused(format!("{err:#}")),
        };
        match record::parse(&bytes, &path) {
            Ok(Parsed::Record(record)) => SessionView::Record(record),
            Ok(Parsed::Corrupt(why)) => SessionView::Unreadable(Unreadable {
                why: format!("corrupt: {why}"),
                corrupt: true,
            }),
            Err(err) => SessionView::refused(format!("{err:#}")),
        }
    }

    /// The record of `id`, if any. An unreadable one is an error, never "none": it is not to be overwritten.
    pub(crate) fn get(&self, id: &SessionId) -> anyhow::Result<Option<SessionRecord>> {
        match self.view(id) {
            SessionView::Missing => Ok(None),
            SessionView::Record(record) => Ok(Some(record)),
            SessionView::Unreadable(unreadable) => Err(bad_input(format!(
                "{}: {}",
                self.path(id).display(),
                unreadable.why
            ))),
        }
    }

    /// Changes one session record under its lock; `change` gets the record as it is (`None` if there is none) and
    /// returns the new one, or `None` to leave it as is. A corrupt record is moved aside first (`moved_aside` says
    /// so, for the caller's executor to log: `act::executor::update_session`); one that is refused as it stands (a
    /// newer version, not a regular file) fails the update. Returns the record before and after.
    pub(crate) fn update(
        &self,
        id: &SessionId,
        deadline: Deadline,
        moved_aside: &mut Option<Event>,
        change: impl FnOnce(Option<&SessionRecord>) -> anyhow::Result<Option<SessionRecord>>,
    ) -> anyhow::Result<(Option<SessionRecord>, Option<SessionRecord>)> {
        let _lock = lock::lock(&self.root, &self.lock_path(id), deadline)
            .with_context(|| format!("session {id}"))?;
        let current = match self.view(id) {
            SessionView::Missing => None,
            SessionView::Record(record) => Some(record),
            SessionView::Unreadable(unreadable) if unreadable.corrupt => {
                let moved_to = root::quarantine(&self.path(id))?;
                *moved_aside = Some(
                    Event::new("corrupt", "moved_aside")
                        .session(Some(id.as_str()))
                        .detail(format!(
                            "{}; moved aside to {}",
                            unreadable.why,
                            moved_to.display()
                        )),
                );
                None
            }
            SessionView::Unreadable(unreadable) => {
                return Err(bad_input(format!(
                    "{}: {}",
                    self.path(id).display(),
                    unreadable.why
                )));
            }
        };
        match change(current.as_ref())? {
            Some(updated) if Some(&updated) != current.as_ref() => {
                self.root
                    .write_atomic(&self.path(id), &record::to_bytes(&updated))?;
                Ok((current, Some(updated)))
            }
            _ => Ok((current.clone(), current)),
        }
    }

    /// The first half of the owner-index protocol: before a session is made an owner of `slot` (under the slot's
    /// lock), the slot enters the session's index under the session's lock — refused if the session has ended.
    /// A session's end marks it ended under the same lock and then visits exactly the indexed slots, so an attach
    /// is either refused here, or indexed before the end reads the index (the end then finds and removes the owner,
    /// or the attach's re-check under the slot lock sees the end and refuses). `moved_aside` as for `update`.
    pub(crate) fn index_slot(
        &self,
        id: &SessionId,
        slot: &str,
        deadline: Deadline,
        moved_aside: &mut Option<Event>,
    ) -> anyhow::Result<()> {
        let host = root::host_name();
        self.update(id, deadline, moved_aside, |current| {
            if let Some(record) = current.filter(|record| record.is_ended()) {
                return Err(bad_input(format!(
                    "session {id} ended at {}: it cannot own a broker",
                    record.ended_at.as_deref().unwrap_or_default()
                )));
            }
            let mut record = current.cloned().unwrap_or_else(|| {
                SessionRecord::new(id.as_str(), host, &crate::model::clock::now_rfc3339())
            });
            Ok(record.index_slot(slot).then_some(record))
        })
        .map(drop)
    }

    /// Every readable session record (unreadable ones are skipped here; `scan` reports them).
    pub(crate) fn all(&self) -> Vec<SessionRecord> {
        self.scan().0
    }

    /// Every session record, and the ones that exist but cannot be read, by id. Changes nothing.
    pub(crate) fn scan(&self) -> (Vec<SessionRecord>, Vec<(String, Unreadable)>) {
        let Ok(entries) = std::fs::read_dir(self.root.join(SESSIONS)) else {
            return (Vec::new(), Vec::new());
        };
        let mut records = Vec::new();
        let mut unreadable = Vec::new();
        for id in entries.filter_map(Result::ok).filter_map(|entry| {
            let name = entry
                .file_name()
                .to_str()?
                .strip_suffix(".json")?
                .to_owned();
            SessionId::parse(&name).ok()
        }) {
            match self.view(&id) {
                SessionView::Missing => {}
                SessionView::Record(record) => records.push(record),
                SessionView::Unreadable(why) => unreadable.push((id.as_str().to_owned(), why)),
            }
        }
        records.sort_by(|a, b| a.started_at.cmp(&b.started_at));
        unreadable.sort_by(|a, b| a.0.cmp(&b.0));
        (records, unreadable)
    }

    /// Deletes a tombstone and its lock, under the lock. A record in use (locked) or resumed since it was read
    /// (no longer ended) is left alone.
    pub(crate) fn remove(&self, id: &SessionId) -> anyhow::Result<()> {
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
