//! What we know of other processes: their identity, parentage, argv and environment.
//!
//! Linux reads `/proc` directly (one pass over cmdlines, `stat` only on a match); other Unix systems go through
//! `sysinfo` with the same interface.

#[cfg(all(target_os = "linux", not(feature = "portable-proc")))]
mod linux;
#[cfg(all(target_os = "linux", not(feature = "portable-proc")))]
pub(crate) use linux::*;

#[cfg(any(not(target_os = "linux"), feature = "portable-proc"))]
mod portable;
#[cfg(any(not(target_os = "linux"), feature = "portable-proc"))]
pub(crate) use portable::*;

use crate::model::record::Identity;

/// The fields of one process that decisions are made on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProcStat {
    pub pid: i32,
    pub comm: String,
    /// The one-letter state; `Z` is a zombie, which counts as gone.
    pub state: char,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub start_ticks: u64,
}

/// True when `argv` is an agent process: its program is a known agent executable, or a script runtime (node, bun)
/// whose script is one (by name or by its npm package) — the agents table decides.
pub(crate) fn is_agent_program(argv: &[String]) -> bool {
    crate::agents::agent_of_process(argv).is_some()
}

/// The identity of a live process, `None` when it is gone (or a zombie) or when `pid` names a thread rather than a
/// process (`Tgid` differs): a thread id is never a process.
pub(crate) fn identity_of(pid: i32) -> Option<Identity> {
    let stat = stat(pid).ok().filter(|stat| stat.state != 'Z')?;
    let (tgid, uid) = tgid_and_uid(pid).ok()?;
    (tgid == pid).then(|| Identity {
        boot_id: boot_id().to_owned(),
        pid_ns: own_pid_ns(),
        pid,
        start_ticks: stat.start_ticks,
        uid,
    })
}

/// True when the process named by `identity` still runs (same boot, pid, start time and uid; not a zombie) and
/// its pid is one of this pid namespace.
pub(crate) fn is_alive(identity: &Identity) -> bool {
    identity.pid > 0
        && !identity.is_other_pid_ns(own_pid_ns())
        && identity_of(identity.pid).is_some_and(|now| identity.is_same_process(&now))
}

/// One observation pass's memory of the processes it found running: a live identity is read once, however many
/// records name it (ten thousand slots of one broker, one agent owning many slots). Only matches are remembered: a
/// pid that read as gone, or as another process, is read again, so a process started later in the pass (a reused
/// pid) is never judged by an older read. A remembered process may have exited since: the pass then keeps what it
/// would have stopped, and the next pass sees it; every signal checks again through a pidfd.
#[derive(Debug, Default)]
pub(crate) struct Liveness {
    running: std::cell::RefCell<std::collections::HashMap<i32, Identity>>,
}

impl Liveness {
    /// `is_alive`, remembering a match.
    pub(crate) fn is_alive(&self, identity: &Identity) -> bool {
        if self
            .running
            .borrow()
            .get(&identity.pid)
            .is_some_and(|seen| identity.is_same_process(seen))
        {
            return true;
        }
        if identity.pid <= 0 || identity.is_other_pid_ns(own_pid_ns()) {
            return false;
        }
        match identity_of(identity.pid) {
            Some(now) if identity.is_same_process(&now) => {
                self.running.borrow_mut().insert(identity.pid, now);
                true
            }
            _ => false,
        }
    }
}

/// Pinned observation: reads what a process says about itself (`read`) between two identity reads, and keeps the
/// result only when the identity held throughout — a pid reused in between gives nothing.
pub(crate) fn pinned<T>(pid: i32, read: impl FnOnce(i32) -> Option<T>) -> Option<(Identity, T)> {
    let before = identity_of(pid)?;
    let value = read(pid)?;
    let after = identity_of(pid)?;
    (before == after).then_some((before, value))
}

/// What a process's environment says of its place among our brokers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Markers {
    /// `SESSION_REAPER_BROKER`: the `<workspace>/<name>` slot it was started for.
    pub broker: Option<String>,
    /// `SESSION_REAPER_STATE_ROOT`: the state root of the run that started it.
    pub state_root: Option<String>,
    /// `SESSION_REAPER_LINEAGE`: the token of the broker whose tree it belongs to.
    pub lineage: Option<String>,
}

impl Markers {
    fn of(environ: &[u8]) -> Self {
        use crate::model::marker::{BROKER_MARKER, LINEAGE_MARKER, STATE_ROOT_MARKER};
        Markers {
            broker: env_value(environ, BROKER_MARKER),
            state_root: env_value(environ, STATE_ROOT_MARKER),
            lineage: env_value(environ, LINEAGE_MARKER),
        }
    }
}

