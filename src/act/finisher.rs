//! The finisher: a detached `session-reaper finish` that completes stop tickets a hook could not finish inside its
//! deadline (waiting out a grace, SIGKILL escalation). One at a time (`finisher.lock`); it exits when no ticket is
//! left, or when only stuck ones are (a sweep retries those). Tickets outlive a killed finisher.

use std::time::{Duration, Instant};

use crate::act::launch;
use crate::act::stopper::{STUCK_AFTER, StopOutcome, longest_stop};
use crate::error::Outcome;
use crate::model::record::StopTicket;
use crate::observe::proc;
use crate::store::Store;
use crate::store::lock;

const LOCK: &str = "finisher.lock";
/// How long to wait before looking again at tickets another process drives.
const ELSEWHERE_POLL: Duration = Duration::from_millis(25);
/// How long one finisher may run at most.
const LIFETIME: Duration = Duration::from_secs(600);

/// Starts a detached finisher for the store's state root.
pub(crate) fn start(store: &Store) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let root = store.root.path().to_string_lossy().into_owned();
    launch::spawn_detached(&exe, &["--state-dir", &root, "finish"], &[])
}

/// True while a finisher holds the lock (for `doctor` and `status`).
pub(crate) fn is_running(store: &Store) -> bool {
    // Creates nothing: `status` and `doctor` change nothing.
    lock::is_held(&store.root, &store.root.join(LOCK))
}

/// A ticket this host's finisher can work on: not stuck (a sweep retries those) and not another host's (a state root
/// shared over a network home) or another pid namespace's, which no run here ever completes.
fn is_workable(ticket: &StopTicket, host: &str) -> bool {
    ticket.attempts < STUCK_AFTER
        && !crate::model::record::is_other_host(&ticket.host, host)
        && !ticket.identity.is_other_pid_ns(proc::own_pid_ns())
}

/// True when some ticket waits for a finisher: a hook starts one even when its own stops all completed.
pub(crate) fn has_work(store: &Store) -> bool {
    let host = proc::host_name();
    crate::act::executor::pending(store)
        .iter()
        .any(|ticket| is_workable(ticket, &host))
}

/// The finisher's loop.
pub(crate) fn run(
    store: &Store,
    stopper: &crate::act::stopper::Stopper,
) -> anyhow::Result<Outcome> {
    let lock_path = store.root.join(LOCK);
    let Some(mut held) = lock::try_lock(&store.root, &lock_path)? else {
        return Ok(Outcome::Done);
    };
    let started = Instant::now();
    let host = proc::host_name();
    loop {
        let pending: Vec<_> = crate::act::executor::pending(store);
        let workable: Vec<_> = pending
            .into_iter()
            .filter(|ticket| is_workable(ticket, &host))
            .collect();
        if workable.is_empty() {
            // Release, then look once more: a hook that filed a ticket while we held the lock saw its own finisher
            // refused, so the ticket is ours to take.
            drop(held);
            let again = crate::act::executor::pending(store)
                .iter()
                .any(|ticket| is_workable(ticket, &host));
            match lock::try_lock(&store.root, &lock_path)? {
                Some(again_held) if again => held = again_held,
                _ => {
                    crate::act::cgroup::tidy(store);
                    return Ok(Outcome::Done);
                }
            }
            continue;
        }
        if started.elapsed() > LIFETIME {
            return Ok(Outcome::Partial);
        }
        // As long as the longest of these stops can take (its grace, the kill and a retry), no fixed wait; each pass
        // reads each process's argv and environment once.
        let deadline = longest_stop(&workable);
        let _world = crate::observe::World::enter();
        let reports = stopper.run(workable, deadline);
        // Every ticket left is driven by another process (a sweep, a hook): look again shortly, without spinning.
        if reports
            .iter()
            .all(|report| report.outcome == StopOutcome::DrivenElsewhere)
        {
            std::thread::sleep(ELSEWHERE_POLL);
        }
    }
}
