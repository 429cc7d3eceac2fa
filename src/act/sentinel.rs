//! Starting and finding the sentinel of an agent process (DESIGN "The sentinel"): one per agent identity, kept to
//! one by a lock named after that identity; its life (wait, then the agent-gone work) is `commands::sentinel`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::act::launch;
use crate::model::record::{Identity, StopTicket};
use crate::store::Store;

pub(crate) const DIR: &str = "sentinels";
/// How long a starting sentinel waits for its lock: a hook probing it holds it for an instant.
pub(crate) const LOCK_WAIT: Duration = Duration::from_secs(2);

pub(crate) fn lock_path(store: &Store, agent: &Identity) -> PathBuf {
    let name = StopTicket::file_name(agent).replace(".json", ".lock");
    store.root.join(DIR).join(name)
}

/// True while a sentinel holds the lock of `agent` (the file is opened, never created: `status` writes nothing).
pub(crate) fn is_running(store: &Store, agent: &Identity) -> bool {
    std::fs::File::open(lock_path(store, agent)).is_ok_and(|file| match file.try_lock_shared() {
        Ok(()) => {
            let _ = file.unlock();
            false
        }
        Err(_) => true,
    })
}

/// The pid the sentinel of `agent` wrote into its lock file once it held the lock.
pub(crate) fn pid_of(store: &Store, agent: &Identity) -> Option<i32> {
    std::fs::read_to_string(lock_path(store, agent))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Starts the sentinel of `agent` unless one runs. `within` bounds its wait (the finisher's wait after a
/// `SessionEnd`); `None` waits as long as the agent lives. `more` are the hook's words the sentinel needs too (where
/// the adapters look: `--codex-state DIR`, `--no-codex`).
pub(crate) fn start(
    store: &Store,
    agent: &Identity,
    within: Option<Duration>,
    more: &[String],
) -> anyhow::Result<()> {
    if is_running(store, agent) {
        return Ok(());
    }
    // The lock file exists before the sentinel does: what a hook leaves behind is complete when it returns.
    store.root.ensure_dir(&store.root.join(DIR))?;
    drop(store.root.open_lock_file(&lock_path(store, agent))?);
    let exe = std::env::current_exe().context("finding our own executable")?;
    let root = store.root.path().to_string_lossy().into_owned();
    let (pid, start) = (agent.pid.to_string(), agent.start_ticks.to_string());
    let mut args = vec![
        "--state-dir",
        &root,
        "sentinel",
        "--pid",
        &pid,
        "--start-ticks",
        &start,
    ];
    let within_text = within.map(|within| format!("{}ms", within.as_millis()));
    if let Some(within) = &within_text {
        args.extend(["--within", within]);
    }
    args.extend(more.iter().map(String::as_str));
    launch::spawn_detached(&exe, &args, &[])
}