/// One process as a lineage scan saw it: its group, session and markers, read between two identity reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Observed {
    pub identity: Identity,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub markers: Markers,
}

/// One pass over the process table for the lineage rules: every process whose environment carries one of our
/// markers, and every process whose group or session id is in `groups` (the members of a tokenless broker's group
/// or session). Each is a pinned observation. As far as `deadline` lets it get (checked between entries); the flag
/// says whether the scan was complete — a partial scan never proves that a process is gone.
pub(crate) fn observe<S: std::hash::BuildHasher>(
    groups: &std::collections::HashSet<i32, S>,
    deadline: crate::model::deadline::Deadline,
) -> (Vec<Observed>, bool) {
    let all = pids().unwrap_or_default();
    let total = all.len();
    let mut visited = 0;
    let seen = all
        .into_iter()
        .take_while(|_| !deadline.expired())
        .inspect(|_| visited += 1)
        .filter_map(|pid| {
            // Pinned: the stat, the environment (once per process while a `World` remembers), then the identity
            // again with the same start.
            let stat = stat(pid).ok()?;
            let grouped = groups.contains(&stat.pgid) || groups.contains(&stat.sid);
            let environ = file_of(
                pid,
                stat.start_ticks,
                crate::observe::world::ProcFile::Environ,
            )
            .unwrap_or_else(|_| std::sync::Arc::from(&[][..]));
            let ours = environ
                .windows(b"SESSION_REAPER_".len())
                .any(|w| w == b"SESSION_REAPER_");
            if !(grouped || ours) {
                return None;
            }
            let identity = identity_of(pid).filter(|now| now.start_ticks == stat.start_ticks)?;
            Some(Observed {
                identity,
                ppid: stat.ppid,
                pgid: stat.pgid,
                sid: stat.sid,
                markers: Markers::of(&environ),
            })
        })
        .collect();
    (seen, visited == total)
}

/// Reads `/proc/<pid>/<name>` in as few `read` calls as its size allows: a /proc file reports no size, so a plain
/// `fs::read` starts with small probing reads (six of them for a `stat` line), and the scans read hundreds of these.
pub(crate) fn read_proc_file(pid: i32, name: &str) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(format!("/proc/{pid}/{name}"))?;
    let mut bytes = Vec::with_capacity(8192);
    // Through `Take`, not `File` itself: `File::read_to_end` first asks the size (an `fstat` and an `lseek`), which
    // a /proc file does not know. Into the spare capacity: one read, and one that finds the end.
    std::io::Read::read_to_end(&mut std::io::Read::take(file, u64::MAX), &mut bytes)?;
    Ok(bytes)
}

/// An argv as `/proc/<pid>/cmdline` holds it (NUL-terminated words), as words (lossy UTF-8); empty for none.
pub(crate) fn split_nul(bytes: &[u8]) -> Vec<String> {
    let trimmed = bytes.strip_suffix(b"\0").unwrap_or(bytes);
    if trimmed.is_empty() {
        return Vec::new();
    }
    trimmed
        .split(|b| *b == 0)
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect()
}

/// `read_proc_file` as text (lossy: /proc text files are ASCII but for the command name).
pub(crate) fn read_proc_text(pid: i32, name: &str) -> std::io::Result<String> {
    read_proc_file(pid, name).map(|bytes| match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(err) => String::from_utf8_lossy(err.as_bytes()).into_owned(),
    })
}

/// The value of `key` in a raw environment block (`NAME=value` entries separated by NUL).
pub(crate) fn env_value(environ: &[u8], key: &str) -> Option<String> {
    let prefix = format!("{key}=");
    environ
        .split(|b| *b == 0)
        .find_map(|entry| entry.strip_prefix(prefix.as_bytes()))
        .map(|value| String::from_utf8_lossy(value).into_owned())
}

/// The chain of ancestors of `pid`, nearest first, not including `pid` itself; stops at pid 1.
pub(crate) fn ancestors(pid: i32) -> Vec<ProcStat> {
    let mut chain = Vec::new();
    let mut next = stat(pid).map_or(0, |s| s.ppid);
    while next > 0 && chain.len() < 4096 {
        let Ok(parent) = stat(next) else { break };
        next = parent.ppid;
        chain.push(parent);
    }
    chain
}

/// One ancestor of a hook, nearest first, as the hook saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Ancestor {
    pub pid: i32,
    pub uid: u32,
    /// The agent the agents table recognises in its argv (its executable, or node/bun running its script).
    pub agent: Option<crate::agents::Agent>,
}

