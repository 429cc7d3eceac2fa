//! What we know of other processes: their identity, parentage, argv and environment.
//!
//! Linux reads `/proc` directly (one pass over cmdlines, `stat` only on a match); other Unix systems go through
//! `sysinfo` with the same interface.

#[cfg(all(target_os = "linux", not(feature = "portable-proc")))]
mod linux;
#[cfg(all(target_os = "linux", not(feature = "portable-proc")))]
pub use linux::*;

#[cfg(any(not(target_os = "linux"), feature = "portable-proc"))]
mod portable;
#[cfg(any(not(target_os = "linux"), feature = "portable-proc"))]
pub use portable::*;

use crate::record::Identity;

/// The fields of one process that decisions are made on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: i32,
    pub comm: String,
    /// The one-letter state; `Z` is a zombie, which counts as gone.
    pub state: char,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub start_ticks: u64,
}

/// Programs that run a hook on behalf of the agent; the agent process is the nearest ancestor that is none of these.
pub const WRAPPERS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "fish", "env", "timeout", "nice", "nohup", "stdbuf", "time",
    "ksh", "busybox",
];

/// The identity of a live process, `None` when it is gone (or a zombie).
pub fn identity_of(pid: i32) -> Option<Identity> {
    let stat = stat(pid).ok().filter(|stat| stat.state != 'Z')?;
    let uid = real_uid(pid).ok()?;
    Some(Identity {
        boot_id: boot_id().to_owned(),
        pid,
        start_ticks: stat.start_ticks,
        uid,
    })
}

/// True when the process named by `identity` still runs (same boot, pid, start time and uid; not a zombie).
pub fn is_alive(identity: &Identity) -> bool {
    identity.pid > 0 && identity_of(identity.pid).is_some_and(|now| &now == identity)
}

/// The chain of ancestors of `pid`, nearest first, not including `pid` itself; stops at pid 1.
pub fn ancestors(pid: i32) -> Vec<ProcStat> {
    let mut chain = Vec::new();
    let mut next = stat(pid).map_or(0, |s| s.ppid);
    while next > 0 && chain.len() < 4096 {
        let Ok(parent) = stat(next) else { break };
        next = parent.ppid;
        chain.push(parent);
    }
    chain
}

/// The nearest ancestor of `pid` that is not a shell or wrapper: the agent process of a hook.
pub fn agent_process(pid: i32) -> Option<ProcStat> {
    ancestors(pid).into_iter().find(|stat| !is_wrapper(stat))
}

fn is_wrapper(stat: &ProcStat) -> bool {
    let argv0 = cmdline(stat.pid)
        .ok()
        .and_then(|argv| argv.into_iter().next())
        .unwrap_or_default();
    let base = argv0
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .trim_start_matches('-')
        .to_owned();
    let name = if base.is_empty() {
        stat.comm.as_str()
    } else {
        base.as_str()
    };
    WRAPPERS.contains(&name) || WRAPPERS.contains(&stat.comm.as_str())
}

/// Pids of this process and all its ancestors: never to be signalled.
pub fn self_and_ancestors() -> std::collections::HashSet<i32> {
    let me = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
    let mut set: std::collections::HashSet<i32> =
        ancestors(me).iter().map(|stat| stat.pid).collect();
    set.insert(me);
    set
}

/// This machine's host name, as recorded in records (a state root on a network home is shared between hosts).
pub fn host_name() -> String {
    nix::unistd::gethostname()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}
