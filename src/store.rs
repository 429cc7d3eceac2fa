//! One opened state root with its stores: slots are reached through `Slot`, the rest hang here.

use std::path::Path;

use crate::events::EventLog;
use crate::sessions::Sessions;
use crate::signal::Guard;
use crate::state::StateRoot;
use crate::stop::Stopper;
use crate::ticket::Tickets;

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

    pub fn from_root(root: StateRoot) -> Self {
        Store {
            log: EventLog::new(&root),
            tickets: Tickets::new(&root),
            sessions: Sessions::new(&root),
            root,
        }
    }

    pub fn stopper(&self, guard: Guard) -> Stopper {
        Stopper::new(self.tickets.clone(), self.log.clone(), guard)
    }
}
