//! The state root and its stores: `root` (checks, the one atomic writer, bounded no-follow reads), `lock` (the one
//! lock primitive), `slot`, `sessions`, `tickets` and `events`. `Store` is one opened root with its stores: slots
//! are reached through `Slot`, the rest hang here.

pub mod events;
pub mod lock;
pub mod root;
pub mod sessions;
pub mod slot;
pub mod slot_dirs;
pub mod temps;
pub mod tickets;

use std::path::Path;

use crate::act::signal::Guard;
use crate::act::stopper::Stopper;
use crate::store::events::EventLog;
use crate::store::root::StateRoot;
use crate::store::sessions::Sessions;
use crate::store::tickets::Tickets;

#[derive(Clone, Debug)]
pub struct Store {
    pub root: StateRoot,
    pub log: EventLog,
    pub tickets: Tickets,
    pub sessions: Sessions,
}

impl Store {
    /// Opens (creating if needed) and checks the state root.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        Ok(Self::from_root(StateRoot::open(path)?))
    }

    /// Opens the root for a run that may change it, or only looks at it (`dry_run`): then nothing is created, and
    /// a root that does not exist yet is `None`.
    pub fn open_for(path: &Path, dry_run: bool) -> anyhow::Result<Option<Self>> {
        if dry_run {
            Ok(StateRoot::open_existing(path)?.map(Self::from_root))
        } else {
            Self::open(path).map(Some)
        }
    }

    pub fn from_root(root: StateRoot) -> Self {
        let log = EventLog::new(&root);
        Store {
            tickets: Tickets::new(&root),
            sessions: Sessions::new(&root, log.clone()),
            log,
            root,
        }
    }

    /// The stopper of this state root: its guard refuses, besides what `guard` does, the recorded agents of this
    /// root's live sessions (read when there is something to stop).
    pub fn stopper(&self, guard: Guard) -> Stopper {
        Stopper::new(self.tickets.clone(), self.log.clone(), guard)
            .sparing_agents_of(self.sessions.clone())
    }
}
