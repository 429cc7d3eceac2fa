//! The finisher: a detached `session-reaper finish` that completes stop tickets a hook could not finish inside its
//! deadline (waiting out a grace, SIGKILL escalation). One at a time (`finisher.lock`); it exits when no ticket is
//! left, or when only stuck ones are (a sweep retries those). Tickets outlive a killed finisher.

use std::time::{Duration, Instant};

use crate::error::Outcome;
use crate::launch;
use crate::signal::Guard;
use crate::stop::STUCK_AFTER;
use crate::store::Store;

const LOCK: &str = "finisher.lock";
/// How long one finisher may run at most.
const LIFETIME: Duration = Duration::from_secs(600);

/// Starts a detached finisher for the store's state root.
pub fn start(store: &Store) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let root = store.root.path().to_string_lossy().into_owned();
    launch::spawn_detached(&exe, &["--state-dir", &root, "finish"], &[])
}

/// True while a finisher holds the lock (for `doctor` and `status`).
pub fn is_running(store: &Store) -> bool {
    store.root.open_lock_file(&store.root.join(LOCK)).is_ok_and(|file| file.try_lock().is_err())
}

/// The finisher's loop.
pub fn run(store: &Store) -> anyhow::Result<Outcome> {
    let lock = store.root.open_lock_file(&store.root.join(LOCK))?;
    if lock.try_lock().is_err() {
        return Ok(Outcome::Done);
    }
    let stopper = store.stopper(Guard::new());
    let started = Instant::now();
    loop {
        let pending: Vec<_> = store.tickets.pending(&store.log);
        let workable: Vec<_> = pending.into_iter().filter(|ticket| ticket.attempts < STUCK_AFTER).collect();
        if workable.is_empty() {
            // Release, then look once more: a hook that filed a ticket while we held the lock saw its own finisher
            // refused, so the ticket is ours to take.
            lock.unlock()?;
            let again = store.tickets.pending(&store.log).iter().any(|ticket| ticket.attempts < STUCK_AFTER);
            if !again || lock.try_lock().is_err() {
                return Ok(Outcome::Done);
            }
            continue;
        }
        if started.elapsed() > LIFETIME {
            return Ok(Outcome::Partial);
        }
        stopper.run(workable, Instant::now() + Duration::from_secs(30));
    }
}