/// The ancestors of `pid`, nearest first, as the hook's agent choice reads them (`decide::belonging::hook_agent`):
/// each one's pid, uid and the agent its argv is, if any.
pub(crate) fn hook_ancestors(pid: i32) -> Vec<Ancestor> {
    ancestors(pid)
        .into_iter()
        .filter_map(|stat| {
            let (identity, argv) = pinned(stat.pid, |pid| cmdline(pid).ok())?;
            Some(Ancestor {
                pid: identity.pid,
                uid: identity.uid,
                agent: crate::agents::agent_of_process(&argv),
            })
        })
        .collect()
}

/// The processes that may adopt the orphans of the broker led by `leader`: init, and the leader's ancestors (the
/// nearest subreaper among a dying process's ancestors takes its children). Empty of ancestors once it is gone.
pub(crate) fn adopters_of(leader: &Identity) -> std::collections::HashSet<i32> {
    let mut adopters: std::collections::HashSet<i32> = if is_alive(leader) {
        ancestors(leader.pid).iter().map(|stat| stat.pid).collect()
    } else {
        std::collections::HashSet::new()
    };
    adopters.insert(1);
    adopters
}

/// Pids of this process and all its ancestors: never to be signalled. Read once per run (every check of the run
/// uses the same snapshot); an ancestor that exits later keeps its pid protected, which only ever spares a process.
pub(crate) fn self_and_ancestors() -> std::collections::HashSet<i32> {
    static CHAIN: std::sync::OnceLock<std::collections::HashSet<i32>> = std::sync::OnceLock::new();
    CHAIN
        .get_or_init(|| {
            let me = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
            let mut set: std::collections::HashSet<i32> =
                ancestors(me).iter().map(|stat| stat.pid).collect();
            set.insert(me);
            set
        })
        .clone()
}

pub(crate) use crate::store::root::host_name;

/// This run's host name and pid namespace, as decisions take them.
pub(crate) fn host() -> crate::model::host::Host {
    crate::model::host::Host {
        name: host_name(),
        pid_ns: own_pid_ns(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(text: &str) -> Vec<String> {
        text.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn agent_programs_by_name_or_by_runtime_script() {
        for agent in [
            "claude --resume s1",
            "/home/u/.local/bin/claude -p hi",
            "codex resume s1",
            "node /usr/local/bin/gemini --resume s1",
            "node --no-warnings /usr/lib/node_modules/@anthropic-ai/claude-code/cli.js",
            "bun /opt/qwen.js",
            "/usr/bin/node /usr/lib/node_modules/@openai/codex/bin/codex.js",
        ] {
            assert!(is_agent_program(&argv(agent)), "{agent}");
        }
        for other in [
            "grep -r s1 /root/.claude",
            "vim -rs1",
            "tmux new-session -d claude --resume s1",
            "node server.js --resume s1",
            "node",
            "python3 -c x claude",
            "claudette --resume s1",
        ] {
            assert!(!is_agent_program(&argv(other)), "{other}");
        }
    }

    #[test]
    fn env_values_are_exact_keys() {
        let environ = b"A=1\0SESSION_REAPER_LINEAGE_X=no\0SESSION_REAPER_LINEAGE=abc\0";
        assert_eq!(
            env_value(environ, "SESSION_REAPER_LINEAGE").as_deref(),
            Some("abc")
        );
        assert_eq!(env_value(environ, "B"), None);
    }

    /// Defect 5 (match, then identity): a match on argv read before the identity let a pid reused in between get
    /// the ticket. Pinned observation drops a read during which the process changed.
    #[test]
    fn pinned_observation_drops_a_match_when_the_process_changes_during_the_read() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        // `spawn` returns before the kernel shows the new argv: wait for it.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while cmdline(pid).ok().is_none_or(|argv| argv != ["sleep", "30"])
            && std::time::Instant::now() < until
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let steady = pinned(pid, |pid| cmdline(pid).ok());
        assert!(steady.is_some_and(|(id, argv)| id.pid == pid && argv == ["sleep", "30"]));
        // The window widened: the process goes away (its pid free for reuse) between the first identity and the read.
        let changed = pinned(pid, |pid| {
            let argv = cmdline(pid).ok();
            child.kill().unwrap();
            child.wait().unwrap();
            argv
        });
        assert_eq!(changed, None, "the match is dropped");
    }

    #[cfg(all(target_os = "linux", not(feature = "portable-proc")))]
    #[test]
    fn a_thread_id_is_not_a_process() {
        let (tx, rx) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            tx.send(rustix::thread::gettid().as_raw_nonzero().get())
                .unwrap();
            std::thread::park();
        });
        let tid = rx.recv().unwrap();
        assert!(std::fs::metadata(format!("/proc/{tid}/stat")).is_ok());
        assert_eq!(identity_of(tid), None, "Tgid != pid");
        worker.thread().unpark();
        worker.join().unwrap();
    }
}
