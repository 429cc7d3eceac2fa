//! The state root and its stores: `root` (checks, the one atomic writer, bounded no-follow reads), `lock` (the one
//! lock primitive), `slot`, `sessions`, `tickets` and `events`. `Store` is one opened root with its stores: slots
//! are reached through `Slot`, the rest hang here.

pub(crate) mod events;
pub(crate) mod lock;
pub(crate) mod root;
pub(crate) mod sessions;
pub(crate) mod slot;
pub(crate) mod slot_dirs;
pub(crate) mod temps;
pub(crate) mod tickets;

use std::path::Path;

use crate::store::events::EventLog;
use crate::store::root::StateRoot;
use crate::store::sessions::Sessions;
use crate::store::tickets::Tickets;

#[derive(Clone, Debug)]
pub(crate) struct Store {
    pub root: StateRoot,
    pub log: EventLog,
    pub tickets: Tickets,
    pub sessions: Sessions,
}

impl Store {
    /// Opens (creating if needed) and checks the state root.
    pub(crate) fn open(path: &Path) -> anyhow::Result<Self> {
        Ok(Self::from_root(StateRoot::open(path)?))
    }

    /// Opens the root for a run that may change it, or only looks at it (`dry_run`): then nothing is created, and
    /// a root that does not exist yet is `None`.
    pub(crate) fn open_for(path: &Path, dry_run: bool) -> anyhow::Result<Option<Self>> {
        if dry_run {
            Ok(StateRoot::open_existing(path)?.map(Self::from_root))
        } else {
            Self::open(path).map(Some)
        }
    }

    pub(crate) fn from_root(root: StateRoot) -> Self {
        let log = EventLog::new(&root);
        Store {
            tickets: Tickets::new(&root),
            sessions: Sessions::new(&root),
            log,
            root,
        }
    }
}
